"""The ports an entry use case is given: a fixed, typed, frozen set of adapters, built by the wiring.

`chalicelib.runtime` (the wiring, called by app.py only) builds these once per container; use cases receive
them and never build an adapter or read the environment. Adapters whose construction costs (a config read
from SSM, python-gitlab's import, a queue URL lookup) are held as providers, so a handler pays only for what
it uses; the read-only properties name what a use case asks for. Imports types only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.config import Config
    from chalicelib.fleet import Fleet
    from chalicelib.gitlab import GitLabApi
    from chalicelib.metrics import Metrics
    from chalicelib.pipelines import Pipelines
    from chalicelib.queue import DeadLetterQueue, PoolQueue
    from chalicelib.reconcile import Reconciler
    from chalicelib.resources import Names
    from chalicelib.secrets import Secrets
    from chalicelib.store import Store

#: The time now (UTC, aware): the only clock a use case reads.
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class CertPorts:
    """What the base-certificate rotation needs: the rotation Lambda and the tick's freshness check."""

    names: Names
    secrets: Secrets
    clock: Clock
    #: The deployment's config, read on first use; the rotation tolerates it unreadable (ConfigError).
    load_config: Callable[[], Config]

    @property
    def config(self) -> Config:
        return self.load_config()

    def now(self) -> datetime:
        return self.clock()


@dataclass(frozen=True)
class Ports:
    """What the webhook, tick, pool-dirty, machine-event and alarm use cases may touch, and nothing else."""

    names: Names
    store: Store
    fleet: Fleet
    secrets: Secrets
    metrics: Metrics
    clock: Clock
    #: Waits between attempts (a held pool lease); a test's clock never sleeps.
    sleep: Callable[[float], None]
    certs: CertPorts
    load_config: Callable[[], Config]
    open_queue: Callable[[], PoolQueue]
    #: The dirty queue's dead-letter queue (the dead-letter alarm redrives it).
    open_dead_letters: Callable[[], DeadLetterQueue]
    open_gitlab: Callable[[], GitLabApi]
    #: Whether GitLab can be reached (an injected adapter, or an API-token secret named in config).
    gitlab_configured: Callable[[], bool]
    open_pipelines: Callable[[], Pipelines]
    #: The GitLab instance's host name (from config): the namespace of job ids in the store.
    read_gitlab_host: Callable[[], str]
    #: A secret's current text, cached per container for a minute (rotation-friendly).
    secret_text: Callable[[str], str]
    #: Every accepted X-Gitlab-Token (several, so a token rotates without downtime).
    webhook_tokens: Callable[[], list[str]]
    #: A pool's reconciler for one invocation (`owner` holds the pool leases it takes).
    reconciler: Callable[[str], Reconciler]
    #: AWS calls made so far by this container (the AwsCalls metric is a difference of two readings).
    aws_calls: Callable[[], int]

    @property
    def config(self) -> Config:
        return self.load_config()

    @property
    def queue(self) -> PoolQueue:
        return self.open_queue()

    @property
    def gitlab(self) -> GitLabApi:
        return self.open_gitlab()

    @property
    def pipelines(self) -> Pipelines:
        return self.open_pipelines()

    @property
    def gitlab_host(self) -> str:
        return self.read_gitlab_host()

    def has_gitlab(self) -> bool:
        return self.gitlab_configured()

    def now(self) -> datetime:
        return self.clock()
