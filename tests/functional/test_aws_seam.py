"""The AWS call seam: a throttle, a 5xx, a timeout or an unparseable body is retried with backoff and, past
the last attempt, becomes an AwsCallError the caller can act on (never a raw botocore exception)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.parsers import ResponseParserError
from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker

from chalicelib.aws import RETRYABLE_CODES, AwsClients, fault
from chalicelib.errors import AwsCallError


class Flaky:
    """Fails the first `times` calls of one operation the way `how` says, then lets them through."""

    def __init__(self, operation: str, times: int, how: str) -> None:
        self.operation, self.left, self.how = operation, times, how

    def __call__(self, service: str, operation: str) -> dict[str, Any] | None:
        if operation != self.operation or self.left == 0:
            return None
        self.left -= 1
        if self.how == "html":  # what moto or a proxy sends on a 500: not the service's XML
            raise ResponseParserError("Unable to parse response: b'<!doctype html>500 Internal Server Error'")
        return fault("Throttling") if self.how == "throttle" else fault("InternalFailure", 500)


@pytest.mark.parametrize("how", ["throttle", "5xx", "html"])
def test_transient_failures_are_retried_with_backoff(mocked_aws: None, how: str) -> None:
    slept: list[float] = []
    aws = AwsClients(
        region="us-east-1", sleep=slept.append, attempts=4, fault_injector=Flaky("ListQueues", 2, how)
    )
    assert "QueueUrls" not in aws.call(
        "sqs", "list_queues"
    )  # no queue yet: an empty answer, after two failures
    assert len(slept) == 2 and all(s > 0 for s in slept)  # a jittered backoff before each retry
    assert aws.calls["sqs.ListQueues"] == 3


def test_an_unparseable_answer_past_every_retry_is_a_retryable_aws_call_error(mocked_aws: None) -> None:
    aws = AwsClients(
        region="us-east-1", sleep=lambda _s: None, attempts=3, fault_injector=Flaky("ListQueues", 99, "html")
    )
    with pytest.raises(AwsCallError) as raised:
        aws.call("sqs", "list_queues")
    assert (raised.value.code, raised.value.retryable) == ("UnparseableResponse", True)


def test_every_code_botocore_retries_as_a_throttle_or_transient_is_retryable_here_but_a_quota() -> None:
    """botocore gives up after its own attempts and hands the code on: were it missing here, a throttle it
    retried (an EC2 `EC2ThrottledException`, a DynamoDB `TransactionInProgressException`) would reach the
    caller as a hard failure, not a retry for the next tick. `LimitExceededException` is a quota reached."""
    botocore_codes = {
        *ThrottledRetryableChecker._THROTTLED_ERROR_CODES,
        *TransientRetryableChecker._TRANSIENT_ERROR_CODES,
    }
    assert botocore_codes - RETRYABLE_CODES == {"LimitExceededException"}


@pytest.mark.parametrize(
    "code", ["EC2ThrottledException", "TransactionInProgressException", "TransactionConflictException"]
)
def test_a_throttle_past_every_attempt_is_a_retryable_aws_call_error(mocked_aws: None, code: str) -> None:
    aws = AwsClients(
        region="us-east-1",
        sleep=lambda _s: None,
        attempts=2,
        fault_injector=lambda _service, operation: fault(code) if operation == "ListQueues" else None,
    )
    with pytest.raises(AwsCallError) as raised:
        aws.call("sqs", "list_queues")
    assert (raised.value.code, raised.value.retryable) == (code, True)
