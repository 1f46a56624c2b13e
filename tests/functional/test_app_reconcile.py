"""Through the Chalice app: the dirty-queue handler and the tick move real (moto) Auto Scaling groups."""

from __future__ import annotations

import json

from chalice.test import Client

from app import app
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack


def record(stack: Stack, job_id: int, status: str, pool: str = "linux", machine_id: str = "") -> None:
    job = JobRecord("gitlab.example.com", job_id, status, pool=pool, machine_id=machine_id)
    stack.runtime.store.record_job(job, stack.runtime.now())


def sqs_event(client: Client, *pools: str) -> dict:  # type: ignore[type-arg]
    bodies = [json.dumps({"pool": p, "reason": "job"}) for p in pools]
    return client.events.generate_sqs_event(message_bodies=bodies, queue_name="test-dirty.fifo")


def test_dirty_message_reconciles_the_named_pool_only(stack: Stack) -> None:
    # GIVEN pending jobs in two pools
    record(stack, 1, "pending")
    record(stack, 2, "pending")
    record(stack, 3, "pending", pool="gpu")
    # WHEN a batch names the linux pool twice
    with Client(app) as client:
        response = client.lambda_.invoke("pool_dirty", sqs_event(client, "linux", "linux"))
    # THEN linux scales to 2, gpu is untouched, and no item failed
    assert response.payload == {"batchItemFailures": []}
    assert stack.desired("test-linux") == 2
    assert stack.desired("test-gpu") == 0


def test_malformed_dirty_message_is_dropped_not_retried(stack: Stack) -> None:
    with Client(app) as client:
        event = client.events.generate_sqs_event(
            message_bodies=["not json", '{"pool": "nope"}'], queue_name="q"
        )
        response = client.lambda_.invoke("pool_dirty", event)
    assert response.payload == {"batchItemFailures": []}


def test_tick_reconciles_every_pool_and_heals(stack: Stack) -> None:
    record(stack, 1, "pending")
    record(stack, 2, "pending", pool="gpu")
    with Client(app) as client:
        response = client.lambda_.invoke(
            "tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
        )
    assert response.payload["pools"]["linux"]["desired"] == 1
    assert (stack.desired("test-linux"), stack.desired("test-gpu")) == (1, 1)
