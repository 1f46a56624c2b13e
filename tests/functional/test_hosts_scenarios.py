"""Host pools over simulated time: the engine, the host planner and a HostPort, together on a fake clock.

Each scenario runs against `Ec2Hosts` on moto (with `MotoHostWorld` playing AWS's host lifecycle) and against
`MemoryHosts`, one tick every five minutes, exactly as the reconciler will call them: engine without host room
-> host planner -> engine bounded by `launchable` -> terminate, launch, apply the host plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from chalicelib.capacity import Demand, Machine, MachineState, plan_pool
from chalicelib.capacity.hosts import Host, HostPlan, plan_hosts
from chalicelib.config import Pool
from chalicelib.hosts import apply_host_plan, hosts_config
from tests.builders import T0
from tests.functional.test_hosts_contract import (  # noqa: F401  (moto_hosts is a fixture)
    MAC,
    WINDOWS,
    HostsEnv,
    memory_env,
    moto_env,
    moto_hosts,
)

STEP = timedelta(minutes=5)
DAY = timedelta(hours=24)


@pytest.fixture(params=["memory", "moto"])
def env(request: pytest.FixtureRequest) -> Iterator[HostsEnv]:
    if request.param == "memory":
        yield memory_env()
        return
    request.getfixturevalue("moto_hosts")
    yield moto_env()


@dataclass
class Job:
    name: str
    arrives: datetime
    runs_for: timedelta
    machine: str | None = None
    started: datetime | None = None

    def finished(self, now: datetime) -> bool:
        return self.started is not None and now >= self.started + self.runs_for


@dataclass
class SimMachine:
    instance_id: str
    launched_at: datetime
    job: Job | None = None
    jobs_started: int = 0
    last_busy_at: datetime | None = None


@dataclass
class Tick:
    now: datetime
    hosts: tuple[Host, ...]
    plan: HostPlan
    pending: int
    launched: int


@dataclass
class HostPoolRun:
    """One pool's jobs and machines; `tick` is one reconcile of the pool."""

    env: HostsEnv
    pool: Pool
    jobs: list[Job]
    machines: dict[str, SimMachine] = field(default_factory=dict)
    ticks: list[Tick] = field(default_factory=list)
    released: list[tuple[datetime, Host]] = field(default_factory=list)
    allocated: list[tuple[datetime, str]] = field(default_factory=list)
    placed_on: dict[str, str] = field(default_factory=dict)

    def run(self, until: timedelta, step: timedelta = STEP) -> None:
        """Tick every `step` until `until` after T0 (quiet stretches may use a longer step)."""
        while self.env.clock[0] <= T0 + until:
            self.tick()
            self.env.advance(seconds=step.total_seconds())

    def tick(self) -> None:
        now = self.env.clock[0]
        self._finish_jobs(now)
        machines = [self._machine(m) for m in self.machines.values()]
        pending = [j for j in self.jobs if j.arrives <= now and j.machine is None]
        running = sum(1 for j in self.jobs if j.machine is not None and not j.finished(now))
        demand = Demand(pending=len(pending), running=running)

        wanted = plan_pool(self.pool, demand, machines, now).launch
        view = self.env.port.read_pools([self.pool])[self.pool.name]
        host_plan = plan_hosts(self.pool, view.hosts, now, wanted=wanted, unmet_since=view.unmet_since)
        plan = plan_pool(self.pool, demand, machines, now, launchable=host_plan.launchable)

        for removal in plan.removals:
            self.env.world.end(removal.instance_id)
            del self.machines[removal.instance_id]
        for n in range(plan.launch):
            instance_id = f"i-{now:%H%M}-{len(self.placed_on)}-{n}"
            host_id = self.env.world.place(self.pool.name, instance_id, prefer=host_plan.placement)
            assert host_id is not None, f"{now}: a launch was planned that no host could take"
            self.placed_on[instance_id] = host_id
            self.machines[instance_id] = SimMachine(instance_id, now)
        self._start_jobs(now, pending)

        applied = apply_host_plan(self.env.port, self.pool, host_plan, view)
        assert applied.errors == []
        by_id = {h.host_id: h for h in view.hosts}
        self.released += [(now, by_id[h]) for h in applied.released]
        self.allocated += [(now, h) for h in applied.allocated]
        self.ticks.append(Tick(now, view.hosts, host_plan, len(pending), plan.launch))

    def _finish_jobs(self, now: datetime) -> None:
        for machine in self.machines.values():
            if machine.job is not None and machine.job.finished(now):
                assert machine.job.started is not None
                machine.last_busy_at = machine.job.started + machine.job.runs_for
                machine.job = None

    def _start_jobs(self, now: datetime, pending: list[Job]) -> None:
        free = [
            m
            for m in self.machines.values()
            if m.job is None and (self.pool.remaining_uses(m.jobs_started) or 0) > 0
        ]
        for job, machine in zip(pending, free, strict=False):
            job.machine, job.started = machine.instance_id, now
            machine.job, machine.jobs_started = job, machine.jobs_started + 1

    @staticmethod
    def _machine(machine: SimMachine) -> Machine:
        return Machine(
            instance_id=machine.instance_id,
            state=MachineState.BUSY if machine.job else MachineState.IDLE,
            launched_at=machine.launched_at,
            jobs_started=machine.jobs_started,
            running_jobs=1 if machine.job else 0,
            ready_at=machine.launched_at,
            last_busy_at=machine.last_busy_at,
        )

    def live_hosts(self) -> list[int]:
        return [len(t.hosts) for t in self.ticks]

    def assert_hosts_released_only_empty_and_after_their_paid_day(self) -> None:
        for when, host in self.released:
            assert not host.instance_ids, f"{host.host_id} released with machines on it"
            assert when - host.allocated_at >= DAY, f"{host.host_id} released {when - host.allocated_at} in"
            assert when - host.allocated_at < DAY + STEP + hosts_config(self.pool).allocate_after


