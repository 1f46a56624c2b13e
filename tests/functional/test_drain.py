"""The drain protocol at its edges: a runner GitLab no longer has (404) means its machine goes; a machine that
ended itself is never terminated or decremented a second time; the sweep removes a machine whose runner was
deleted outside the scaler, through the same protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients
from chalicelib.errors import GitLabNotFoundError
from chalicelib.fleet import LIVE_STATES, Fleet, GroupView
from chalicelib.reconcile import Reconciler
from chalicelib.store import JobRecord, MachineRecord
from tests.builders import T0
from tests.functional.conftest import Stack
from tests.functional.test_reconcile import FakeRunners, World, make_config
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec


class DeletedRunners(FakeRunners):
    """GitLab after an admin deleted some runners: every call naming one answers 404."""

    def __init__(self, deleted: set[int]) -> None:
        super().__init__()
        self.deleted = deleted

    def pause_runner(self, runner_id: int, paused: bool = True) -> None:
        if runner_id in self.deleted:
            raise GitLabNotFoundError("runners.pause", f"runner {runner_id}", "404 Not found")
        super().pause_runner(runner_id, paused)

    def runner_jobs(self, runner_id: int, status: str = "running") -> Sequence[Any]:
        if runner_id in self.deleted:
            raise GitLabNotFoundError("runners.jobs", f"runner {runner_id}", "404 Not found")
        return super().runner_jobs(runner_id, status)


def idle_machine(world: World) -> str:
    """One machine, adopted, given runner 55, its only job gone: idle, and past idle_time at T0 + 30 min."""
    world.job(1, "pending")
    world.reconciler().reconcile_pool(world.config.pools[0], T0)
    world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=1))
    (machine,) = world.instance_ids()
    record = world.store.get_machine(machine)
    assert record is not None
    world.store.put_machine(replace(record, runner_id=55))
    world.job(1, "canceled")
    return machine


def test_a_404_on_pause_means_the_runner_is_gone_and_its_machine_is_removed(aws: AwsClients) -> None:
    # GIVEN an idle machine past idle_time whose runner an admin deleted in GitLab
    world = World(aws, make_config(max_use_count=0))
    machine = idle_machine(world)
    world.runners = DeletedRunners({55})
    # WHEN the reconcile drains it (pause: 404)
    result = world.reconciler().reconcile_pool(world.config.pools[0], T0 + timedelta(minutes=30))
    # THEN the reconcile carries on and removes the machine: a deleted runner can take no job
    assert result.ok, result.errors
    assert result.terminated == [machine] and world.instance_ids() == []
    assert world.group()["DesiredCapacity"] == 0


def test_a_machine_that_ended_itself_is_neither_terminated_nor_decremented_twice(aws: AwsClients) -> None:
    # GIVEN two machines: one used up (its job finished), one running a job
    world = World(aws, make_config(max_use_count=1))
    pool = world.config.pools[0]
    world.job(1, "pending")
    world.job(2, "pending")
    world.reconciler().reconcile_pool(pool, T0)
    used, busy = world.instance_ids()
    world.job(1, "running", machine_id=used)
    world.job(2, "running", machine_id=busy)
    world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=1))
    world.job(1, "success", machine_id=used)
    # ...as the reconcile reads the group, the used-up machine ends itself, decrementing the group (its user
    # data calls TerminateInstanceInAutoScalingGroup once run-single exits)
    group = world.fleet.read_groups([pool.asg])[pool.asg]
    aws.call(
        "autoscaling",
        "terminate_instance_in_auto_scaling_group",
        InstanceId=used,
        ShouldDecrementDesiredCapacity=True,
    )
    assert world.group()["DesiredCapacity"] == 1
    # WHEN that reconcile, on its now stale view, removes the used-up machine
    result = world.reconciler().reconcile_pool(pool, T0 + timedelta(minutes=2), group=group)
    # THEN it counts the machine as already gone: no error, no second decrement, the busy machine stays
    assert result.ok, result.errors
    assert result.already_gone == [used] and result.terminated == []
    assert world.group()["DesiredCapacity"] == 1 and world.instance_ids() == [busy]


def tick(client: Client) -> None:
    client.lambda_.invoke("tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, []))


def test_a_machine_whose_runner_was_deleted_outside_the_scaler_is_removed_by_the_sweep(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a machine prepared at launch whose runner came up...
    rt = gitlab_stack.runtime
    rt.fleet.set_desired_capacity("test-linux", 1)
    (instance,) = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances]
    runner, _ = fake_gitlab.register_runner(
        description=f"runner-scaler/linux/{instance}", tag_list=("linux",)
    )
    rt.store.put_machine(MachineRecord(instance, "linux", rt.now(), runner_id=runner))
    fake_gitlab.runner_contact(runner)
    # ...and was then deleted in GitLab (an admin, or GitLab's stale-runner cleanup): run-single now loops
    # on 403s forever (gitlab-runner commands/single.go) while the machine counts as capacity
    fake_gitlab.delete_runner(runner)
    with Client(app) as client:
        # WHEN the sweep sees it once, then again orphan_confirm_after later (before idle_time ends it)
        tick(client)
        live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
        assert live == [instance]  # one observation is only a suspicion
        gitlab_stack.advance(minutes=5)
        tick(client)
    # THEN the machine is removed
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert live == []


class StallingFleet:
    """The real fleet behind a reconcile that stalls right after reading its group (a slow GitLab, a long GC
    pause): `stall` runs then. Its writes are recorded."""

    def __init__(self, fleet: Fleet, stall: Callable[[], None]) -> None:
        self._fleet = fleet
        self._stall = stall
        self.writes: list[str] = []

    def read_groups(self, asgs: Sequence[str]) -> dict[str, GroupView]:
        groups = self._fleet.read_groups(asgs)
        self._stall()
        return groups

    def launch_times(self, instance_ids: Sequence[str]) -> dict[str, datetime]:
        return self._fleet.launch_times(instance_ids)

    def set_desired_capacity(self, asg: str, desired: int) -> None:
        self.writes.append(f"set_desired_capacity {desired}")
        self._fleet.set_desired_capacity(asg, desired)

    def protect(self, asg: str, instance_ids: Sequence[str]) -> None:
        self.writes.append("protect")
        self._fleet.protect(asg, instance_ids)

    def terminate(self, instance_id: str, states: frozenset[str] = LIVE_STATES) -> bool:
        self.writes.append(f"terminate {instance_id}")
        return self._fleet.terminate(instance_id, states)

    def complete_lifecycle_action(
        self, asg: str, hook: str, token: str, instance_id: str, result: str
    ) -> None:
        self._fleet.complete_lifecycle_action(asg, hook, token, instance_id, result)

    def set_instance_types(self, group: GroupView, types: Sequence[str]) -> None:
        self._fleet.set_instance_types(group, types)

    def instance_addresses(self, instance_id: str) -> list[str]:
        return self._fleet.instance_addresses(instance_id)


def test_a_reconcile_that_outlives_its_lease_writes_nothing_after_it(aws: AwsClients) -> None:
    # GIVEN three pending jobs, and a reconcile ("slow") that stalls 60 s after reading its group, past its
    # 50 s lease, while a second reconcile ("next") takes the expired lease and applies
    world = World(aws, make_config())
    pool = world.config.pools[0]
    for n in range(3):
        world.job(n, "pending")
    seconds = [0.0]

    def stall() -> None:
        seconds[0] += 60.0
        world.job(0, "canceled")  # meanwhile one job went away...
        done = world.reconciler("next").reconcile_pool(pool, T0 + timedelta(seconds=60))
        assert done.ok and done.desired_after == 2  # ...and the next reconcile launched for the two left

    fleet = StallingFleet(world.fleet, stall)
    slow = Reconciler(
        world.config, world.store, fleet, world.runners, owner="slow", lease_clock=lambda: seconds[0]
    )
    # WHEN the slow reconcile wakes up with its view of three pending jobs and an empty group
    result = slow.reconcile_pool(pool, T0)
    # THEN it stops before its first AWS write: the group keeps the next reconcile's capacity
    assert fleet.writes == []
    assert result.errors and "lease" in result.errors[0]
    assert world.group()["DesiredCapacity"] == 2


def test_with_a_drain_window_a_job_assigned_after_the_pause_cancels_the_removal(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a machine whose runner came up and has sat idle past idle_time, a job waiting in GitLab, and a
    # drain window of 60 s (GitLab's /jobs/request checks `active?` once, then assigns: lib/api/ci/runner.rb,
    # app/services/ci/register_job_service.rb)
    scaler = gitlab_stack.config.scaler.model_copy(update={"drain_window": timedelta(seconds=60)})
    config = gitlab_stack.config.model_copy(update={"scaler": scaler})
    rt = gitlab_stack.runtime
    rt.fleet.set_desired_capacity("test-linux", 1)
    (instance,) = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances]
    runner, _ = fake_gitlab.register_runner(
        description=f"runner-scaler/linux/{instance}", tag_list=("linux",)
    )
    rt.store.put_machine(MachineRecord(instance, "linux", rt.now(), runner_id=runner))
    fake_gitlab.runner_contact(runner)
    pool = config.pool("linux")
    reconciler = Reconciler(config, rt.store, rt.fleet, rt.gitlab, owner="test")
    reconciler.reconcile_pool(pool, rt.now())  # seen in service, contacted: ready, idle from now
    project = fake_gitlab.create_project("group/app")
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    request = fake_gitlab.begin_job_request(runner)  # the runner's request passes the active? check...
    assert request is not None
    # WHEN the reconcile removes the idle machine: it pauses the runner, and waits out the window
    first = reconciler.reconcile_pool(pool, gitlab_stack.advance(minutes=11))
    assert first.terminated == [] and fake_gitlab.runners[runner].paused
    assert fake_gitlab.complete_job_request(request) == job_id  # ...and GitLab assigns the job all the same
    second = reconciler.reconcile_pool(pool, gitlab_stack.advance(seconds=61))
    # THEN the re-check after the window finds the job: the machine stays and its runner takes jobs again
    assert second.terminated == [] and second.drain_cancelled == [instance]
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert live == [instance] and not fake_gitlab.runners[runner].paused


def test_through_the_app_a_job_assigned_after_the_pause_keeps_its_machine_by_default(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN the deployment's default config (no drain_window set), and a machine whose runner came up and
    # has sat idle past idle_time (10 min)
    rt = gitlab_stack.runtime
    assert "drain_window" not in rt.config.scaler.model_fields_set
    rt.fleet.set_desired_capacity("test-linux", 1)
    (instance,) = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances]
    runner, _ = fake_gitlab.register_runner(
        description=f"runner-scaler/linux/{instance}", tag_list=("linux",)
    )
    rt.store.put_machine(MachineRecord(instance, "linux", rt.now(), runner_id=runner))
    fake_gitlab.runner_contact(runner)
    with Client(app) as client:
        tick(client)  # seen in service, contacted: ready, idle from now
        gitlab_stack.advance(minutes=11)
        project = fake_gitlab.create_project("group/app")
        (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
        # ...and its runner's job request passes GitLab's `active?` check (lib/api/ci/runner.rb) just before
        request = fake_gitlab.begin_job_request(runner)
        assert request is not None
        # WHEN the tick removes the idle machine: it pauses the runner...
        tick(client)
        # ...GitLab assigns the job all the same (Ci::RegisterJobService does not check `active?` again:
        # app/services/ci/register_job_service.rb), and the next tick comes a minute later
        assert fake_gitlab.runners[runner].paused
        assert fake_gitlab.complete_job_request(request) == job_id
        gitlab_stack.advance(seconds=60)
        tick(client)
    # THEN the machine was never terminated with the job on it: the re-check after the window found it, the
    # removal was dropped, and the runner takes jobs again
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert live == [instance]
    assert fake_gitlab.jobs[job_id].status == "running" and fake_gitlab.jobs[job_id].runner_id == runner
    assert not fake_gitlab.runners[runner].paused
    assert rt.store.get_machine(instance).draining_since is None  # type: ignore[union-attr]


def test_a_used_up_machine_goes_without_waiting_unless_a_job_of_it_was_canceled(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN two machines that started their one job each (max_use_count = 1), runners up, jobs over: one job
    # succeeded, so `run-single --max-builds 1` counted it and exited (gitlab-runner commands/single.go,
    # postBuild + checkFinishedConditions); the other was canceled, perhaps before the runner's first update,
    # in which case run-single did not count it and still asks GitLab for a job
    rt = gitlab_stack.runtime
    rt.fleet.set_desired_capacity("test-linux", 2)
    group = rt.fleet.read_groups(["test-linux"])["test-linux"]
    done, canceled = sorted(i.instance_id for i in group.instances)
    runners = {}
    for job_id, (instance, status) in enumerate(((done, "success"), (canceled, "canceled")), start=1):
        runner, _ = fake_gitlab.register_runner(
            description=f"runner-scaler/linux/{instance}", tag_list=("linux",)
        )
        fake_gitlab.runner_contact(runner)
        runners[instance] = runner
        rt.store.put_machine(
            MachineRecord(instance, "linux", rt.now(), runner_id=runner, job_ids=frozenset({job_id}))
        )
        job = JobRecord(rt.gitlab_host, job_id, status, pool="linux", machine_id=instance)
        rt.store.record_job(job, rt.now())
    with Client(app) as client:
        # WHEN the tick removes both used-up machines
        tick(client)
        # THEN the one whose run-single has provably exited is terminated in that tick, its runner paused
        # first; the other is paused and waits out GitLab's assignment window
        live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
        assert live == [canceled]
        assert fake_gitlab.runners[runners[canceled]].paused
        # AND once the window has passed with no job on it, the next tick terminates it too
        gitlab_stack.advance(seconds=60)
        tick(client)
    assert list(rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()) == []
