"""The tick sweeps what crashes and lost events left: an orphaned runner is deleted only on a second
observation, a machine whose runner never came up is replaced, and the fleet's base certificates exist."""

from __future__ import annotations

from chalice.test import Client

from app import app
from chalicelib.devtools.fake_gitlab import FakeGitLab
from tests.functional.conftest import Stack


def tick(client: Client) -> None:
    client.lambda_.invoke("tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, []))


def test_orphaned_runner_is_deleted_only_after_a_second_observation(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    orphan, _ = fake_gitlab.register_runner(
        description="runner-scaler/linux/i-0000000000000dead", tag_list=("linux",)
    )
    foreign, _ = fake_gitlab.register_runner(description="someone-elses-runner", tag_list=("linux",))
    with Client(app) as client:
        tick(client)  # first sight: only a suspicion
        assert orphan in fake_gitlab.runners
        gitlab_stack.advance(minutes=5)
        tick(client)  # seen again past orphan_confirm_after: deleted
    assert orphan not in fake_gitlab.runners
    assert foreign in fake_gitlab.runners  # never touches runners that are not ours


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
