"""Machine lifecycle through the Chalice app (moto + fake GitLab): a launch creates one runner and the
machine's secret with a certificate that verifies against the fleet CA; terminate removes both; a failing
GitLab abandons the launch and leaves nothing; Spot drains, rescues the job and launches a replacement."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from botocore.stub import Stubber
from chalice.test import Client
from cryptography import x509

from app import app
from chalicelib.aws import AwsClients
from chalicelib.errors import RetryLaterError
from chalicelib.fleet import AsgFleet
from chalicelib.lifecycle import ABANDON, PREPARE_FAULT, PREPARE_FAULT_BACKOFF_SECONDS
from chalicelib.rotation import ensure_base_certs_for
from chalicelib.store import JobRecord
from tests.functional.conftest import FIXTURES, Stack
from tests.functional.test_app_reconcile import ec2_state
from tests.functional.test_webhooks import Pipeline, post
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec
from toolkit.status import snapshot

TOKEN = "87654321-4321-4321-4321-21098EXAMPLE"


class RecordingFleet(AsgFleet):
    """moto lacks CompleteLifecycleAction: record it here (the real call is Stubber-tested below)."""

    def __init__(self, aws: AwsClients) -> None:
        super().__init__(aws)
        self.completed: list[tuple[str, str]] = []

    def complete_lifecycle_action(
        self, asg: str, hook: str, token: str, instance_id: str, result: str
    ) -> None:
        self.completed.append((instance_id, result))


@pytest.fixture
def world(gitlab_stack: Stack) -> Iterator[tuple[Stack, RecordingFleet, Client]]:
    fleet = RecordingFleet(gitlab_stack.aws)
    gitlab_stack.runtime.__dict__["fleet"] = fleet
    ensure_base_certs_for(gitlab_stack.runtime.cert_ports)
    with Client(app) as client:
        yield gitlab_stack, fleet, client


def launched_instance(stack: Stack) -> str:
    stack.runtime.fleet.set_desired_capacity("test-linux", 1)
    group = stack.runtime.fleet.read_groups(["test-linux"])["test-linux"]
    return group.instances[0].instance_id


def lifecycle_event(name: str, instance_id: str) -> dict[str, Any]:
    event = json.loads((FIXTURES / name).read_text())
    event["detail"].update(
        AutoScalingGroupName="test-linux", EC2InstanceId=instance_id, LifecycleActionToken=TOKEN
    )
    return event


def invoke(client: Client, event: dict[str, Any]) -> dict[str, Any]:
    return client.lambda_.invoke("machine_events", event).payload  # type: ignore[no-any-return]


def machine_secret(stack: Stack, instance_id: str) -> dict[str, Any]:
    value = stack.aws.call("secretsmanager", "get_secret_value", SecretId=f"test/machines/{instance_id}")
    return json.loads(value["SecretString"])  # type: ignore[no-any-return]


def with_docker_tls(stack: Stack) -> None:
    """The linux pool opens Docker's TLS listener (docker_tcp_tls): its machines get a server certificate."""
    pools = tuple(
        p.model_copy(update={"docker_tcp_tls": True}) if p.name == "linux" else p for p in stack.config.pools
    )
    stack.config = stack.config.model_copy(update={"pools": pools})
    stack.runtime.config = stack.config


