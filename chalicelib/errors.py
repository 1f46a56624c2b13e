"""Domain errors: every one names the input, the field and the fix.

Imports nothing from the project; every other module may import it.
"""

from __future__ import annotations

from typing import Any


class RunnerScalerError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(RunnerScalerError):
    """A config file or parameter is wrong; the message lists every problem with its field path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


class AwsCallError(RunnerScalerError):
    """An AWS call failed after retries; `retryable` says whether the next tick may simply try again.

    `item`: the item a DynamoDB write found when its condition failed, when the write asked for it
    (ReturnValuesOnConditionCheckFailure ALL_OLD), in DynamoDB JSON; None otherwise. `reasons`: a cancelled
    DynamoDB transaction's CancellationReasons codes, one per action ("None" for an action that did not
    cause it); empty otherwise."""

    def __init__(
        self,
        service: str,
        operation: str,
        code: str,
        message: str,
        *,
        retryable: bool,
        item: dict[str, Any] | None = None,
        reasons: tuple[str, ...] = (),
    ) -> None:
        self.service = service
        self.operation = operation
        self.code = code
        self.retryable = retryable
        self.item = item
        self.reasons = reasons
        super().__init__(f"{service}.{operation} failed: {code}: {message}")


class GitLabError(RunnerScalerError):
    """A GitLab API call failed; `status` is the HTTP status (0 when GitLab was unreachable)."""

    def __init__(self, action: str, status: int, message: str) -> None:
        self.action = action
        self.status = status
        super().__init__(f"GitLab {action} failed ({status or 'unreachable'}): {message}")

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


class GitLabNotFoundError(GitLabError):
    """GitLab answered 404: the runner, job, pipeline or project is gone, or the API token cannot see it.

    A GitLabError like any other, so every handler that survives a GitLab failure survives this one too (a
    runner deleted outside the scaler must never stop a tick). Never retryable: asking again finds nothing.
    `what` names the missing thing ("runner 42", "pipeline 7 of project 3").
    """

    def __init__(self, action: str, what: str, message: str) -> None:
        self.what = what
        super().__init__(action, 404, f"{what} not found ({message}); it may have been deleted")


class RetryLaterError(RunnerScalerError):
    """A transient failure (GitLab 429/5xx, an AWS throttle) the invocation's own retry should meet again.

    Raised out of a handler on purpose: Lambda retries an asynchronous invocation twice, minutes apart, and
    whatever was half-done has been undone first.
    """


class NotFoundError(RunnerScalerError):
    """An AWS resource the caller named does not exist (a secret, a secret version or stage).

    GitLab's 404s are `GitLabNotFoundError`, a `GitLabError`: they must reach the handlers that catch those.
    """


class LeaseExpiredError(RunnerScalerError):
    """A reconcile outlived its pool lease: another may hold it now, so this one stopped before an AWS write.

    The next reconcile re-reads everything; nothing was half-applied.
    """


class RotationError(RunnerScalerError):
    """A Secrets Manager rotation step cannot proceed; the message says which step and why."""


class MalformedEventError(RunnerScalerError):
    """An inbound event (webhook, EventBridge, SNS, SQS) cannot be used; `reason` is one line, never a secret.

    Handlers log the reason and drop the event (a malformed event never gets better by retrying it).
    """

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())[:300]
        super().__init__(self.reason)


class CertificateError(RunnerScalerError):
    """TLS material is unusable (unreadable PEM, mismatched key, bad chain); the message says what."""


class SecretConflictError(RunnerScalerError):
    """A Secrets Manager write collided with another writer (version token taken, rotation in progress).

    The caller lost a race it may safely lose: the other writer's result stands; nothing needs undoing.
    """
