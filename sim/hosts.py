"""Simulated dedicated hosts (24 h minimum, scrub after each instance), sized by a `HostPlanner`: the seam
our reconciler's host planning replaces; baselines share `SimpleHostPlanner`. Imports config and model.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from chalicelib.config import HostsConfig, Pool
from sim.events import EventLoop
from sim.model import SimOptions


@dataclass(eq=False)
class SimHost:
    """One dedicated host. Billed from allocation to release, at least `min_allocation`."""

    host_id: str
    pool: str
    cfg: HostsConfig
    allocated_at: float
    available_at: float
    instances: set[str] = field(default_factory=set)
    scrubbing_until: float | None = None
    released_at: float | None = None
    idle_since: float | None = None
    zone: str = ""
    occupied: list[tuple[float, float]] = field(default_factory=list)
    occupied_since: float | None = None
    scrubs: list[tuple[float, float]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.released_at is None

    def usable(self, now: float) -> bool:
        """Can take an instance now: allocated, not scrubbing, a slot free."""
        scrubbing = self.scrubbing_until is not None and now < self.scrubbing_until
        return (
            self.live
            and now >= self.available_at
            and not scrubbing
            and len(self.instances) < self.cfg.slots_per_host
        )

    def billed_seconds(self, end: float) -> float:
        """Allocated time, at least the minimum allocation, less its scrubs: "Metering and billing is paused
        when the Dedicated Host enters the pending state. You are not charged for the duration of the
        scrubbing workflow" (AWS, "Stop or terminate your Amazon EC2 Mac instance")."""
        stop = self.released_at if self.released_at is not None else end
        held = stop - self.allocated_at
        scrubbing = sum(max(0.0, min(until, stop) - since) for since, until in self.scrubs if since < stop)
        return max(held, self.cfg.min_allocation.total_seconds()) - scrubbing

    def paid_idle_seconds(self, end: float) -> float:
        """Billed seconds with no instance on the host: allocating, empty, and the rest of the minimum
        allocation after its last use (a scrub is not billed). Uses count within the host's life (until
        `end` if live)."""
        stop = self.released_at if self.released_at is not None else end
        spans = (
            [*self.occupied, (self.occupied_since, stop)]
            if self.occupied_since is not None
            else self.occupied
        )
        used = sum(max(0.0, min(until, stop) - since) for since, until in spans)
        return self.billed_seconds(end) - used

    def occupy(self, instance_id: str, now: float) -> None:
        if not self.instances:
            self.occupied_since = now
        self.instances.add(instance_id)
        self.idle_since = None

    def vacate(self, instance_id: str, now: float) -> None:
        self.instances.discard(instance_id)
        if not self.instances and self.occupied_since is not None:
            self.occupied.append((self.occupied_since, now))
            self.occupied_since = None


@dataclass(frozen=True)
class HostDecision:
    allocate: int = 0
    release: tuple[str, ...] = ()


class HostPlanner(Protocol):
    """Decides a host pool's size: hosts to allocate now and hosts to release now."""

    def decide(
        self,
        pool: Pool,
        hosts: Sequence[SimHost],
        unplaced: int,
        unplaced_since: float | None,
        now: float,
        now_dt: datetime,
    ) -> HostDecision: ...


class SimpleHostPlanner:
    """Grow when machines stay unplaced for `allocate_after`; release empty hosts idle for the active
    policy's idle_time once their minimum allocation is paid; never below `min_hosts` or above `max_hosts`.
    """

    def decide(
        self,
        pool: Pool,
        hosts: Sequence[SimHost],
        unplaced: int,
        unplaced_since: float | None,
        now: float,
        now_dt: datetime,
    ) -> HostDecision:
        cfg = pool.hosts
        if cfg is None:
            return HostDecision()
        live = [h for h in hosts if h.live]
        coming = sum(cfg.slots_per_host - len(h.instances) for h in live if _coming(h, now, cfg))
        waited = unplaced_since is not None and now - unplaced_since >= cfg.allocate_after.total_seconds()
        short = max(0, unplaced - coming) if waited else 0
        want = max(math.ceil(short / cfg.slots_per_host), cfg.min_hosts - len(live))
        allocate = max(0, min(want, cfg.max_hosts - len(live)))
        if allocate or unplaced:
            return HostDecision(allocate=allocate)
        idle_time = pool.active_policy(now_dt).idle_time.total_seconds()
        release = [
            h.host_id
            for h in live
            if not h.instances
            and h.usable(now)
            and h.idle_since is not None
            and now - h.idle_since >= idle_time
            and now - h.allocated_at >= cfg.min_allocation.total_seconds()
        ]
        return HostDecision(release=tuple(release[: max(0, len(live) - cfg.min_hosts)]))


def _coming(host: SimHost, now: float, cfg: HostsConfig) -> bool:
    """A host that will take an instance before a new one could: still allocating, or ending its scrub."""
    soon = now + cfg.allocate_after.total_seconds()
    if now < host.available_at:
        return True
    return host.scrubbing_until is not None and now < host.scrubbing_until <= soon


