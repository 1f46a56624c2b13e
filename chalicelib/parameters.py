"""SSM Parameter Store adapter: reads the deployed config when it lives in a parameter, not a file, and
re-reads it when the parameter's version changes (`ConfigWatch`), so a hand edit reaches warm containers.

The only module that calls SSM, through `AwsClients`. Imports chalicelib.aws, chalicelib.config and
chalicelib.errors (and the metrics port's type).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from chalicelib.aws import AwsClients
from chalicelib.config import Config, parse_config
from chalicelib.errors import AwsCallError, ConfigError

if TYPE_CHECKING:
    from chalicelib.metrics import Metrics

logger = logging.getLogger(__name__)

#: How often a container asks whether the config parameter changed (seconds). Every invocation that reads
#: the config therefore runs a version that was current at most this long before (docs/operations.md,
#: "Config changes").
CONFIG_CHECK_SECONDS = 60.0


@dataclass(frozen=True)
class Parameter:
    """One read of a parameter: its value (kept out of `repr`) and the version that value belongs to."""

    name: str
    version: int
    value: str = field(repr=False)


def get_parameter(aws: AwsClients, name: str) -> Parameter:
    """Parameter `name`'s current value and version (GetParameter WithDecryption).

    GetParameter answers `Parameter.Version` with the value (AWS Systems Manager API Reference,
    "GetParameter", response element `Parameter`), so checking for a new version needs no other call and no
    other permission. DescribeParameters answers the version without the value, but is granted on resource
    `*`, where `ssm:GetParameter` is granted on this one parameter's ARN (AWS Systems Manager User Guide,
    "Restricting access to Systems Manager parameters using IAM policies": its restrictive example allows
    `ssm:DescribeParameters` on `*` and scopes only the Get actions to parameter ARNs). Both count against
    Parameter Store's per-account throughput (docs/operations.md, "Quotas and rate limits"); one call a minute
    per container is far below it.
    """
    got = aws.call("ssm", "get_parameter", Name=name, WithDecryption=True)["Parameter"]
    return Parameter(name=name, version=int(got["Version"]), value=str(got["Value"]))


def read_parameter(aws: AwsClients, name: str) -> str:
    """The value of parameter `name`, decrypted when it is a SecureString (GetParameter WithDecryption)."""
    return get_parameter(aws, name).value


class ConfigWatch:
    """The deployed config read from an SSM parameter, checked for a new version at most once per
    `interval` seconds of `clock` (injected, so tests never sleep).

    The clock is the wall clock, not a monotonic one: Lambda freezes a container between invocations, and
    the interval must count that time too. A clock that went back (before the last check) makes a check due.

    A new version is parsed and validated before it replaces the config in use. An invalid one is refused:
    the last good config stays in use, an error is logged (the parameter, both versions and the problems by
    field path; the config names secrets and holds none), and `ConfigRejected` is emitted, once per check
    while the parameter stays invalid, so an alarm on it stays in alarm until the parameter is fixed. A
    failed check (SSM throttled or unreachable) keeps the config in use too, and is tried again one interval
    later. Only the first read may fail the invocation: a container with no good config cannot run.
    """

    def __init__(
        self,
        aws: AwsClients,
        name: str,
        *,
        clock: Callable[[], datetime],
        metrics: Callable[[], Metrics],
        interval: float = CONFIG_CHECK_SECONDS,
        on_change: Callable[[Config, Config], None] = lambda _old, _new: None,
    ) -> None:
        self._aws = aws
        self._name = name
        self._clock = clock
        self._metrics = metrics
        self._interval = interval
        self._on_change = on_change
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._version = 0
        self._checked: datetime | None = None

    @property
    def version(self) -> int:
        """The parameter version of the config in use (0 before the first read)."""
        return self._version

    def current(self) -> Config:
        """The config in use, after a version check when the last one is `interval` seconds old."""
        now = self._clock()
        with self._lock:
            if self._config is None:
                first = get_parameter(self._aws, self._name)
                self._config = parse_config(first.value, self._source)
                self._version, self._checked = first.version, now
                return self._config
            in_use = self._config
            elapsed = (now - self._checked).total_seconds() if self._checked else self._interval
            if 0 <= elapsed < self._interval:
                return in_use
            self._checked = now
            fresh = self._check(in_use)
        if fresh is not in_use:  # outside the lock: the wiring's own lock may be taken by `on_change`
            self._on_change(in_use, fresh)
        return fresh

    @property
    def _source(self) -> str:
        return f"ssm:{self._name}"

    def _check(self, in_use: Config) -> Config:
        """The config to use from now: the parameter's new version when it validates, else `in_use`."""
        try:
            latest = get_parameter(self._aws, self._name)
        except AwsCallError as err:
            logger.warning(
                "config version check failed; keeping the config in use",
                extra={"parameter": self._name, "version": self._version, "error": str(err)},
            )
            return in_use
        if latest.version == self._version:
            return in_use
        try:
            fresh = parse_config(latest.value, self._source)
        except ConfigError as err:
            logger.error(
                "config rejected; keeping the last good config",
                extra={
                    "parameter": self._name,
                    "version": latest.version,
                    "kept_version": self._version,
                    "problems": err.problems,
                },
            )
            self._metrics().emit_count("ConfigRejected", 1)
            return in_use
        logger.info(
            "config changed",
            extra={"parameter": self._name, "version": latest.version, "previous_version": self._version},
        )
        self._config, self._version = fresh, latest.version
        return fresh
