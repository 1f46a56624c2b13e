"""Warm capacity in the simulated world: the states a machine can wait in before it is needed, how long it
takes to start from each, and what each costs. An Auto Scaling warm pool (a fixed one here, as the
`taskscaler-warm` peer has it; a scaler that sizes it can reuse the same model) keeps instances in one state.

Imports config and the model's boot times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

from chalicelib.config import Platform

#: Hours in a month for a monthly EBS price (AWS bills EBS per GiB-month, prorated by the hour).
HOURS_PER_MONTH = 730.0
#: gp3 storage, USD per GiB-month (Amazon EBS pricing, us-east-1); a stopped instance pays only its volumes
#: ("Warm pools for Amazon EC2 Auto Scaling": "you only pay for ... EBS volumes" of stopped instances).
EBS_USD_PER_GIB_MONTH = 0.08
#: Root volume of a runner machine per platform (GiB): the AMIs' usual sizes for CI images.
ROOT_VOLUME_GIB = {Platform.LINUX: 30, Platform.WINDOWS: 50, Platform.MACOS: 100}


class WarmState(Enum):
    """Where a prepared instance waits: stopped (only its EBS is paid) or hibernated (RAM saved to EBS)."""

    STOPPED = "stopped"
    HIBERNATED = "hibernated"


#: Seconds from "leave the warm pool" to the runner polling GitLab, as (low, high) of a uniform law: Linux
#: starts from stopped in about 20 s (a hibernated one resumes about as fast), Windows in under 40 s (issue
#: #22's figures, "Warm pools for Amazon EC2 Auto Scaling"). A Mac cannot wait in a warm pool: stopping a
#: Mac instance scrubs its host ("Stop or terminate your Amazon EC2 Mac instance"), so nothing is warm.
WARM_START_S: dict[tuple[Platform, WarmState], tuple[float, float]] = {
    (Platform.LINUX, WarmState.STOPPED): (15.0, 25.0),
    (Platform.LINUX, WarmState.HIBERNATED): (15.0, 25.0),
    (Platform.WINDOWS, WarmState.STOPPED): (25.0, 40.0),
    (Platform.WINDOWS, WarmState.HIBERNATED): (25.0, 40.0),
}


def warm_start_time(platform: Platform, state: WarmState, rng: random.Random) -> float:
    """One start (s) from `state` to a runner polling; a KeyError for a platform that cannot be warm."""
    low, high = WARM_START_S[(platform, state)]
    return rng.uniform(low, high)


def stopped_usd_per_hour(platform: Platform) -> float:
    """What a stopped (or hibernated) instance costs per hour: its root volume."""
    return ROOT_VOLUME_GIB[platform] * EBS_USD_PER_GIB_MONTH / HOURS_PER_MONTH


@dataclass(frozen=True)
class WarmPoolSpec:
    """A warm pool of `size` instances waiting in `state` (PutWarmPool's MinSize, PoolState)."""

    size: int
    state: WarmState = WarmState.STOPPED


@dataclass(eq=False)
class WarmInstance:
    """One instance of a warm pool: launched at `created_at`, booted cold (billed as running) until
    `warm_at`, then stopped (only EBS billed) until it leaves at `left_at` (None: still in the pool)."""

    pool: str
    created_at: float
    warm_at: float
    left_at: float | None = None

    def ready(self, now: float) -> bool:
        return self.left_at is None and now >= self.warm_at

    def running_seconds(self, end: float) -> float:
        """Billed at the instance price: its first (cold) boot, before it stopped."""
        return max(0.0, min(self.warm_at, self._until(end)) - self.created_at)

    def stopped_seconds(self, end: float) -> float:
        """Billed at the EBS price: from stopped until it left the pool (or `end`)."""
        return max(0.0, self._until(end) - self.warm_at)

    def _until(self, end: float) -> float:
        return self.left_at if self.left_at is not None else end


@dataclass
class WarmPool:
    """A group's warm pool: its spec and every instance it ever held (the ledger of its costs)."""

    spec: WarmPoolSpec
    instances: list[WarmInstance] = field(default_factory=list)

    def take(self, now: float) -> WarmInstance | None:
        """The longest-stopped ready instance, now leaving the pool; None when none is ready."""
        ready = [i for i in self.instances if i.ready(now)]
        if not ready:
            return None
        chosen = min(ready, key=lambda i: i.warm_at)
        chosen.left_at = now
        return chosen

    def waiting(self) -> int:
        """Instances in the pool: stopped or still on their first boot."""
        return sum(1 for i in self.instances if i.left_at is None)
