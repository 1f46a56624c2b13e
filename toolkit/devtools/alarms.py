"""CloudWatch for the demo: the metrics the platform sees, the alarms infra/ defines on them, and the alarm
notification each state change publishes to the alarm topic (which the app's `on_sns_message` handlers get).

Alarm definitions mirror infra/stacks/monitoring.py (names, thresholds, M of N minutes); only metrics the
demo can observe are fed: reconcile errors per pool, tick errors, dead-lettered messages. Standard library
and chalicelib only; not imported by the Lambda path.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chalicelib.config import Config
from chalicelib.metrics import NAMESPACE
from chalicelib.resources import Names

Dimensions = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm: ALARM when `datapoints` of the last `evaluation` one-minute periods are >= `threshold`."""

    name: str
    namespace: str
    metric: str
    dimensions: Dimensions
    threshold: float
    evaluation: int
    datapoints: int
    statistic: str = "Sum"

    @property
    def key(self) -> tuple[str, str, Dimensions]:
        return (self.namespace, self.metric, self.dimensions)


@dataclass
class Alarm:
    spec: AlarmSpec
    state: str = "OK"
    #: (simulated seconds, old state, new state) for every change
    changes: list[tuple[float, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class StateChange:
    alarm: Alarm
    old: str
    new: str
    reason: str


def scaler_alarms(config: Config, names: Names, *, tick_function: str = "tick") -> list[AlarmSpec]:
    """The alarms infra/ puts on what the demo can observe (see infra/stacks/monitoring.py)."""
    prefix = names.prefix
    specs = [
        AlarmSpec(
            f"{prefix}-dirty-dlq-depth",
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            (("QueueName", names.dead_letter_queue),),
            threshold=1,
            evaluation=1,
            datapoints=1,
            statistic="Maximum",
        ),
        AlarmSpec(
            f"{prefix}-tick-errors",
            "AWS/Lambda",
            "Errors",
            (("FunctionName", tick_function),),
            threshold=1,
            evaluation=5,
            datapoints=3,
        ),
    ]
    specs += [
        AlarmSpec(
            f"{prefix}-{pool.name}-reconcile-errors",
            NAMESPACE,
            "ReconcileErrors",
            pool_dimensions(pool.name, pool.platform.value),
            threshold=1,
            evaluation=5,
            datapoints=3,
        )
        for pool in config.pools
    ]
    return specs


def pool_dimensions(pool: str, platform: str) -> Dimensions:
    return (("pool", pool), ("platform", platform))


class CloudWatch:
    """Per-minute metric sums (or maxima) and alarm evaluation at each minute boundary, in simulated time."""

    def __init__(self, start: datetime, specs: Iterable[AlarmSpec]) -> None:
        self._start = start
        self.alarms = [Alarm(spec) for spec in specs]
        self._data: dict[tuple[str, str, Dimensions], dict[int, float]] = defaultdict(dict)
        self._evaluated = 0  # minutes complete and evaluated

    def _minute(self, at: datetime) -> int:
        return int((at - self._start).total_seconds() // 60)

    def put(self, namespace: str, metric: str, dimensions: Dimensions, value: float, at: datetime) -> None:
        """Add a datapoint (summed within its minute; gauges use `put_max`)."""
        bucket = self._data[(namespace, metric, dimensions)]
        minute = self._minute(at)
        bucket[minute] = bucket.get(minute, 0.0) + value

    def put_max(
        self, namespace: str, metric: str, dimensions: Dimensions, value: float, at: datetime
    ) -> None:
        bucket = self._data[(namespace, metric, dimensions)]
        minute = self._minute(at)
        bucket[minute] = max(bucket.get(minute, value), value)

    def due(self, now: datetime) -> bool:
        """Whether a minute completed since the last evaluation (gauges are sampled then, once a minute)."""
        return self._minute(now) > self._evaluated

    def evaluate(self, now: datetime) -> list[StateChange]:
        """Evaluate every alarm for each minute completed since the last call; the state changes, in order."""
        changes: list[StateChange] = []
        complete = self._minute(now)
        while self._evaluated < complete:
            self._evaluated += 1
            for alarm in self.alarms:
                change = self._evaluate(alarm, self._evaluated)
                if change is not None:
                    changes.append(change)
        return changes

    def _evaluate(self, alarm: Alarm, upto: int) -> StateChange | None:
        spec = alarm.spec
        bucket = self._data.get(spec.key, {})
        window = range(max(0, upto - spec.evaluation), upto)
        breaching = sum(1 for m in window if bucket.get(m, 0.0) >= spec.threshold)  # missing: not breaching
        new = "ALARM" if breaching >= spec.datapoints else "OK"
        if new == alarm.state:
            return None
        old, alarm.state = alarm.state, new
        alarm.changes.append((upto * 60.0, old, new))
        reason = (
            f"Threshold Crossed: {breaching} out of the last {spec.evaluation} datapoints were greater than "
            f"or equal to the threshold ({spec.threshold}) (minimum {spec.datapoints} datapoints for "
            "OK -> ALARM transition)."
        )
        return StateChange(alarm, old, new, reason)

    def notification(self, change: StateChange, region: str, account: str) -> str:
        """The JSON CloudWatch publishes to SNS for a state change (the `Message` of the SNS record)."""
        spec = change.alarm.spec
        at = self._start.timestamp() + change.alarm.changes[-1][0]
        when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        return json.dumps(
            {
                "AlarmName": spec.name,
                "AlarmDescription": f"demo: {spec.metric} of {dict(spec.dimensions)}",
                "AWSAccountId": account,
                "NewStateValue": change.new,
                "NewStateReason": change.reason,
                "StateChangeTime": when,
                "Region": region,
                "AlarmArn": f"arn:aws:cloudwatch:{region}:{account}:alarm:{spec.name}",
                "OldStateValue": change.old,
                "Trigger": {
                    "MetricName": spec.metric,
                    "Namespace": spec.namespace,
                    "StatisticType": "Statistic",
                    "Statistic": spec.statistic.upper(),
                    "Unit": None,
                    "Dimensions": [{"value": v, "name": k} for k, v in spec.dimensions],
                    "Period": 60,
                    "EvaluationPeriods": spec.evaluation,
                    "DatapointsToAlarm": spec.datapoints,
                    "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                    "Threshold": spec.threshold,
                    "TreatMissingData": "notBreaching",
                    "EvaluateLowSampleCountPercentile": "",
                },
            }
        )

    def describe(self) -> str:
        """One line for the live view: alarms in ALARM now, and how many changes so far."""
        firing = [a.spec.name for a in self.alarms if a.state == "ALARM"]
        changed = sum(len(a.changes) for a in self.alarms)
        return f"alarms: {', '.join(firing) if firing else 'all OK'} ({changed} state changes)"
