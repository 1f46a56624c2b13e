"""The "pool dirty" queue against AWS's rules for SQS event sources, through the app's `pool_dirty` handler.

A message is failed (a batch item failure, so SQS redelivers it and holds back the pool's FIFO group) only
when the reconcile's apply failed. A step beside the apply (dedicated hosts) that fails is a pool fault: a
metric and a log line, and the next tick tries again. The queue's visibility timeout is at least six times
the function's timeout, as AWS asks ("Using Lambda with Amazon SQS", AWS Lambda Developer Guide:
"set the source queue's visibility timeout to at least six times the timeout that you configure on your
function"), so a slow invocation's message is never handed to a second one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients, fault
from chalicelib.resources import DIRTY_FUNCTION_TIMEOUT_SECONDS, queue_attributes
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack
from tests.functional.test_app_reconcile import redeploy
from tests.functional.test_hosts_app import HostStack, host_stack  # noqa: F401  (fixture)
from tests.functional.test_lifecycle import emitted

ROOT = Path(__file__).resolve().parents[2]
#: Chalice's own default when `.chalice/config.json` sets no `lambda_timeout` (Chalice config docs).
CHALICE_DEFAULT_TIMEOUT = 60


def dirty(client: Client, pool: str) -> dict[str, Any]:
    event = client.events.generate_sqs_event(
        message_bodies=[json.dumps({"pool": pool, "reason": "job"})], queue_name="test-dirty.fifo"
    )
    payload: dict[str, Any] = client.lambda_.invoke("pool_dirty", event).payload
    return payload


def test_a_failed_host_step_is_a_pool_fault_not_a_failed_message(
    host_stack: HostStack,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a macOS pool with one host that takes a machine, and two jobs pending: one machine launches
    # now, and the host step wants a second host, which AWS refuses
    host_stack.record_pending("macos", 1)
    host_stack.tick()  # allocates the first host
    host_stack.advance(minutes=1)
    host_stack.record_pending("macos", 2)
    host_stack.world.fail_next_allocate = "UnauthorizedOperation"
    capsys.readouterr()
    # WHEN the pool's dirty message is handled
    with Client(app) as client:
        payload = dirty(client, "macos")
    # THEN the message succeeds (its retry would only repeat the refusal and block the pool's group)
    assert payload == {"batchItemFailures": []}
    # AND the apply happened: the free host's machine launched
    assert host_stack.desired("macos") == 1
    # AND the failed step is a pool fault with a metric, for the alarm and the operator
    (blob,) = emitted(capsys, "PoolFaults")
    assert (blob["PoolFaults"], blob["pool"]) == ([1.0], "macos")


def test_a_failed_apply_still_fails_its_message(stack: Stack) -> None:
    # GIVEN a pending job, and Auto Scaling refusing to change the group's capacity
    job = JobRecord("gitlab.example.com", 1, "pending", pool="linux")
    stack.runtime.store.record_job(job, stack.clock[0])

    def refuse(service: str, operation: str) -> dict[str, Any] | None:
        return fault("AccessDenied", 403) if operation == "SetDesiredCapacity" else None

    redeploy(stack, aws=AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=refuse))
    # WHEN the pool's dirty message is handled
    # THEN the invocation fails (its batch of one failed), so Lambda leaves the message on the queue for SQS
    # to deliver again and dead-letter in the end, on both deploy paths ("Handling errors for an SQS event
    # source in Lambda")
    with Client(app) as client, pytest.raises(BatchProcessingError, match="All records failed"):
        dirty(client, "linux")
    assert stack.desired("test-linux") == 0


def test_visibility_timeout_is_six_times_the_function_timeout_on_both_deploy_paths() -> None:
    # GIVEN the queue attributes every path creates (local bootstrap, CDK) and the chalice config
    config = json.loads((ROOT / ".chalice" / "config.json").read_text(encoding="utf-8"))
    timeouts = {
        stage: config["stages"][stage]
        .get("lambda_functions", {})
        .get("pool_dirty", {})
        .get("lambda_timeout", config.get("lambda_timeout", CHALICE_DEFAULT_TIMEOUT))
        for stage in config["stages"]
    }
    # THEN every stage's pool_dirty timeout is the one the queue is sized for
    assert set(timeouts.values()) == {DIRTY_FUNCTION_TIMEOUT_SECONDS}
    # AND the visibility timeout is at least six times it (AWS's guidance for SQS event sources)
    assert int(queue_attributes()["VisibilityTimeout"]) >= 6 * DIRTY_FUNCTION_TIMEOUT_SECONDS
