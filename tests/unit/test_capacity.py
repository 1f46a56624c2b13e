"""The capacity rule, table by table, and its invariants under hypothesis."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.capacity import Demand, MachineState, RemovalReason, idle_target, plan_pool, pool_for_tags
from chalicelib.config import Policy
from tests.builders import T0, machine, pool


class TestIdleTarget:
    @pytest.mark.parametrize(
        ("idle_count", "factor", "limit", "in_use", "expected"),
        [
            (0, 0.0, 0, 10, 0),
            (2, 0.0, 0, 10, 2),
            (0, 0.5, 0, 10, 5),  # limit 0 = no limit
            (0, 0.5, 3, 10, 3),
            (4, 0.5, 3, 10, 4),  # idle_count is the floor
            (0, 0.1, 0, 1, 1),  # ceil
        ],
    )
    def test_taskscaler_formula(
        self, idle_count: int, factor: float, limit: int, in_use: int, expected: int
    ) -> None:
        policy = Policy(idle_count=idle_count, scale_factor=factor, scale_factor_limit=limit)
        assert idle_target(policy, in_use) == expected


class TestScaleUp:
    def test_pending_jobs_launch_one_machine_each(self) -> None:
        plan = plan_pool(pool(), Demand(pending=3), [], T0)
        assert (plan.launch, plan.desired) == (3, 3)
        assert "3 pending" in plan.summary()

    def test_booting_machines_count_as_coming_capacity(self) -> None:
        machines = [machine("i-1", "booting", age=timedelta(minutes=1))]
        plan = plan_pool(pool(), Demand(pending=3), machines, T0)
        assert (plan.launch, plan.desired) == (2, 3)

    def test_capacity_per_instance_packs_jobs(self) -> None:
        plan = plan_pool(pool(capacity_per_instance=4, max_use_count=0), Demand(pending=9), [], T0)
        assert plan.launch == 3

    def test_max_use_count_below_capacity_limits_each_machine(self) -> None:
        plan = plan_pool(pool(capacity_per_instance=4, max_use_count=2), Demand(pending=8), [], T0)
        assert plan.launch == 4

    def test_idle_count_keeps_warm_machines(self) -> None:
        p = pool(policy=[{"idle_count": 2}])
        assert plan_pool(p, Demand(), [], T0).launch == 2

    def test_warm_slots_meet_the_idle_target_idle_count_included_never_pending_jobs(self) -> None:
        # GIVEN idle_count 1 and a scale factor that asks 4 idle slots for 8 jobs in use
        p = pool(max_instances=50, policy=[{"idle_count": 1, "scale_factor": 0.5, "scale_factor_limit": 4}])
        busy = [machine(f"i-{n}", "busy", running_jobs=1, jobs_started=1) for n in range(8)]
        # WHEN the warm pool holds nothing THEN the 4 idle slots launch
        assert plan_pool(p, Demand(running=8), busy, T0).launch == 4
        # WHEN it holds 3 (they start in seconds) THEN one idle slot runs in the group, the other 3 wait warm
        partly = plan_pool(p, Demand(running=8, warm=3), busy, T0)
        assert partly.launch == 1 and "3 warm" in partly.summary()
        # WHEN it holds 10 THEN no runner waits idle in the group, idle_count's included (issue #22: a warm
        # machine is a slot that arrives after its warm-start time)
        assert plan_pool(p, Demand(running=8, warm=10), busy, T0).launch == 0
        # AND pending jobs still launch one machine each (a launch takes a warm machine first)
        assert plan_pool(p, Demand(pending=3, running=8, warm=10), busy, T0).launch == 3

    def test_without_a_warm_pool_idle_count_runs_idle_in_the_group(self) -> None:
        # GIVEN idle_count 2 and no warm pool THEN 2 idle machines launch, as in gitlab-runner
        p = pool(policy=[{"idle_count": 2}])
        assert plan_pool(p, Demand(warm=0), [], T0).launch == 2
        # AND one warm slot leaves one of them to the warm pool
        assert plan_pool(p, Demand(warm=1), [], T0).launch == 1

    def test_capped_by_max_instances(self) -> None:
        plan = plan_pool(pool(max_instances=4), Demand(pending=10), [machine("i-1", "busy")], T0)
        assert (plan.launch, plan.desired) == (3, 4)
        assert plan.capped_by == ("max_instances 4",)

    def test_capped_by_growth_rate_counting_booting(self) -> None:
        machines = [machine("i-1", "booting", age=timedelta(minutes=1))]
        plan = plan_pool(pool(max_growth_rate=3), Demand(pending=10), machines, T0)
        assert plan.launch == 2

    def test_capped_by_host_room(self) -> None:
        assert plan_pool(pool(), Demand(pending=5), [], T0, launchable=1).launch == 1

    def test_partly_used_machine_offers_only_its_remaining_uses(self) -> None:
        p = pool(capacity_per_instance=2, max_use_count=3)
        busy = machine("i-1", "busy", jobs_started=2, running_jobs=1)  # one use left, one slot free
        assert plan_pool(p, Demand(pending=2), [busy], T0).launch == 1


class TestScaleIn:
    def test_used_up_machine_goes_at_once(self) -> None:
        done = machine("i-1", "idle", jobs_started=1, idle_for=timedelta(seconds=5))
        plan = plan_pool(pool(), Demand(), [done], T0)
        assert [r.reason for r in plan.removals] == [RemovalReason.USED_UP]
        assert plan.desired == 0

    def test_idle_machine_goes_after_idle_time_only(self) -> None:
        p = pool(max_use_count=0)
        young = machine("i-1", "idle", idle_for=timedelta(minutes=9))
        old = machine("i-2", "idle", idle_for=timedelta(minutes=11))
        plan = plan_pool(p, Demand(), [young, old], T0)
        assert [r.instance_id for r in plan.removals] == ["i-2"]

    def test_idle_count_protects_idle_machines(self) -> None:
        p = pool(max_use_count=0, policy=[{"idle_count": 1, "idle_time": "1m"}])
        machines = [machine(f"i-{n}", "idle", idle_for=timedelta(minutes=30 + n)) for n in range(3)]
        plan = plan_pool(p, Demand(), machines, T0)
        # longest idle first: i-2 (32 min) and i-1 (31 min) go, i-0 stays as the idle target
        assert [r.instance_id for r in plan.removals] == ["i-2", "i-1"]
        assert plan.desired == 1

    def test_stuck_booting_machine_is_replaced(self) -> None:
        stuck = machine("i-1", "booting", age=timedelta(minutes=20))
        plan = plan_pool(pool(boot_timeout="15m"), Demand(pending=1), [stuck], T0)
        assert [r.reason for r in plan.removals] == [RemovalReason.STUCK]
        assert (plan.launch, plan.desired) == (1, 1)

    def test_busy_machine_is_never_removed_even_above_max(self) -> None:
        machines = [machine(f"i-{n}", "busy", jobs_started=1, idle_for=timedelta(hours=5)) for n in range(5)]
        plan = plan_pool(pool(max_instances=2), Demand(running=5), machines, T0)
        assert plan.removals == () and plan.launch == 0 and plan.desired == 5

    def test_draining_machine_counts_but_offers_nothing(self) -> None:
        draining = machine("i-1", "draining")
        plan = plan_pool(pool(), Demand(pending=1), [draining], T0)
        assert (plan.launch, plan.desired, plan.removals) == (1, 2, ())


class TestRouting:
    def test_job_tags_must_be_a_subset_of_the_pool_tags(self) -> None:
        pools = [
            pool(name="linux", tags=["linux", "docker"], run_untagged=False),
            pool(name="gpu", asg="g", tags=["gpu"]),
        ]
        assert pool_for_tags(["docker"], pools).name == "linux"  # type: ignore[union-attr]
        assert pool_for_tags(["gpu"], pools).name == "gpu"  # type: ignore[union-attr]
        assert pool_for_tags(["linux", "gpu"], pools) is None
        assert pool_for_tags([], pools).name == "gpu"  # type: ignore[union-attr]  # first with run_untagged


# ---------------------------------------------------------------- properties

states = st.sampled_from(list(MachineState))


@st.composite
def fleets(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    count = draw(st.integers(0, 12))
    out = []
    for n in range(count):
        state = draw(states)
        running = draw(st.integers(1, 2)) if state is MachineState.BUSY else draw(st.integers(0, 1))
        out.append(
            machine(
                f"i-{n}",
                state,
                age=timedelta(minutes=draw(st.integers(0, 120))),
                idle_for=draw(st.none() | st.builds(timedelta, minutes=st.integers(0, 120))),
                jobs_started=draw(st.integers(0, 3)),
                running_jobs=running,
            )
        )
    return out


pools_st = st.builds(
    lambda cap, uses, maxi, growth, idle, factor: pool(
        capacity_per_instance=cap,
        max_use_count=uses,
        max_instances=maxi,
        max_growth_rate=growth,
        policy=[{"idle_count": idle, "scale_factor": factor, "idle_time": "5m"}],
    ),
    st.integers(1, 3),
    st.integers(0, 3),
    st.integers(1, 15),
    st.integers(0, 4),
    st.integers(0, 5),
    st.floats(0, 1),
)
demands = st.builds(
    Demand,
    pending=st.integers(0, 30),
    running=st.integers(0, 30),
    prewarm=st.integers(0, 3),
    warm=st.integers(0, 10),
)


@settings(max_examples=500)
@given(pools_st, demands, fleets())
def test_never_launches_above_max_instances(p, demand, machines) -> None:  # type: ignore[no-untyped-def]
    plan = plan_pool(p, demand, machines, T0)
    kept = len(machines) - len(plan.removals)
    assert plan.launch == 0 or kept + plan.launch <= p.max_instances


@settings(max_examples=500)
@given(pools_st, demands, fleets())
def test_never_removes_a_machine_with_a_job(p, demand, machines) -> None:  # type: ignore[no-untyped-def]
    plan = plan_pool(p, demand, machines, T0)
    busy = {m.instance_id for m in machines if m.has_job or m.state is MachineState.DRAINING}
    assert not busy & {r.instance_id for r in plan.removals}
    assert plan.desired == len(machines) - len(plan.removals) + plan.launch


@settings(max_examples=500)
@given(pools_st, demands, fleets(), st.integers(1, 20))
def test_desired_is_monotone_in_pending_jobs(p, demand, machines, more) -> None:  # type: ignore[no-untyped-def]
    low = plan_pool(p, demand, machines, T0)
    high = plan_pool(p, replace(demand, pending=demand.pending + more), machines, T0)
    assert high.desired >= low.desired


@settings(max_examples=300)
@given(pools_st, demands, fleets(), st.integers(0, 20))
def test_more_warm_slots_never_launch_more_and_never_drop_pending(  # type: ignore[no-untyped-def]
    p, demand, machines, more
) -> None:
    cold = plan_pool(p, replace(demand, warm=0), machines, T0)
    warm = plan_pool(p, replace(demand, warm=demand.warm + more), machines, T0)
    base = plan_pool(p, demand, machines, T0)
    assert warm.desired <= base.desired <= cold.desired
    # What the warm pool may replace is only the idle target: the group still asks for every pending job
    # and every prewarm slot (within max_instances and growth), as a pool whose policy keeps no idle slot.
    floor = replace(demand, warm=10**6)
    policy = p.active_policy(T0)
    no_idle = policy.model_copy(update={"idle_count": 0, "scale_factor": 0.0})
    unwarmed = plan_pool(p.model_copy(update={"policy": (no_idle,)}), replace(demand, warm=0), machines, T0)
    assert plan_pool(p, floor, machines, T0).desired >= unwarmed.desired
