"""Use case: the drain protocol every termination the scaler starts goes through (reconcile and sweep alike).

1. Mark the machine draining, only if its record (read by the write itself, never an index's stale copy)
   shows no job.
2. Pause its runner in GitLab, and note when.
3. Once GitLab's assignment window has passed since the pause, ask GitLab what the runner runs: a job that
   slipped in cancels the removal (runner unpaused, drain stopped).
4. Terminate (once: a machine already leaving is not decremented again), or, for a used Mac the reconcile
   reuses, replace its root volume instead (`end`): the same guarantee that no job runs on it comes first.

A runner GitLab no longer knows (404) can take no job: the machine is terminated. So is one with no runner
at all, and one whose `run-single` has provably exited (`takes_no_job`): neither waits out the window.
Imports adapters' Protocols and the store; no boto3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Protocol

from chalicelib.errors import GitLabError, GitLabNotFoundError
from chalicelib.fleet import Fleet
from chalicelib.store import TERMINAL, MachineRecord, Store

logger = logging.getLogger(__name__)


class DrainRunners(Protocol):
    """The GitLab side of the drain: stop a runner taking jobs, then ask what it still runs."""

    def pause_runner(self, runner_id: int, paused: bool = True) -> None: ...

    def runner_jobs(self, runner_id: int, status: str = "running") -> Sequence[Any]: ...


class DrainState(Enum):
    TERMINATED = "terminated"
    ALREADY_GONE = "already gone"  # it was leaving by itself: nothing terminated, nothing decremented
    WAITING = "waiting"  # paused; GitLab's assignment window has not passed yet
    CANCELLED = "cancelled"  # a job landed on it: the runner takes jobs again
    BUSY = "busy"  # its record shows a job (or no record): never drained
    REUSED = "reused"  # drained, then given a fresh root volume instead of a termination (`end`)


@dataclass(frozen=True)
class DrainOutcome:
    state: DrainState
    runner_id: int | None = None
    runner_gone: bool = False

    @property
    def ended(self) -> bool:
        """The machine is on its way out (by us, or by itself)."""
        return self.state in {DrainState.TERMINATED, DrainState.ALREADY_GONE}


def runner_gone(exc: Exception) -> bool:
    """A 404 from GitLab on a runner: it was deleted (GitLab's stale-runner cleanup, an admin, a sweep)."""
    return isinstance(exc, GitLabNotFoundError) or (isinstance(exc, GitLabError) and exc.status == 404)


def takes_no_job(record: MachineRecord, max_use_count: int, status_of: Callable[[int], str | None]) -> bool:
    """The machine's `run-single` has exited, so its runner sends no job request that the pause could race.

    `run-single --max-builds N` counts a build once it has run (`postBuild`), and after N stops its loop:
    "This runner has processed its build limit, so now exiting" (gitlab-runner `commands/single.go`,
    `checkFinishedConditions`). We count a job when it starts on the machine, which matches, except for a
    job canceled before the runner's first update: `processBuild` returns on `UpdateAbort` or
    `CancelRequested` without `postBuild`, so run-single asks for one more job. Hence: the machine has started
    `max_use_count` jobs, runs none, and each of them is known to have ended other than `canceled`
    (`status_of(job id)`: its stored status, None when not known). Anything less is not proof: it waits.
    Not covered: a build run-single failed to set up (`NewBuild` / `ProcessJob` errors, which GitLab later
    fails as stuck) is not counted by run-single either; nothing in a job's status tells it apart.
    """
    # Jobs started on the current root volume: a reused Mac's earlier jobs (`reused_jobs`) ran under another
    # runner, and its new one polls until it has run max_use_count of its own.
    if max_use_count <= 0 or record.running or record.jobs_started < max_use_count:
        return False
    for job_id in record.job_ids:
        status = status_of(job_id)
        if status is None or status not in TERMINAL or status == "canceled":
            return False
    return True


def drain_machine(
    instance_id: str,
    reason: str,
    now: datetime,
    *,
    store: Store,
    fleet: Fleet,
    runners: DrainRunners | None,
    window: timedelta = timedelta(0),
    recheck: bool = True,
    find_runner: Callable[[MachineRecord], int | None] | None = None,
    before_write: Callable[[], None] | None = None,
    exempt: Callable[[MachineRecord], bool] | None = None,
    end: Callable[[MachineRecord, int | None], DrainState] | None = None,
) -> DrainOutcome:
    """One step of the drain of `instance_id`; call again on later reconciles while it is WAITING.

    `window` is how long after the pause GitLab may still hand the runner a job it was assigning: GitLab's
    `/jobs/request` (gitlabhq `lib/api/ci/runner.rb`, `app/services/ci/register_job_service.rb`) checks the
    runner is active once and then assigns, so a request already inside Rails at the pause can still get a
    job (a request Workhorse holds in its long poll gets a 204 when the pause ticks the runner's queue; the
    bound is chalicelib.config.DRAIN_WINDOW). `exempt(record)` says
    the machine can take no job (`takes_no_job`): it is re-checked at once, in the reconcile that paused it.
    `recheck=False` is the simulator's test-only switch that skips the GitLab side. `find_runner` looks up a
    runner the record lacks. `before_write` runs before the AWS write and may raise to stop it (the lease's
    deadline). `end`, when given, ends the drained machine instead of the termination (a used Mac's reuse)
    and says how.
    Raises GitLabError / AwsCallError other than a 404: the drain is left as it is for the next reconcile.
    """
    record = store.start_draining(instance_id, reason, now)
    if record is None:
        return DrainOutcome(DrainState.BUSY)
    runner_id = record.runner_id
    if recheck and runners is not None and runner_id is None and find_runner is not None:
        runner_id = find_runner(record)  # its launch event was late or lost: ask GitLab
    if recheck and runners is not None and runner_id is not None:
        try:
            verdict = _check_runner(record, runner_id, now, store, runners, window, exempt)
        except GitLabError as exc:
            if not runner_gone(exc):
                raise
            logger.warning(
                "runner gone from GitLab: its machine is removed",
                extra={"instance_id": instance_id, "runner_id": runner_id},
            )
            return _terminate(record, runner_id, fleet, before_write, gone=True)
        if verdict is not None:
            return DrainOutcome(verdict, runner_id)
    if end is not None:
        if before_write is not None:
            before_write()
        return DrainOutcome(end(record, runner_id), runner_id)
    return _terminate(record, runner_id, fleet, before_write, gone=False)


def _check_runner(
    record: MachineRecord,
    runner_id: int,
    now: datetime,
    store: Store,
    runners: DrainRunners,
    window: timedelta,
    exempt: Callable[[MachineRecord], bool] | None,
) -> DrainState | None:
    """Pause (once), wait out the window (unless `exempt`), then re-check; None when the machine may go.

    The pause stays even for an exempt machine: it costs one call and closes the door on any doubt."""
    paused_at = record.paused_at
    if paused_at is None:
        runners.pause_runner(runner_id, True)
        store.mark_paused(record.instance_id, now)
        paused_at = now
    if now - paused_at < window and not (exempt is not None and exempt(record)):
        return DrainState.WAITING
    if runners.runner_jobs(runner_id, "running"):
        runners.pause_runner(runner_id, False)
        store.stop_draining(record.instance_id)
        logger.info(
            "removal dropped: a job landed during the drain",
            extra={"instance_id": record.instance_id, "runner_id": runner_id},
        )
        return DrainState.CANCELLED
    return None


def _terminate(
    record: MachineRecord,
    runner_id: int | None,
    fleet: Fleet,
    before_write: Callable[[], None] | None,
    *,
    gone: bool,
) -> DrainOutcome:
    if before_write is not None:
        before_write()
    state = DrainState.TERMINATED if fleet.terminate(record.instance_id) else DrainState.ALREADY_GONE
    logger.info(
        "machine drained and terminated" if state is DrainState.TERMINATED else "machine already leaving",
        extra={"instance_id": record.instance_id, "reason": record.drain_reason},
    )
    return DrainOutcome(state, runner_id, runner_gone=gone)
