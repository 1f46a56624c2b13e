"""Through the Chalice app: the dirty-queue handler and the tick move real (moto) Auto Scaling groups."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ReadTimeoutError
from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients, fault
from chalicelib.errors import AwsCallError
from chalicelib.runtime import Runtime, install
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack, describe_group
from tests.stale_index import StaleIndexAws


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


def test_above_tick_inline_pools_the_tick_queues_each_pool_and_pool_dirty_scales_it(stack: Stack) -> None:
    # GIVEN pending jobs in both pools, and a deployment whose tick reconciles no pool itself
    record(stack, 1, "pending")
    record(stack, 2, "pending", pool="gpu")
    record(stack, 3, "pending", pool="gpu")
    stack.fan_out()
    with Client(app) as client:
        # WHEN the tick runs
        payload = tick(client)
        # THEN it reconciled none inline and queued one message per pool, in that pool's message group
        assert payload == {"pools": {}, "queued": ["linux", "gpu"], "unqueued": {}}
        assert (stack.desired("test-linux"), stack.desired("test-gpu")) == (0, 0)
        messages = stack.queued_messages()
        assert sorted(json.loads(m)["pool"] for m in messages) == ["gpu", "linux"]
        # WHEN Lambda delivers each message to its own pool_dirty invocation
        for body in messages:
            event = client.events.generate_sqs_event(message_bodies=[body], queue_name="test-dirty.fifo")
            assert client.lambda_.invoke("pool_dirty", event).payload == {"batchItemFailures": []}
    # THEN each pool scaled for its own pending jobs
    assert (stack.desired("test-linux"), stack.desired("test-gpu")) == (1, 2)


# -- machine lifecycles through the handlers ---------------------------------------------------------


def tick(client: Client) -> dict:  # type: ignore[type-arg]
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    return dict(client.lambda_.invoke("tick", event).payload)


def dirty(client: Client, pool: str = "linux") -> dict:  # type: ignore[type-arg]
    return dict(client.lambda_.invoke("pool_dirty", sqs_event(client, pool)).payload)


def live(stack: Stack, asg: str = "test-linux") -> dict[str, bool]:
    """The group's live instances and whether each is protected from scale-in."""
    group = describe_group(stack.aws, asg)
    return {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in group["Instances"]}


