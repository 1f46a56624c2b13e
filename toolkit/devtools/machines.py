"""Simulated machines for the demo: each live instance of a pool's (moto) Auto Scaling group acts as a runner.

A machine boots for its platform's boot time, gets its runner (from its own secret, written by the lifecycle
handler, or by registering one as `runner-scaler/<pool>/<instance-id>` when the app has no lifecycle handler),
asks the fake GitLab for jobs of its tags, runs each for its duration, reports success, and stops asking once
it has started `max_use_count` jobs (gitlab-runner `run-single --max-builds`). A job request takes two steps,
as on GitLab: the `active?` check, then the assignment ASSIGN_SECONDS later (at the next platform step at the
earliest), which a pause in between does not stop; so the scaler's drain meets GitLab's assignment window. A
machine that disappears while running a job is a busy machine killed: the invariant the scaler must never
break.
May import chalicelib (config, resources, jobs naming, devtools); not imported by the Lambda path.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from chalicelib.aws import AwsClients
from chalicelib.config import Config, Platform, Pool
from chalicelib.errors import AwsCallError
from chalicelib.fleet import LIVE_STATES
from chalicelib.jobs import runner_description
from chalicelib.resources import Names
from toolkit.devtools.fake_gitlab import FakeGitLab, FakeJob, JobRequest

logger = logging.getLogger(__name__)

#: Boot to ready, seconds, by platform: Linux ~1 min, Windows ~5 min, macOS 6-20 min (github-aws-runners'
#: terraform-aws-github-runner docs, "macOS Runners").
BOOT_SECONDS: Mapping[Platform, float] = {
    Platform.LINUX: 60.0,
    Platform.WINDOWS: 300.0,
    Platform.MACOS: 720.0,
}


#: Seconds from a job request's `active?` check to its assignment: `POST /jobs/request` checks the runner
#: once (gitlabhq `lib/api/ci/runner.rb`), then `Ci::RegisterJobService` walks the queue and assigns without
#: checking again (`app/services/ci/register_job_service.rb`): the request's time in Rails, about a second.
#: The demo's time moves in steps (toolkit.devtools.demo_clock), so an assignment lands at the first step
#: this long after its check: one step later (4 s at the default speed).
ASSIGN_SECONDS = 1.0


class MachineState(StrEnum):
    BOOTING = "booting"  # instance live, runner not up yet
    IDLE = "idle"  # runner polling, no job
    BUSY = "busy"  # at least one job running
    USED_UP = "used_up"  # started max_use_count jobs: gitlab-runner has exited, the machine waits for its end
    GONE = "gone"  # the instance left the group


class Lifecycle(Protocol):
    """What the platform does when an instance enters or leaves a group (EventBridge lifecycle actions)."""

    def launched(self, pool: Pool, instance_id: str, now: datetime) -> None: ...

    def terminated(self, pool: Pool, instance_id: str, now: datetime) -> None: ...


@dataclass
class SimMachine:
    instance_id: str
    pool: str
    appeared_at: datetime
    ready_at: datetime
    runner_id: int | None = None
    self_registered: bool = False
    jobs_started: int = 0
    jobs_done: int = 0
    running: dict[int, datetime] = field(default_factory=dict)  # job id -> when it ends
    gone_at: datetime | None = None
    reclaimed: bool = False  # EC2 took it back (a Spot interruption), not the scaler
    #: Its job request in flight (passed `active?`, not assigned yet), and when GitLab assigns it.
    request: JobRequest | None = None
    request_due: datetime | None = None

    def state(self, now: datetime, max_use_count: int) -> MachineState:
        if self.gone_at is not None:
            return MachineState.GONE
        if self.running:
            return MachineState.BUSY
        if self.runner_id is None:
            return MachineState.BOOTING
        if max_use_count and self.jobs_started >= max_use_count:
            return MachineState.USED_UP
        return MachineState.IDLE


@dataclass(frozen=True)
class BusyKill:
    """An instance that left its group while a job ran on it."""

    instance_id: str
    pool: str
    job_ids: tuple[int, ...]
    at: datetime


@dataclass(frozen=True)
class Interruption:
    """A Spot instance EC2 reclaimed, and the jobs it was running then (GitLab fails them)."""

    instance_id: str
    pool: str
    job_ids: tuple[int, ...]
    at: datetime


@dataclass
class PoolView:
    """One pool right now, as the machines see it."""

    desired: int = 0
    in_service: int = 0
    live: int = 0
    states: Counter[str] = field(default_factory=Counter)


class SimulatedMachines:
    """Drives every live instance of every pool; call `step(now)` from the platform loop (one thread)."""

    def __init__(
        self,
        config: Config,
        names: Names,
        aws: AwsClients,
        gitlab: FakeGitLab,
        *,
        duration_of: Callable[[FakeJob], float],
        assign_seconds: float = ASSIGN_SECONDS,
        lifecycle: Lifecycle | None = None,
        runner_from_secret: bool = False,
        boot_seconds: Mapping[Platform, float] = BOOT_SECONDS,
        stamp_launch: Callable[[str, datetime], None] | None = None,
    ) -> None:
        self._config = config
        self._names = names
        self._aws = aws
        self._gitlab = gitlab
        self._duration_of = duration_of
        self._assign = timedelta(seconds=assign_seconds)
        self._lifecycle = lifecycle
        self._runner_from_secret = runner_from_secret
        self._boot = boot_seconds
        self._stamp_launch = stamp_launch
        self.machines: dict[str, SimMachine] = {}
        self.busy_kills: list[BusyKill] = []
        self.interruptions: list[Interruption] = []
        self.pools: dict[str, PoolView] = {p.name: PoolView() for p in config.pools}
        self.max_live: Counter[str] = Counter()
        self.over_capacity: list[str] = []

    def step(self, now: datetime) -> None:
        """Observe the groups, then move every machine: boot, start, finish and take jobs."""
        groups = self._read_groups()
        for pool in self._config.pools:
            group = groups.get(pool.asg, {})
            live = self._observe(pool, group, now)
            for machine in live:
                self._advance(pool, machine, now)
            self._summarise(pool, group, live, now)

    def live(self, pool: str | None = None) -> list[SimMachine]:
        return [m for m in self.machines.values() if m.gone_at is None and (pool is None or m.pool == pool)]

    # -- observing the groups ---------------------------------------------------------------------

    def _read_groups(self) -> dict[str, dict[str, object]]:
        found = self._aws.paginate(
            "autoscaling",
            "describe_auto_scaling_groups",
            "AutoScalingGroups",
            AutoScalingGroupNames=[p.asg for p in self._config.pools],
        )
        return {str(g["AutoScalingGroupName"]): g for g in found}

    def _observe(self, pool: Pool, group: Mapping[str, object], now: datetime) -> list[SimMachine]:
        """Machines for new instances, the end of machines whose instance left; the pool's live machines."""
        instances = group.get("Instances", [])
        assert isinstance(instances, list)
        live_ids = [str(i["InstanceId"]) for i in instances if i.get("LifecycleState") in LIVE_STATES]
        for instance_id in live_ids:
            if instance_id not in self.machines:
                self._appear(pool, instance_id, now)
        for machine in self.live(pool.name):
            if machine.instance_id not in live_ids:
                self._disappear(pool, machine, now)
        return [self.machines[i] for i in live_ids]

    def _appear(self, pool: Pool, instance_id: str, now: datetime) -> None:
        boot = timedelta(seconds=self._boot.get(pool.platform, 60.0))
        self.machines[instance_id] = SimMachine(instance_id, pool.name, now, now + boot)
        if self._stamp_launch is not None:
            self._stamp_launch(instance_id, now)  # before anyone reads it: the lifecycle handler is next
        if self._lifecycle is not None:
            self._lifecycle.launched(pool, instance_id, now)

    def reclaim(self, instance_id: str) -> None:
        """EC2 is about to take this instance back (Spot): its end is not the scaler's doing."""
        machine = self.machines.get(instance_id)
        if machine is not None:
            machine.reclaimed = True

    def _disappear(self, pool: Pool, machine: SimMachine, now: datetime) -> None:
        """The terminate hook runs while the instance is still there (Terminating:Wait); then it is gone,
        and GitLab fails what it was running (runner_system_failure)."""
        machine.gone_at = now
        running = tuple(machine.running)
        if self._lifecycle is not None:
            self._lifecycle.terminated(pool, machine.instance_id, now)
        if running and machine.reclaimed:
            self.interruptions.append(Interruption(machine.instance_id, pool.name, running, now))
        elif running:
            self.busy_kills.append(BusyKill(machine.instance_id, pool.name, running, now))
            logger.error("busy machine killed", extra={"instance_id": machine.instance_id, "jobs": running})
        for job_id in running:
            self._end_job(machine, job_id, "failed")
        if machine.self_registered and machine.runner_id is not None:
            # No lifecycle handler to delete it: the machine unregisters on its way out.
            self._gitlab.runners.pop(machine.runner_id, None)

    # -- moving one machine -----------------------------------------------------------------------

    def _advance(self, pool: Pool, machine: SimMachine, now: datetime) -> None:
        if machine.runner_id is None:
            if now < machine.ready_at:
                return
            machine.runner_id = self._runner(pool, machine)
            if machine.runner_id is None:
                return
        for job_id, ends_at in list(machine.running.items()):
            if ends_at <= now:
                self._end_job(machine, job_id, "success")
        if machine.request is not None:
            if machine.request_due is not None and now < machine.request_due:
                return  # GitLab is still assigning (one request at a time, as run-single's loop)
            taken = self._gitlab.complete_job_request(machine.request)
            machine.request = machine.request_due = None
            if taken is not None:
                machine.running[taken] = now + timedelta(seconds=self._duration_of(self._gitlab.jobs[taken]))
                machine.jobs_started += 1
        if self._may_take(pool, machine):
            machine.request = self._begin_request(machine)
            machine.request_due = now + self._assign if machine.request is not None else None

    def _may_take(self, pool: Pool, machine: SimMachine) -> bool:
        if len(machine.running) >= pool.capacity_per_instance:
            return False
        return not pool.max_use_count or machine.jobs_started < pool.max_use_count

    def _begin_request(self, machine: SimMachine) -> JobRequest | None:
        """The first half of a job request: GitLab's `active?` check (None: paused, or its runner is gone)."""
        assert machine.runner_id is not None
        if machine.runner_id not in self._gitlab.runners:
            return None  # its runner was deleted (the machine is on its way out)
        return self._gitlab.begin_job_request(machine.runner_id)

    def _end_job(self, machine: SimMachine, job_id: int, status: str) -> None:
        machine.running.pop(job_id, None)
        machine.jobs_done += 1
        if self._gitlab.jobs[job_id].status != "running":
            return  # canceled in GitLab meanwhile
        try:
            self._gitlab.finish_job(job_id, status, failure_reason="runner_system_failure")
        except ValueError as exc:
            logger.debug("job already finished", extra={"job_id": job_id, "error": str(exc)})

    def _runner(self, pool: Pool, machine: SimMachine) -> int | None:
        """The machine's runner: read from its own secret (lifecycle handler), or registered by itself."""
        if self._runner_from_secret:
            return self._runner_from_own_secret(machine)
        runner_id, _token = self._gitlab.register_runner(
            description=runner_description(pool.name, machine.instance_id),
            tag_list=pool.tags,
            run_untagged=pool.run_untagged,
            locked=pool.locked,
        )
        machine.self_registered = True
        return runner_id

    def _runner_from_own_secret(self, machine: SimMachine) -> int | None:
        """What the machine's user data does: read `<prefix>/machines/<instance-id>`; not there yet: wait."""
        name = self._names.machine_secret(machine.instance_id)
        try:
            value = self._aws.call("secretsmanager", "get_secret_value", SecretId=name)["SecretString"]
        except AwsCallError as exc:
            if exc.code != "ResourceNotFoundException":
                logger.warning("machine cannot read its secret", extra={"instance_id": machine.instance_id})
            return None
        runner_id = int(json.loads(value)["runner_id"])
        return runner_id if runner_id in self._gitlab.runners else None

    def _summarise(
        self, pool: Pool, group: Mapping[str, object], live: list[SimMachine], now: datetime
    ) -> None:
        instances = group.get("Instances", [])
        assert isinstance(instances, list)
        view = PoolView(
            desired=int(str(group.get("DesiredCapacity", 0))),
            in_service=sum(1 for i in instances if i.get("LifecycleState") == "InService"),
            live=len(live),
            states=Counter(m.state(now, pool.max_use_count).value for m in live),
        )
        self.pools[pool.name] = view
        self.max_live[pool.name] = max(self.max_live[pool.name], len(live))
        if len(live) > pool.max_instances:
            self.over_capacity.append(
                f"{pool.name}: {len(live)} machines > max_instances {pool.max_instances}"
            )
