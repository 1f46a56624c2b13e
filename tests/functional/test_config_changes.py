"""A hand edit of the config parameter reaches a warm container within a bound, through the Chalice app.

The container reads the SSM parameter once, then asks for its version at most once a minute (by the
wiring's clock, the test's here) when a handler reads the config: a valid new version
replaces the config in use; an invalid one is refused, the last good config stays, and `ConfigRejected`
is emitted. GetParameter answers the value with its `Version` (AWS Systems Manager API Reference,
"GetParameter"), and `put-parameter --overwrite` makes a new version (AWS CLI reference, "put-parameter").
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.aws import AwsClients, fault
from chalicelib.config import Config
from chalicelib.parameters import CONFIG_CHECK_SECONDS
from chalicelib.runtime import Runtime, install
from chalicelib.store import JobRecord
from tests.functional.conftest import FIXTURES, Stack

PARAMETER = "/test/config"
V1 = (FIXTURES / "scaler.toml").read_text(encoding="utf-8")
#: The linux pool capped at 2 machines instead of 5 (its Auto Scaling group's MaxSize stays 5).
V2_MAX_2 = V1.replace("max_instances = 5", "max_instances = 2", 1)
#: Not a config: `max_instances` must be a TOML integer.
V2_INVALID = V1.replace("max_instances = 5", 'max_instances = "two"', 1)


def put_config(stack: Stack, text: str) -> int:
    """What an operator's `aws ssm put-parameter --overwrite` does; returns the new version."""
    got = stack.aws.call("ssm", "put_parameter", Name=PARAMETER, Value=text, Type="String", Overwrite=True)
    return int(got["Version"])


def parameter_runtime(stack: Stack, aws: AwsClients) -> Runtime:
    """The deployed wiring: the config lives in the parameter only (no file, none installed), on the
    test's clock."""
    return Runtime(
        {
            "RUNNER_SCALER_PREFIX": "test",
            "RUNNER_SCALER_QUEUE_URL": stack.local.queue_url,
            "RUNNER_SCALER_CONFIG_PARAM": PARAMETER,
        },
        aws=aws,
        clock=lambda: stack.clock[0],
    )


@pytest.fixture
def deployed(stack: Stack) -> Iterator[Stack]:
    """The stack, its config stored in the parameter (version 1), and a container that has read it."""
    assert put_config(stack, V1) == 1
    stack.runtime = parameter_runtime(stack, stack.aws)
    install(stack.runtime)
    with Client(app) as client:
        tick(client)  # the warm container: it read version 1
    yield stack


def tick(client: Client) -> dict[str, Any]:
    event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    return dict(client.lambda_.invoke("tick", event).payload)


def pool_dirty(client: Client, pool: str) -> dict[str, Any]:
    body = json.dumps({"pool": pool, "reason": "job"})
    event = client.events.generate_sqs_event(message_bodies=[body], queue_name="test-dirty.fifo")
    return dict(client.lambda_.invoke("pool_dirty", event).payload)


def pending_jobs(stack: Stack, count: int, pool: str = "linux") -> None:
    for job_id in range(1, count + 1):
        job = JobRecord("gitlab.example.com", job_id, "pending", pool=pool)
        stack.runtime.store.record_job(job, stack.runtime.now())


def emf_counts(out: str, name: str) -> list[list[float]]:
    blobs = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    return [blob[name] for blob in blobs if name in blob]


