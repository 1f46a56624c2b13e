"""PURE dedicated-host planning for macOS and Windows (BYOL) pools: launch room, hosts to add and release.

Data in, decision out; `now` is a parameter. Imports config models, errors and the standard library only (no
boto3, no clock). The adapter (`chalicelib.hosts`) reads hosts into these values and applies the `HostPlan`.

AWS rules this module encodes (EC2 User Guide, "Stop or terminate your Amazon EC2 Mac instance", and EC2 Mac
pricing): a Mac host holds one instance; after that instance stops or ends the host runs a scrubbing workflow
in the `pending` state (about 50 min on x86, up to a few hours on Apple silicon or with a firmware update) and
takes no instance until it is `available` again; billing pauses while it scrubs; a Mac host cannot be released
before its 24-hour minimum allocation and is billed per second after it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from chalicelib.capacity.engine import slots_per_new_machine
from chalicelib.capacity.model import Machine, MachineState
from chalicelib.config import HostManagement, HostsConfig, Platform, Pool, format_duration
from chalicelib.errors import ConfigError

#: AWS takes a few minutes to bring a freshly allocated host to `available`. A host younger than this that is
#: not available yet is counted as coming, so one slow allocation does not trigger a second one.
NEW_HOST_GRACE = timedelta(minutes=15)


class HostState(StrEnum):
    """`Host.State` as DescribeHosts reports it (EC2 API reference, AllocationState)."""

    AVAILABLE = "available"
    PENDING = "pending"  # Mac: the scrubbing workflow after an instance ended (also briefly after allocation)
    CONFIGURING = "configuring"
    UNDER_ASSESSMENT = "under-assessment"
    PERMANENT_FAILURE = "permanent-failure"
    RELEASED = "released"
    RELEASED_PERMANENT_FAILURE = "released-permanent-failure"
    UNKNOWN = "unknown"  # a state this code does not know yet: never launched onto, never released


_GONE = frozenset({HostState.RELEASED, HostState.RELEASED_PERMANENT_FAILURE})
_FAILED = frozenset({HostState.UNDER_ASSESSMENT, HostState.PERMANENT_FAILURE})
_COMING = frozenset({HostState.PENDING, HostState.CONFIGURING})


@dataclass(frozen=True)
class Host:
    """One dedicated host of a pool, as read now.

    `free_slots` is what AWS reports free for the pool's instance type (AvailableInstanceCapacity), None when
    AWS did not say; `total_slots` is how many such machines the host holds when empty (TotalCapacity).
    `idle_since` is when the scaler first saw the host empty (kept in a host tag).
    `scrubbing_until` is an estimate of when a scrub ends, when someone knows it (the simulator, a store).
    `in_group`: the host is a member of the pool's host resource group (launches only reach members).
    """

    host_id: str
    state: HostState
    allocated_at: datetime
    instance_ids: tuple[str, ...] = ()
    free_slots: int | None = None
    total_slots: int | None = None
    availability_zone: str = ""
    idle_since: datetime | None = None
    scrubbing_until: datetime | None = None
    in_group: bool = True
    sockets: int = 0
    cores: int = 0

    @property
    def live(self) -> bool:
        """Still allocated to the account (and so still counted against max_hosts and the quota)."""
        return self.state not in _GONE

    @property
    def scrubbing(self) -> bool:
        """A `pending` host takes no instance; for a Mac host this is the scrubbing workflow."""
        return self.state is HostState.PENDING

    @property
    def failed(self) -> bool:
        return self.state in _FAILED

    @property
    def occupied(self) -> bool:
        return bool(self.instance_ids)

    def paid_until(self, hosts: HostsConfig) -> datetime:
        """End of the minimum allocation: until then the host is paid for whether it is used or not."""
        return self.allocated_at + hosts.min_allocation


@dataclass(frozen=True)
class IdleMark:
    """Set (`since`) or clear (None) the time a host was first seen empty; the adapter keeps it as a tag."""

    host_id: str
    since: datetime | None


@dataclass(frozen=True)
class LicenseRoom:
    """A License Manager license configuration's headroom (GetLicenseConfiguration).

    `counting` is LicenseCountingType: "Socket" or "Core" licenses are consumed per host, "Instance" per
    machine, "vCPU" per machine size. Only a hard limit blocks launches, so only a hard limit bounds the plan.
    """

    counting: str
    limit: int | None
    consumed: int
    hard_limit: bool

    @property
    def remaining(self) -> int | None:
        """Licenses left under a hard limit; None when nothing is enforced."""
        if not self.hard_limit or self.limit is None:
            return None
        return max(0, self.limit - self.consumed)


@dataclass(frozen=True)
class HostMetrics:
    """What a pool's hosts look like now, for the reconciler's per-pool metrics (counts and hours)."""

    allocated: int = 0
    available: int = 0
    scrubbing: int = 0
    occupied: int = 0
    idle: int = 0  # available, empty: billed and unused
    failed: int = 0
    launchable: int = 0  # machines the hosts can take now
    unmet: int = 0  # machines wanted that no host can take now
    idle_host_hours: float = 0.0  # hours idle hosts have been empty (incl. a Mac's last, unbilled scrub)
    committed_idle_hours: float = 0.0  # minimum-allocation hours still ahead on idle hosts (sunk)

    def as_metrics(self) -> dict[str, float]:
        """CloudWatch name -> value. `HostsIdle` summed per minute over a period, / 60, is idle host-hours."""
        return {
            "HostsAllocated": self.allocated,
            "HostsAvailable": self.available,
            "HostsScrubbing": self.scrubbing,
            "HostsOccupied": self.occupied,
            "HostsIdle": self.idle,
            "HostsFailed": self.failed,
            "HostSlotsLaunchable": self.launchable,
            "HostSlotsUnmet": self.unmet,
            "HostIdleHours": round(self.idle_host_hours, 3),
            "HostCommittedIdleHours": round(self.committed_idle_hours, 3),
        }


@dataclass(frozen=True)
class HostPlan:
    """The host decision for one pool at one instant; `reasons` explain it for logs and the demo.

    `launchable` goes to `plan_pool(..., launchable=)`. `allocate_zones` has one zone per host to allocate.
    `placement` orders the hosts that can take a machine, most preferred first (a hint: with a host resource
    group AWS picks the host; the simulator and targeted launches follow it).
    """

    pool: str
    now: datetime
    launchable: int
    allocate: int = 0
    allocate_zones: tuple[str, ...] = ()
    release: tuple[str, ...] = ()
    associate: tuple[str, ...] = ()
    placement: tuple[str, ...] = ()
    unmet: int = 0
    unmet_since: datetime | None = None
    idle_marks: tuple[IdleMark, ...] = ()
    metrics: HostMetrics = field(default_factory=HostMetrics)
    reasons: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.allocate or self.release or self.associate)

    def summary(self) -> str:
        """One line for logs: what changes and why."""
        if not self.reasons:
            return f"{self.pool}: hosts steady, room for {self.launchable} machines"
        return f"{self.pool}: " + "; ".join(self.reasons)


def hosts_config(pool: Pool) -> HostsConfig:
    """The pool's [pools.hosts] table; a pool without one has no hosts to plan."""
    if pool.hosts is None:
        raise ConfigError(pool.name, [f"pools.{pool.name}.hosts: no [pools.hosts] table, nothing to plan"])
    return pool.hosts


