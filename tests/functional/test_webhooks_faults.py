"""`POST /webhooks/gitlab` when AWS fails past every retry: a 503 with a reason, never a 500, nothing
half-written, and a later delivery of the same event is applied (no mark of it was kept on the job)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients, fault
from chalicelib.runtime import Runtime, install
from tests.functional.conftest import Stack
from tests.functional.test_webhooks import Pipeline, job, post
from toolkit.devtools.fake_gitlab import FakeGitLab


class Outage:
    """Fails the named `service.Operation` calls with a 5xx while `on`; counts what it failed."""

    def __init__(self, *operations: str) -> None:
        self.operations = set(operations)
        self.on = True
        self.failed = 0

    def __call__(self, service: str, operation: str) -> dict[str, Any] | None:
        if self.on and f"{service}.{operation}" in self.operations:
            self.failed += 1
            return fault("InternalServerError", 500)
        return None


def _install_outage(stack: Stack, outage: Outage) -> None:
    """The stack's runtime, but every AWS call of the app goes through `outage` (the test reads around it)."""
    flaky = AwsClients(region="us-east-1", sleep=lambda _s: None, attempts=2, fault_injector=outage)
    rt = stack.runtime
    install(Runtime(dict(rt.environ), aws=flaky, config=rt.config, gitlab=rt.gitlab, clock=rt.clock))


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(app) as c:
        yield c


@pytest.mark.parametrize(
    "operation",
    ["secretsmanager.GetSecretValue", "dynamodb.GetItem", "dynamodb.UpdateItem"],
    ids=["token-secret", "tag-cache-read", "job-write"],
)
def test_an_aws_outage_is_a_503_and_the_resend_is_applied(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client, operation: str
) -> None:
    # GIVEN a pending job's hook, and AWS failing one step of the webhook past every retry
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",))
    body = p.hook(p.job_ids[0], "pending")
    outage = Outage(operation)
    _install_outage(gitlab_stack, outage)
    # WHEN GitLab delivers it
    failed = post(client, body, idempotency_key="k-outage")
    # THEN the answer is a 503 with a reason, the job is not recorded and no reconcile was asked for
    assert failed.status_code == 503, failed.body
    assert json.loads(failed.body)["error"] == "state store unavailable, retry"
    assert outage.failed >= 1
    assert job(gitlab_stack, p.job_ids[0]) is None
    assert gitlab_stack.queued_pools() == []
    # WHEN AWS is back and the same delivery is resent
    outage.on = False
    again = post(client, body, idempotency_key="k-outage")
    # THEN it is applied, not dropped as a duplicate
    assert again.status_code == 202, again.body
    assert job(gitlab_stack, p.job_ids[0]).status == "pending"
    install(gitlab_stack.runtime)  # pool_dirty runs in a container of its own
    assert gitlab_stack.resolve_asks() == 1
    assert gitlab_stack.queued_pools() == ["linux"]


def test_a_missing_webhook_token_secret_is_a_503_not_a_500(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    """Secrets Manager answers ResourceNotFoundException, which the secrets adapter turns into NotFoundError:
    the webhook says the store is unavailable (GitLab retries) rather than failing with a 500."""
    # GIVEN a pending job's hook, and the webhook-token secret deleted outside the scaler
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",))
    body = p.hook(p.job_ids[0], "pending")
    name = (
        gitlab_stack.runtime.config.gitlab.webhook_tokens_secret
        or gitlab_stack.runtime.names.webhook_tokens_secret
    )
    gitlab_stack.aws.call("secretsmanager", "delete_secret", SecretId=name, ForceDeleteWithoutRecovery=True)
    install(
        Runtime(dict(gitlab_stack.runtime.environ), aws=gitlab_stack.aws, config=gitlab_stack.runtime.config)
    )
    # WHEN GitLab delivers it
    answer = post(client, body, idempotency_key="k-no-secret")
    # THEN the answer is a 503 and nothing was recorded
    assert answer.status_code == 503, answer.body
    assert job(gitlab_stack, p.job_ids[0]) is None
