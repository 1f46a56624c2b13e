"""macOS host reuse through the Chalice app: a used Mac gets a fresh root volume and a new runner instead of a
termination and a host scrub, only inside its host's paid window, with a job waiting and no job on it.

The deployed Runtime (Ec2Hosts, AsgFleet, DynamoStore, AwsSecrets on `AwsClients`, the GitLab adapter against
the fake GitLab) runs the `tick` and `machine_events` handlers on moto. moto has no root-volume replacement:
CreateReplaceRootVolumeTask and DescribeReplaceRootVolumeTasks are answered by botocore's Stubber at the EC2
client, for those two operations only (`ReplaceStubber`), so the exact request is checked against the EC2
service model and every other EC2 call still reaches moto. `MotoHostWorld` plays the hosts' side (allocation
time on the test's clock, an instance on its host) and moto lacks CompleteLifecycleAction, recorded instead
(tests/functional/test_lifecycle.py).

AWS facts relied on: the task restores the root volume to its launch state and keeps the instance, its IP
addresses and its IAM profile on the same host (EC2 User Guide, "Replace the root volume for an Amazon EC2
instance without stopping it"); TaskState `succeeded` means the new volume is attached and the instance
available, `failed` / `failed-detached` that it is not (EC2 API Reference, "ReplaceRootVolumeTask").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from botocore.stub import Stubber
from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib.aws import AwsClients
from chalicelib.config import config_from_dict
from chalicelib.gitlab import GitLabClient
from chalicelib.resources import TAG_INSTANCE_ARN, Names
from chalicelib.runtime import Runtime, install
from chalicelib.store import JobRecord, MachineRecord
from tests.builders import T0
from tests.functional.conftest import FIXTURES, WEBHOOK_TOKENS, describe_group
from tests.functional.test_hosts_app import MAC, _create_host_groups
from tests.functional.test_hosts_contract import MotoHostWorld
from tests.functional.test_lifecycle import RecordingFleet
from toolkit.devtools.bootstrap import bootstrap
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec

REPLACE = "CreateReplaceRootVolumeTask"
DESCRIBE = "DescribeReplaceRootVolumeTasks"
TASK = "replacevol-0123456789abcdef0"


class ReplaceStubber(Stubber):
    """botocore's Stubber for the root-volume replacement calls only (moto has none): each is checked against
    the EC2 model and the queued expectation, and recorded; any other EC2 call goes through to moto."""

    STUBBED = frozenset({REPLACE, DESCRIBE})

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.seen: list[str] = []

    def _assert_expected_params(self, model: Any, params: Any, context: Any, **kwargs: Any) -> None:
        if model.name in self.STUBBED:
            self.seen.append(model.name)
            super()._assert_expected_params(model, params, context, **kwargs)

    def _get_response_handler(self, model: Any, params: Any, context: Any, **kwargs: Any) -> Any:
        if model.name not in self.STUBBED:
            return None  # moto answers
        return super()._get_response_handler(model, params, context, **kwargs)


@dataclass
class MacWorld:
    aws: AwsClients
    runtime: Runtime
    clock: list[datetime]
    hosts: MotoHostWorld
    gitlab: FakeGitLab
    ec2: ReplaceStubber
    out: pytest.CaptureFixture[str]

    def advance(self, **delta: float) -> None:
        self.clock[0] += timedelta(**delta)

    def record(self, job_id: int, status: str, machine_id: str = "") -> None:
        job = JobRecord(self.runtime.gitlab_host, job_id, status, pool="macos", machine_id=machine_id)
        self.runtime.store.record_job(job, self.clock[0])

    def tick(self) -> dict[str, Any]:
        """The `tick` Lambda; returns the macOS pool's answer with the figures it published for the pool
        (its EMF metrics: PoolFaults, ScaleIn, DrainCancelled...)."""
        self.out.readouterr()
        with Client(app) as client:
            event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
            payload: dict[str, Any] = client.lambda_.invoke("tick", event).payload
        published = [
            json.loads(line) for line in self.out.readouterr().out.splitlines() if line.startswith("{")
        ]
        (figures,) = [m for m in published if m.get("pool") == "macos" and "Desired" in m]
        return {**payload["pools"]["macos"], **{k: v[0] for k, v in figures.items() if isinstance(v, list)}}

    def desired(self) -> int:
        return int(describe_group(self.aws, "test-macos")["DesiredCapacity"])

    def machine(self, instance_id: str) -> MachineRecord:
        record = self.runtime.store.get_machine(instance_id)
        assert record is not None
        return record

    def secret(self, instance_id: str) -> dict[str, Any] | None:
        name = f"test/machines/{instance_id}"
        listed = self.aws.call("secretsmanager", "list_secrets", Filters=[{"Key": "name", "Values": [name]}])
        if not listed["SecretList"]:
            return None
        value = self.aws.call("secretsmanager", "get_secret_value", SecretId=name)["SecretString"]
        tags = self.aws.call("secretsmanager", "describe_secret", SecretId=name)["Tags"]
        return {**json.loads(value), "tags": {t["Key"]: t["Value"] for t in tags}}

    def live_hosts(self) -> int:
        return sum(1 for h in self.aws.call("ec2", "describe_hosts")["Hosts"] if h["State"] != "released")

    def expect_replace(self, instance_id: str, jobs: int = 1) -> None:
        self.ec2.add_response(
            "create_replace_root_volume_task",
            {"ReplaceRootVolumeTask": {"ReplaceRootVolumeTaskId": TASK, "TaskState": "pending"}},
            {
                "InstanceId": instance_id,
                "DeleteReplacedRootVolume": True,
                "ClientToken": f"reuse-{instance_id}-{jobs}",
            },
        )

    def expect_task_state(self, state: str) -> None:
        self.ec2.add_response(
            "describe_replace_root_volume_tasks",
            {"ReplaceRootVolumeTasks": [{"ReplaceRootVolumeTaskId": TASK, "TaskState": state}]},
            {"ReplaceRootVolumeTaskIds": [TASK]},
        )

    def state(self, instance_id: str) -> str:
        reservations = self.aws.call("ec2", "describe_instances", InstanceIds=[instance_id])["Reservations"]
        return str(reservations[0]["Instances"][0]["State"]["Name"])

    def used_mac(
        self, *, waiting: bool = True, running_for: timedelta = timedelta(minutes=3), finished: bool = True
    ) -> tuple[str, int]:
        """A Mac that ran its one job (max_use_count 1): launched onto a host by the tick, prepared by the
        launch lifecycle (runner, secret), its secret read and deleted by its boot script, its job run and
        (`finished`) finished, and (`waiting`) another job pending. Returns the instance id and its first
        runner's id."""
        self.record(1, "pending")
        self.tick()  # a host is allocated
        self.advance(minutes=1)
        self.tick()  # the machine launches onto it
        group = describe_group(self.aws, "test-macos")
        (instance_id,) = [i["InstanceId"] for i in group["Instances"]]
        assert self.hosts.place("macos", instance_id)
        launch = json.loads((FIXTURES / "aws_lifecycle_launch.json").read_text())
        launch["detail"].update(AutoScalingGroupName="test-macos", EC2InstanceId=instance_id)
        with Client(app) as client:
            assert client.lambda_.invoke("machine_events", launch).payload["result"] == "CONTINUE"
        (runner,) = self.gitlab.runners.values()
        # macos.sh reads its secret once, then deletes it before any job runs
        self.aws.call(
            "secretsmanager",
            "delete_secret",
            SecretId=f"test/machines/{instance_id}",
            ForceDeleteWithoutRecovery=True,
        )
        self.advance(minutes=1)
        self.record(1, "running", machine_id=instance_id)
        self.tick()
        self.advance(seconds=running_for.total_seconds())
        if waiting:
            self.record(2, "pending")
        if finished:
            self.record(1, "success", machine_id=instance_id)
        return instance_id, runner.id


