"""The simulator's prewarm: Pipeline Hooks sent as GitLab sends them, fed to the product's forecast through
`ours-prewarm`; later stages wait less on a hand-made multi-stage trace, and no busy machine is killed."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.forecast import bucket_upper
from sim.bench import SCENARIOS
from sim.bench_prewarm import VARIANTS, compare
from sim.bursty import LAGGY, bursty, reuse_config
from sim.gitlab import composite_status
from sim.model import PipelineHookEvent
from sim.ours import Ours, OursPrewarm
from sim.traces import TraceJob
from sim.world import World, job_wait
from tests.unit.test_sim import EXACT, job, make_config

#: A build that runs just under a histogram bucket's upper edge (s): its learned P80 is its true duration.
BUILD_S = math.floor(bucket_upper(33) * 10) / 10
#: One project, so every pipeline shares the (project, ref, stage) duration key.
ONE_PROJECT = replace(EXACT, projects=1)


def build_then_test(pipelines: int, every_s: float = 1200.0) -> list[TraceJob]:
    """`pipelines` pipelines, one every `every_s`: a build, then two parallel tests of 120 s."""
    trace: list[TraceJob] = []
    for n in range(1, pipelines + 1):
        created = 60.0 + n * every_s
        trace.append(job(n, created, 0, BUILD_S, name="build"))
        trace += [job(n, created, 1, 120.0, name=f"test {i}/2") for i in (1, 2)]
    return trace


def later_waits(world: World, end: float) -> list[float]:
    return sorted(job_wait(j, end) for j in world.jobs if j.trace.stage >= 1)


class TestPipelineHooks:
    def test_the_composite_status_follows_gitlab(self) -> None:
        # GIVEN latest job statuses; THEN the pipeline's status is GitLab's composite of them
        assert composite_status(["pending", "created"]) == "pending"
        assert composite_status(["running", "created"]) == "running"
        assert composite_status(["success", "pending", "created"]) == "running"  # a later stage queues
        assert composite_status(["success", "success"]) == "success"
        assert composite_status(["created"]) == "created"

    def test_a_hook_is_sent_when_the_pipeline_status_changes_only(self) -> None:
        # GIVEN one build-then-test pipeline and a listener on the Pipeline Hooks
        world = World(make_config(), build_then_test(1), seed=0, options=EXACT)
        seen: list[PipelineHookEvent] = []
        world.pipeline_bus.subscribe(seen.append)
        # WHEN it runs
        world.run(Ours())
        # THEN GitLab's three transitions are sent: pending, running (the build starts), success; the tests
        # starting later change nothing, so the stored state keeps them as GitLab listed them then
        assert [e.status for e in seen] == ["pending", "running", "success"]
        running = seen[1]
        assert [(b.stage, b.status) for b in running.builds] == [
            (0, "running"),
            (1, "created"),
            (1, "created"),
        ]

    def test_nobody_listening_changes_no_run(self) -> None:
        # GIVEN the same world run by ours with prewarm off, once with the what-if hook on every job change
        trace = build_then_test(3)
        plain = World(make_config(), trace, seed=3, options=LAGGY).run(Ours())
        every = replace(LAGGY, pipeline_hooks="every_job")
        chatty = World(make_config(), trace, seed=3, options=every).run(Ours())
        # THEN nothing differs: no policy subscribed, no random draw moved
        assert plain.metrics == chatty.metrics


class TestPrewarmOnOff:
    def test_later_stages_wait_less_with_prewarm_on(self) -> None:
        # GIVEN six build-then-test pipelines of one project, 60 s boots, machines used once
        trace = build_then_test(6)
        config = make_config()
        # WHEN ours runs them with prewarm off, then on (the product's defaults)
        off = World(config, trace, seed=0, options=ONE_PROJECT)
        off_result = off.run(Ours())
        on = World(config, trace, seed=0, options=ONE_PROJECT)
        on_result = on.run(OursPrewarm())
        # THEN with prewarm off every test waits a boot (and the dirty delay) ...
        assert min(later_waits(off, off_result.run_end_s)) >= 60.0
        # ... with it on, once the first build taught its duration, the tests find machines booted
        waits_on = {(j.trace.pipeline_id, job_wait(j, on_result.run_end_s)) for j in on.jobs if j.trace.stage}
        assert all(wait < 5.0 for pipeline, wait in waits_on if pipeline >= 2)
        # (the first pipeline's tests wait a boot: with no duration learned yet, nothing is forecast)
        assert all(wait >= 60.0 for pipeline, wait in waits_on if pipeline == 1)
        # AND the first stage is served as before, no busy machine is killed
        assert on_result.metrics["busy_killed"] == 0
        assert all(j.status == "success" for j in on.jobs)

    def test_the_comparison_reports_ratios_to_off_and_the_goal(self) -> None:
        off = {"later_wait_p95_s": 300.0, "wait_p95_s": 300.0, "cost_usd": 10.0, "busy_killed": 0}
        halved = {"later_wait_p95_s": 150.0, "wait_p95_s": 200.0, "cost_usd": 11.0, "busy_killed": 0}
        dearer = {**halved, "cost_usd": 11.5}
        assert compare(off, dict(halved))["goal_met"] is True
        assert compare(off, dict(dearer))["cost_ratio"] == 1.15
        assert compare(off, dict(dearer))["goal_met"] is False

    def test_the_same_seed_gives_the_same_prewarm_run(self) -> None:
        trace = bursty(7)
        first = World(reuse_config(), trace, seed=7, options=LAGGY).run(OursPrewarm())
        again = World(reuse_config(), trace, seed=7, options=LAGGY).run(OursPrewarm())
        assert first.metrics == again.metrics


class TestNeverKillBusyWithPrewarm:
    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(seed=st.integers(min_value=0, max_value=10**6))
    def test_prewarmed_machines_never_cost_a_running_job(self, seed: int) -> None:
        # GIVEN reused machines removed after 1 min idle, lagging and lost hooks, prewarm at low confidence
        world = World(reuse_config(), bursty(seed), seed=seed, options=LAGGY)
        # WHEN ours with prewarm on scales it
        result = world.run(OursPrewarm(confidence=0.5, max_machines=4))
        # THEN no machine died with a job on it, and every job ran
        assert result.metrics["busy_killed"] == 0
        assert all(j.status == "success" for j in world.jobs)


def test_the_prewarm_benchs_off_runs_every_pool_without_prewarm_even_a_standby_mac_pool() -> None:
    """A macOS pool with `keep_ready` on has prewarm on when the config leaves it unset: the bench's "off"
    must set it off, or its "on against off" compares prewarm with itself on that scenario."""
    # GIVEN the macos-hosts scenario, whose pool leaves prewarm unset (on by default there)
    config = next(s for s in SCENARIOS if s.name == "macos-hosts").load_config()
    assert all(p.prewarm for p in config.pools)
    # WHEN the bench's off and on variants configure their runs
    off, on = (next(v for v in VARIANTS if v.name == name).policy() for name in ("off", "on"))
    # THEN off runs every pool with prewarm off, and on with it on
    assert not any(p.prewarm for p in off._configure(config).pools)  # type: ignore[attr-defined]
    assert all(p.prewarm for p in on._configure(config).pools)  # type: ignore[attr-defined]