def test_a_new_parameter_version_reaches_the_warm_container_after_a_minute(
    deployed: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a warm container on version 1 (linux max_instances 5), and the operator lowers it to 2 by hand
    assert put_config(deployed, V2_MAX_2) == 2
    # AND four linux jobs are pending
    pending_jobs(deployed, 4)
    # WHEN a minute and a second later the tick runs
    deployed.advance(seconds=61)
    with caplog.at_level(logging.INFO, logger="chalicelib"), Client(app) as client:
        payload = tick(client)
    # THEN the pool is sized under the new version: 2 machines, not the 4 version 1 would launch
    assert payload["pools"]["linux"]["desired"] == 2
    assert deployed.desired("test-linux") == 2
    # AND the container says which version it runs now
    changed = [r for r in caplog.records if r.getMessage() == "config changed"]
    assert [(r.version, r.previous_version) for r in changed] == [(2, 1)]  # type: ignore[attr-defined]


def test_within_the_minute_the_container_keeps_its_config_and_asks_ssm_nothing(deployed: Stack) -> None:
    # GIVEN a warm container on version 1, and version 2 put by hand
    put_config(deployed, V2_MAX_2)
    pending_jobs(deployed, 4)
    asked = deployed.aws.calls["ssm.GetParameter"]
    # WHEN 59 seconds after its last check a dirty message reconciles the pool
    deployed.advance(seconds=59)
    with Client(app) as client:
        assert pool_dirty(client, "linux") == {"batchItemFailures": []}
    # THEN version 1 still sizes the pool (4 machines for 4 jobs), and SSM was not asked
    assert deployed.desired("test-linux") == 4
    assert deployed.aws.calls["ssm.GetParameter"] == asked


def test_an_invalid_version_is_refused_the_last_good_config_stays_and_config_rejected_is_emitted(
    deployed: Stack, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a warm container on version 1, and a version 2 that is no valid config
    assert put_config(deployed, V2_INVALID) == 2
    pending_jobs(deployed, 4)
    capsys.readouterr()
    # WHEN the tick runs after the minute
    deployed.advance(seconds=61)
    with caplog.at_level(logging.INFO, logger="chalicelib"), Client(app) as client:
        payload = tick(client)
    # THEN version 1 still sizes the pool: 4 machines (version 2's pool would not even parse)
    assert payload["pools"]["linux"]["desired"] == 4
    assert deployed.runtime.config.pool("linux").max_instances == 5
    # AND ConfigRejected is emitted once, and the error names the versions and the field, not the value
    assert emf_counts(capsys.readouterr().out, "ConfigRejected") == [[1.0]]
    rejected = [r for r in caplog.records if r.getMessage().startswith("config rejected")]
    assert len(rejected) == 1 and rejected[0].levelno == logging.ERROR
    assert (rejected[0].version, rejected[0].kept_version) == (2, 1)  # type: ignore[attr-defined]
    assert any("pools[0].max_instances" in p for p in rejected[0].problems)  # type: ignore[attr-defined]


def test_a_fixed_version_after_a_refused_one_applies_at_the_next_check(deployed: Stack) -> None:
    # GIVEN a refused version 2 (the container keeps version 1)
    put_config(deployed, V2_INVALID)
    deployed.advance(seconds=61)
    with Client(app) as client:
        tick(client)
    watch = deployed.runtime.config_watch
    assert watch is not None and watch.version == 1
    # WHEN the operator puts a valid version 3, and four jobs are pending a minute later
    assert put_config(deployed, V2_MAX_2) == 3
    pending_jobs(deployed, 4)
    deployed.advance(seconds=61)
    with Client(app) as client:
        payload = tick(client)
    # THEN version 3 is in use
    assert watch.version == 3
    assert payload["pools"]["linux"]["desired"] == 2


def test_a_throttled_version_check_keeps_the_config_and_retries_a_minute_later(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a container whose SSM calls can be throttled, on version 1
    throttled = [False]

    def throttle_ssm(service: str, operation: str) -> dict[str, Any] | None:
        return fault("ThrottlingException") if throttled[0] and service == "ssm" else None

    put_config(stack, V1)
    aws = AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=throttle_ssm)
    runtime = parameter_runtime(stack, aws)
    assert runtime.config.pool("linux").max_instances == 5
    # AND version 2 is put while SSM throttles the container
    put_config(stack, V2_MAX_2)
    throttled[0] = True
    stack.advance(seconds=61)
    # WHEN the container reads its config
    with caplog.at_level(logging.WARNING, logger="chalicelib"):
        config = runtime.config
    # THEN it keeps version 1 and says why
    assert config.pool("linux").max_instances == 5
    assert any(r.getMessage().startswith("config version check failed") for r in caplog.records)
    # AND once SSM answers again, the next check a minute later takes version 2
    throttled[0] = False
    stack.advance(seconds=30)
    assert runtime.config.pool("linux").max_instances == 5
    stack.advance(seconds=31)
    assert runtime.config.pool("linux").max_instances == 2


def test_the_first_read_of_an_invalid_parameter_fails_the_invocation(stack: Stack) -> None:
    """A cold container has no last good config to keep: it fails, and the invocation's error says why."""
    from chalicelib.errors import ConfigError

    put_config(stack, V2_INVALID)
    runtime = parameter_runtime(stack, stack.aws)
    with pytest.raises(ConfigError, match=r"ssm:/test/config"):
        _ = runtime.config


def test_a_clock_that_went_back_makes_the_check_due(stack: Stack) -> None:
    """The interval is measured on the wall clock (Lambda freezes containers between invocations, and the
    interval must count that time); a step back must not hold the old version for as long as the step."""
    put_config(stack, V1)
    runtime = parameter_runtime(stack, stack.aws)
    assert runtime.config.pool("linux").max_instances == 5
    put_config(stack, V2_MAX_2)
    stack.advance(seconds=-5)
    assert runtime.config.pool("linux").max_instances == 2


class RecordingRuntime(Runtime):
    """The deployed wiring, noting the `max_instances` of the linux pool in every config a use case reads,
    and letting a second pass between reads, as a slow invocation's steps would."""

    def __init__(self, stack: Stack, seen: list[int]) -> None:
        environ = parameter_runtime(stack, stack.aws).environ
        super().__init__(environ, aws=stack.aws, clock=lambda: stack.clock[0])
        self._stack, self._seen = stack, seen

    @property
    def config(self) -> Config:
        config = super().config
        self._seen.append(config.pool("linux").max_instances)
        self._stack.advance(seconds=1)
        return config

    @config.setter
    def config(self, config: Config) -> None:
        raise AssertionError("the deployed wiring installs no config")


def test_one_invocation_reads_one_config_even_when_a_version_check_falls_due_in_it(stack: Stack) -> None:
    # GIVEN a warm container on version 1 (linux max_instances 5) whose config check falls due at the third
    # config read of the next invocation (every read of this wiring takes a second), and version 2 put by hand
    assert put_config(stack, V1) == 1
    seen: list[int] = []
    stack.runtime = RecordingRuntime(stack, seen)
    install(stack.runtime)
    with Client(app) as client:
        tick(client)  # its first read was the check; it ends len(seen) seconds later
    stack.advance(seconds=CONFIG_CHECK_SECONDS - len(seen) - 2)
    put_config(stack, V2_MAX_2)
    pending_jobs(stack, 4)
    seen.clear()
    # WHEN a tick runs
    with Client(app) as client:
        tick(client)
    # THEN every step of it read version 1, and sized the pool by it (4 machines for 4 jobs): the version
    # check that fell due mid-tick gave its later steps no other config (a tick that planned with one
    # config and reconciled with another)
    assert seen and set(seen) == {5}
    assert stack.desired("test-linux") == 4
    # AND the next invocation runs version 2 throughout
    seen.clear()
    stack.advance(seconds=61)
    with Client(app) as client:
        tick(client)
    assert seen and set(seen) == {2}


def test_a_new_gitlab_table_applied_by_the_adapters_first_build_does_not_hang_it(stack: Stack) -> None:
    """Building the GitLab adapter reads the config; when that read applies a version whose `[gitlab]`
    changed, the change handler forgets the old adapter under the wiring's lock, which the build must not
    hold then (a lock taken twice by one thread: the call never returned)."""
    # GIVEN a container on version 1 that never built its GitLab adapter, and a new GitLab URL put by hand
    assert put_config(stack, V1) == 1
    runtime = parameter_runtime(stack, stack.aws)
    assert runtime.config.gitlab.url == "https://gitlab.example.com"
    put_config(stack, V1.replace("https://gitlab.example.com", "https://gitlab.internal.example", 1))
    stack.advance(seconds=61)
    # WHEN a handler's first use of the config is the adapter's build (in a thread, so a hang is seen)
    built: list[object] = []
    worker = threading.Thread(target=lambda: built.append(runtime.gitlab), daemon=True)
    worker.start()
    worker.join(timeout=30)
    # THEN it is built, for the new version's GitLab
    assert built and not worker.is_alive(), "building the GitLab adapter hung on the wiring's lock"
    assert runtime.config.gitlab.url == "https://gitlab.internal.example"
