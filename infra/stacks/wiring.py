"""Plan how the packaged Chalice app is wired into the stack: pure data in (sam.json), a plan out.

Chalice writes event sources from app.py's decorators with names only (queue, topic, event pattern). The
stack binds each to its own resource instead, so CloudFormation orders creation and nothing points at a
resource of another deployment: SQS queue and SNS topic by reference, EventBridge rules re-made by infra/ and
scoped to this deployment's Auto Scaling groups. Imports chalice's naming helper, chalicelib.events.aws and
the standard library; the CDK side (`chalice_app.py`) executes the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chalice.utils import to_cfn_resource_name

from chalicelib.events.aws import (
    INSTANCE_STATE_CHANGE,
    LAUNCH_LIFECYCLE_ACTION,
    REBALANCE_RECOMMENDATION,
    SPOT_INTERRUPTION_WARNING,
    TERMINATE_LIFECYCLE_ACTION,
)

SAM_FUNCTION = "AWS::Serverless::Function"
#: The `@app.lambda_function` that Secrets Manager calls to rotate the fleet's base certificates.
ROTATION_HANDLER = "rotate_base_certs"


@dataclass(frozen=True)
class EventKind:
    """A family of AWS events infra/ routes with one rule; `per_group` rules match only our groups."""

    name: str
    source: str
    detail_types: tuple[str, ...]
    per_group: bool


#: Auto Scaling's failed launches (Spot capacity, host placement): the handler falls back, the alarm counts.
LAUNCH_UNSUCCESSFUL = "EC2 Instance Launch Unsuccessful"

KINDS = (
    EventKind("Lifecycle", "aws.autoscaling", (LAUNCH_LIFECYCLE_ACTION, TERMINATE_LIFECYCLE_ACTION), True),
    EventKind("LaunchFailure", "aws.autoscaling", (LAUNCH_UNSUCCESSFUL,), True),
    # Spot warnings carry an instance id only (no group): the handler ignores instances that are not ours.
    EventKind("Spot", "aws.ec2", (SPOT_INTERRUPTION_WARNING, REBALANCE_RECOMMENDATION), False),
    EventKind("StateChange", "aws.ec2", (INSTANCE_STATE_CHANGE,), False),
)


@dataclass(frozen=True)
class EventBinding:
    """An SQS or SNS event source of a function, and the resource name app.py gave it."""

    function: str
    event: str
    name: str


@dataclass(frozen=True)
class RuleTarget:
    kind: EventKind
    function: str
    detail_types: tuple[str, ...]


@dataclass(frozen=True)
class AppWiring:
    functions: tuple[str, ...]
    queues: tuple[EventBinding, ...]
    topics: tuple[EventBinding, ...]
    rules: tuple[RuleTarget, ...]
    #: (function, event) CloudWatchEvent sources the infra rules replace (removed from the SAM function).
    replaced_events: tuple[tuple[str, str], ...]
    rotation_function: str | None
    warnings: tuple[str, ...]

    def function_for(self, kind_name: str) -> str | None:
        return next((r.function for r in self.rules if r.kind.name == kind_name), None)


class WiringError(ValueError):
    """app.py and the stack disagree on a resource name; the message says which and how to fix it."""


def plan_wiring(sam: Mapping[str, Any]) -> AppWiring:
    """Read the functions and their event sources out of Chalice's SAM template."""
    functions = {
        logical: resource.get("Properties", {})
        for logical, resource in sam.get("Resources", {}).items()
        if resource.get("Type") == SAM_FUNCTION
    }
    plan = _Plan()
    for logical, props in functions.items():
        for event, spec in (props.get("Events") or {}).items():
            plan.add(logical, event, spec.get("Type"), spec.get("Properties", {}))
    rotation = to_cfn_resource_name(ROTATION_HANDLER)
    for kind in KINDS:
        if not any(r.kind is kind for r in plan.rules):
            plan.warnings.append(
                f"no on_cw_event handler takes {kind.name} events ({', '.join(kind.detail_types)})"
            )
    if rotation not in functions:
        plan.warnings.append(
            f"no @app.lambda_function(name={ROTATION_HANDLER!r}): base certs are not rotated"
        )
    return AppWiring(
        functions=tuple(functions),
        queues=tuple(plan.queues),
        topics=tuple(plan.topics),
        rules=tuple(plan.rules),
        replaced_events=tuple(plan.replaced),
        rotation_function=rotation if rotation in functions else None,
        warnings=tuple(plan.warnings),
    )


def check_names(wiring: AppWiring, *, queue: str, topic: str) -> None:
    """Every SQS / SNS source of app.py must name this deployment's queue and alarm topic."""
    for binding, expected, what in [(b, queue, "SQS queue") for b in wiring.queues] + [
        (b, topic, "SNS topic") for b in wiring.topics
    ]:
        if binding.name != expected:
            raise WiringError(
                f"app.py: {binding.function} listens to {what} {binding.name!r}, but this deployment's is "
                f"{expected!r}: build the name from chalicelib.resources (Names, ALARM_TOPIC_SUFFIX)"
            )


@dataclass
class _Plan:
    queues: list[EventBinding] = field(default_factory=list)
    topics: list[EventBinding] = field(default_factory=list)
    rules: list[RuleTarget] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, function: str, event: str, kind: str | None, properties: Mapping[str, Any]) -> None:
        if kind == "SQS":
            self.queues.append(EventBinding(function, event, _arn_name(properties.get("Queue"))))
        elif kind == "SNS":
            self.topics.append(EventBinding(function, event, _arn_name(properties.get("Topic"))))
        elif kind == "CloudWatchEvent":
            targets, uncovered = _rules_for(function, properties.get("Pattern") or {})
            self.rules += targets
            if targets and not uncovered:
                self.replaced.append((function, event))
            elif targets:
                self.warnings.append(
                    f"{function}.{event}: kept as written, no infra rule for {sorted(uncovered)}"
                )


def _rules_for(function: str, pattern: Mapping[str, Any]) -> tuple[list[RuleTarget], set[str]]:
    """Infra rules for what an app pattern asks for, and the detail-types no infra rule covers."""
    sources = set(_as_list(pattern.get("source")))
    asked = set(_as_list(pattern.get("detail-type")))
    if not asked:  # "everything from aws.ec2": too broad to re-make safely, leave the app's rule alone
        return [], {"<any detail-type>"}
    targets = []
    covered: set[str] = set()
    for kind in KINDS:
        wanted = tuple(d for d in kind.detail_types if d in asked and (not sources or kind.source in sources))
        if wanted:
            targets.append(RuleTarget(kind, function, wanted))
            covered.update(wanted)
    return targets, asked - covered


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _arn_name(value: Any) -> str:
    """The resource name at the end of an ARN, or of Chalice's `{"Fn::Sub": "arn:...:<name>"}`."""
    if isinstance(value, Mapping):
        value = value.get("Fn::Sub", "")
    return str(value).rsplit(":", 1)[-1]
