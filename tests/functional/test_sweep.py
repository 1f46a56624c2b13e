"""The tick sweeps what crashes and lost events left: an orphaned runner is deleted only on a second
observation, a machine whose runner never came up is replaced, and the fleet's base certificates exist."""

from __future__ import annotations

from chalice.test import Client

from app import app
from chalicelib.store import JobRecord, MachineRecord
from tests.functional.conftest import Stack
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec


def tick(client: Client) -> None:
    client.lambda_.invoke("tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, []))


def test_orphaned_runner_is_deleted_only_after_a_second_observation(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a runner this deployment created for a machine that is gone (its id stored with the machine)...
    orphan, _ = fake_gitlab.register_runner(
        description="runner-scaler/linux/i-0000000000000dead", tag_list=("linux",)
    )
    rt = gitlab_stack.runtime
    rt.store.put_machine(MachineRecord("i-0000000000000dead", "linux", rt.now(), runner_id=orphan))
    # ...another deployment's runner on the same GitLab, named alike, and someone's own runner
    theirs, _ = fake_gitlab.register_runner(
        description="runner-scaler/linux/i-00000000000000ace", tag_list=("linux",)
    )
    foreign, _ = fake_gitlab.register_runner(description="someone-elses-runner", tag_list=("linux",))
    with Client(app) as client:
        tick(client)  # first sight: only a suspicion
        assert orphan in fake_gitlab.runners
        gitlab_stack.advance(minutes=5)
        tick(client)  # seen again past orphan_confirm_after: deleted
    # THEN ours is deleted with its record; runners this deployment never recorded are never touched
    assert orphan not in fake_gitlab.runners and rt.store.get_machine("i-0000000000000dead") is None
    assert theirs in fake_gitlab.runners and foreign in fake_gitlab.runners


def test_machine_whose_runner_never_came_up_is_replaced(gitlab_stack: Stack) -> None:
    rt = gitlab_stack.runtime
    rt.fleet.set_desired_capacity("test-linux", 1)  # launched, but no lifecycle event ever created its runner
    (silent,) = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances]
    with Client(app) as client:
        tick(client)
        gitlab_stack.advance(minutes=60)  # past boot_timeout (15 min) from its launch
        tick(client)
        gitlab_stack.advance(minutes=5)
        tick(client)
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert silent not in live


def test_tick_creates_the_base_certificates(gitlab_stack: Stack) -> None:
    with Client(app) as client:
        tick(client)
    secret = gitlab_stack.aws.call("secretsmanager", "describe_secret", SecretId="test/docker-base-certs")
    assert "AWSCURRENT" in str(secret["VersionIdsToStages"])


def test_a_machine_whose_runner_never_contacted_gitlab_is_replaced(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN two jobs waiting, and two machines prepared at launch (runner created and recorded) of which
    # only one ever reached GitLab
    rt = gitlab_stack.runtime
    project = fake_gitlab.create_project("group/app")
    waiting = fake_gitlab.create_pipeline(project, [JobSpec(f"job-{n}", tags=("linux",)) for n in range(2)])
    for job_id in waiting.job_ids:
        rt.store.record_job(
            JobRecord(rt.gitlab_host, job_id, "pending", project_id=project, pool="linux"), rt.now()
        )
    rt.fleet.set_desired_capacity("test-linux", 2)
    group = rt.fleet.read_groups(["test-linux"])["test-linux"]
    mute, talking = sorted(i.instance_id for i in group.instances)
    for instance in (mute, talking):
        runner_id, _ = fake_gitlab.register_runner(
            description=f"runner-scaler/linux/{instance}", tag_list=("linux",)
        )
        rt.store.put_machine(MachineRecord(instance, "linux", rt.now(), runner_id=runner_id))
        if instance == talking:
            fake_gitlab.runner_contact(runner_id)
    with Client(app) as client:
        # WHEN the tick sweeps within boot_timeout, then twice past it
        tick(client)
        live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
        assert {mute, talking} <= set(live)  # still booting, as far as anyone knows
        gitlab_stack.advance(minutes=60)  # moto stamps launches with the wall clock, near the test's start
        tick(client)  # past boot_timeout (15 min): a suspicion only
        gitlab_stack.advance(minutes=5)
        tick(client)  # seen again: replaced
    # THEN the machine whose runner never contacted GitLab is replaced; the one that did is kept
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert mute not in live and talking in live and len(live) == 2
