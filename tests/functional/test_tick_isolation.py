"""One step of the tick failing stops none of the others: heal, the sweep and the certificate check each
fail alone (logged, counted in TickStepFailed), and every pool is still reconciled."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.errors import AwsCallError
from chalicelib.resources import ENV_TABLE
from chalicelib.runtime import Runtime, install
from chalicelib.store import DynamoStore
from tests.functional.conftest import Stack
from tests.functional.test_webhooks import Pipeline, post
from toolkit.devtools.fake_gitlab import FakeGitLab


class StoreFailingOneGate(DynamoStore):
    """The real store, except that the once-per-interval gate of one tick step fails as a throttled
    DynamoDB would after every retry: that step cannot run, the rest of the store answers."""

    def __init__(self, *args: Any, failing_prefix: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing_prefix = failing_prefix

    def first_seen(self, key: str, now: datetime) -> bool:
        if key.startswith(self.failing_prefix):
            raise AwsCallError("dynamodb", "put_item", "ThrottlingException", "rate exceeded", retryable=True)
        return super().first_seen(key, now)


def tick(client: Client) -> Any:
    return client.lambda_.invoke(
        "tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    ).payload


@pytest.mark.parametrize("failing", ["lost-job-scan#", "sweep#", "certs#"], ids=["heal", "sweep", "certs"])
def test_a_failing_tick_step_leaves_the_reconcile_and_the_other_steps_running(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, failing: str
) -> None:
    # GIVEN a pending job the webhook recorded (no machine yet), and one tick step whose store gate fails
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",))
    with Client(app) as client:
        assert post(client, p.hook(p.job_ids[0], "pending")).status_code == 202
    rt = gitlab_stack.runtime
    failing_rt = Runtime(
        dict(rt.environ), aws=gitlab_stack.aws, config=rt.config, gitlab=rt.gitlab, clock=rt.clock
    )
    table = rt.environ.get(ENV_TABLE) or rt.names.table
    failing_rt.store = StoreFailingOneGate(gitlab_stack.aws, table, failing_prefix=failing)
    install(failing_rt)
    # WHEN the tick runs
    with Client(app) as client:
        payload = tick(client)
    # THEN the pool is reconciled all the same: the job gets its machine
    assert payload["pools"]["linux"]["desired"] == 1
    assert gitlab_stack.desired("test-linux") == 1
    # AND the steps that did not fail ran (the certificate check created the base certificates)
    certs = gitlab_stack.aws.call("secretsmanager", "list_secrets")["SecretList"]
    created = any(s["Name"] == "test/docker-base-certs" for s in certs)
    assert created is (failing != "certs#")