def host_slots(pool: Pool, reported: int | None) -> int | None:
    """Machines one host of the pool takes (slots): the configured value, else 1 on Mac, else AWS's count.

    `reported` is the TotalCapacity AWS gives for the pool's instance type on its hosts (the adapter's
    `HostPoolView.slots_per_host`); None, with nothing configured, means no host has said yet.
    """
    cfg = hosts_config(pool)
    if not cfg.slots_derived:
        return cfg.slots_per_host
    if pool.platform is Platform.MACOS:
        return 1  # an EC2 Mac host holds exactly one instance (EC2 User Guide, Amazon EC2 Mac instances)
    return reported


def host_free_slots(hosts: HostsConfig, host: Host) -> int:
    """Machines this host can take now (slots): 0 unless it is available, in the group and not full.

    Bounded by both `slots_per_host` (the operator's packing) and what AWS reports free for the type.
    """
    if host.state is not HostState.AVAILABLE or not host.in_group:
        return 0
    free = hosts.slots_per_host - len(host.instance_ids)
    if host.free_slots is not None:
        free = min(free, host.free_slots)
    return max(0, free)


def placement_order(hosts: HostsConfig, pool_hosts: Sequence[Host], now: datetime) -> tuple[str, ...]:
    """Hosts that can take a machine, best first: already paid for, then fuller, then paid for longer.

    A host inside its minimum allocation costs nothing extra to use; a host past it is billed by the second,
    so leaving it empty lets it go. Packing the fuller host first keeps the others empty and releasable.
    """
    open_hosts = [h for h in pool_hosts if host_free_slots(hosts, h) > 0]
    return tuple(
        h.host_id
        for h in sorted(
            open_hosts,
            key=lambda h: (
                h.paid_until(hosts) <= now,
                -len(h.instance_ids),
                -(h.paid_until(hosts) - now).total_seconds(),
                h.host_id,
            ),
        )
    )


