"""Our warm pool in the simulated world: the real reconcile sizes it (PutWarmPool through sim.ours.SimAsg),
and the simulated group honours it with the one warm-pool model the `taskscaler-warm` peer uses (sim.warm).

AWS facts relied on ("Warm pools for Amazon EC2 Auto Scaling"; "Use lifecycle hooks with a warm pool in Auto
Scaling group"): a warm instance boots once (the entry hook's pre-initialization), is stopped and then costs
only its EBS volumes; raising the desired capacity takes warm instances first, and the group launches a
replacement into the pool; the launch hook fires again when an instance leaves the pool, and only then does
our lifecycle create its runner and write its secret; with ReuseOnScaleIn false a machine that ran a job
never goes back. AWS publishes no start-from-stopped latency: sim.warm uses issue #22's figures and
SimOptions.warm_start_scale stretches them.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from chalicelib.config import Config, Platform
from sim.baselines import TaskscalerWarm
from sim.ours import Ours
from sim.warm import (
    READY_AFTER_START_S,
    SECRET_POLL_S,
    WARM_START_S,
    Readiness,
    WarmInstance,
    WarmPool,
    WarmPoolSpec,
    WarmState,
    stopped_usd_per_hour,
    warm_start_time,
)
from sim.world import COST_PARTS, World
from tests.unit.test_sim import EXACT, job, make_config

LINUX_START = WARM_START_S[(Platform.LINUX, WarmState.STOPPED)]
OURS_READY = READY_AFTER_START_S[(Readiness.SECRET, Platform.LINUX)]


def warm_config(**pool: object) -> Config:
    return make_config({"warm_pool": "auto", "instance_types": ["m"]} | pool)


class TestOursHonoursItsWarmPool:
    def test_a_job_after_a_burst_starts_from_the_warm_pool_on_our_readiness_path(self) -> None:
        # GIVEN an auto warm pool and three jobs at once (a burst the reconcile sizes the pool for), then a
        # fourth 10 minutes later, while the first ones still run (the pool is busy: it keeps its size)
        config = warm_config()
        trace = [job(p, 100.0, 0, 1200.0) for p in (1, 2, 3)] + [job(4, 700.0, 0, 60.0)]
        world = World(config, trace, seed=0, options=EXACT)
        ours = Ours()
        result = world.run(ours)
        # THEN the burst's first job took the one stopped machine the pool keeps from the first reconcile
        # (its quiet floor), the other two launched cold, and the fourth job left the warm pool: it waited a
        # start from stopped plus our path (secret, Docker restart, run-single's first poll), not a boot
        machines = {m.instance_id: m for m in world.ledger.machines}
        fourth = world.jobs[3].machine
        assert fourth is not None and fourth.from_warm
        assert LINUX_START[0] + OURS_READY[0] <= fourth.boot_s <= LINUX_START[1] + OURS_READY[1]
        assert world.jobs[3].wait_s < EXACT.boot_s  # type: ignore[operator]
        assert [m.from_warm for m in world.ledger.machines[:3]] == [True, False, False]
        # AND the reconcile sized the pool to the burst (three instances launched into it together, the
        # refill of the first take among them), it was refilled after the take, and once quiet it keeps one
        # stopped machine (QUIET_FLOOR)
        pool = world.fleet.warm_pools["linux"]
        assert pool.spec.readiness is Readiness.SECRET
        assert pool.instances[0].created_at == 0.0
        burst = [i.created_at for i in pool.instances[1:4]]
        assert len(set(burst)) == 1 and burst[0] > 100.0
        taken = [i for i in pool.instances if i.left_at is not None and not i.ended]
        assert [i.instance_id for i in taken] == [world.jobs[0].machine.instance_id, fourth.instance_id]  # type: ignore[union-attr]
        assert any(i.created_at == fourth.launched_at for i in pool.instances)  # the refill
        assert pool.spec.size == 1 and pool.waiting() == 1
        # AND the machine that left got its runner and secret on leaving, while a machine still in the pool
        # has no record at all: no runner, no token on a stopped machine
        record = ours.store.get_machine(fourth.instance_id)
        assert record is not None and record.runner_id is not None and record.prepared_at is not None
        assert record.prepared_at >= world.dt(700.0)
        waiting = [i for i in pool.instances if i.left_at is None]
        assert waiting and all(ours.store.get_machine(i.instance_id) is None for i in waiting)
        # AND a used machine never goes back: no instance still in the pool ever served a job
        assert not {i.instance_id for i in waiting} & set(machines)
        assert result.metrics["busy_killed"] == 0

    def test_idle_count_waits_in_the_warm_pool_not_as_idle_runners(self) -> None:
        """Issue #22's capacity rule through the real reconcile: a warm machine is a slot that arrives after
        its warm-start time, so idle_count is met by the warm pool and no runner waits idle, billed."""
        # GIVEN an auto warm pool on a pool that keeps idle_count 2, and one job an hour in
        config = warm_config(policy=[{"idle_count": 2}])
        world = World(config, [job(1, 3600.0, 0, 60.0)], seed=0, options=EXACT)
        seen: list[tuple[int, int]] = []
        world.loop.at(
            3000.0,
            lambda: seen.append((len(world.fleet.live("linux")), world.fleet.warm_pools["linux"].waiting())),
        )
        world.run(Ours())
        # THEN before the job, the group runs no machine and its warm pool holds the 2 idle slots
        assert seen == [(0, 2)]
        # AND the job started from the warm pool, a warm start after it turned pending, not a boot
        machine = world.jobs[0].machine
        assert machine is not None and machine.from_warm
        assert world.jobs[0].wait_s < EXACT.boot_s  # type: ignore[operator]

    def test_the_bill_has_each_refill_boot_at_the_instance_price_and_stopped_time_at_ebs(self) -> None:
        # GIVEN ours with a fixed warm pool of 2 and one job
        config = warm_config(warm_pool=2)
        world = World(config, [job(1, 600.0, 0, 120.0)], seed=0, options=EXACT)
        result = world.run(Ours())
        # THEN every warm instance booted once (60 s, billed running), then paid its volume while stopped
        (pool,) = world.fleet.warm_history
        assert len(pool.instances) == 3  # the two first, and the refill of the one taken
        end = result.run_end_s
        assert all(i.running_seconds(end) == pytest.approx(60.0) for i in pool.instances)
        (machine,) = world.ledger.machines
        assert machine.from_warm
        in_service = (machine.terminated_at or end) - machine.launched_at
        stopped = sum(i.stopped_seconds(end) for i in pool.instances)
        expected = (in_service + 3 * 60.0) / 3600 * 0.36 + stopped / 3600 * stopped_usd_per_hour(
            Platform.LINUX
        )
        assert result.metrics["cost_usd"] == pytest.approx(expected, abs=0.011)
        # AND the pool's figures say where those dollars went: the warm pool's bill (three 60 s boots and the
        # stopped volumes), the machine's warm start, its job, and nothing idle; together, the cost
        parts = world.cost_parts(end)["linux"]
        hour = 3600 / 0.36  # seconds of the instance price per USD
        assert parts["warm_pool_usd"] == pytest.approx(3 * 60.0 / hour + parts["stopped_usd"])
        assert parts["stopped_usd"] == pytest.approx(stopped / 3600 * stopped_usd_per_hour(Platform.LINUX))
        assert parts["warm_start_usd"] == pytest.approx(
            ((machine.ready_at or 0.0) - machine.launched_at) / hour
        )
        assert parts["busy_usd"] == pytest.approx(120.0 / hour)
        assert parts["boot_usd"] == parts["idle_usd"] == parts["drain_usd"] == 0.0
        figures = result.pools["linux"]
        assert sum(figures[k] for k in COST_PARTS if k != "stopped_usd") == pytest.approx(
            figures["cost_usd"], abs=0.011
        )

    def test_the_cost_parts_of_a_cold_fleet_are_boots_jobs_and_idle_time(self) -> None:
        # GIVEN no warm pool, a pool that keeps one machine idle, and one job after its boot
        config = make_config({"policy": [{"idle_count": 1, "idle_time": "1h"}]})
        world = World(config, [job(1, 600.0, 0, 120.0)], seed=0, options=EXACT)
        result = world.run(Ours())
        # THEN boots, the job and the idle waits account for the whole bill, and no warm pool is paid
        figures = result.pools["linux"]
        assert figures["boot_usd"] > 0 and figures["idle_usd"] > 0 and figures["busy_usd"] > 0
        assert figures["warm_pool_usd"] == figures["stopped_usd"] == figures["warm_start_usd"] == 0.0
        assert sum(figures[k] for k in COST_PARTS if k != "stopped_usd") == pytest.approx(
            figures["cost_usd"], abs=0.011
        )

    def test_off_means_no_warm_pool_and_every_launch_boots_cold(self) -> None:
        world = World(make_config(), [job(1, 600.0, 0, 60.0)], seed=0, options=EXACT)
        world.run(Ours())
        assert world.fleet.warm_history == [] and not world.ledger.machines[0].from_warm


class TestWarmStart:
    def test_our_path_is_longer_than_taskscalers_and_hibernation_adds_a_poll(self) -> None:
        rng = random.Random(1)
        ssh = [warm_start_time(Platform.LINUX, WarmState.STOPPED, Readiness.SSH, rng) for _ in range(200)]
        ours = [warm_start_time(Platform.LINUX, WarmState.STOPPED, Readiness.SECRET, rng) for _ in range(200)]
        hib = [
            warm_start_time(Platform.LINUX, WarmState.HIBERNATED, Readiness.SECRET, rng) for _ in range(200)
        ]
        assert sum(ours) / 200 > sum(ssh) / 200
        assert max(hib) <= LINUX_START[1] + OURS_READY[1] + SECRET_POLL_S
        assert min(ours) >= LINUX_START[0] + OURS_READY[0]

    def test_the_scale_stretches_the_start_from_stopped_only(self) -> None:
        low = warm_start_time(Platform.WINDOWS, WarmState.STOPPED, Readiness.SECRET, random.Random(5))
        high = warm_start_time(
            Platform.WINDOWS, WarmState.STOPPED, Readiness.SECRET, random.Random(5), scale=2.0
        )
        start = random.Random(5).uniform(*WARM_START_S[(Platform.WINDOWS, WarmState.STOPPED)])
        assert high - low == pytest.approx(start)

    def test_a_slower_start_from_stopped_lengthens_the_warm_wait(self) -> None:
        config = warm_config(warm_pool=1)
        trace = [job(1, 600.0, 0, 60.0)]
        fast = World(config, trace, seed=0, options=EXACT)
        fast.run(Ours())
        slow = World(config, trace, seed=0, options=replace(EXACT, warm_start_scale=2.0))
        slow.run(Ours())
        assert slow.jobs[0].wait_s > fast.jobs[0].wait_s


class TestWarmPoolModel:
    def test_a_shrinking_pool_ends_booting_instances_first_and_they_stop_costing(self) -> None:
        booting = WarmInstance("p", 100.0, 160.0, instance_id="i-b")
        stopped = WarmInstance("p", 0.0, 60.0, instance_id="i-s")
        pool = WarmPool(WarmPoolSpec(1), [stopped, booting])
        assert pool.shrink(120.0) == [booting]
        assert booting.ended and booting.running_seconds(1000.0) == 20.0
        assert pool.waiting() == 1 and pool.take(120.0) is stopped

    def test_the_peer_and_ours_share_the_model_the_peer_on_its_ssh_path(self) -> None:
        world = World(make_config(), [job(1, 600.0, 0, 60.0)], seed=0, options=EXACT)
        world.run(TaskscalerWarm())
        (pool,) = world.fleet.warm_history
        assert pool.spec.readiness is Readiness.SSH and world.ledger.machines[0].from_warm
