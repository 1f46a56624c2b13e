"""Use cases run on the ports they are given: built by hand from in-memory fakes here, no Runtime, no AWS.

And the wiring builds those ports without a call: what a handler does not use is never built.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from unittest.mock import Mock

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from chalicelib.alarms import FAULT_BACKOFF, handle_alarm_message
from chalicelib.config import Config, config_from_dict
from chalicelib.fleet import Fleet
from chalicelib.metrics import ReconcileFigures
from chalicelib.ports import CertPorts, Ports
from chalicelib.reconcile import Reconciler
from chalicelib.resources import Names
from chalicelib.runtime import Runtime
from chalicelib.secrets import MemorySecrets
from chalicelib.store import MemoryStore
from chalicelib.webhooks import receive

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CONFIG = config_from_dict(
    {
        "gitlab": {"url": "https://gitlab.example.com"},
        "pools": [{"name": "linux", "asg": "test-linux", "tags": ["linux"], "max_instances": 3}],
    },
    "ports",
)


class RecordedMetrics:
    """The metrics port, keeping what was emitted."""

    def __init__(self) -> None:
        self.counts: list[tuple[str, float, str | None]] = []

    def emit(
        self,
        values: Mapping[str, float],
        dimensions: Mapping[str, str] | None = None,
        unit: MetricUnit = MetricUnit.Count,
    ) -> None:
        self.counts.extend((name, value, (dimensions or {}).get("pool")) for name, value in values.items())

    def emit_count(self, name: str, value: float, pool: str | None = None) -> None:
        self.counts.append((name, value, pool))

    def emit_job_wait(self, pool: str, platform: str, queued_seconds: float) -> None:
        self.counts.append(("JobQueueSeconds", queued_seconds, pool))

    def emit_scale_up(self, pool: str, platform: str, seconds: float) -> None:
        self.counts.append(("ScaleUpSeconds", seconds, pool))

    def emit_reconcile(self, config: Config, results: Iterable[ReconcileFigures], aws_calls: int) -> None:
        self.counts.append(("AwsCalls", aws_calls, None))


def unreachable(what: str) -> Mock:
    """A provider the use case must not call: calling it fails the test."""
    return Mock(side_effect=AssertionError(f"{what} was built, yet this use case never needs it"))


def hand_built_ports(store: MemoryStore, metrics: RecordedMetrics, reconciler: Reconciler) -> Ports:
    names = Names("ports")
    secrets = MemorySecrets()
    return Ports(
        names=names,
        store=store,
        fleet=Mock(spec=Fleet),
        secrets=secrets,
        metrics=metrics,
        clock=lambda: NOW,
        sleep=lambda _s: None,
        certs=CertPorts(names=names, secrets=secrets, clock=lambda: NOW, load_config=lambda: CONFIG),
        load_config=lambda: CONFIG,
        open_queue=unreachable("the dirty queue"),
        open_dead_letters=unreachable("the dead-letter queue"),
        open_gitlab=unreachable("the GitLab client"),
        gitlab_configured=lambda: False,
        open_pipelines=unreachable("the pipeline store"),
        read_gitlab_host=lambda: "gitlab.example.com",
        secret_text=lambda name: json.dumps({"tokens": ["hook-token"]}),
        webhook_tokens=lambda: ["hook-token"],
        reconciler=lambda owner: reconciler,
        aws_calls=lambda: 0,
    )


def launch_alarm(state: str) -> str:
    return json.dumps(
        {
            "AlarmName": "ports-linux-launch-failures",
            "NewStateValue": state,
            "NewStateReason": "Threshold Crossed",
            "StateChangeTime": "2026-11-23T12:00:00.000+0000",
            "Trigger": {
                "MetricName": "GroupPendingInstances",
                "Namespace": "AWS/AutoScaling",
                "Dimensions": [{"name": "AutoScalingGroupName", "value": "test-linux"}],
            },
        }
    )


def test_a_launch_alarm_faults_its_pool_and_reconciles_it_through_the_given_ports() -> None:
    # GIVEN ports built by hand: an in-memory store, recorded metrics, a reconciler stand-in
    store, metrics = MemoryStore(), RecordedMetrics()
    reconciler = Mock(spec=Reconciler)
    ports = hand_built_ports(store, metrics, reconciler)
    # WHEN the launch-failure alarm of the pool's group goes off
    outcome = handle_alarm_message(ports, launch_alarm("ALARM"), owner="req-1")
    # THEN the pool is faulted until the backoff ends, on the given clock, and reconciled at once
    assert outcome["action"] == "launch fault recorded"
    (fault,) = store.faults("linux", NOW)
    assert (fault.kind, fault.until) == ("launch", NOW + FAULT_BACKOFF)
    reconciler.reconcile_pool.assert_called_once_with(CONFIG.pool("linux"), NOW)
    # ...and neither GitLab nor a queue was built for it (their providers would have failed the test)


def test_a_rejected_webhook_is_counted_through_the_metrics_port_and_stores_nothing() -> None:
    store, metrics = MemoryStore(), RecordedMetrics()
    ports = hand_built_ports(store, metrics, Mock(spec=Reconciler))
    answer = receive(ports, {"X-Gitlab-Token": "wrong", "X-Gitlab-Event": "Job Hook"}, b"{}")
    assert answer.status == 401
    assert metrics.counts == [("WebhookRejected", 1, None)]
    assert store.jobs == {}


def test_the_wiring_builds_ports_without_a_call_and_they_are_frozen() -> None:
    # GIVEN a container's wiring (no AWS endpoint behind it: any call would fail)
    rt = Runtime({"RUNNER_SCALER_PREFIX": "ports"}, config=CONFIG, clock=lambda: NOW)
    # WHEN the ports are built
    ports = rt.ports
    # THEN nothing costly was built yet: no AWS call, no GitLab client, no queue URL looked up
    assert rt.aws.total_calls == 0
    assert {"queue", "dead_letters", "tags", "pipelines", "hosts"}.isdisjoint(vars(rt))
    assert rt._gitlab is None
    assert ports.now() == NOW and ports.config is CONFIG and rt.ports is ports
    with pytest.raises(dataclasses.FrozenInstanceError):
        ports.store = MemoryStore()  # type: ignore[misc]
    assert ports.certs is rt.cert_ports and ports.certs.now() == NOW