@pytest.fixture
def mac(
    aws_credentials: None, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> Iterator[MacWorld]:
    """The app on moto with one macOS pool; an indirect parameter (a dict) goes into its [pools.hosts]."""
    settings = {**MAC["hosts"], **getattr(request, "param", {})}
    with mock_aws(), FakeGitLab() as gitlab:
        config = config_from_dict(
            {"gitlab": {"url": gitlab.url}, "pools": [{**MAC, "max_use_count": 1, "hosts": settings}]}, "test"
        )
        clock = [T0]
        hosts = MotoHostWorld(config.pools, clock)
        aws = AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=hosts.inject)
        local = bootstrap(aws, config, Names("test"), WEBHOOK_TOKENS)
        _create_host_groups(aws, config)
        rt = Runtime(
            {"RUNNER_SCALER_PREFIX": "test", "RUNNER_SCALER_QUEUE_URL": local.queue_url},
            aws=aws,
            config=config,
            gitlab=GitLabClient(gitlab.url, gitlab.token, max_retries=1, obey_rate_limit=False),
            clock=lambda: clock[0],
        )
        rt.__dict__["fleet"] = RecordingFleet(aws)
        install(rt)
        stubber = ReplaceStubber(aws.client("ec2"))
        stubber.activate()
        yield MacWorld(aws, rt, clock, hosts, gitlab, stubber, capsys)
        stubber.assert_no_pending_responses()
        stubber.deactivate()
        install(None)