def plan_hosts(
    pool: Pool,
    pool_hosts: Sequence[Host],
    now: datetime,
    *,
    wanted: int = 0,
    unmet_since: datetime | None = None,
    license_room: LicenseRoom | None = None,
    slots_per_host: int | None = None,
) -> HostPlan:
    """Decide a host pool: how many machines can launch, hosts to allocate, hosts to release.

    `wanted` is how many machines the engine would launch if host room were unbounded
    (`plan_pool(...).launch` without `launchable`). `unmet_since` is when demand first went unplaced (carried
    from the previous plan); hosts are allocated only once it has lasted `allocate_after`. A host is released
    only when empty, idle for the active policy's `idle_time`, past its `min_allocation` and not needed.
    With `host_management = "auto"` the host resource group allocates and releases: only room is computed.
    `slots_per_host` is what AWS reports one host takes (see `host_slots`); a configured value wins. While
    neither is known, demand allocates one host at a time: its size, once read, sizes the rest.
    """
    slots = host_slots(pool, slots_per_host)
    cfg = hosts_config(pool)
    if slots is not None and slots != cfg.slots_per_host:
        cfg = cfg.model_copy(update={"slots_per_host": slots})
    live = [h for h in pool_hosts if h.live]
    room = sum(host_free_slots(cfg, h) for h in live)
    instance_cap = _instance_license_cap(license_room)
    placeable = wanted if instance_cap is None else min(wanted, instance_cap)
    unmet = max(0, placeable - room)
    launchable = room if instance_cap is None else min(room, instance_cap)
    reasons: list[str] = []
    if unmet:
        reasons.append(f"{unmet} machines wanted, no host can take them now ({room} free slots)")

    if cfg.host_management is HostManagement.AUTO:
        return HostPlan(
            pool=pool.name,
            now=now,
            launchable=launchable,
            placement=placement_order(cfg, live, now),
            unmet=unmet,
            metrics=_metrics(cfg, live, now, launchable, unmet),
            reasons=tuple(reasons),
        )

    since = (unmet_since or now) if unmet else None
    allocate, zones, why = _allocation(cfg, live, now, unmet, since, license_room, probe=slots is None)
    reasons.extend(why)
    if allocate:
        since = None  # each allocation restarts the wait, so hosts still coming are seen before adding more
    release, why = _releases(pool, cfg, live, now, launchable - placeable)
    reasons.extend(why)
    released = set(release)
    launchable -= sum(host_free_slots(cfg, h) for h in live if h.host_id in released)
    kept = [h for h in live if h.host_id not in released]
    associate = tuple(h.host_id for h in kept if not h.in_group)
    if associate:
        reasons.append(f"add {len(associate)} hosts to host resource group {cfg.host_resource_group}")
    return HostPlan(
        pool=pool.name,
        now=now,
        launchable=launchable,
        allocate=allocate,
        allocate_zones=zones,
        release=release,
        associate=associate,
        placement=placement_order(cfg, kept, now),
        unmet=unmet,
        unmet_since=since,
        idle_marks=idle_marks(kept, now),
        metrics=_metrics(cfg, kept, now, launchable, unmet),
        reasons=tuple(reasons),
    )


