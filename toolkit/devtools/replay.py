"""Replay recorded GitLab webhook deliveries through the real route, against in-process moto.

Each line of the input is one delivery as GitLab's "recent events" view shows it: `{"headers": {...},
"body": {...}}` (the body may be a raw string, to replay malformed deliveries). Shared by the CLI and tests.
Not imported by the Lambda path.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from chalicelib.config import Config

DEFAULT_TOKENS = ("replay-token",)


class ReplayInputError(Exception):
    """The deliveries file cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: str
    tag_list: tuple[str, ...] | None = None  # optional: what GitLab's Jobs API would answer for this job


class RecordedTags:
    """Offline stand-in for the Jobs API: job tags recorded next to the deliveries (`"tag_list"`)."""

    def __init__(self, deliveries: list[Delivery]) -> None:
        self._jobs: dict[tuple[int, int], list[SimpleNamespace]] = {}
        for delivery in deliveries:
            body = _json_object(delivery.body)
            if delivery.tag_list is None or body.get("object_kind") != "build":
                continue
            key = (int(body.get("project_id", 0)), int(body.get("pipeline_id", 0)))
            self._jobs.setdefault(key, []).append(
                SimpleNamespace(id=int(body.get("build_id", 0)), tag_list=delivery.tag_list)
            )

    def pipeline_jobs(self, project_id: int, pipeline_id: int) -> list[SimpleNamespace]:
        return self._jobs.get((project_id, pipeline_id), [])


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class ReplayReport:
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    ignored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)
    unroutable: int = 0
    pools: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    aws_calls_per_event: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON summary: exactly these keys (issue #4)."""
        return {
            "events": self.events,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "rejected": dict(self.rejected),
            "jobs": dict(self.jobs),
            "unroutable": self.unroutable,
            "pools": self.pools,
        }

    def latency(self) -> dict[str, float]:
        """Handler latency p50/p99 (ms) and AWS calls per event, for the benchmark."""
        if not self.latencies_ms:
            return {}
        ordered = sorted(self.latencies_ms)
        return {
            "p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
            "aws_calls_per_event_mean": round(statistics.fmean(self.aws_calls_per_event), 3),
            "aws_calls_per_event_max": max(self.aws_calls_per_event),
        }


def read_deliveries(path: Path) -> list[Delivery]:
    """Each non-blank line of `path` as a Delivery; ReplayInputError names the file, the line and the fix."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReplayInputError(f"cannot read {path}: {exc.strerror}") from None
    out: list[Delivery] = []
    for number, raw in enumerate(data.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReplayInputError(
                f"{where}: byte {raw[exc.start]:#04x} at column {exc.start + 1} is not UTF-8; "
                "save the deliveries as UTF-8 JSON lines"
            ) from None
        if line.strip():
            out.append(_delivery(line, where))
    return out


_SHAPE = 'each line is one JSON object: {"headers": {"X-Gitlab-Event": "Job Hook", ...}, "body": {...}}'


def _delivery(line: str, where: str) -> Delivery:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ReplayInputError(f"{where}: not JSON ({exc.msg} at column {exc.colno}); {_SHAPE}") from None
    if not isinstance(record, dict):
        raise ReplayInputError(f"{where}: a JSON {type(record).__name__}, not an object; {_SHAPE}")
    headers = record.get("headers") or {}
    if not isinstance(headers, dict):
        raise ReplayInputError(f'{where}: "headers" must be an object of header names to values; {_SHAPE}')
    body = record.get("body", "")
    tags = record.get("tag_list")
    recorded = tuple(str(t) for t in tags) if isinstance(tags, list) else None
    return Delivery(
        {str(k): str(v) for k, v in headers.items()},
        body if isinstance(body, str) else json.dumps(body),
        recorded,
    )


@contextmanager
def _replay_environment() -> Iterator[None]:
    """moto wants credentials to exist (real ones are never touched); EMF lines would pollute the summary."""
    keys = {
        "AWS_ACCESS_KEY_ID": "replay",
        "AWS_SECRET_ACCESS_KEY": "replay",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def replay(
    deliveries: list[Delivery], config: Config, tokens: tuple[str, ...] = DEFAULT_TOKENS
) -> ReplayReport:
    """Post every delivery through the real route on in-process moto, then reconcile each dirty pool once."""
    from chalice.test import Client
    from moto import mock_aws

    from chalicelib import runtime as runtime_module
    from chalicelib.aws import AwsClients
    from chalicelib.resources import Names
    from chalicelib.runtime import Runtime
    from toolkit.devtools.bootstrap import bootstrap
    from toolkit.devtools.local_app import load_app

    report = ReplayReport()
    with _replay_environment(), mock_aws():
        aws = AwsClients(region="us-east-1", sleep=lambda _s: None)
        local = bootstrap(aws, config, Names("replay"), list(tokens))
        rt = Runtime(
            {"RUNNER_SCALER_PREFIX": "replay", "RUNNER_SCALER_QUEUE_URL": local.queue_url},
            aws=aws,
            config=config,
        )
        runtime_module.install(rt)
        try:
            with Client(load_app()) as client:
                for delivery in deliveries:
                    _post(client, rt, delivery, report)
                _reconcile_dirty(rt, local.queue_url, report, RecordedTags(deliveries))
        finally:
            runtime_module.install(None)
    return report


def _post(client: Any, rt: Any, delivery: Delivery, report: ReplayReport) -> None:
    before = rt.aws.total_calls
    started = time.perf_counter()
    response = client.http.post("/webhooks/gitlab", headers=delivery.headers, body=delivery.body)
    report.latencies_ms.append((time.perf_counter() - started) * 1000)
    report.aws_calls_per_event.append(rt.aws.total_calls - before)
    report.events += 1
    body = json.loads(response.body or b"{}")
    if response.status_code == 202 and body.get("status") == "ignored":
        report.ignored += 1
    elif response.status_code == 202:
        report.accepted += 1
        routed_later = body.get("routing") == "deferred"  # counted once its tags are resolved
        report.unroutable += int(
            body.get("job") is not None and body.get("pool") is None and not routed_later
        )
    elif response.status_code == 200:
        report.duplicates += 1
    else:
        reason = {401: "bad_token", 413: "too_large"}.get(response.status_code, "malformed")
        report.rejected[reason] += 1


def _reconcile_dirty(rt: Any, queue_url: str, report: ReplayReport, tags: RecordedTags) -> None:
    """Consume the queue as pool_dirty does: resolve asks first (the recorded tags stand in for GitLab's
    pipeline-jobs call), which may mark more pools dirty; then reconcile each dirty pool once."""
    from chalicelib.events.aws import ResolveTagsMessage, parse_queue_message
    from chalicelib.jobs import resolve_unrouted

    pools: set[str] = set()
    while True:
        got = rt.aws.call("sqs", "receive_message", QueueUrl=queue_url, MaxNumberOfMessages=10)
        messages = got.get("Messages", [])
        if not messages:
            break
        for message in messages:
            body = parse_queue_message(message["Body"])
            if isinstance(body, ResolveTagsMessage):
                ask = body.resolve
                asked = (ask.project_id, ask.pipeline_id, ask.job_id)
                resolved = resolve_unrouted(
                    rt.config, rt.store, tags, rt.queue, rt.now(), gitlab=rt.gitlab_host, asked=asked
                )
                report.unroutable += len(resolved.unroutable)
            else:
                pools.add(body.pool)
            rt.aws.call("sqs", "delete_message", QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    reconciler = rt.reconciler("replay")
    results = {p: reconciler.reconcile_pool(rt.config.pool(p), rt.now()) for p in sorted(pools)}
    for pool in rt.config.pools:
        jobs = rt.store.pool_jobs(pool.name)
        result = results.get(pool.name)
        report.pools[pool.name] = {
            "pending": sum(1 for j in jobs if j.status == "pending"),
            "running": sum(1 for j in jobs if j.status in {"running", "canceling"}),
            "desired": result.desired_after if result else 0,
        }
    for item in _job_items(rt):
        report.jobs[item] += 1


def _job_items(rt: Any) -> list[str]:
    items = rt.aws.paginate("dynamodb", "scan", "Items", TableName=rt.names.table)
    return [str(i["status"]["S"]) for i in items if str(i["pk"]["S"]).startswith("JOB#")]


def load(config_path: Path | None) -> Config:
    """The config to replay against: the file given, else the shipped example."""
    from chalicelib.config import load_config_file

    return load_config_file(config_path or Path(__file__).resolve().parents[2] / "examples" / "config.toml")
