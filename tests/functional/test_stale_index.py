"""DynamoDB's index reads are eventually consistent (developer guide, "DynamoDB read consistency": "All reads
from GSIs and streams are eventually consistent"). With the test AWS lagging index reads (tests/stale_index),
the scaler never loses what the launch handler wrote, and never terminates a machine on a stale read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.resources import Names
from chalicelib.rotation import ensure_base_certs_for
from chalicelib.store import DynamoStore, MachineRecord
from tests.builders import T0
from tests.functional.conftest import Stack
from tests.functional.test_lifecycle import RecordingFleet, invoke, launched_instance, lifecycle_event
from tests.stale_index import StaleIndexAws
from toolkit.devtools.bootstrap import ensure_table
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec

LAG = timedelta(seconds=30)


@pytest.fixture
def aws(mocked_aws: None) -> StaleIndexAws:
    """The moto chain's AwsClients, lagging index reads (the stack sets the clock and the lag)."""
    return StaleIndexAws(clock=lambda: T0, lag=timedelta(0), sleep=lambda _s: None)


@pytest.fixture
def stale(gitlab_stack: Stack) -> Iterator[tuple[Stack, Client]]:
    aws = gitlab_stack.aws
    assert isinstance(aws, StaleIndexAws)
    aws.clock = lambda: gitlab_stack.clock[0]
    aws.lag = LAG
    gitlab_stack.runtime.__dict__["fleet"] = RecordingFleet(aws)
    ensure_base_certs_for(gitlab_stack.runtime.cert_ports)
    with Client(app) as client:
        yield gitlab_stack, client


def tick(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    return client.lambda_.invoke("tick", event).payload  # type: ignore[no-any-return]


def live(stack: Stack) -> list[str]:
    group = stack.runtime.fleet.read_groups(["test-linux"])["test-linux"]
    return [i.instance_id for i in group.live_instances()]


def test_an_index_read_sees_a_write_only_after_the_lag(aws: StaleIndexAws) -> None:
    # GIVEN a table behind an AWS whose index reads lag writes by 30 s
    now = [T0]
    aws.clock, aws.lag = (lambda: now[0]), LAG
    ensure_table(aws, Names("test").table)
    store = DynamoStore(aws, Names("test").table)
    # WHEN a machine is recorded, then updated
    store.put_machine(MachineRecord("i-0000000000000000a", "linux", T0, runner_id=7))
    # THEN the key read (consistent) sees it at once, the pool index only 30 s later
    assert store.get_machine("i-0000000000000000a") is not None
    assert store.machines("linux") == []
    now[0] += timedelta(seconds=29)
    store.mark_ready("i-0000000000000000a", now[0])
    now[0] += timedelta(seconds=1)
    (seen,) = store.machines("linux")
    assert seen.runner_id == 7 and seen.ready_at is None  # the update made 1 s ago is not visible yet
    now[0] += LAG
    (seen,) = store.machines("linux")
    assert seen.ready_at is not None and aws.stale_reads == 3


def test_adoption_on_a_stale_index_never_erases_the_launch_record_nor_kills_the_machine(
    stale: tuple[Stack, Client], fake_gitlab: FakeGitLab
) -> None:
    stack, client = stale
    stack.clock[0] = datetime.now(UTC)  # moto stamps an instance's LaunchTime with the wall clock
    # GIVEN a machine whose launch handler has just created its runner and recorded it...
    instance = launched_instance(stack)
    invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    runner = stack.runtime.store.get_machine(instance).runner_id  # type: ignore[union-attr]
    assert runner is not None
    # ...and a tick in the same instant, whose index read does not show that record yet
    tick(client)
    # WHEN the runner comes up and takes a job whose webhook never arrives, and ticks run past boot_timeout
    fake_gitlab.runner_contact(runner)
    project = fake_gitlab.create_project("group/app")
    fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))])
    assert fake_gitlab.request_job(runner) is not None
    for minutes in (60, 5, 5):
        stack.advance(minutes=minutes)
        tick(client)
    # THEN the busy machine lives, and its record still holds the runner the launch handler created
    assert instance in live(stack)
    assert stack.runtime.store.get_machine(instance).runner_id == runner  # type: ignore[union-attr]