def test_launch_creates_the_runner_and_the_machine_secret(world: Any, fake_gitlab: FakeGitLab) -> None:
    stack, fleet, client = world
    with_docker_tls(stack)
    instance = launched_instance(stack)
    out = invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # THEN one runner, with the pool's tags and the description the scaler routes by
    (runner,) = fake_gitlab.runners.values()
    assert runner.description == f"runner-scaler/linux/{instance}"
    assert set(runner.tag_list) == {"linux", "docker"} and runner.run_untagged
    # AND the machine's secret holds its token and (docker_tcp_tls) a server certificate from the fleet CA
    secret = machine_secret(stack, instance)
    assert secret["runner_token"] == runner.token and secret["runner_id"] == runner.id
    leaf = x509.load_pem_x509_certificate(secret["server_cert"].encode())
    ca = x509.load_pem_x509_certificates(secret["ca_bundle"].encode())[0]
    leaf.verify_directly_issued_by(ca)
    assert "BEGIN" in secret["server_key"] and "ca_key" not in json.dumps(secret)
    # AND only this instance may read it: the tag the instance role's IAM condition compares
    tags = stack.aws.call("secretsmanager", "describe_secret", SecretId=f"test/machines/{instance}")["Tags"]
    assert {
        "Key": "runner-scaler:instance-arn",
        "Value": f"arn:aws:ec2:us-west-2:123456789012:instance/{instance}",
    } in tags
    # AND the machine is recorded, and the lifecycle action completed with CONTINUE
    assert stack.runtime.store.get_machine(instance).runner_id == runner.id
    assert fleet.completed == [(instance, "CONTINUE")] and out["result"] == "CONTINUE"