def idle_marks(pool_hosts: Sequence[Host], now: datetime) -> tuple[IdleMark, ...]:
    """Start the idle clock of hosts newly seen empty; stop it on hosts that hold an instance again."""
    marks: list[IdleMark] = []
    for host in pool_hosts:
        if host.occupied and host.idle_since is not None:
            marks.append(IdleMark(host.host_id, None))
        elif not host.occupied and host.idle_since is None:
            marks.append(IdleMark(host.host_id, now))
    return tuple(marks)


def release_after(pool: Pool, host: Host, now: datetime) -> datetime | None:
    """When an empty host may go at the earliest: past its minimum allocation and idle for `idle_time`.

    None while it holds an instance or its idle clock has not started. Billing is per second after the
    minimum, so the earliest moment is also the cheapest: this is the end of the paid block.
    """
    return _release_after(hosts_config(pool), pool.active_policy(now).idle_time, host)


def _release_after(cfg: HostsConfig, idle_time: timedelta, host: Host) -> datetime | None:
    if host.occupied or host.idle_since is None:
        return None
    return max(host.paid_until(cfg), host.idle_since + idle_time)


def _instance_license_cap(room: LicenseRoom | None) -> int | None:
    """Machines an "Instance"-counted hard limit still allows (host-counted licenses bound allocation)."""
    if room is None or room.counting != "Instance":
        return None
    return room.remaining


def _host_license_cap(room: LicenseRoom | None, live: Sequence[Host]) -> int | None:
    """New hosts a "Socket"/"Core"-counted hard limit still covers, keeping room for the empty hosts we have.

    A host consumes its sockets (or cores) once a licensed instance runs on it; until a first host is known
    its size is unknown and one unit per host is assumed.
    """
    if room is None or room.remaining is None or room.counting not in {"Socket", "Core"}:
        return None
    units = [h.sockets if room.counting == "Socket" else h.cores for h in live]
    per_host = max([u for u in units if u > 0], default=1)
    reserved = per_host * sum(1 for h in live if not h.occupied and not h.failed)
    return max(0, room.remaining - reserved) // per_host


def _coming_slots(cfg: HostsConfig, live: Sequence[Host], now: datetime) -> int:
    """Slots of hosts that cannot take a machine yet but will before a new host would help.

    A host allocated less than NEW_HOST_GRACE ago that is still coming up or still joining the group, or a
    scrub known to end within `allocate_after`.
    """
    soon = now + cfg.allocate_after
    slots = 0
    for host in live:
        if host.failed or host_free_slots(cfg, host) > 0:
            continue
        not_ready = host.state in _COMING or (host.state is HostState.AVAILABLE and not host.in_group)
        young = now - host.allocated_at < NEW_HOST_GRACE
        scrub_ends_soon = host.scrubbing_until is not None and host.scrubbing_until <= soon
        if not_ready and (young or scrub_ends_soon):
            slots += max(0, cfg.slots_per_host - len(host.instance_ids))
    return slots


def _allocation(
    cfg: HostsConfig,
    live: Sequence[Host],
    now: datetime,
    unmet: int,
    unmet_since: datetime | None,
    license_room: LicenseRoom | None,
    *,
    probe: bool = False,
) -> tuple[int, tuple[str, ...], list[str]]:
    """Hosts to add: up to min_hosts at once, for demand once unmet for allocate_after; max_hosts caps.

    `probe`: the host size is not known yet, so demand adds one host (a guess of 1 slot would allocate a
    host per machine; the first host's TotalCapacity sizes the next allocation).
    """
    reasons: list[str] = []
    usable = sum(1 for h in live if not h.failed)
    for_floor = max(0, cfg.min_hosts - usable)
    short = max(0, unmet - _coming_slots(cfg, live, now))
    waited = unmet_since is not None and now - unmet_since >= cfg.allocate_after
    for_demand = math.ceil(short / cfg.slots_per_host) if short and waited else 0
    if probe and for_demand > 1:
        for_demand = 1
        reasons.append("host size unknown until a host reports it: one host first")
    if short and not waited:
        wait = format_duration(cfg.allocate_after)
        reasons.append(f"wait: demand unmet for less than allocate_after {wait}")
    want = max(for_floor, for_demand)
    if not want:
        return 0, (), reasons
    bounds = [(cfg.max_hosts - len(live), f"max_hosts {cfg.max_hosts} ({len(live)} allocated)")]
    license_cap = _host_license_cap(license_room, live)
    if license_cap is not None:
        bounds.append((license_cap, f"license hard limit (covers {license_cap} more hosts)"))
    count = want
    capped: list[str] = []
    for bound, label in bounds:
        if bound < count:
            count = max(0, bound)
            capped.append(label)
    why = "below min_hosts" if for_floor >= for_demand else f"{short} machines unplaced"
    if count and not cfg.availability_zones:
        reasons.append("cannot allocate: set [pools.hosts] availability_zones (the pool subnets' zones)")
        return 0, (), reasons
    if not count:
        reasons.append(f"cannot allocate ({why}): capped by {', '.join(capped)}")
        return 0, (), reasons
    reasons.append(f"allocate {count} hosts ({why})" + (f", capped by {', '.join(capped)}" if capped else ""))
    return count, _spread(cfg, live, count), reasons


