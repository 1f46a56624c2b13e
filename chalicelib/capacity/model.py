"""Value types of the capacity engine: machines as the scaler sees them, demand, and the plan.

Frozen dataclasses only; imports the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class MachineState(StrEnum):
    """Where a machine is in its life, as recorded by the scaler (not the ASG's lifecycle state)."""

    BOOTING = "booting"  # launched, runner not yet seen by GitLab
    IDLE = "idle"  # ready, no job
    BUSY = "busy"  # at least one running job
    DRAINING = "draining"  # chosen for removal or interrupted: its runner is paused


@dataclass(frozen=True)
class Machine:
    """One instance of a pool. `running_jobs` and `jobs_started` are in job slots."""

    instance_id: str
    state: MachineState
    launched_at: datetime
    jobs_started: int = 0
    running_jobs: int = 0
    ready_at: datetime | None = None
    last_busy_at: datetime | None = None
    host_id: str | None = None

    @property
    def has_job(self) -> bool:
        """A machine with a job is never removed: busy by state or by count (either may lag the other)."""
        return self.running_jobs > 0 or self.state is MachineState.BUSY

    def idle_since(self) -> datetime:
        """When this machine last had nothing to do: its last job's end, else when it became ready."""
        return self.last_busy_at or self.ready_at or self.launched_at


@dataclass(frozen=True)
class Demand:
    """What the pool's jobs ask for, in job slots."""

    pending: int = 0
    running: int = 0
    prewarm: int = 0
    #: Slots waiting in the group's warm pool. They arrive after the warm-start time, not now: they count
    #: toward the idle target, as a booting machine's slots do, never toward pending jobs (a pending job
    #: takes one by a launch).
    warm: int = 0
    #: Slots of dedicated hosts the pool keeps anyway (already paid for) that should each hold a machine,
    #: booted and waiting (chalicelib.capacity.hosts.plan_standby): the idle target is at least these slots
    #: less those in use. Never a reason to allocate a host: only hosts already there count.
    standby: int = 0

    @property
    def in_use(self) -> int:
        return self.pending + self.running


class RemovalReason(StrEnum):
    USED_UP = "used_up"  # max_use_count reached and no job left
    IDLE = "idle"  # idle longer than idle_time and not needed by the idle target
    STUCK = "stuck"  # still booting after boot_timeout


@dataclass(frozen=True)
class Removal:
    instance_id: str
    reason: RemovalReason
    detail: str


@dataclass(frozen=True)
class PoolPlan:
    """The engine's decision for one pool at one instant; `reasons` explain it for logs and the demo."""

    pool: str
    now: datetime
    current: int  # machines in the group now (all states)
    launch: int  # machines to add
    removals: tuple[Removal, ...]
    desired: int  # desired capacity once removals and launches are applied
    in_use: int
    idle_target: int
    free_slots: int
    need_slots: int
    capped_by: tuple[str, ...] = ()
    reasons: tuple[str, ...] = field(default=())

    @property
    def changes(self) -> bool:
        return self.launch > 0 or bool(self.removals)

    def summary(self) -> str:
        """One line for logs: what changes and why."""
        if not self.reasons:
            return f"{self.pool}: steady at {self.current} machines"
        return f"{self.pool}: " + "; ".join(self.reasons)