class NoHostPlanner:
    """Leaves host counts alone: for a policy (the oracle) that allocates and releases hosts itself."""

    def decide(
        self,
        pool: Pool,
        hosts: Sequence[SimHost],
        unplaced: int,
        unplaced_since: float | None,
        now: float,
        now_dt: datetime,
    ) -> HostDecision:
        return HostDecision()


class SimHosts:
    """Every host pool's hosts. `on_room(pool)` is called whenever a host may take an instance again."""

    def __init__(self, loop: EventLoop, options: SimOptions, on_room: Callable[[str], None]) -> None:
        self._loop = loop
        self._options = options
        self._on_room = on_room
        self._ids = itertools.count(1)
        self.hosts: list[SimHost] = []
        self.planners: dict[str, HostPlanner] = {}
        self._by_instance: dict[str, SimHost] = {}
        self._unplaced_since: dict[str, float] = {}

    def of(self, pool: str) -> list[SimHost]:
        return [h for h in self.hosts if h.pool == pool]

    def place(self, pool: str, instance_id: str) -> str | None:
        """Put a launching instance on a host: the fullest usable host first (keeps others releasable)."""
        now = self._loop.now
        usable = [h for h in self.hosts if h.pool == pool and h.usable(now)]
        if not usable:
            return None
        host = max(usable, key=lambda h: (len(h.instances), -h.allocated_at))
        host.occupy(instance_id, now)
        self._by_instance[instance_id] = host
        return host.host_id

    def end(self, instance_id: str, scrub_s: float | None = None) -> None:
        """The instance ended: its slot frees after the host's scrub (EC2 Mac scrubs for about 50 min), or
        after `scrub_s` when given (the oracle's Mac reuse: the slot is busy only while a root volume is
        replaced, unbilled like a scrub, so the oracle stays a lower bound)."""
        host = self._by_instance.pop(instance_id, None)
        if host is None:
            return
        now = self._loop.now
        host.vacate(instance_id, now)
        scrub = host.cfg.scrub_time.total_seconds() if scrub_s is None else scrub_s
        if scrub > 0:
            host.scrubbing_until = now + scrub
            host.scrubs.append((now, now + scrub))
            self._loop.at(now + scrub, lambda: self._room(host))
        else:
            self._room(host)

    def allocate(self, pool: Pool, count: int, zone: str = "") -> tuple[str, ...]:
        """Allocate `count` hosts for the pool; each takes instances once AWS has brought it up."""
        cfg = pool.hosts
        if cfg is None:
            return ()
        now = self._loop.now
        ids: list[str] = []
        for _ in range(count):
            host = SimHost(
                host_id=f"h-{next(self._ids):017x}",
                pool=pool.name,
                cfg=cfg,
                allocated_at=now,
                available_at=now + self._options.host_allocation_s,
                idle_since=now + self._options.host_allocation_s,
                zone=zone,
            )
            self.hosts.append(host)
            ids.append(host.host_id)
            self._loop.at(host.available_at, functools.partial(self._room, host))
        return tuple(ids)

    def release_refusal(self, host_id: str) -> str:
        """Why EC2 would refuse to release the host now ("" when it would not): in use, inside the minimum
        allocation, scrubbing, gone."""
        now = self._loop.now
        host = next((h for h in self.hosts if h.host_id == host_id), None)
        if host is None or not host.live:
            return "InvalidHostID.NotFound"
        if host.instances:
            return "HostInUse"
        if host.scrubbing_until is not None and now < host.scrubbing_until:
            return "IncorrectHostState"
        if now - host.allocated_at < host.cfg.min_allocation.total_seconds():
            return "MinimumAllocationNotMet"
        return ""

    def release(self, host_id: str) -> bool:
        """EC2's rule: never a host with an instance or scrubbing, never before the minimum allocation."""
        if self.release_refusal(host_id):
            return False
        for host in self.hosts:
            if host.host_id == host_id:
                host.released_at = self._loop.now
        return True

    def tick(self, pools: Sequence[Pool], unplaced: Callable[[str], int], now_dt: datetime) -> None:
        """Let each host pool's planner decide, then apply its decision."""
        now = self._loop.now
        for pool in pools:
            if pool.hosts is None:
                continue
            missing = unplaced(pool.name)
            if missing and pool.name not in self._unplaced_since:
                self._unplaced_since[pool.name] = now
            elif not missing:
                self._unplaced_since.pop(pool.name, None)
            planner = self.planners.get(pool.name, SimpleHostPlanner())
            decision = planner.decide(
                pool, self.of(pool.name), missing, self._unplaced_since.get(pool.name), now, now_dt
            )
            if decision.allocate:
                self.allocate(pool, decision.allocate)
                self._unplaced_since.pop(pool.name, None)
            for host_id in decision.release:
                self.release(host_id)

    def _room(self, host: SimHost) -> None:
        if not host.live:
            return
        if not host.instances and host.idle_since is None:
            host.idle_since = self._loop.now
        self._on_room(host.pool)