def test_a_used_mac_with_a_job_waiting_is_reused_not_terminated(mac: MacWorld) -> None:
    # GIVEN a Mac that ran its one job, on a host allocated minutes ago (inside its 24 h), a job waiting
    instance_id, old_runner = mac.used_mac()
    launch_arn = mac.machine(instance_id).instance_arn
    assert launch_arn.endswith(f":instance/{instance_id}")

    # WHEN the tick reconciles the pool
    mac.expect_replace(instance_id)
    first = mac.tick()

    # THEN its root volume is being replaced, with exactly the request that restores the launch state
    assert mac.ec2.seen == [REPLACE] and first["errors"] == [] and first["PoolFaults"] == 0
    # AND its used runner is deleted from GitLab, and no token waits for the old volume to read
    assert old_runner not in mac.gitlab.runners and mac.gitlab.runners == {}
    assert mac.secret(instance_id) is None
    # AND the instance stays, on its host, and the group's capacity is unchanged: no launch, no new host
    assert mac.state(instance_id) == "running"
    assert mac.desired() == 1 and mac.live_hosts() == 1
    record = mac.machine(instance_id)
    assert (record.replace_task, record.runner_id, record.jobs_started, record.ready_at) == (
        TASK,
        None,
        0,
        None,
    )

    # WHEN the replacement has not finished at the next tick
    mac.advance(minutes=1)
    mac.expect_task_state("in-progress")
    mac.tick()
    # THEN still no runner and no secret
    assert mac.gitlab.runners == {} and mac.secret(instance_id) is None

    # WHEN it has succeeded at the next
    mac.advance(minutes=1)
    mac.expect_task_state("succeeded")
    third = mac.tick()

    # THEN the fresh volume gets a new runner and its own secret, as a launch does
    (runner,) = mac.gitlab.runners.values()
    assert runner.id != old_runner and runner.description == f"runner-scaler/macos/{instance_id}"
    secret = mac.secret(instance_id)
    assert secret is not None
    assert secret["runner_token"] == runner.token and secret["runner_id"] == runner.id
    # AND only this instance may read it: the same ARN tag the secret policy compares to ec2:SourceInstanceARN
    assert secret["tags"][TAG_INSTANCE_ARN] == launch_arn
    # AND the machine is booting until its runner contacts GitLab; still one machine, nothing terminated
    record = mac.machine(instance_id)
    assert (record.replace_task, record.runner_id, record.ready_at) == (None, runner.id, None)
    assert third["errors"] == [] and mac.desired() == 1 and mac.state(instance_id) == "running"

    # WHEN its new runner polls GitLab
    mac.gitlab.runner_contact(runner.id)
    mac.advance(minutes=1)
    mac.tick()
    # THEN it is ready for the waiting job
    assert mac.machine(instance_id).ready_at == mac.clock[0]
    assert mac.ec2.seen == [REPLACE, DESCRIBE, DESCRIBE]


def test_a_failed_replacement_ends_the_machine_as_before_with_a_pool_fault(mac: MacWorld) -> None:
    # GIVEN a used Mac whose root volume replacement started
    instance_id, _ = mac.used_mac()
    mac.expect_replace(instance_id)
    mac.tick()
    # WHEN EC2 reports the task failed (the used volume still attached)
    mac.advance(minutes=1)
    mac.expect_task_state("failed")
    result = mac.tick()
    # THEN the machine is terminated (its host scrubs, as a termination always did) and the pool faulted
    assert mac.state(instance_id) in {"shutting-down", "terminated"}
    assert (result["ScaleIn"], result["PoolFaults"]) == (1, 1)
    assert mac.gitlab.runners == {}  # no runner was ever given to it


@pytest.mark.parametrize("mac", [{"keep_ready": False}], indirect=True)
def test_past_the_hosts_paid_window_a_used_mac_is_terminated(mac: MacWorld) -> None:
    # GIVEN a Mac whose job ran past its host's 24-hour minimum allocation, a job waiting, standby Macs off
    instance_id, _ = mac.used_mac(running_for=timedelta(hours=24))
    # WHEN the tick reconciles the pool
    result = mac.tick()
    # THEN it is terminated as before, and no replacement is asked for
    assert REPLACE not in mac.ec2.seen
    assert result["ScaleIn"] == 1
    assert mac.state(instance_id) in {"shutting-down", "terminated"}


