"""A launch finds the runner an earlier attempt left by the id stored with the machine, never by paging
through every runner in scope (`GET /runners/all` grows with the whole instance's fleet)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.rotation import ensure_base_certs_for
from chalicelib.store import MachineRecord
from tests.functional.conftest import Stack
from tests.functional.test_lifecycle import RecordingFleet, invoke, launched_instance, lifecycle_event
from tests.gitlab_fixtures import T0
from toolkit.devtools.fake_gitlab import FakeGitLab


@pytest.fixture
def launch(gitlab_stack: Stack) -> Iterator[tuple[Stack, RecordingFleet, Client]]:
    fleet = RecordingFleet(gitlab_stack.aws)
    gitlab_stack.runtime.__dict__["fleet"] = fleet
    ensure_base_certs_for(gitlab_stack.runtime.cert_ports)
    with Client(app) as client:
        yield gitlab_stack, fleet, client


LISTINGS = {"/runners/all", "/runners", "/groups/:group/runners", "/projects/:project/runners"}


def runner_listings(fake: FakeGitLab) -> int:
    return sum(1 for r in fake.request_log if r.method == "GET" and r.route in LISTINGS)


def test_a_launch_lists_no_runners(launch: Any, fake_gitlab: FakeGitLab) -> None:
    # GIVEN GitLab holds many runners of other machines and other teams
    stack, _fleet, client = launch
    for n in range(30):
        fake_gitlab.register_runner(description=f"someone-else/{n}")
    instance = launched_instance(stack)
    # WHEN a machine launches (and its launch event comes twice)
    event = lifecycle_event("aws_lifecycle_launch.json", instance)
    out = invoke(client, event)
    invoke(client, copy.deepcopy(event))
    # THEN it got its runner without one runner listing
    assert out["result"] == "CONTINUE"
    assert stack.runtime.store.get_machine(instance).runner_id is not None
    assert runner_listings(fake_gitlab) == 0


def test_a_retried_launch_replaces_the_runner_its_record_names(launch: Any, fake_gitlab: FakeGitLab) -> None:
    # GIVEN an attempt that created the machine's runner and stored its id, then stopped before the secret
    stack, _fleet, client = launch
    instance = launched_instance(stack)
    left, _token = fake_gitlab.register_runner(description=f"runner-scaler/linux/{instance}")
    stack.runtime.store.put_machine(
        MachineRecord(instance_id=instance, pool="linux", launched_at=T0, runner_id=left)
    )
    # WHEN Lambda retries the launch
    out = invoke(client, lifecycle_event("aws_lifecycle_launch.json", instance))
    # THEN the left runner (whose token nobody holds) is deleted by id and a new one takes its place
    assert out["result"] == "CONTINUE"
    assert left not in fake_gitlab.runners and len(fake_gitlab.runners) == 1
    assert stack.runtime.store.get_machine(instance).runner_id in fake_gitlab.runners
    assert runner_listings(fake_gitlab) == 0