def _spread(cfg: HostsConfig, live: Sequence[Host], count: int) -> tuple[str, ...]:
    """One zone per new host: the configured zone holding the fewest hosts (config order breaks ties)."""
    per_zone = Counter(h.availability_zone for h in live)
    zones: list[str] = []
    for _ in range(count):
        zone = min(cfg.availability_zones, key=lambda z: (per_zone[z], cfg.availability_zones.index(z)))
        per_zone[zone] += 1
        zones.append(zone)
    return tuple(zones)


def _releases(
    pool: Pool, cfg: HostsConfig, live: Sequence[Host], now: datetime, spare: int
) -> tuple[tuple[str, ...], list[str]]:
    """Empty hosts past their paid minimum and idle long enough, while `spare` slots and min_hosts allow.

    Never a host with an instance, never one inside `min_allocation` (already paid: releasing saves nothing
    and loses capacity), never one scrubbing (billing is paused while it scrubs, and it comes back).
    Longest idle goes first.
    """
    idle_time = pool.active_policy(now).idle_time
    usable = sum(1 for h in live if not h.failed)
    candidates = sorted(
        (h for h in live if _releasable(cfg, idle_time, h, now)),
        key=lambda h: (not h.failed, h.idle_since or h.allocated_at, h.host_id),
    )
    out: list[str] = []
    reasons: list[str] = []
    for host in candidates:
        slots = host_free_slots(cfg, host)
        if not host.failed and (usable - 1 < cfg.min_hosts or slots > spare):
            continue
        if not host.failed:
            usable -= 1
            spare -= slots
        out.append(host.host_id)
        reasons.append(_release_reason(cfg, idle_time, host, now))
    return tuple(out), reasons


def _releasable(cfg: HostsConfig, idle_time: timedelta, host: Host, now: datetime) -> bool:
    if host.occupied or now < host.paid_until(cfg):
        return False
    if host.state is HostState.PERMANENT_FAILURE:
        return True
    earliest = _release_after(cfg, idle_time, host)
    return host.state is HostState.AVAILABLE and earliest is not None and now >= earliest


def _release_reason(cfg: HostsConfig, idle_time: timedelta, host: Host, now: datetime) -> str:
    age = format_duration(now - host.allocated_at)
    if host.failed:
        return f"release {host.host_id}: {host.state.value}, empty, allocated {age} ago"
    idle = format_duration(now - (host.idle_since or now))
    return (
        f"release {host.host_id}: empty {idle} >= idle_time {format_duration(idle_time)}, "
        f"allocated {age} >= min_allocation {format_duration(cfg.min_allocation)}"
    )


def _metrics(
    cfg: HostsConfig, live: Sequence[Host], now: datetime, launchable: int, unmet: int
) -> HostMetrics:
    idle = [h for h in live if h.state is HostState.AVAILABLE and not h.occupied]
    hour = timedelta(hours=1)
    return HostMetrics(
        allocated=len(live),
        available=sum(1 for h in live if h.state is HostState.AVAILABLE),
        scrubbing=sum(1 for h in live if h.scrubbing),
        occupied=sum(1 for h in live if h.occupied),
        idle=len(idle),
        failed=sum(1 for h in live if h.failed),
        launchable=launchable,
        unmet=unmet,
        idle_host_hours=sum((now - h.idle_since) / hour for h in idle if h.idle_since and h.idle_since < now),
        committed_idle_hours=sum(max(timedelta(0), h.paid_until(cfg) - now) / hour for h in idle),
    )