def ec2_state(stack: Stack, instance_id: str) -> str:
    reservations = stack.aws.call("ec2", "describe_instances", InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def redeploy(stack: Stack, aws: AwsClients | None = None, **linux: object) -> None:
    """A new deployment (a fresh container) on the same stack: its linux pool changed by `linux`, and its
    AWS calls made through `aws` when given."""
    pools = [p.model_copy(update=linux) if p.name == "linux" else p for p in stack.config.pools]
    config = stack.config.model_copy(update={"pools": pools})
    stack.runtime = Runtime(
        dict(stack.runtime.environ), aws=aws or stack.aws, config=config, clock=stack.runtime.clock
    )
    stack.config = config
    install(stack.runtime)


def test_used_up_machine_is_terminated_through_the_dirty_queue(stack: Stack) -> None:
    # GIVEN a pending job that got its machine (max_use_count 1), adopted and protected by the next tick
    record(stack, 1, "pending")
    with Client(app) as client:
        assert dirty(client) == {"batchItemFailures": []}
        stack.advance(minutes=1)
        tick(client)
        ((machine, protected),) = live(stack).items()
        assert protected
        # WHEN the job runs on it, then succeeds, and each change marks the pool dirty
        stack.advance(minutes=1)
        record(stack, 1, "running", machine_id=machine)
        dirty(client)
        assert live(stack) == {machine: True} and stack.desired("test-linux") == 1
        stack.advance(minutes=3)
        record(stack, 1, "success", machine_id=machine)
        assert dirty(client) == {"batchItemFailures": []}
    # THEN the used-up machine is terminated and the group's capacity drops with it
    assert stack.desired("test-linux") == 0 and live(stack) == {}
    assert ec2_state(stack, machine) in {"shutting-down", "terminated"}


def test_idle_machine_is_terminated_by_the_tick_only_after_idle_time(stack: Stack) -> None:
    # GIVEN a machine launched for a job that was canceled before it started (idle_count 0, idle_time 10m)
    record(stack, 1, "pending")
    with Client(app) as client:
        dirty(client)
        record(stack, 1, "canceled")
        stack.advance(minutes=1)
        tick(client)  # first seen in service: idle from now
        (machine,) = live(stack)
        # WHEN ticks run 9 minutes later, THEN the idle machine stays, protected
        stack.advance(minutes=9)
        assert tick(client)["pools"]["linux"] == {"desired": 1, "errors": []}
        assert live(stack) == {machine: True}
        # WHEN a tick runs past idle_time, THEN it is terminated and capacity drops
        stack.advance(minutes=2)
        assert tick(client)["pools"]["linux"] == {"desired": 0, "errors": []}
    assert stack.desired("test-linux") == 0 and live(stack) == {}
    assert ec2_state(stack, machine) in {"shutting-down", "terminated"}


def test_busy_machines_are_never_terminated_by_the_handlers(stack: Stack) -> None:
    # GIVEN DynamoDB index reads that answer with the table as it was 30 s ago (tests/stale_index)...
    lagging = StaleIndexAws(clock=lambda: stack.clock[0], lag=timedelta(seconds=30), sleep=lambda _s: None)
    stack.aws = lagging  # every later deployment of this test calls AWS through it
    redeploy(stack)
    # ...and three machines, each running a job
    for n in range(3):
        record(stack, n, "pending")
    with Client(app) as client:
        dirty(client)
        stack.advance(minutes=1)
        tick(client)
        machines = sorted(live(stack))
        assert len(machines) == 3
        for n, machine in enumerate(machines):
            record(stack, n, "running", machine_id=machine)
        stack.advance(minutes=1)
        dirty(client)
        # WHEN the operator redeploys with max_instances 1, one job ends, and hours of ticks and dirty
        # messages follow
        redeploy(stack, max_instances=1)
        record(stack, 0, "success", machine_id=machines[0])
        for _ in range(3):
            stack.advance(hours=2)
            tick(client)
            dirty(client)
            # THEN the used-up machine goes, and the two busy ones stay, protected, however long it takes
            assert live(stack) == {machines[1]: True, machines[2]: True}
            assert stack.desired("test-linux") == 2
    assert ec2_state(stack, machines[0]) in {"shutting-down", "terminated"}
    assert {ec2_state(stack, m) for m in machines[1:]} == {"running"}
    assert lagging.stale_reads > 0


# -- fault injection through the handlers -----------------------------------------------------------


class Faults:
    """A seeded fault injector (the `AwsClients` contract): throttles and 5xx from Auto Scaling, DynamoDB
    and SQS, and read timeouts (raised, as botocore raises them); `armed` only while the test runs."""

    SERVICES = ("autoscaling", "dynamodb", "sqs")

    def __init__(self, seed: int, rate: float) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.armed = False
        self.injected: Counter[str] = Counter()

    def __call__(self, service: str, operation: str) -> dict[str, Any] | None:
        if not self.armed or service not in self.SERVICES or self.rng.random() >= self.rate:
            return None
        roll = self.rng.random()
        if roll < 0.25:
            self.injected[f"{service}:ReadTimeout"] += 1
            raise ReadTimeoutError(endpoint_url=f"https://{service}.us-east-1.amazonaws.com/")
        code, status = ("InternalFailure", 500) if roll < 0.6 else (THROTTLES[service], 400)
        self.injected[f"{service}:{code}"] += 1
        return fault(code, status)


THROTTLES = {
    "autoscaling": "Throttling",
    "dynamodb": "ProvisionedThroughputExceededException",
    "sqs": "RequestThrottled",
}


def trigger_everything(stack: Stack, client: Client, failed: Counter[str]) -> None:
    """One minute of triggers: the webhook marks the pool dirty, the queue handler runs, then the tick.

    A failure is what Lambda would see: the webhook answers 5xx, a batch item goes back to the queue, a
    scheduled invocation fails; each is counted, and the next minute tries again.
    """
    try:
        stack.runtime.queue.mark_dirty("linux", "job", stack.runtime.now())
    except AwsCallError:
        failed["mark_dirty"] += 1
    for pool in stack.queued_pools():
        try:
            client.lambda_.invoke("pool_dirty", sqs_event(client, pool))
        except BatchProcessingError:  # the one message's reconcile failed: Lambda leaves it on the queue
            failed["pool_dirty"] += 1
    try:
        tick(client)
    except AwsCallError:
        failed["tick"] += 1


def test_fleet_converges_through_the_handlers_under_dynamodb_sqs_faults_and_read_timeouts(
    stack: Stack,
) -> None:
    # GIVEN a deployment whose every Auto Scaling, DynamoDB and SQS call may be throttled, fail with a 5xx or
    # time out (two attempts with backoff per call, then the invocation fails and the next one retries),
    # and whose DynamoDB index reads and scans answer with the table as it was 30 s ago (tests/stale_index)
    faults = Faults(seed=11, rate=0.15)
    sleeps: list[float] = []
    observer = stack.runtime  # the test's own writes and reads never meet a fault
    lagging = StaleIndexAws(
        clock=lambda: stack.clock[0],
        lag=timedelta(seconds=30),
        sleep=sleeps.append,
        attempts=2,
        fault_injector=faults,
    )
    redeploy(stack, aws=lagging)

    def record_all(status: str, machines: list[str]) -> None:
        for n, machine in enumerate(machines):
            job = JobRecord("gitlab.example.com", n, status, pool="linux", machine_id=machine)
            observer.store.record_job(job, observer.now())

    failed: Counter[str] = Counter()
    busy: list[str] = []
    faults.armed = True
    with Client(app) as client:
        for minute in range(24):
            stack.advance(minutes=1)
            if minute == 0:  # six jobs for a pool of at most five machines
                record_all("pending", [""] * 6)
            elif minute == 6:  # every machine takes a job
                busy = sorted(live(stack))
                record_all("running", busy)
            elif minute == 12:  # ...and finishes it
                record_all("success", busy)
                busy = []
            before = set(live(stack))
            # WHEN a minute of webhook, queue handler and tick runs under faults
            trigger_everything(stack, client, failed)
            # THEN no busy machine is ever terminated, and the pool never exceeds max_instances
            after = set(live(stack))
            assert not set(busy) & (before - after), f"minute {minute}: a busy machine was terminated"
            assert len(after) <= 5
    faults.armed = False
    # THEN faults of every kind hit every service, calls were retried with backoff, and yet the fleet
    # converged: the five used-up machines are gone, one machine runs the sixth job, protected
    assert {key.split(":")[0] for key in faults.injected} == set(Faults.SERVICES)
    assert lagging.stale_reads > 0
    assert any(key.endswith("ReadTimeout") for key in faults.injected)
    assert sleeps and all(s > 0 for s in sleeps)
    assert list(live(stack).values()) == [True] and stack.desired("test-linux") == 1


def _held_lease_runtime(stack: Stack, on_sleep: Callable[[float], None]) -> None:
    """The stack's runtime with an observable sleep; another reconcile ("tick") holds the linux lease."""
    rt = stack.runtime
    install(Runtime(dict(rt.environ), aws=rt.aws, config=rt.config, clock=rt.clock, sleep=on_sleep))
    assert rt.store.acquire_lease("linux", "tick", rt.now(), timedelta(seconds=30))


def test_a_dirty_message_waits_out_a_short_lease_instead_of_leaving_its_news_to_the_tick(
    stack: Stack,
) -> None:
    # GIVEN a pending job, and the tick's reconcile of the pool holding its lease (it read before the job)
    record(stack, 1, "pending")
    slept: list[float] = []

    def tick_finishes(seconds: float) -> None:
        slept.append(seconds)
        stack.runtime.store.release_lease("linux", "tick")

    _held_lease_runtime(stack, tick_finishes)
    # WHEN the job's dirty message arrives
    with Client(app) as client:
        response = client.lambda_.invoke("pool_dirty", sqs_event(client, "linux"))
    # THEN it waits once for the lease and reconciles: the machine is asked for now, not a minute later
    assert response.payload == {"batchItemFailures": []}
    assert slept == [0.5]
    assert stack.desired("test-linux") == 1


def test_a_dirty_message_gives_up_on_a_lease_held_too_long(stack: Stack) -> None:
    record(stack, 1, "pending")
    slept: list[float] = []
    _held_lease_runtime(stack, slept.append)
    with Client(app) as client:
        response = client.lambda_.invoke("pool_dirty", sqs_event(client, "linux"))
    # A few short waits, then the news is the holder's or the next tick's; the message is not retried
    assert response.payload == {"batchItemFailures": []}
    assert slept == [0.5, 0.5, 0.5]
    assert stack.desired("test-linux") == 0