def test_without_docker_tls_a_launch_issues_no_certificate(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN the linux pool as shipped (Docker on its local socket only: docker_tcp_tls off), and no fleet
    # base certificates yet: issuing a server certificate would fail the launch
    stack = gitlab_stack
    fleet = RecordingFleet(stack.aws)
    stack.runtime.__dict__["fleet"] = fleet
    instance = launched_instance(stack)
    before = dict(stack.aws.calls)
    # WHEN its machine launches
    with Client(app) as client:
        out = invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # THEN it goes into service with its runner token and no Docker TLS material nothing would use
    (runner,) = fake_gitlab.runners.values()
    assert out["result"] == "CONTINUE" and fleet.completed == [(instance, "CONTINUE")]
    secret = machine_secret(stack, instance)
    assert secret["runner_token"] == runner.token
    assert not {"server_cert", "server_key", "ca_bundle"} & set(secret)
    # AND no call was spent on one: the instance's addresses were not read
    assert stack.aws.calls["ec2.DescribeInstances"] == before.get("ec2.DescribeInstances", 0)


def test_a_duplicate_launch_event_creates_one_runner(world: Any, fake_gitlab: FakeGitLab) -> None:
    stack, fleet, client = world
    instance = launched_instance(stack)
    event = lifecycle_event("aws_lifecycle_launch.json", instance)
    invoke(client, event)
    invoke(client, copy.deepcopy(event))
    assert len(fake_gitlab.runners) == 1
    assert fleet.completed == [(instance, "CONTINUE"), (instance, "CONTINUE")]


def test_a_gitlab_refusal_ends_the_machine_and_leaves_nothing(world: Any, fake_gitlab: FakeGitLab) -> None:
    stack, fleet, client = world
    instance = launched_instance(stack)
    fake_gitlab.inject_failure("/user/runners", status=403, times=10)  # the API token may not create runners
    out = invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # THEN the launch is given up: the machine ends with a decrement (no ABANDON, which the group would
    # answer with a replacement at once), and nothing is left behind
    assert out["result"] == ABANDON and fleet.completed == []
    assert stack.desired("test-linux") == 0 and ec2_state(stack, instance) in {"shutting-down", "terminated"}
    assert fake_gitlab.runners == {}
    with pytest.raises(Exception, match="ResourceNotFound"):
        machine_secret(stack, instance)


def test_a_launch_without_base_certs_ends_the_machine_and_stops_launches_into_the_pool(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    """A permanent launch error must not loop: ABANDON makes Auto Scaling replace the machine at once, and
    on a Mac pool every turn costs a host scrub. The machine ends with a decrement, the pool records a fault
    the reconciler reads, and launches wait for the fault's backoff."""
    # GIVEN a pending job, the machine launched for it, and no base certificates yet (never created)
    stack = gitlab_stack
    with_docker_tls(stack)  # a pool whose machines need a server certificate
    fleet = RecordingFleet(stack.aws)
    stack.runtime.__dict__["fleet"] = fleet
    rt = stack.runtime
    rt.store.record_job(JobRecord(rt.gitlab_host, 1, "pending", pool="linux"), rt.now())
    pool = stack.config.pool("linux")
    assert rt.reconciler("test").reconcile_pool(pool, rt.now()).desired_after == 1
    (instance,) = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances]
    capsys.readouterr()
    # WHEN its launch hook is handled
    with Client(app) as client:
        out = invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # THEN the machine is terminated with a decrement: the group does not relaunch it
    assert out["result"] == ABANDON and fleet.completed == []
    assert stack.desired("test-linux") == 0 and ec2_state(stack, instance) in {"shutting-down", "terminated"}
    assert fake_gitlab.runners == {}
    # AND the pool has a fault, counted for the alarm
    (fault,) = rt.store.faults("linux", rt.now())
    assert fault.kind == PREPARE_FAULT and "base" in fault.reason
    (blob,) = emitted(capsys, "PoolFaults")
    assert (blob["PoolFaults"], blob["pool"]) == ([1.0], "linux")
    (linux,) = [p for p in snapshot(stack.config, rt.store, rt.fleet, rt.now()) if p.pool == "linux"]
    assert any(f.startswith(f"{PREPARE_FAULT} until") for f in linux.faults)  # `runner-scaler status`
    # WHEN the pool reconciles a minute later, the job still pending
    result = rt.reconciler("test").reconcile_pool(pool, stack.advance(minutes=1))
    # THEN it launches nothing into the faulted pool, and says why
    assert result.desired_after == 0 and stack.desired("test-linux") == 0
    assert result.plan is not None and any("fault" in c for c in result.plan.capped_by)
    # WHEN the fault's backoff has passed
    result = rt.reconciler("test").reconcile_pool(pool, stack.advance(seconds=PREPARE_FAULT_BACKOFF_SECONDS))
    # THEN the pool launches again (the cause may be fixed; if not, one machine finds out)
    assert result.desired_after == 1


@pytest.mark.parametrize("status", [429, 503])
def test_a_transient_gitlab_failure_leaves_the_launch_open_for_the_retry(
    world: Any, fake_gitlab: FakeGitLab, status: int
) -> None:
    # GIVEN GitLab rate-limiting or down while a machine launches
    stack, fleet, client = world
    instance = launched_instance(stack)
    fake_gitlab.inject_failure("/user/runners", status=status, times=10, retry_after=0)
    event = lifecycle_event("aws_lifecycle_launch.json", instance)
    # WHEN the launch event is handled
    with pytest.raises(RetryLaterError, match="deferred"):
        invoke(client, event)
    # THEN nothing is left half-made and the lifecycle action stays open (no ABANDON: no wasted boot)
    assert fake_gitlab.runners == {} and fleet.completed == []
    with pytest.raises(Exception, match="ResourceNotFound"):
        machine_secret(stack, instance)
    # WHEN Lambda retries the event once GitLab answers again
    fake_gitlab.clear_failures()
    out = invoke(client, copy.deepcopy(event))
    # THEN the machine is prepared and goes into service
    assert out["result"] == "CONTINUE" and fleet.completed == [(instance, "CONTINUE")]
    assert len(fake_gitlab.runners) == 1


def test_terminate_deletes_the_runner_and_the_secret(world: Any, fake_gitlab: FakeGitLab) -> None:
    stack, fleet, client = world
    instance = launched_instance(stack)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    invoke(client, lifecycle_event("aws_lifecycle_terminate.json", instance))
    assert fake_gitlab.runners == {}
    assert_retired(stack, instance)
    with pytest.raises(Exception, match="ResourceNotFound"):
        machine_secret(stack, instance)
    assert fleet.completed[-1] == (instance, "CONTINUE")


def test_spot_warning_drains_rescues_the_job_and_replaces_the_machine(
    world: Any, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, _fleet, client = world
    instance = launched_instance(stack)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    (runner,) = fake_gitlab.runners.values()
    project = fake_gitlab.create_project("group/app")
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    assert fake_gitlab.request_job(runner.id) == job_id
    rt = stack.runtime
    rt.store.record_job(
        JobRecord(rt.gitlab_host, job_id, "running", project_id=project, pool="linux", machine_id=instance),
        rt.now(),
    )
    # WHEN the two-minute warning arrives
    spot = json.loads((FIXTURES / "aws_spot_interruption.json").read_text())
    spot["detail"]["instance-id"] = instance
    invoke(client, spot)
    # THEN the runner takes no new job, the machine drains, and the next reconcile launches a replacement
    assert fake_gitlab.runners[runner.id].paused
    assert rt.store.get_machine(instance).drain_reason == "spot"
    result = rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), stack.advance(seconds=10))
    assert result.desired_after == 2
    # WHEN the instance goes: the interrupted job is retried once, the runner deleted
    capsys.readouterr()
    invoke(client, lifecycle_event("aws_lifecycle_terminate.json", instance))
    retried = [j for j in fake_gitlab.jobs.values() if j.id != job_id and j.name == "build"]
    assert len(retried) == 1
    assert runner.id not in fake_gitlab.runners
    # AND the rescue is counted for the pool
    (blob,) = emitted(capsys, "JobsRetried")
    assert (blob["JobsRetried"], blob["pool"], blob["platform"]) == ([1.0], "linux", "linux")
    # AND a second terminate event for the same instance retries nothing more
    invoke(client, lifecycle_event("aws_lifecycle_terminate.json", instance))
    assert len([j for j in fake_gitlab.jobs.values() if j.name == "build"]) == 2
    assert emitted(capsys, "JobsRetried") == []


