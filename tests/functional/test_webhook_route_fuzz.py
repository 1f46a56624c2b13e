"""Fuzzed deliveries through the real route (Chalice app, moto): never a 5xx, and a rejected, ignored or
duplicate delivery writes no job and asks for no reconcile. The 10,000-example run of the same strategies
(tests/unit/test_webhook_fuzz.py) drives the use case in memory; this one proves the route and the AWS
adapters keep the promise too."""

from __future__ import annotations

from typing import Any

from chalice.test import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from app import app
from tests.functional.conftest import WEBHOOK_TOKENS, Stack
from tests.unit.test_webhook_fuzz import VALID, bodies

#: What an HTTP header can carry on the wire (latin-1 printable); the route never sees other characters.
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Gitlab-Token": st.sampled_from([WEBHOOK_TOKENS[0], "nope", ""]) | header_values,
        "X-Gitlab-Event": st.sampled_from(["Job Hook", "Pipeline Hook", "Push Hook", "Bogus"])
        | header_values,
        "Idempotency-Key": header_values,
        "X-Gitlab-Event-UUID": header_values,
        "Content-Type": st.just("application/json"),
    },
)


def _jobs(stack: Stack) -> int:
    items = stack.aws.paginate("dynamodb", "scan", "Items", TableName=stack.runtime.names.table)
    return sum(1 for i in items if str(i["pk"]["S"]).startswith("JOB#"))


def test_fuzzed_deliveries_through_the_route_never_5xx_and_rejections_change_nothing(stack: Stack) -> None:
    assert VALID["object_kind"] == "build"  # the mutated payloads start from a real Job Hook

    with Client(app) as client:

        @settings(max_examples=300, deadline=None)
        @given(hdrs=headers, body=bodies)
        def deliver(hdrs: dict[str, str], body: bytes) -> None:
            jobs_before = _jobs(stack)
            stack.queued_pools()  # start from an empty queue
            response: Any = client.http.post("/webhooks/gitlab", headers=hdrs, body=body)
            assert response.status_code < 500, response.body
            if response.status_code >= 400 or response.status_code == 200 or b'"ignored"' in response.body:
                assert _jobs(stack) == jobs_before
                assert stack.queued_pools() == []
            if hdrs.get("X-Gitlab-Token") != WEBHOOK_TOKENS[0]:
                assert response.status_code in {401, 413}

        deliver()
