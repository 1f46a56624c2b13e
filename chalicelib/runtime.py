"""The wiring: the adapters of one Lambda container, built lazily on first use and reused by every invocation.

Only app.py (and the toolkit's local app, and test fixtures) calls it: it hands each use case its `Ports`
(chalicelib.ports) and no use case imports it back. The only place that reads the environment (handler
set-up, never domain code). Tests and the local demo install their own Runtime (moto endpoint, fake GitLab,
fixed clock) with `install()`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chalicelib.aws import AwsClients
from chalicelib.config import Config, load_config
from chalicelib.events.timestamps import utc_now
from chalicelib.fleet import AsgFleet
from chalicelib.parameters import ConfigWatch, read_parameter
from chalicelib.ports import CertPorts, Ports
from chalicelib.queue import DeadLetterQueue, DirtyQueue, queue_url
from chalicelib.resources import (
    ENV_CONFIG_FILE,
    ENV_CONFIG_PARAM,
    ENV_QUEUE_URL,
    ENV_TABLE,
    Names,
    names_from_env,
)
from chalicelib.secrets import AwsSecrets, SecretCache, parse_token_list
from chalicelib.store import DynamoStore
from chalicelib.tracing import Tracing, from_environment

if TYPE_CHECKING:
    from chalicelib.hosts import Ec2Hosts
    from chalicelib.metrics import Metrics
    from chalicelib.pipelines import DynamoPipelines
    from chalicelib.reconcile import Reconciler, RunnerControl


class Runtime:
    """Lazily built adapters; every attribute is created once per container."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        aws: AwsClients | None = None,
        config: Config | None = None,
        gitlab: RunnerControl | Any | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self._aws = aws
        self._config = config
        self._gitlab = gitlab
        #: Whether this Runtime built the GitLab adapter from config (then a new config may rebuild it).
        self._gitlab_from_config = False
        self._metrics = metrics
        self.clock = clock
        self._monotonic = monotonic
        self.sleep = sleep
        self._lock = threading.Lock()
        #: The config one invocation reads, per thread: set on its first read inside `invocation()`.
        self._pinned = threading.local()

    def now(self) -> datetime:
        return self.clock()

    @cached_property
    def names(self) -> Names:
        return names_from_env(dict(self.environ))

    @cached_property
    def tracing(self) -> Tracing:
        """X-Ray subsegments per adapter call in Lambda; off elsewhere (see chalicelib.tracing)."""
        return from_environment(self.environ)

    @cached_property
    def aws(self) -> AwsClients:
        return self._aws or AwsClients(
            region=self.environ.get("AWS_REGION") or self.environ.get("AWS_DEFAULT_REGION"),
            tracing=self.tracing,
        )

    @property
    def config(self) -> Config:
        """The config: the one installed, else the file (read once), else the SSM parameter, whose version
        is checked at most once a minute so a hand edit reaches this warm container (`config_watch`)."""
        if self._config is not None:
            return self._config
        pinned: Config | None = getattr(self._pinned, "config", None)
        if pinned is not None:
            return pinned
        watch = self.config_watch
        config = watch.current() if watch is not None else self._file_config
        if getattr(self._pinned, "active", False):
            self._pinned.config = config
        return config

    @config.setter
    def config(self, config: Config) -> None:
        """Install `config` for the following invocations (tests, the replay): no parameter is read then."""
        self._config = config

    @contextmanager
    def pinned_config(self) -> Iterator[Runtime]:
        """One invocation's config: its first read is kept until the invocation ends, so a new parameter
        version applied meanwhile (`config_watch`) cannot give its steps two configs, such as a fan-out
        planned for a pool the next step no longer knows. The next invocation reads the new one."""
        self._pinned.active, self._pinned.config = True, None
        try:
            yield self
        finally:
            self._pinned.active, self._pinned.config = False, None

    @cached_property
    def config_watch(self) -> ConfigWatch | None:
        """The SSM parameter's watch, when the config lives in a parameter (RUNNER_SCALER_CONFIG_PARAM and no
        RUNNER_SCALER_CONFIG file), on this Runtime's clock."""
        name = self.environ.get(ENV_CONFIG_PARAM)
        if self.environ.get(ENV_CONFIG_FILE) or not name:
            return None
        return ConfigWatch(
            self.aws,
            name,
            clock=self.now,
            metrics=lambda: self.metrics,
            on_change=self._config_changed,
        )

    @cached_property
    def _file_config(self) -> Config:
        return load_config(self.environ, self._read_parameter)

    def _config_changed(self, old: Config, new: Config) -> None:
        """Forget what this container derived from the old config: the GitLab adapter and host (when the
        `[gitlab]` table changed and the adapter was built here) and the dedicated-hosts adapter."""
        if old.gitlab != new.gitlab:
            with self._lock:
                if self._gitlab_from_config:
                    self._gitlab, self._gitlab_from_config = None, False
            self.__dict__.pop("gitlab_host", None)
        self.__dict__.pop("hosts", None)

    def _read_parameter(self, name: str) -> str:
        return read_parameter(self.aws, name)

    @cached_property
    def gitlab_host(self) -> str:
        """The GitLab instance's host name: the namespace of job ids in the store."""
        return urlsplit(self.config.gitlab.url).netloc

    @cached_property
    def store(self) -> DynamoStore:
        return DynamoStore(self.aws, self.environ.get(ENV_TABLE) or self.names.table)

    @cached_property
    def pipelines(self) -> DynamoPipelines:
        """Pipeline state and learned durations for prewarm, in the same table as the jobs."""
        from chalicelib.pipelines import DynamoPipelines

        return DynamoPipelines(self.aws, self.environ.get(ENV_TABLE) or self.names.table)

    @cached_property
    def fleet(self) -> AsgFleet:
        return AsgFleet(self.aws)

    @cached_property
    def secrets(self) -> AwsSecrets:
        """The Secrets Manager adapter, built once per container (no use case builds its own)."""
        return AwsSecrets(self.aws)

    @cached_property
    def cert_ports(self) -> CertPorts:
        """What the rotation Lambda and the tick's certificate check are given."""
        return CertPorts(
            names=self.names, secrets=self.secrets, clock=self.now, load_config=lambda: self.config
        )

    @cached_property
    def metrics(self) -> Metrics:
        """The metrics port: the one installed, else EMF log lines (CloudWatch reads them from the logs)."""
        if self._metrics is not None:
            return self._metrics
        from chalicelib.metrics import EmfMetrics  # powertools' metrics: not on `import app`'s path

        return EmfMetrics()

    @cached_property
    def ports(self) -> Ports:
        """What the webhook, tick, pool-dirty, machine-event and alarm use cases are given.

        Providers read this Runtime's attributes when called, so costly adapters are still built on first
        use, once per container, and an attribute a test or the replay replaced is the one handed out.
        """
        return Ports(
            names=self.names,
            store=self.store,
            fleet=self.fleet,
            secrets=self.secrets,
            metrics=self.metrics,
            clock=self.now,
            sleep=lambda seconds: self.sleep(seconds),
            certs=self.cert_ports,
            load_config=lambda: self.config,
            open_queue=lambda: self.queue,
            open_dead_letters=lambda: self.dead_letters,
            open_gitlab=lambda: self.gitlab,
            gitlab_configured=self.has_gitlab,
            open_pipelines=lambda: self.pipelines,
            read_gitlab_host=lambda: self.gitlab_host,
            secret_text=self.secret_text,
            webhook_tokens=self.webhook_tokens,
            reconciler=self.reconciler,
            aws_calls=lambda: self.aws.total_calls,
        )

    @cached_property
    def queue(self) -> DirtyQueue:
        url = self.environ.get(ENV_QUEUE_URL) or queue_url(self.aws, self.names.queue)
        return DirtyQueue(self.aws, url)

    @cached_property
    def dead_letters(self) -> DeadLetterQueue:
        """The dirty queue's dead-letter queue (the DLQ alarm redrives it)."""
        return DeadLetterQueue(self.aws, queue_url(self.aws, self.names.dead_letter_queue))

    @property
    def gitlab(self) -> Any:
        """The GitLab adapter, imported on first use: handlers that never call GitLab skip python-gitlab.

        The config is read before the lock: that read may apply a new parameter version, whose change
        handler (`_config_changed`) takes the same lock."""
        if self._gitlab is None:
            _ = self.config  # outside the lock, so a new version's change handler can take it
        with self._lock:
            if self._gitlab is None:
                from chalicelib.gitlab import gitlab_client

                settings = self.config.gitlab
                token_secret = settings.api_token_secret or self.names.gitlab_token_secret
                # Latency-bound callers (the webhook) must not sleep on a Retry-After: the tick retries.
                self._gitlab = gitlab_client(
                    settings.url,
                    lambda: self.secret_text(token_secret),
                    ca_bundle_path=self._ca_bundle_path(),
                    max_retries=2,
                    obey_rate_limit=False,
                    tracing=self.tracing,
                )
                self._gitlab_from_config = True
            return self._gitlab

    def _ca_bundle_path(self) -> str | None:
        """A self-hosted GitLab's CA bundle (seed 001), written once to /tmp for requests to verify with."""
        name = self.config.gitlab.ca_bundle_secret
        if not name:
            return None
        path = Path(tempfile.gettempdir()) / "runner-scaler-gitlab-ca.pem"
        path.write_text(self.secret_text(name), encoding="utf-8")
        return str(path)

    def has_gitlab(self) -> bool:
        """Whether GitLab can be reached: an injected adapter, or an API-token secret named in config."""
        return self._gitlab is not None or bool(self.config.gitlab.api_token_secret)

    @cached_property
    def secrets_cache(self) -> SecretCache:
        """Secrets read once a minute per container (rotation-friendly), through the secrets adapter."""
        return SecretCache(self.secrets, clock=self._monotonic)

    def secret_text(self, name: str) -> str:
        """A secret's current value, cached per container for a minute (rotation-friendly)."""
        return self.secrets_cache.text(name)

    def webhook_tokens(self) -> list[str]:
        """Every accepted X-Gitlab-Token (several, so a token rotates without downtime)."""
        name = self.config.gitlab.webhook_tokens_secret or self.names.webhook_tokens_secret
        return parse_token_list(self.secret_text(name))

    def reconciler(self, owner: str) -> Reconciler:
        from chalicelib.eligibility import Eligibility
        from chalicelib.reconcile import Reconciler

        runners = self.gitlab if self.has_gitlab() else None
        prewarm = self.pipelines if any(p.prewarm for p in self.config.pools) else None
        eligibility = (
            Eligibility(self.config.gitlab, self.store, self.gitlab, self.gitlab_host) if runners else None
        )
        reuse = None
        if runners is not None and any(p.reuses_root_volume for p in self.config.pools):
            from chalicelib.lifecycle import machine_lifecycle

            # Built only when a reused Mac's replacement succeeded: its new runner and secret, as a launch's.
            reuse = partial(machine_lifecycle, self.ports)
        return Reconciler(
            self.config,
            self.store,
            self.fleet,
            runners,
            hosts=self.hosts,
            owner=owner,
            pipelines=prewarm,
            gitlab=self.gitlab_host,
            eligibility=eligibility,
            warm_pools=self.fleet,
            metrics=self.metrics,
            reuse=reuse,
        )

    @cached_property
    def hosts(self) -> Ec2Hosts | None:
        """Dedicated hosts, only when a pool runs on them (no call otherwise)."""
        if not any(p.hosts for p in self.config.pools):
            return None
        from chalicelib.hosts import Ec2Hosts

        return Ec2Hosts(self.aws, deployment=self.names.prefix)


_current: Runtime | None = None
_current_lock = threading.Lock()


def current() -> Runtime:
    """This container's Runtime (built from the environment on first use); called once per invocation,
    so it also draws this invocation's debug-log sample (POWERTOOLS_LOGGER_SAMPLE_RATE)."""
    global _current
    from chalicelib import logs

    with _current_lock:
        if _current is None:
            logs.configure(os.environ)
            _current = Runtime()
        logs.sample_debug(os.environ)
        return _current


@contextmanager
def invocation() -> Iterator[Runtime]:
    """`current()` for one handler invocation, its config read once (`Runtime.pinned_config`)."""
    with current().pinned_config() as runtime:
        yield runtime


def install(runtime: Runtime | None) -> None:
    """Use `runtime` for the following invocations (tests, replay, the demo); None resets."""
    global _current
    with _current_lock:
        _current = runtime