class AfterRunSingle(StrEnum):
    """What becomes of a Mac machine once its `run-single` exits (docs/windows-macos.md, "Host reuse")."""

    REPLACE_ROOT_VOLUME = "replace-root-volume"
    TERMINATE = "terminate"


def after_run_single(pool: Pool, host: Host, demand: int, now: datetime) -> AfterRunSingle:
    """Reuse a Mac's host by restoring the instance's root volume, or terminate the machine as before.

    Replacing the root volume keeps the instance on its host, so no scrub follows (EC2 User Guide, "Replace a
    root volume"), while terminating a Mac sends its host into a scrub of up to 50 minutes on x86 and up to
    4.5 hours on Apple silicon ("Stop or terminate your Amazon EC2 Mac instance"). That pays only while the
    host cannot be released anyway (inside its minimum allocation) and a job waits for the pool;
    otherwise terminating lets the host go idle and be released on time. Only macOS: other host pools hold
    several machines per host and scrub nothing.
    """
    if not pool.reuses_root_volume or pool.hosts is None:
        return AfterRunSingle.TERMINATE
    if demand <= 0 or now >= host.paid_until(hosts_config(pool)):
        return AfterRunSingle.TERMINATE
    return AfterRunSingle.REPLACE_ROOT_VOLUME


#: A used Mac is reused only while this much of its wait (`reuse_wait`) is left: the replacement must start
#: before the machine's boot script gives up waiting and shuts it down (which would end the task with it).
REUSE_MARGIN = timedelta(minutes=2)

#: DescribeReplaceRootVolumeTasks' TaskState values (EC2 API Reference, "ReplaceRootVolumeTask"): `succeeded`
#: "the replacement volume has been successfully attached to the instance and the instance is available";
#: `failed` keeps the original (used) root volume attached, `failed-detached` leaves none.
REPLACE_SUCCEEDED = "succeeded"
REPLACE_FAILED = frozenset({"failed", "failed-detached"})


@dataclass(frozen=True)
class ReusePlan:
    """Used-up Macs to reuse now, and those to keep waiting: neither reused nor terminated yet."""

    reuse: tuple[str, ...] = ()
    #: Reusable (host paid for, boot script still waiting) but no job to reuse them for yet: kept until a job
    #: comes or their wait is nearly over. The host cannot be released yet; waiting costs only the unbilled
    #: scrub a termination would have started, and a Mac terminated now would send its host into a scrub
    #: just before the next job needs it.
    hold: tuple[str, ...] = ()


def plan_reuse(
    pool: Pool,
    candidates: Sequence[Machine],
    hosts: Sequence[Host],
    need_slots: int,
    now: datetime,
    kept: Sequence[str] = (),
) -> ReusePlan:
    """The used-up Macs (`candidates`: no job, `run-single` exited) whose root volume is replaced rather than
    the machine terminated, per `after_run_single`; each one reused covers `slots_per_new_machine` of the
    `need_slots` the engine would otherwise launch for.

    A candidate is reused only while its boot script still waits for the scaler: from the end of its last job
    (`last_busy_at`, when `run-single` exited) for `reuse_wait`, less REUSE_MARGIN. The most recently freed go
    first (the most wait left). A machine whose host is not in view (not read, or not ours) is terminated.
    One that could be reused but has no job to be reused for is held while it waits (`ReusePlan.hold`).
    """
    if not pool.reuses_root_volume or pool.hosts is None:
        return ReusePlan()
    host_of = {i: h for h in hosts for i in h.instance_ids}
    by_id = {h.host_id: h for h in hosts}
    kept_hosts = set(kept)
    per_machine = slots_per_new_machine(pool)
    left = need_slots
    chosen: list[str] = []
    held: list[str] = []
    freed = sorted(
        (m for m in candidates if not m.has_job and m.last_busy_at is not None),
        key=lambda m: (m.last_busy_at, m.instance_id),
        reverse=True,
    )
    for machine in freed:
        assert machine.last_busy_at is not None
        if now >= machine.last_busy_at + pool.hosts.reuse_wait - REUSE_MARGIN:
            continue  # it is about to shut itself down
        host = host_of.get(machine.instance_id) or by_id.get(machine.host_id or "")
        if host is None:
            continue  # not on a host of ours in view: terminated
        standby = host.host_id in kept_hosts
        if not standby and after_run_single(pool, host, 1, now) is not AfterRunSingle.REPLACE_ROOT_VOLUME:
            continue  # its host's paid window is over: terminated, so the host can go
        if left > 0:
            chosen.append(machine.instance_id)
            left -= per_machine
        else:
            held.append(machine.instance_id)
    return ReusePlan(tuple(chosen), tuple(held))


