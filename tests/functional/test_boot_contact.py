"""InService is not ready: a machine is booting until its runner has contacted GitLab (through the app,
on moto and the fake GitLab).

Auto Scaling puts an instance InService as soon as its launch hook completes ("Amazon EC2 Auto Scaling
lifecycle hooks": the instance leaves Pending:Wait when the action completes), which here is once the
machine's secret is written; its runner first polls GitLab minutes later (6 to 20 on Mac). GitLab says when
that happened: a runner with no `contacted_at` has the status `never_contacted` (gitlabhq
`app/models/ci/runner.rb`, `Ci::Runner#status`; the list filter is the `never_contacted` scope of
`app/models/concerns/ci/has_runner_status.rb`). Until then the machine counts as booting: its slots are
coming, `max_growth_rate` and `boot_timeout` apply to it, and its idle clock has not started.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.config import Policy
from chalicelib.rotation import ensure_base_certs_for
from chalicelib.runtime import Runtime, install
from chalicelib.store import JobRecord
from tests.functional.conftest import FIXTURES, Stack, describe_group
from tests.functional.test_lifecycle import TOKEN, RecordingFleet
from toolkit.devtools.fake_gitlab import FakeGitLab


@pytest.fixture
def world(gitlab_stack: Stack) -> Iterator[tuple[Stack, Client]]:
    ensure_base_certs_for(gitlab_stack.runtime.cert_ports)
    with Client(app) as client:
        yield gitlab_stack, client


def redeploy(stack: Stack, **linux: object) -> None:
    """A fresh container whose linux pool is changed by `linux`; GitLab and the clock are kept."""
    pools = [p.model_copy(update=linux) if p.name == "linux" else p for p in stack.config.pools]
    config = stack.config.model_copy(update={"pools": pools})
    rt = stack.runtime
    stack.runtime = Runtime(dict(rt.environ), aws=rt.aws, config=config, gitlab=rt.gitlab, clock=rt.clock)
    stack.runtime.__dict__["fleet"] = RecordingFleet(rt.aws)  # moto lacks CompleteLifecycleAction
    stack.config = config
    install(stack.runtime)


def record(stack: Stack, job_id: int, status: str) -> None:
    rt = stack.runtime
    rt.store.record_job(JobRecord(rt.gitlab_host, job_id, status, pool="linux"), rt.now())


def dirty(client: Client) -> dict[str, Any]:
    event = client.events.generate_sqs_event(
        message_bodies=[json.dumps({"pool": "linux", "reason": "job"})], queue_name="test-dirty.fifo"
    )
    return dict(client.lambda_.invoke("pool_dirty", event).payload)


def tick(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    return dict(client.lambda_.invoke("tick", event).payload)


def live(stack: Stack) -> list[str]:
    return sorted(i["InstanceId"] for i in describe_group(stack.aws, "test-linux")["Instances"])


def prepare(stack: Stack, client: Client, instance_id: str) -> int:
    """The launch hook runs for the instance (moto has it InService at once); returns its runner id."""
    event = json.loads((FIXTURES / "aws_lifecycle_launch.json").read_text())
    event["detail"].update(
        AutoScalingGroupName="test-linux", EC2InstanceId=instance_id, LifecycleActionToken=TOKEN
    )
    out = client.lambda_.invoke("machine_events", event).payload
    assert out["result"] == "CONTINUE"
    return int(out["runner_id"])


def test_an_in_service_machine_whose_runner_never_polled_holds_back_growth(
    world: tuple[Stack, Client], fake_gitlab: FakeGitLab
) -> None:
    stack, client = world
    redeploy(stack, max_growth_rate=1)
    # GIVEN a pending job, and the machine launched for it: hook completed, InService, runner not polling yet
    record(stack, 1, "pending")
    assert dirty(client) == {"batchItemFailures": []}
    (first,) = live(stack)
    runner = prepare(stack, client, first)
    assert fake_gitlab.runners[runner].contacted_at is None
    # WHEN a second job goes pending and the pool reconciles
    stack.advance(seconds=30)
    record(stack, 2, "pending")
    dirty(client)
    # THEN no second machine yet: the first is still booting, and max_growth_rate 1 allows one at a time
    assert live(stack) == [first] and stack.desired("test-linux") == 1
    machine = stack.runtime.store.get_machine(first)
    assert machine is not None and machine.ready_at is None
    # WHEN the runner first polls GitLab (its boot is over), and the pool reconciles again
    stack.advance(seconds=30)
    fake_gitlab.runner_contact(runner)
    dirty(client)
    # THEN the machine is ready, and the second machine launches
    assert stack.desired("test-linux") == 2
    machine = stack.runtime.store.get_machine(first)
    assert machine is not None and machine.ready_at == stack.clock[0]


def test_the_idle_clock_starts_when_the_runner_first_contacts_gitlab(
    world: tuple[Stack, Client], fake_gitlab: FakeGitLab
) -> None:
    stack, client = world
    redeploy(stack, boot_timeout=timedelta(minutes=30))  # idle_count 0, idle_time 10m
    # GIVEN a machine launched for a job that was canceled before the machine's runner ever polled
    record(stack, 1, "pending")
    dirty(client)
    (machine,) = live(stack)
    runner = prepare(stack, client, machine)
    record(stack, 1, "canceled")
    # WHEN ticks run for 12 minutes of a slow boot (longer than idle_time)
    for _ in range(12):
        stack.advance(minutes=1)
        tick(client)
    # THEN the machine stays: it was never idle, it is booting
    assert live(stack) == [machine]
    # WHEN its runner first polls at minute 12, and ticks run 9 more minutes
    fake_gitlab.runner_contact(runner)
    for _ in range(9):
        stack.advance(minutes=1)
        tick(client)
    # THEN it stays (idle 9 of its 10 minutes)...
    assert live(stack) == [machine]
    # ...and goes once idle_time has passed since the contact: paused at that tick, ended at the next one,
    # past the two-phase drain's window (`scaler.drain_window`, 60 s by default)
    stack.advance(minutes=2)
    tick(client)
    stack.advance(minutes=1)
    tick(client)
    assert live(stack) == []


def test_a_machine_whose_runner_never_polls_is_removed_after_boot_timeout(
    world: tuple[Stack, Client], fake_gitlab: FakeGitLab
) -> None:
    stack, client = world
    redeploy(
        stack,
        boot_timeout=timedelta(minutes=20),
        policy=(Policy(idle_count=1, idle_time=timedelta(minutes=10)),),
    )
    # GIVEN an idle_count spare whose user data failed after the launch hook: InService, never polls
    stack.advance(seconds=1)
    dirty(client)
    (machine,) = live(stack)
    prepare(stack, client, machine)
    # WHEN the pool reconciles past boot_timeout
    stack.advance(minutes=19)
    dirty(client)
    assert live(stack) == [machine]
    stack.advance(minutes=2)
    dirty(client)
    stack.advance(minutes=1)  # the two-phase drain's window (`scaler.drain_window`, 60 s by default)
    dirty(client)
    # THEN it is removed as stuck, and a replacement launches for the idle target
    after = live(stack)
    assert machine not in after and len(after) == 1


def test_the_contact_check_is_made_once_per_window_and_writes_no_item_of_its_own(
    world: tuple[Stack, Client], fake_gitlab: FakeGitLab
) -> None:
    """The window last checked lives on the pool's lease item, which every reconcile takes and gives back
    anyway: read with the lease, written with its release. No key item per window."""
    stack, client = world
    redeploy(stack)
    # GIVEN an in-service machine whose runner never polled, at the start of a contact window
    record(stack, 1, "pending")
    dirty(client)
    (machine,) = live(stack)
    prepare(stack, client, machine)
    stack.advance(seconds=15 - int(stack.clock[0].timestamp()) % 15)

    def runner_lists() -> int:
        listed = ("/runners/all", "/runners", "/groups/:group/runners", "/projects/:project/runners")
        return sum(fake_gitlab.request_count("GET", route) for route in listed)

    lists, puts = runner_lists(), stack.runtime.aws.calls["dynamodb.PutItem"]
    # WHEN the pool reconciles three times within that window
    for _ in range(3):
        assert dirty(client) == {"batchItemFailures": []}
        stack.advance(seconds=4)
    # THEN GitLab was asked for the never-contacted runners once, and no item was written for it
    assert runner_lists() - lists == 1
    assert stack.runtime.aws.calls["dynamodb.PutItem"] == puts
    items = stack.aws.paginate("dynamodb", "scan", "Items", TableName=stack.runtime.names.table)
    assert not [i for i in items if str(i["pk"]["S"]).startswith("EVENT#contact")]
    # WHEN the next window comes, THEN it asks again
    stack.advance(seconds=15)
    dirty(client)
    assert runner_lists() - lists == 2
