"""Warm-pool lifecycle through the Chalice app (moto + fake GitLab): a machine launched into the warm pool
gets no runner and no secret and is let go; leaving the pool it gets its runner and token exactly as a plain
launch; a machine that ran a job never comes back into service from the pool.

AWS: with a warm pool, the launch hook fires when an instance enters the pool (Origin EC2, Destination
WarmPool) and again when it leaves it (Origin WarmPool, Destination AutoScalingGroup); the terminate hook
fires for a warm instance that ends (WarmPool to EC2) and for one returning to the pool on scale-in
(AutoScalingGroup to WarmPool) (Amazon EC2 Auto Scaling User Guide, "Use lifecycle hooks with a warm pool in
Auto Scaling group", "Warm pool event types and patterns": the fixtures are its examples; the leave and end
events are the same shape with the other Origin/Destination). ABANDON on a launch terminates the instance
("Amazon EC2 Auto Scaling lifecycle hooks"). moto lacks CompleteLifecycleAction: it is recorded here, as in
test_lifecycle.py, whose Stubber test checks the real call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.rotation import ensure_base_certs_for
from chalicelib.store import JobRecord
from tests.functional.conftest import FIXTURES, Stack
from tests.functional.test_lifecycle import RecordingFleet
from toolkit.devtools.fake_gitlab import FakeGitLab

TOKEN = "71514b9d-6a40-4b26-8523-05e7eEXAMPLE"
ASG = "test-gpu"  # the fixture config's on-demand pool: warm_pool = "auto"


@pytest.fixture
def world(gitlab_stack: Stack) -> Iterator[tuple[Stack, RecordingFleet, Client]]:
    fleet = RecordingFleet(gitlab_stack.aws)
    gitlab_stack.runtime.__dict__["fleet"] = fleet
    ensure_base_certs_for(gitlab_stack.runtime.cert_ports)
    with Client(app) as client:
        yield gitlab_stack, fleet, client


def an_instance(stack: Stack) -> str:
    stack.runtime.fleet.set_desired_capacity(ASG, 1)
    return stack.runtime.fleet.read_groups([ASG])[ASG].instances[0].instance_id


def move(name: str, instance_id: str, origin: str, destination: str) -> dict[str, Any]:
    event = json.loads((FIXTURES / name).read_text())
    event["detail"].update(
        AutoScalingGroupName=ASG,
        EC2InstanceId=instance_id,
        LifecycleActionToken=TOKEN,
        Origin=origin,
        Destination=destination,
    )
    return event


def enter(instance_id: str) -> dict[str, Any]:
    return move("aws_lifecycle_launch_into_warm_pool.json", instance_id, "EC2", "WarmPool")


def leave(instance_id: str) -> dict[str, Any]:
    return move("aws_lifecycle_launch_into_warm_pool.json", instance_id, "WarmPool", "AutoScalingGroup")


def back(instance_id: str) -> dict[str, Any]:
    return move("aws_lifecycle_terminate_into_warm_pool.json", instance_id, "AutoScalingGroup", "WarmPool")


def end(instance_id: str) -> dict[str, Any]:
    return move("aws_lifecycle_terminate_into_warm_pool.json", instance_id, "WarmPool", "EC2")


def invoke(client: Client, event: dict[str, Any]) -> dict[str, Any]:
    return client.lambda_.invoke("machine_events", event).payload  # type: ignore[no-any-return]


def secret_exists(stack: Stack, instance_id: str) -> bool:
    names = {s["Name"] for s in stack.aws.call("secretsmanager", "list_secrets").get("SecretList", [])}
    return f"test/machines/{instance_id}" in names


def test_entering_the_warm_pool_creates_no_runner_and_no_secret(world: Any, fake_gitlab: FakeGitLab) -> None:
    stack, fleet, client = world
    instance = an_instance(stack)
    # WHEN the instance launches into the warm pool
    out = invoke(client, enter(instance))
    # THEN no runner exists, no token was written anywhere, nothing is recorded
    assert fake_gitlab.runners == {}
    assert not secret_exists(stack, instance)
    assert stack.runtime.store.get_machine(instance) is None
    # AND the action is completed at once, so Auto Scaling stops it instead of holding it until the timeout
    assert fleet.completed == [(instance, "CONTINUE")] and out["result"] == "CONTINUE"


def test_leaving_the_warm_pool_creates_the_runner_and_delivers_its_token(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    stack, fleet, client = world
    instance = an_instance(stack)
    invoke(client, enter(instance))
    # WHEN it leaves the pool for the group (the scaler raised the desired capacity)
    out = invoke(client, leave(instance))
    # THEN exactly as a plain launch: one runner, its token in the machine's own secret, the machine recorded
    (runner,) = fake_gitlab.runners.values()
    assert runner.description == f"runner-scaler/gpu/{instance}"
    secret = json.loads(
        stack.aws.call("secretsmanager", "get_secret_value", SecretId=f"test/machines/{instance}")[
            "SecretString"
        ]
    )
    assert secret["runner_token"] == runner.token
    assert stack.runtime.store.get_machine(instance).runner_id == runner.id
    assert fleet.completed == [(instance, "CONTINUE"), (instance, "CONTINUE")] and out["result"] == "CONTINUE"


def test_a_machine_that_ran_a_job_never_comes_back_from_the_warm_pool(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    stack, fleet, client = world
    # GIVEN a pending job: the tick gives the pool a warm pool that never takes used machines back
    stack.runtime.store.record_job(
        JobRecord("gitlab.example.com", 7, "pending", pool="gpu"), stack.runtime.now()
    )
    client.lambda_.invoke("tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, []))
    reuse = stack.aws.call("autoscaling", "describe_warm_pool", AutoScalingGroupName=ASG)
    assert reuse["WarmPoolConfiguration"]["InstanceReusePolicy"] == {"ReuseOnScaleIn": False}
    # AND a machine that left the pool and ran that job
    instance = an_instance(stack)
    invoke(client, enter(instance))
    invoke(client, leave(instance))
    assert stack.runtime.store.machine_job_started(instance, 7, stack.runtime.now())
    # WHEN someone turned reuse on by hand and the group sends it back to the pool on scale-in
    invoke(client, back(instance))
    # THEN its runner and secret are gone, as at any termination
    assert fake_gitlab.runners == {} and not secret_exists(stack, instance)
    # AND when Auto Scaling takes it out of the pool again, it is abandoned (terminated), with no new runner
    out = invoke(client, leave(instance))
    assert out["result"] == "ABANDON" and fleet.completed[-1] == (instance, "ABANDON")
    assert fake_gitlab.runners == {} and not secret_exists(stack, instance)


def test_a_warm_machine_that_ends_is_let_go_without_any_gitlab_call(
    world: Any, fake_gitlab: FakeGitLab
) -> None:
    stack, fleet, client = world
    instance = an_instance(stack)
    invoke(client, enter(instance))
    requests_before = sum(fake_gitlab.requests.values())
    # WHEN the pool shrinks and the warm machine is terminated
    out = invoke(client, end(instance))
    # THEN the action completes and GitLab is not asked anything (the machine never had a runner)
    assert out["result"] == "CONTINUE" and fleet.completed[-1] == (instance, "CONTINUE")
    assert sum(fake_gitlab.requests.values()) == requests_before
