"""One step of the tick failing stops none of the others: heal fails alone (logged, counted in
TickStepFailed), a failed claim of the periodic steps skips them for one tick, and every pool is still
reconciled."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


class StoreFailingOneCall(DynamoStore):
    """The real store, except that one call fails as a throttled DynamoDB would after every retry: the
    tick's claim of its periodic steps (`claim_windows`: then no step runs this tick), or a call only heal
    makes (`note_projects`: heal fails alone). The rest of the store answers."""

    def __init__(self, *args: Any, failing: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = failing

    def claim_windows(self, windows: Mapping[str, int], now: datetime) -> set[str]:
        self._fail_if("claim_windows")
        return super().claim_windows(windows, now)

    def note_projects(self, gitlab: str, project_ids: Iterable[int], now: datetime) -> None:
        self._fail_if("note_projects")
        super().note_projects(gitlab, project_ids, now)

    def _fail_if(self, name: str) -> None:
        if name == self.failing:
            raise AwsCallError("dynamodb", name, "ThrottlingException", "rate exceeded", retryable=True)


def tick(client: Client) -> Any:
    return client.lambda_.invoke(
        "tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    ).payload


@pytest.mark.parametrize("failing", ["note_projects", "claim_windows"], ids=["heal", "claim"])
def test_a_failing_tick_step_leaves_the_reconcile_and_the_other_steps_running(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, failing: str
) -> None:
    # GIVEN a pending job the webhook recorded (no machine yet), and a store call of the tick that fails
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",))
    with Client(app) as client:
        assert post(client, p.hook(p.job_ids[0], "pending")).status_code == 202
    rt = gitlab_stack.runtime
    failing_rt = Runtime(
        dict(rt.environ), aws=gitlab_stack.aws, config=rt.config, gitlab=rt.gitlab, clock=rt.clock
    )
    table = rt.environ.get(ENV_TABLE) or rt.names.table
    failing_rt.store = StoreFailingOneCall(gitlab_stack.aws, table, failing=failing)
    install(failing_rt)
    # WHEN the tick runs
    with Client(app) as client:
        payload = tick(client)
    # THEN the pool is reconciled all the same: the job gets its machine
    assert payload["pools"]["linux"]["desired"] == 1
    assert gitlab_stack.desired("test-linux") == 1
    # AND the steps that did not fail ran (the certificate check created the base certificates), unless
    # the claim of the periodic steps failed: then none ran, and the next tick claims them again
    certs = gitlab_stack.aws.call("secretsmanager", "list_secrets")["SecretList"]
    created = any(s["Name"] == "test/docker-base-certs" for s in certs)
    assert created is (failing != "claim_windows")
