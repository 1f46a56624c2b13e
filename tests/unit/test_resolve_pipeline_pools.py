"""The tick's prewarm routing repair (chalicelib.jobs.resolve_pipeline_pools): stored pipelines whose jobs to
come have no pool get them from the tag cache or GitLab, within the tick's bounds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from chalicelib.config import Config, GitLabConfig, Pool
from chalicelib.forecast import PipelineState, PlannedJob
from chalicelib.jobs import resolve_pipeline_pools
from chalicelib.store import MemoryStore
from tests.builders import T0

HOST = "gitlab.example.com"
CONFIG = Config(
    gitlab=GitLabConfig(url=f"https://{HOST}"),
    pools=(Pool(name="linux", asg="a", tags=("linux",), max_instances=5),),
)


class Jobs:
    """GitLab's pipeline jobs API: every job tagged linux; counts the calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def pipeline_jobs(self, project_id: int, pipeline_id: int) -> Sequence[Any]:
        self.calls.append(pipeline_id)
        return [SimpleNamespace(id=pipeline_id * 10 + n, tag_list=["linux"]) for n in (1, 2)]


def pipeline(pipeline_id: int, pool: str = "") -> PipelineState:
    jobs = tuple(PlannedJob(pipeline_id * 10 + n, 1, f"test {n}", "created", pool=pool) for n in (1, 2))
    return PipelineState(HOST, 7, pipeline_id, "running", jobs=jobs)


def test_pool_less_pipelines_get_pools_within_the_ticks_bounds_and_the_cache_spares_gitlab() -> None:
    # GIVEN four stored pipelines, three of whose jobs to come have no pool
    store, source = MemoryStore(), Jobs()
    stored = [pipeline(1), pipeline(2, pool="linux"), pipeline(3), pipeline(4)]
    heard: dict[int, Mapping[int, str]] = {}

    def on_pools(pipeline_id: int, pools: Mapping[int, str]) -> None:
        heard[pipeline_id] = pools

    # WHEN the tick may look at two pipelines and fetch one
    resolve_pipeline_pools(
        CONFIG, store, source, stored, T0, gitlab=HOST, on_pools=on_pools, max_pipelines=2, max_fetches=1
    )
    # THEN the oldest pool-less one is fetched and routed; the next waits (no fetch left); the rest wait
    assert source.calls == [1]
    assert heard == {1: {11: "linux", 12: "linux"}}
    # AND a later tick routes pipeline 1 again from the cache, without asking GitLab, and fetches the next
    resolve_pipeline_pools(CONFIG, store, source, stored, T0, gitlab=HOST, on_pools=on_pools, max_pipelines=2)
    assert source.calls == [1, 3]
    assert set(heard) == {1, 3}
