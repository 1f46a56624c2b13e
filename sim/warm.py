"""Warm capacity in the simulated world: the states a machine can wait in before it is needed, how long it
takes to start from each, what each costs, and the path from "started" to "runner polling" each scaler
pays. One model serves every group with an Auto Scaling warm pool: the fixed one the `taskscaler-warm` peer
is given by hand, and the one our reconcile sizes (PutWarmPool through `sim.ours.SimAsg`).

Imports config and nothing else of the simulator.
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


#: PutWarmPool's PoolState (Amazon EC2 Auto Scaling API Reference) for each state a group can be put in.
POOL_STATES = {"Stopped": WarmState.STOPPED, "Hibernated": WarmState.HIBERNATED}

#: Seconds from "the instance leaves the warm pool" to its operating system up (sshd, dockerd, per-boot
#: scripts running), as (low, high) of a uniform law: Linux about 20 s (a hibernated one resumes about as
#: fast), Windows in under 40 s. These are issue #22's figures: AWS publishes none for a start from stopped
#: ("Start a hibernated Amazon EC2 instance" says only that reaching running "can take a few minutes"; the
#: warm-pool launch, InfoQ "AWS Launches EC2 Auto Scaling Warm Pools", 2021: instances "can be launched to
#: serve traffic in as low as 30 seconds"). `SimOptions.warm_start_scale` stretches them, for the
#: sensitivity the bench reports. A Mac cannot wait in a warm pool: stopping a Mac instance scrubs its host
#: ("Stop or terminate your Amazon EC2 Mac instance"), so nothing is warm.
WARM_START_S: dict[tuple[Platform, WarmState], tuple[float, float]] = {
    (Platform.LINUX, WarmState.STOPPED): (15.0, 25.0),
    (Platform.LINUX, WarmState.HIBERNATED): (15.0, 25.0),
    (Platform.WINDOWS, WarmState.STOPPED): (25.0, 40.0),
    (Platform.WINDOWS, WarmState.HIBERNATED): (25.0, 40.0),
}


class Readiness(Enum):
    """What stands between a started machine and a job running on it, per scaler.

    SSH: taskscaler (the fleeting plugin) sees the instance running on its next Update, every
    `update_interval_when_expecting` (2 s) while instances start, and connects over SSH to the dockerd the
    OS started (gitlab-runner docs, "Docker Autoscaler executor"; fleeting's connector): the job was taken
    before, so it runs at once.
    SECRET: ours. The machine's boot script (infra/templates) runs again on this boot (cloud-init's
    per-boot scripts; the Windows task at startup), reads the secret the launch hook wrote when the instance
    left the pool (the hook's Lambda ran while the OS started, so the first read finds it; a hibernated
    machine first notices it left the pool on its next poll of its target lifecycle state, every
    SECRET_POLL_SECONDS), deletes it, merges daemon.json and restarts Docker, then starts run-single, whose
    first job request is the runner's first poll.
    """

    SSH = "ssh"
    SECRET = "secret"


#: The boot script's poll of the target lifecycle state (infra/userdata.py SECRET_POLL_SECONDS).
SECRET_POLL_S = 5.0
#: Seconds after the OS is up until the runner can take a job, as (low, high) of a uniform law, per path
#: and platform. SSH: one fleeting Update interval (0-2 s) and a connection (about 1 s). SECRET: two
#: Secrets Manager calls and the IMDS reads (about 1 s), `systemctl restart docker` on Linux (a few
#: seconds) or `Restart-Service docker` on Windows (slower), run-single's start and first request.
READY_AFTER_START_S: dict[tuple[Readiness, Platform], tuple[float, float]] = {
    (Readiness.SSH, Platform.LINUX): (1.0, 3.0),
    (Readiness.SSH, Platform.WINDOWS): (1.0, 3.0),
    (Readiness.SECRET, Platform.LINUX): (3.0, 8.0),
    (Readiness.SECRET, Platform.WINDOWS): (6.0, 15.0),
}


def warm_start_time(
    platform: Platform,
    state: WarmState,
    readiness: Readiness,
    rng: random.Random,
    *,
    scale: float = 1.0,
) -> float:
    """One start (s) from `state` to a runner that can take a job; a KeyError for a platform that cannot
    be warm. `scale` stretches the start from stopped (not the scaler's own path)."""
    low, high = WARM_START_S[(platform, state)]
    start = rng.uniform(low, high) * scale
    ready_low, ready_high = READY_AFTER_START_S[(readiness, platform)]
    ready = rng.uniform(ready_low, ready_high)
    if readiness is Readiness.SECRET and state is WarmState.HIBERNATED:
        ready += rng.uniform(0.0, SECRET_POLL_S)  # resumed inside its Warmed:* poll loop
    return start + ready


def stopped_usd_per_hour(platform: Platform) -> float:
    """What a stopped (or hibernated) instance costs per hour: its root volume."""
    return ROOT_VOLUME_GIB[platform] * EBS_USD_PER_GIB_MONTH / HOURS_PER_MONTH


@dataclass(frozen=True)
class WarmPoolSpec:
    """A warm pool of `size` instances waiting in `state` (PutWarmPool's MinSize, PoolState), whose machines
    become ready by `readiness` when they leave it."""

    size: int
    state: WarmState = WarmState.STOPPED
    readiness: Readiness = Readiness.SSH


@dataclass(eq=False)
class WarmInstance:
    """One instance of a warm pool: launched at `created_at`, booted cold (billed as running, the warm-pool
    entry hook's pre-initialization included) until `warm_at`, then stopped (only EBS billed) until it left
    at `left_at` (None: still in the pool), into service or terminated (`ended`) when the pool shrank."""

    pool: str
    created_at: float
    warm_at: float
    left_at: float | None = None
    instance_id: str = ""
    ended: bool = False

    def ready(self, now: float) -> bool:
        return self.left_at is None and now >= self.warm_at

    def running_seconds(self, end: float) -> float:
        """Billed at the instance price: its first (cold) boot, before it stopped.

        Not modelled: EC2 bills each start at least 60 s ("Every time you start your instance, Amazon EC2
        charges a one-minute minimum for instance usage, and thereafter charges per second", EC2 API
        Reference, StartInstances), both this first boot and the start out of the pool. It adds cost only
        to a running segment shorter than a minute: a cold boot stopped sooner, or a machine that leaves
        the pool and ends within a minute."""
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
    #: The instances still in the pool, in `instances`' order, and how many of `instances` it has looked at:
    #: the ledger grows by one per launch all day, the pool holds a few, and every launch asks about it.
    _in_pool: list[WarmInstance] = field(default_factory=list, init=False, repr=False, compare=False)
    _seen: int = field(default=0, init=False, repr=False, compare=False)

    def take(self, now: float) -> WarmInstance | None:
        """The longest-stopped ready instance, now leaving the pool; None when none is ready."""
        ready = [i for i in self._waiting() if i.ready(now)]
        if not ready:
            return None
        chosen = min(ready, key=lambda i: i.warm_at)
        chosen.left_at = now
        self._in_pool.remove(chosen)
        return chosen

    def waiting(self) -> int:
        """Instances in the pool: stopped or still on their first boot."""
        return len(self._waiting())

    def shrink(self, now: float) -> list[WarmInstance]:
        """Terminate instances beyond the spec's size, those still booting first (the newest first):
        Auto Scaling ends surplus warm instances when the pool's size falls. Returns the ended ones."""
        waiting = self._waiting()
        surplus = len(waiting) - self.spec.size
        if surplus <= 0:
            return []
        order = sorted(waiting, key=lambda i: (i.ready(now), -i.created_at))
        ended = order[:surplus]
        for instance in ended:
            instance.left_at, instance.ended = now, True
        self._in_pool = [i for i in self._in_pool if i.left_at is None]
        return ended

    def _waiting(self) -> list[WarmInstance]:
        """`[i for i in self.instances if i.left_at is None]`, kept up to date instead of rebuilt: the
        instances appended since the last call join it, and `take` and `shrink` drop those that leave (only
        they set `left_at`). Same members, same order."""
        if self._seen > len(self.instances):  # the ledger was cut: look at all of it again
            self._in_pool, self._seen = [], 0
        if self._seen < len(self.instances):
            self._in_pool.extend(i for i in self.instances[self._seen :] if i.left_at is None)
            self._seen = len(self.instances)
        return self._in_pool