def test_malformed_machine_event_is_dropped(world: Any) -> None:
    _, fleet, client = world
    event = lifecycle_event("aws_lifecycle_launch.json", "i-0123456789abcdef0")
    del event["detail"]["LifecycleActionToken"]  # the envelope is sound (EventBridge's), the detail is not
    out = invoke(client, event)
    assert out["action"] == "dropped" and fleet.completed == []


def test_complete_lifecycle_action_makes_the_real_call(aws: AwsClients) -> None:
    """The seam moto lacks, checked with botocore's Stubber: exact parameters of the real API call."""
    fleet = AsgFleet(aws)
    client = aws.client("autoscaling")
    with Stubber(client) as stub:
        stub.add_response(
            "complete_lifecycle_action",
            {},
            {
                "AutoScalingGroupName": "test-linux",
                "LifecycleHookName": "launch",
                "LifecycleActionToken": TOKEN,
                "LifecycleActionResult": "ABANDON",
                "InstanceId": "i-0123456789abcdef0",
            },
        )
        fleet.complete_lifecycle_action("test-linux", "launch", TOKEN, "i-0123456789abcdef0", "ABANDON")
        stub.assert_no_pending_responses()


def test_no_token_or_key_in_logs(
    world: Any, fake_gitlab: FakeGitLab, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, _, client = world
    instance = launched_instance(stack)
    with caplog.at_level("DEBUG"):
        invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
        invoke(client, lifecycle_event("aws_lifecycle_terminate.json", instance))
    captured = caplog.text + capsys.readouterr().out
    assert "PRIVATE KEY" not in captured
    assert "glrt-" not in captured and "runner_token" not in captured


# -- scale-up latency --------------------------------------------------------------------------------


def emitted(capsys: pytest.CaptureFixture[str], metric: str) -> list[dict[str, Any]]:
    """The EMF blobs printed so far that carry `metric` (powertools writes them to stdout)."""
    out = capsys.readouterr().out.splitlines()
    return [b for b in (json.loads(x) for x in out if x.startswith('{"_aws"')) if metric in b]


def test_each_new_machine_reports_how_long_its_job_waited_for_it(
    world: Any, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, fleet, client = world
    # GIVEN two linux jobs gone pending at 12:00:00 and 12:00:30, announced by GitLab's webhooks
    p = Pipeline(stack, fake_gitlab, ("linux",), ("linux",))
    post(client, p.hook(p.job_ids[0], "pending"))
    stack.resolve_asks()  # the first one's pipeline tags, resolved by pool_dirty on the webhook's ask
    stack.advance(seconds=30)
    post(client, p.hook(p.job_ids[1], "pending"))
    # AND the dirty-pool reconcile asking the group for two machines
    bodies = [json.dumps({"pool": pool}) for pool in stack.queued_pools()]
    client.lambda_.invoke(
        "pool_dirty", client.events.generate_sqs_event(bodies, queue_name="test-dirty.fifo")
    )
    first, second = (
        i.instance_id for i in stack.runtime.fleet.read_groups(["test-linux"])["test-linux"].instances
    )
    capsys.readouterr()
    # WHEN their launch hooks complete at 12:01:40 and 12:01:50
    stack.advance(seconds=70)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", first))
    stack.advance(seconds=10)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", second))
    # THEN the first machine is charged the oldest job's 100 s, the second the next job's 80 s
    blobs = emitted(capsys, "ScaleUpSeconds")
    assert [b["ScaleUpSeconds"] for b in blobs] == [[100.0], [80.0]]
    assert {(b["pool"], b["platform"]) for b in blobs} == {("linux", "linux")}
    (definition,) = blobs[0]["_aws"]["CloudWatchMetrics"]
    assert definition["Metrics"] == [{"Name": "ScaleUpSeconds", "Unit": "Seconds"}]
    assert definition["Dimensions"] == [["pool", "platform", "service"]]
    assert fleet.completed == [(first, "CONTINUE"), (second, "CONTINUE")]


def test_a_machine_no_job_waited_for_reports_no_scale_up(
    world: Any, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, _fleet, client = world
    # GIVEN one pending job and a machine already in service with a free slot for it
    p = Pipeline(stack, fake_gitlab, ("linux",))
    post(client, p.hook(p.job_ids[0], "pending"))
    stack.runtime.fleet.set_desired_capacity("test-linux", 2)
    first, second = (
        i.instance_id for i in stack.runtime.fleet.read_groups(["test-linux"])["test-linux"].instances
    )
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", first))
    capsys.readouterr()
    # WHEN another machine (an idle_count spare, say) comes into service
    stack.advance(seconds=60)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", second))
    # THEN it reports nothing: the job is the first machine's
    assert emitted(capsys, "ScaleUpSeconds") == []


def test_a_duplicate_or_abandoned_launch_reports_no_scale_up(
    world: Any, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    stack, _fleet, client = world
    p = Pipeline(stack, fake_gitlab, ("linux",), ("linux",))
    for job_id in p.job_ids:
        post(client, p.hook(job_id, "pending"))
    stack.runtime.fleet.set_desired_capacity("test-linux", 2)
    first, second = (
        i.instance_id for i in stack.runtime.fleet.read_groups(["test-linux"])["test-linux"].instances
    )
    event = lifecycle_event("aws_lifecycle_launch.json", first)
    invoke(client, event)
    capsys.readouterr()
    # WHEN the same launch event comes again, and another launch fails at GitLab
    invoke(client, copy.deepcopy(event))
    fake_gitlab.inject_failure("/user/runners", status=403, times=10)
    assert invoke(client, lifecycle_event("aws_lifecycle_launch.json", second))["result"] == "ABANDON"
    # THEN neither is a machine coming into service
    assert emitted(capsys, "ScaleUpSeconds") == []


# -- a machine leaves by shutting itself down (issue 19: no right a job could use to end another machine) ----


def assert_retired(stack: Any, instance_id: str) -> None:
    """Cleaned up: the record is kept as retired, and the pool's machines no longer list it."""
    record = stack.runtime.store.get_machine(instance_id)
    assert record is not None and record.retired_at is not None
    assert instance_id not in {m.instance_id for m in stack.runtime.store.machines(record.pool)}


def state_change(instance_id: str, state: str) -> dict[str, Any]:
    event = json.loads((FIXTURES / "aws_instance_state_change.json").read_text())
    event["detail"].update({"instance-id": instance_id, "state": state})
    event["resources"] = [f"arn:aws:ec2:us-west-2:123456789012:instance/{instance_id}"]
    return event


def test_a_late_duplicate_launch_keeps_the_runner_of_a_machine_that_deleted_its_secret(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a prepared machine that read its secret at boot and deleted it, as its user data does
    stack, fleet, client = world
    instance = launched_instance(stack)
    event = lifecycle_event("aws_lifecycle_launch.json", instance)
    invoke(client, event)
    (runner,) = fake_gitlab.runners.values()
    stack.aws.call(
        "secretsmanager",
        "delete_secret",
        SecretId=f"test/machines/{instance}",
        ForceDeleteWithoutRecovery=True,
    )
    # WHEN the launch event is delivered again, late
    out = invoke(client, copy.deepcopy(event))
    # THEN the runner the machine uses is kept (preparing again would delete it), and no secret reappears
    assert list(fake_gitlab.runners.values()) == [runner] and out["runner_id"] == runner.id
    with pytest.raises(Exception, match="ResourceNotFound"):
        machine_secret(stack, instance)
    assert fleet.completed == [(instance, "CONTINUE"), (instance, "CONTINUE")]


def test_a_launch_that_stopped_before_its_secret_is_prepared_again(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a launch attempt that created and recorded a runner, then stopped before storing the secret
    # (a crash or an outage: Lambda retries the event)
    stack, _fleet, client = world
    instance = launched_instance(stack)
    event = lifecycle_event("aws_lifecycle_launch.json", instance)
    invoke(client, event)
    (left,) = fake_gitlab.runners.values()
    record = stack.runtime.store.get_machine(instance)
    stack.runtime.store.put_machine(replace(record, prepared_at=None))
    stack.aws.call(
        "secretsmanager",
        "delete_secret",
        SecretId=f"test/machines/{instance}",
        ForceDeleteWithoutRecovery=True,
    )
    # WHEN the event is handled again
    out = invoke(client, copy.deepcopy(event))
    # THEN the machine is prepared for real: a new runner replaces the left one, and its secret is stored
    (runner,) = fake_gitlab.runners.values()
    assert runner.id != left.id and out["runner_id"] == runner.id
    assert machine_secret(stack, instance)["runner_token"] == runner.token
    assert stack.runtime.store.get_machine(instance).prepared_at is not None


def test_a_machine_that_shuts_itself_down_leaves_its_group_with_a_decrement(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN two prepared machines in service
    stack, _fleet, client = world
    stack.runtime.fleet.set_desired_capacity("test-linux", 2)
    group = stack.runtime.fleet.read_groups(["test-linux"])["test-linux"]
    gone, stays = (i.instance_id for i in group.instances)
    for instance in (gone, stays):
        invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # WHEN one runs `shutdown` after its runner exits, and EC2 reports it shutting down
    groups_read = stack.aws.calls["autoscaling.DescribeAutoScalingGroups"]
    out = invoke(client, state_change(gone, "shutting-down"))
    # (the instance's own state decides, one DescribeAutoScalingInstances: the group is not read)
    assert stack.aws.calls["autoscaling.DescribeAutoScalingGroups"] == groups_read
    # THEN the scaler took it out of its group with a decrement (so the group does not replace it)
    after = stack.runtime.fleet.read_groups(["test-linux"])["test-linux"]
    assert after.desired == 1
    assert [i.instance_id for i in after.live_instances()] == [stays]
    assert out["notes"][0] == "shut itself down: left its group with a decrement"
    # AND its runner and record are gone; the other machine is untouched
    assert [r.description for r in fake_gitlab.runners.values()] == [f"runner-scaler/linux/{stays}"]
    assert_retired(stack, gone)
    assert stack.runtime.store.get_machine(stays) is not None


def test_the_other_events_of_a_machine_s_end_find_it_cleaned_up(world: Any, fake_gitlab: FakeGitLab) -> None:
    # GIVEN a prepared machine that shut itself down, cleaned up on EC2's shutting-down event
    stack, fleet, client = world
    instance = launched_instance(stack)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    invoke(client, state_change(instance, "shutting-down"))
    gitlab_before, aws_before = sum(fake_gitlab.requests.values()), dict(stack.aws.calls)
    # WHEN the group's terminate hook runs for it, then EC2 reports it terminated (separate events)
    hook = invoke(client, lifecycle_event("aws_lifecycle_terminate.json", instance))
    invoke(client, state_change(instance, "terminated"))
    # THEN neither cleans up again: no GitLab request (no runner looked up by name), no secret deleted twice,
    # and the hook's action is completed so the instance is not held for its heartbeat timeout
    assert hook["notes"] == ["already cleaned up"]
    assert sum(fake_gitlab.requests.values()) == gitlab_before
    made = {k: v - aws_before.get(k, 0) for k, v in stack.aws.calls.items() if v != aws_before.get(k, 0)}
    assert not any(k.startswith("secretsmanager.") for k in made)
    assert fleet.completed[-1] == (instance, "CONTINUE")


def test_a_machine_the_scaler_already_removed_is_not_decremented_twice(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN two machines, one of which the scaler terminated (with its own decrement) before its hook ran
    stack, _fleet, client = world
    stack.runtime.fleet.set_desired_capacity("test-linux", 2)
    group = stack.runtime.fleet.read_groups(["test-linux"])["test-linux"]
    gone, _stays = (i.instance_id for i in group.instances)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", gone))
    stack.runtime.fleet.terminate(gone)
    # WHEN EC2 reports it shutting down
    out = invoke(client, state_change(gone, "shutting-down"))
    # THEN the group keeps the one machine the scaler wants, and the record is cleaned up
    assert stack.runtime.fleet.read_groups(["test-linux"])["test-linux"].desired == 1
    assert out["notes"][0].startswith("not decremented")
    assert_retired(stack, gone)


def test_a_rebalance_recommendation_replaces_an_idle_machine_and_leaves_a_busy_one_alone(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN two Spot machines with their runners: one idle, one running a job
    stack, _fleet, client = world
    rt = stack.runtime
    rt.fleet.set_desired_capacity("test-linux", 2)
    idle, busy = sorted(i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].instances)
    for instance in (idle, busy):
        invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    runners = {m: rt.store.get_machine(m).runner_id for m in (idle, busy)}  # type: ignore[union-attr]
    project = fake_gitlab.create_project("group/app")
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    assert fake_gitlab.request_job(runners[busy]) == job_id  # type: ignore[arg-type]
    rt.store.record_job(
        JobRecord(rt.gitlab_host, job_id, "running", project_id=project, pool="linux", machine_id=busy),
        rt.now(),
    )
    rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), stack.advance(seconds=10))
    # WHEN EC2 recommends rebalancing both (a hint: "elevated risk of interruption", not an interruption)
    for instance in (idle, busy):
        event = json.loads((FIXTURES / "aws_rebalance_recommendation.json").read_text())
        event["detail"]["instance-id"] = instance
        invoke(client, event)
    # THEN the busy machine keeps its job and its runner takes jobs as before
    assert rt.store.get_machine(busy).draining_since is None  # type: ignore[union-attr]
    assert not fake_gitlab.runners[runners[busy]].paused  # type: ignore[index]
    # AND the reconciles remove the idle one through the drain protocol (pause, then re-check once GitLab's
    # assignment window has passed): it is not parked forever
    first = rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), stack.advance(seconds=10))
    assert first.terminated == [] and fake_gitlab.runners[runners[idle]].paused  # type: ignore[index]
    result = rt.reconciler("test").reconcile_pool(stack.config.pool("linux"), stack.advance(seconds=60))
    assert result.terminated == [idle]
    live = [i.instance_id for i in rt.fleet.read_groups(["test-linux"])["test-linux"].live_instances()]
    assert live == [busy]


def test_a_job_running_on_any_machine_that_terminates_is_cancelled_and_retried(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a machine (not Spot-interrupted) running a job: terminated by hand, or after a job slipped in
    stack, _fleet, client = world
    instance = launched_instance(stack)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    (runner,) = fake_gitlab.runners.values()
    project = fake_gitlab.create_project("group/app")
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    assert fake_gitlab.request_job(runner.id) == job_id
    # WHEN the instance terminates
    out = invoke(client, lifecycle_event("aws_lifecycle_terminate.json", instance))
    # THEN the job, which can no longer finish, is cancelled and retried once
    assert out["retried_jobs"] == [job_id]
    assert fake_gitlab.jobs[job_id].status == "canceled"
    assert len([j for j in fake_gitlab.jobs.values() if j.name == "build"]) == 2
