"""Which pool takes a job: gitlab-runner's tag rule, applied to pools in config order.

Pure; imports config models only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chalicelib.config import Pool


def runner_takes(job_tags: Iterable[str], runner_tags: Iterable[str], run_untagged: bool) -> bool:
    """gitlab-runner's rule: a runner picks a job when the job's tags are a subset of the runner's;
    a job without tags needs a runner with `run_untagged`."""
    wanted = set(job_tags)
    if not wanted:
        return run_untagged
    return wanted <= set(runner_tags)


def pool_for_tags(job_tags: Iterable[str], pools: Sequence[Pool]) -> Pool | None:
    """The first pool (config order) whose runners would take the job; None when no pool can."""
    tags = tuple(job_tags)
    for pool in pools:
        if runner_takes(tags, pool.tags, pool.run_untagged):
            return pool
    return None