@pytest.mark.parametrize("mac", [{"keep_ready": False}], indirect=True)
def test_without_a_job_waiting_a_used_mac_waits_then_is_terminated(mac: MacWorld) -> None:
    # GIVEN a used Mac and no job waiting, standby Macs off
    instance_id, _ = mac.used_mac(waiting=False)
    # WHEN the tick reconciles the pool
    mac.tick()
    # THEN it is neither reused nor terminated yet: its host is paid for, and a job may still come while its
    # boot script waits
    assert REPLACE not in mac.ec2.seen and mac.state(instance_id) == "running"
    # WHEN no job came and its wait is nearly over (reuse_wait 10 min, less the 2 min margin)
    mac.advance(minutes=8)
    result = mac.tick()
    # THEN it is terminated as before, and nothing was replaced
    assert REPLACE not in mac.ec2.seen
    assert result["ScaleIn"] == 1
    assert mac.state(instance_id) in {"shutting-down", "terminated"}


def test_with_no_job_waiting_a_used_mac_is_reused_at_once_and_waits_ready_on_its_paid_host(
    mac: MacWorld,
) -> None:
    # GIVEN a used Mac on a host inside its 24 hours (standby Macs on, the default), and no job waiting
    instance_id, old_runner = mac.used_mac(waiting=False)

    # WHEN the tick reconciles the pool
    mac.expect_replace(instance_id)
    first = mac.tick()

    # THEN its root volume is replaced at once, not held for a job nor terminated: the host is billed
    # whether or not a Mac runs on it, and a Mac booted ahead spares the next job its boot
    assert mac.ec2.seen == [REPLACE] and first["errors"] == [] and first["ScaleIn"] == 0
    assert old_runner not in mac.gitlab.runners and mac.secret(instance_id) is None
    assert mac.state(instance_id) == "running" and mac.desired() == 1 and mac.live_hosts() == 1

    # WHEN the replacement succeeded and the new runner polls GitLab
    mac.advance(minutes=5)
    mac.expect_task_state("succeeded")
    mac.tick()
    (runner,) = mac.gitlab.runners.values()
    mac.gitlab.runner_contact(runner.id)
    mac.advance(minutes=1)
    mac.tick()

    # THEN the Mac waits, ready, with a fresh volume and a new runner; still one machine on one host
    record = mac.machine(instance_id)
    assert record.ready_at == mac.clock[0] and record.runner_id == runner.id != old_runner
    assert mac.desired() == 1 and mac.live_hosts() == 1

    # WHEN an hour and a half passes with no job (idle_time 1 h), the host still inside its 24 hours
    mac.advance(minutes=90)
    result = mac.tick()
    # THEN the standby Mac stays for the next job
    assert result["ScaleIn"] == 0 and mac.state(instance_id) == "running"
    assert mac.ec2.seen == [REPLACE, DESCRIBE]


def test_past_the_hosts_paid_window_a_used_mac_is_reused_while_its_host_is_used(mac: MacWorld) -> None:
    # GIVEN a Mac whose job ran past its host's 24-hour minimum allocation (standby Macs on), a job waiting
    instance_id, _ = mac.used_mac(running_for=timedelta(hours=24))
    # WHEN the tick reconciles the pool
    mac.expect_replace(instance_id)
    result = mac.tick()
    # THEN it is reused, not terminated: its host, billed per second now, was used within idle_time, and a
    # fresh volume serves the waiting job sooner than a scrub and a new host with 24 hours of its own
    assert mac.ec2.seen == [REPLACE] and result["ScaleIn"] == 0
    assert mac.state(instance_id) == "running" and mac.desired() == 1 and mac.live_hosts() == 1


def test_a_mac_with_a_job_running_is_never_reused_nor_terminated(mac: MacWorld) -> None:
    # GIVEN a used Mac whose job our store saw finish, while GitLab has since handed its runner another job
    # (a hook lost or late: GitLab's view is the one the drain re-checks)
    instance_id, runner_id = mac.used_mac()
    project = mac.gitlab.create_project("acme/app")
    mac.gitlab.create_pipeline(project, [JobSpec("build", tags=("macos",))])
    assert mac.gitlab.request_job(runner_id) is not None
    # WHEN the tick reconciles the pool
    result = mac.tick()
    # THEN its root volume is not replaced, it is not terminated, and its runner keeps its job
    assert REPLACE not in mac.ec2.seen
    assert (result["DrainCancelled"], result["ScaleIn"]) == (1, 0)
    assert mac.state(instance_id) == "running"
    assert runner_id in mac.gitlab.runners and not mac.gitlab.runners[runner_id].paused


def test_a_mac_whose_job_runs_is_left_alone(mac: MacWorld) -> None:
    # GIVEN a Mac still running its one job, another job waiting
    instance_id, runner_id = mac.used_mac(finished=False)
    # WHEN the tick reconciles the pool
    result = mac.tick()
    # THEN nothing is replaced or terminated while a job runs on it
    assert REPLACE not in mac.ec2.seen and result["ScaleIn"] == 0
    assert mac.state(instance_id) == "running" and runner_id in mac.gitlab.runners