class TestMacPool:
    def jobs(self) -> list[Job]:
        return [
            Job("a", T0, timedelta(hours=3)),
            Job("b", T0 + timedelta(minutes=30), timedelta(hours=3)),
            Job("c", T0 + timedelta(minutes=60), timedelta(minutes=30)),
            Job("d", T0 + timedelta(minutes=65), timedelta(minutes=30)),  # a 4th job while max_hosts is 3
        ]

    def test_scales_from_zero_to_three_hosts_then_lets_them_go_after_their_paid_day(
        self, env: HostsEnv
    ) -> None:
        run = HostPoolRun(env, MAC, self.jobs())
        run.run(until=timedelta(hours=5))
        run.run(until=timedelta(hours=23), step=timedelta(minutes=30))  # all idle: a quiet stretch
        run.run(until=timedelta(hours=26))

        # GIVEN no host, WHEN demand arrives, THEN hosts come one by one, never at once, never above 3
        hosts = run.live_hosts()
        assert hosts[0] == 0
        growth = hosts[: hosts.index(3) + 1]
        assert growth == sorted(growth) and sorted(set(growth)) == [0, 1, 2, 3]  # one host at a time
        assert max(hosts) == 3
        assert run.allocated[0][0] - T0 >= hosts_config(MAC).allocate_after
        assert len(run.allocated) == 3
        assert all(job.finished(env.clock[0]) for job in run.jobs)

        # THEN the job that came while every host was busy or scrubbing waited for a scrub to end
        waited = [t for t in run.ticks if t.pending and t.plan.metrics.scrubbing and not t.plan.launchable]
        assert waited, "the scenario must exercise demand waiting on scrubbing hosts"
        assert all(t.launched == 0 for t in waited)
        job_d = run.jobs[3]
        assert job_d.started is not None and job_d.started - job_d.arrives >= hosts_config(MAC).scrub_time

        # THEN idle hosts go only at the end of their paid 24 h, and all of them go
        assert run.released, "idle hosts must be released after their minimum allocation"
        run.assert_hosts_released_only_empty_and_after_their_paid_day()
        assert len(run.released) == 3
        assert env.hosts(MAC) == []

    def test_idle_hosts_inside_their_paid_day_are_kept_for_new_demand(self, env: HostsEnv) -> None:
        jobs = [Job("a", T0, timedelta(minutes=20)), Job("b", T0 + timedelta(hours=6), timedelta(minutes=20))]
        run = HostPoolRun(env, MAC, jobs)
        run.run(until=timedelta(hours=7))
        assert len(run.allocated) == 1  # the second job reused the host already paid for
        assert run.released == []
        assert jobs[1].started is not None and jobs[1].started - jobs[1].arrives <= STEP


class TestWindowsPool:
    def test_machines_pack_four_to_a_host_and_reuse_paid_hosts(self, env: HostsEnv) -> None:
        jobs = [Job(f"j{n}", T0, timedelta(hours=1)) for n in range(6)]
        jobs += [Job(f"late{n}", T0 + timedelta(hours=3), timedelta(minutes=30)) for n in range(3)]
        run = HostPoolRun(env, WINDOWS, jobs)
        run.run(until=timedelta(hours=4))
        run.run(until=timedelta(hours=23), step=timedelta(minutes=30))
        run.run(until=timedelta(hours=24, minutes=30))

        assert len(run.allocated) == 2  # ceil(6 / 4): the later jobs used hosts already paid for
        first_wave = [run.placed_on[job.machine] for job in jobs[:6] if job.machine]
        assert sorted(Counter(first_wave).values()) == [2, 4]  # the fuller host is filled first
        late_hosts = {run.placed_on[job.machine] for job in jobs[6:] if job.machine}
        assert len(late_hosts) == 1  # three later machines packed onto one host, the other stays empty
        assert all(job.finished(env.clock[0]) for job in jobs)
        run.assert_hosts_released_only_empty_and_after_their_paid_day()
        assert len(run.released) == 2