@dataclass(frozen=True)
class Standby:
    """A macOS pool's standby Macs (`keep_ready`): the host slots that should each hold a booted Mac waiting
    for a job, and the idle Macs to end so that their host can be released."""

    #: Slots of the hosts the pool keeps: the engine's idle target is at least these, less those in use
    #: (`Demand.standby`).
    slots: int = 0
    #: The hosts kept: inside their minimum allocation, or past it and used within `idle_time`.
    kept: tuple[str, ...] = ()
    #: Idle Macs (no job for the active policy's `idle_time`) alone on a host past its minimum allocation:
    #: drained and terminated, so that the host scrubs (unbilled) and the host plan releases it.
    release: tuple[str, ...] = ()


def plan_standby(
    pool: Pool, pool_hosts: Sequence[Host], machines: Sequence[Machine], now: datetime
) -> Standby:
    """Which hosts keep a booted Mac waiting, and which idle Macs end so their host can go.

    On a Mac host AWS bills the host, not the instance on it (EC2 User Guide, "Amazon EC2 Mac instances"
    (ec2-mac-instances.html): "The unit of billing is the dedicated host. The instances running on that
    host have no additional charge"), and the host cannot be released before its 24-hour minimum allocation
    (same page; "Stop or terminate your Amazon EC2 Mac instance" (mac-instance-stop.html), "Release the
    Dedicated Host"). So while a host cannot be released anyway, a Mac booted and waiting on it costs no
    instance charge, only the unbilled scrub a termination would have started (AWS pauses the host's billing
    while it scrubs: "Stop or terminate your Amazon EC2 Mac instance"), and a job that finds it waits for no
    boot (6 to 20 minutes). A host inside its minimum allocation is
    kept. Past it, the host is billed per second: it is kept while its Mac ran a job within the active
    policy's `idle_time` (the rule an empty host's release follows, `release_after`); once its Mac has been
    idle that long, the Mac is ended, so the host scrubs (not billed) and the host plan releases it.
    `min_hosts` hosts are always kept; a failed host never is.
    """
    if not pool.keeps_hosts_ready:
        return Standby()
    cfg = hosts_config(pool)
    per_host = host_slots(pool, None) or 1
    idle_time = pool.active_policy(now).idle_time
    by_id = {m.instance_id: m for m in machines}
    usable = [h for h in pool_hosts if h.live and not h.failed]
    may_end = max(0, len(usable) - cfg.min_hosts)
    kept: list[str] = []
    ended: list[str] = []
    for host in sorted(usable, key=lambda h: (h.paid_until(cfg), h.host_id)):
        if now < host.paid_until(cfg):
            kept.append(host.host_id)
            continue
        if not host.instance_ids:
            continue  # past its paid window and empty: the host plan releases it once idle long enough
        on_host = [by_id.get(i) for i in host.instance_ids]
        idle = [m for m in on_host if m is not None and m.state is MachineState.IDLE and not m.has_job]
        long_idle = len(idle) == len(on_host) and all(now - m.idle_since() >= idle_time for m in idle)
        if long_idle and may_end > 0:
            may_end -= 1
            ended.extend(m.instance_id for m in idle)
            continue
        kept.append(host.host_id)
    return Standby(slots=per_host * len(kept), kept=tuple(kept), release=tuple(ended))
