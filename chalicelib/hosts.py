"""Dedicated-host adapter for macOS and Windows (BYOL) pools: read, allocate, group, release, mark hosts.

The only module that calls EC2 host APIs, Resource Groups (host resource groups) and License Manager; every
call goes through `AwsClients`. Holds no policy: `chalicelib.capacity.hosts` decides, `apply_host_plan`
executes. Imports the AWS seam, config, resources (tag keys), errors, the planner's value types and the
standard library.

State lives on the resources, under the tag keys below: which pool a host serves, whether it joined the pool's
host resource group, since when it is empty; and on the host resource group, since when demand went unmet.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from chalicelib.aws import AwsClients
from chalicelib.capacity.hosts import Host, HostPlan, HostState, IdleMark, LicenseRoom, hosts_config
from chalicelib.config import HostManagement, HostsConfig, Platform, Pool
from chalicelib.errors import AwsCallError
from chalicelib.events.timestamps import as_utc, format_gitlab_iso_seconds, from_epoch, parse_iso
from chalicelib.resources import TAG_DEPLOYMENT, TAG_MANAGED, TAG_POOL

logger = logging.getLogger(__name__)

#: Set once the host joined the pool's host resource group (GroupResources succeeded); value: the group name.
TAG_HOST_GROUP = "runner-scaler:host-group"
#: When the scaler first saw the host empty (ISO 8601, UTC); removed when an instance lands on it.
TAG_IDLE_SINCE = "runner-scaler:idle-since"
#: On the host resource group: when demand first went unplaced (ISO 8601, UTC); removed once it is placed.
TAG_UNMET_SINCE = "runner-scaler:unmet-since"

#: States worth reading: released hosts stay listed for a while and matter to nobody.
_LIVE_STATES = [
    s.value
    for s in HostState
    if s not in {HostState.RELEASED, HostState.RELEASED_PERMANENT_FAILURE, HostState.UNKNOWN}
]
#: GroupResources takes at most 10 ARNs per call (Resource Groups API reference).
_ARNS_PER_GROUP_CALL = 10
_IDS_PER_CALL = 100
#: AllocateHosts errors that mean "no such host in this zone now": the executor tries the next zone.
CAPACITY_CODES = frozenset({"InsufficientHostCapacity", "InsufficientCapacity"})


@dataclass(frozen=True)
class HostPoolView:
    """The hosts of one pool as read now, with the unmet-demand clock kept on its host resource group."""

    pool: str
    hosts: tuple[Host, ...] = ()
    unmet_since: datetime | None = None

    @property
    def slots_per_host(self) -> int | None:
        """Machines of the pool's instance type one host holds, as AWS counts it (TotalCapacity).

        The planner uses it when `slots_per_host` is not configured (`capacity.hosts.host_slots`). Hosts of
        one pool share a family and type, so they agree; hosts that report nothing (yet) are skipped.
        None until one reports.
        """
        return max((h.total_slots for h in self.hosts if h.total_slots), default=None)


@dataclass(frozen=True)
class ReleaseResult:
    """ReleaseHosts answers per host: `failed` pairs a host id with AWS's error code."""

    released: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


class HostPort(Protocol):
    """What the reconciler needs from dedicated hosts (EC2 here, `MemoryHosts` in the simulator)."""

    def read_pools(self, pools: Sequence[Pool]) -> dict[str, HostPoolView]:
        """Every named host pool's live hosts, in as few calls as the API allows."""
        ...

    def allocate(self, pool: Pool, zone: str, quantity: int, token: str) -> tuple[str, ...]:
        """Allocate `quantity` hosts in `zone`, tagged with the pool; `token` makes a retry idempotent."""
        ...

    def associate(self, pool: Pool, host_ids: Sequence[str]) -> tuple[str, ...]:
        """Add hosts to the pool's host resource group; returns those that joined (others heal next tick)."""
        ...

    def release(self, host_ids: Sequence[str]) -> ReleaseResult: ...

    def mark_idle(self, marks: Sequence[IdleMark]) -> None:
        """Start or stop hosts' idle clocks."""
        ...

    def mark_unmet(self, pool: Pool, since: datetime | None) -> None:
        """Start (a time) or stop (None) the pool's unmet-demand clock."""
        ...

    def license_room(self, license_configuration: str) -> LicenseRoom:
        """The headroom of a License Manager license configuration (ARN)."""
        ...

    def replace_root_volume(self, instance_id: str, token: str) -> str:
        """Start restoring a Mac's root volume to its launch state (host reuse); returns the task id."""
        ...

    def replace_task_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        """TaskState of each root-volume replacement task; a task AWS no longer lists is left out."""
        ...


class Ec2Hosts:
    """HostPort on EC2 Dedicated Hosts, Resource Groups (host resource groups) and License Manager."""

    def __init__(self, aws: AwsClients, deployment: str = "") -> None:
        self._aws = aws
        self._deployment = deployment  # tags hosts so two deployments with the same pool names stay apart
        self._account: str | None = None

    def _ours(self, host: dict[str, Any]) -> bool:
        """A host of this deployment (hosts allocated before deployment tags existed carry none: ours too)."""
        tagged = _tags(host).get(TAG_DEPLOYMENT)
        return not self._deployment or tagged in (None, self._deployment)

    def read_pools(self, pools: Sequence[Pool]) -> dict[str, HostPoolView]:
        """Scaler-managed pools: one DescribeHosts for all, by the pool tag. Auto pools: by group membership.

        DescribeHosts filters on `tag-key` and the pool is matched here, so one call serves every pool.
        Hosts a host resource group allocated itself carry no tag of ours, so "auto" pools list the group.
        """
        host_pools = [p for p in pools if p.hosts is not None]
        scaler = [p for p in host_pools if hosts_config(p).host_management is HostManagement.SCALER]
        views: dict[str, HostPoolView] = {}
        if scaler:
            raw = self._describe(Filter=[_filter("tag-key", TAG_POOL), _filter("state", *_LIVE_STATES)])
            for pool in scaler:
                mine = [h for h in raw if _tags(h).get(TAG_POOL) == pool.name and self._ours(h)]
                views[pool.name] = HostPoolView(
                    pool.name, tuple(_host(h, pool) for h in mine), self._unmet_since(pool)
                )
        for pool in host_pools:
            if pool.name not in views:
                views[pool.name] = HostPoolView(pool.name, self._group_hosts(pool))
        return views

    def allocate(self, pool: Pool, zone: str, quantity: int, token: str) -> tuple[str, ...]:
        """AllocateHosts with the pool tag; auto-placement off, so only the pool's group launches land there.

        A family host (`host_family`) takes several sizes, which is how Windows machines pack; an EC2 Mac host
        takes one type only, so macOS pools always allocate by `instance_type`.
        """
        cfg = hosts_config(pool)
        shape = (
            {"InstanceFamily": cfg.host_family}
            if cfg.host_family and pool.platform is not Platform.MACOS
            else {"InstanceType": cfg.instance_type}
        )
        tags = [{"Key": TAG_POOL, "Value": pool.name}, {"Key": TAG_MANAGED, "Value": "true"}]
        if self._deployment:
            tags.append({"Key": TAG_DEPLOYMENT, "Value": self._deployment})
        got = self._aws.call(
            "ec2",
            "allocate_hosts",
            AvailabilityZone=zone,
            Quantity=quantity,
            AutoPlacement="off",
            ClientToken=token,
            TagSpecifications=[{"ResourceType": "dedicated-host", "Tags": tags}],
            **shape,
        )
        host_ids = tuple(str(h) for h in got.get("HostIds", []))
        logger.info("hosts allocated", extra={"pool": pool.name, "zone": zone, "host_ids": host_ids})
        return host_ids

    def associate(self, pool: Pool, host_ids: Sequence[str]) -> tuple[str, ...]:
        """GroupResources into the pool's host resource group, then tag the members so reads know.

        A License Manager host resource group is a Resource Groups group of type AWS::EC2::HostManagement,
        and GroupResources is how a host joins one (Resource Groups API reference, GroupResources).
        """
        cfg = hosts_config(pool)
        arns = self._host_arns(host_ids)
        joined: list[str] = []
        for start in range(0, len(arns), _ARNS_PER_GROUP_CALL):
            chunk = arns[start : start + _ARNS_PER_GROUP_CALL]
            got = self._aws.call(
                "resource-groups", "group_resources", Group=cfg.host_resource_group, ResourceArns=chunk
            )
            failed = {str(f.get("ResourceArn")): str(f.get("ErrorCode", "")) for f in got.get("Failed", [])}
            for arn, code in failed.items():
                logger.warning(
                    "host did not join its host resource group",
                    extra={"pool": pool.name, "host_arn": arn, "code": code},
                )
            joined += [_host_id_of(arn) for arn in chunk if arn not in failed]
        if joined:
            self._tag(joined, TAG_HOST_GROUP, cfg.host_resource_group)
        return tuple(joined)

    def release(self, host_ids: Sequence[str]) -> ReleaseResult:
        released: list[str] = []
        failed: list[tuple[str, str]] = []
        for chunk in _chunks(host_ids, _IDS_PER_CALL):
            got = self._aws.call("ec2", "release_hosts", HostIds=chunk)
            released += [str(h) for h in got.get("Successful", [])]
            failed += [
                (str(u.get("ResourceId", "")), str(u.get("Error", {}).get("Code", "Unknown")))
                for u in got.get("Unsuccessful", [])
            ]
        for host_id, code in failed:
            logger.warning("host not released", extra={"host_id": host_id, "code": code})
        return ReleaseResult(tuple(released), tuple(failed))

    def mark_idle(self, marks: Sequence[IdleMark]) -> None:
        """One CreateTags per distinct time, one DeleteTags for every cleared mark."""
        by_time: dict[datetime, list[str]] = {}
        cleared: list[str] = []
        for mark in marks:
            if mark.since is None:
                cleared.append(mark.host_id)
            else:
                by_time.setdefault(mark.since, []).append(mark.host_id)
        for since, host_ids in by_time.items():
            self._tag(host_ids, TAG_IDLE_SINCE, format_gitlab_iso_seconds(since))
        for chunk in _chunks(cleared, _IDS_PER_CALL):
            self._aws.call("ec2", "delete_tags", Resources=chunk, Tags=[{"Key": TAG_IDLE_SINCE}])

    def mark_unmet(self, pool: Pool, since: datetime | None) -> None:
        arn = self._group_arn(pool)
        if since is None:
            self._aws.call("resource-groups", "untag", Arn=arn, Keys=[TAG_UNMET_SINCE])
        else:
            tags = {TAG_UNMET_SINCE: format_gitlab_iso_seconds(since)}
            self._aws.call("resource-groups", "tag", Arn=arn, Tags=tags)

    def license_room(self, license_configuration: str) -> LicenseRoom:
        """GetLicenseConfiguration: counting type, count, hard limit and what is consumed."""
        got = self._aws.call(
            "license-manager", "get_license_configuration", LicenseConfigurationArn=license_configuration
        )
        count = got.get("LicenseCount")
        return LicenseRoom(
            counting=str(got.get("LicenseCountingType", "")),
            limit=int(count) if count is not None else None,
            consumed=int(got.get("ConsumedLicenses", 0) or 0),
            hard_limit=bool(got.get("LicenseCountHardLimit", False)),
        )

    def replace_root_volume(self, instance_id: str, token: str) -> str:
        """Restore a Mac instance's root volume to its launch state, on the same host; returns the task id.

        CreateReplaceRootVolumeTask without SnapshotId or ImageId restores the volume the instance launched
        with: "If you want to restore the replacement root volume to the initial launch state, ... omit
        this parameter" (EC2 API Reference, "CreateReplaceRootVolumeTask", SnapshotId). The task reboots the
        instance on the same physical host, so the host is neither released nor scrubbed (EC2 User Guide,
        "Replace the root volume for an Amazon EC2 instance without stopping it"). EC2 Mac bare metal
        instances support the launch state and a snapshot as the source; the edition of that page we read
        (2023, "Replace a root volume", considerations) says they do not support an AMI, so none is passed.
        DeleteReplacedRootVolume: the old root, with the finished job's files, is deleted once the task
        completes rather than kept (and billed) for someone to delete. IAM authorizes the call on the
        instance, the task and the new volume (infra/policy.py, ReplaceMacRootVolume). `token` is the
        ClientToken: the same token for the same reuse, so a retry after a lost answer starts no second
        task. moto has no such call: tested with Stubber (tests/functional/test_hosts_stubbed.py,
        test_mac_reuse.py).
        """
        got = self._aws.call(
            "ec2",
            "create_replace_root_volume_task",
            InstanceId=instance_id,
            DeleteReplacedRootVolume=True,
            ClientToken=token,
        )
        return str(got["ReplaceRootVolumeTask"]["ReplaceRootVolumeTaskId"])

    def replace_task_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        """TaskState of each root-volume replacement task; a task AWS no longer lists is left out.

        DescribeReplaceRootVolumeTasks is paginated (MaxResults 1 to 50 a page, then NextToken: EC2 API
        Reference), so every page is read; the ids go 50 a request, each request's pages in turn."""
        states: dict[str, str] = {}
        ids = list(dict.fromkeys(task_ids))
        for start in range(0, len(ids), 50):
            tasks = self._aws.paginate(
                "ec2",
                "describe_replace_root_volume_tasks",
                "ReplaceRootVolumeTasks",
                ReplaceRootVolumeTaskIds=ids[start : start + 50],
            )
            for task in tasks:
                states[str(task["ReplaceRootVolumeTaskId"])] = str(task.get("TaskState", ""))
        return states

    def _describe(self, **params: Any) -> list[dict[str, Any]]:
        return self._aws.paginate("ec2", "describe_hosts", "Hosts", **params)

    def _group_hosts(self, pool: Pool) -> tuple[Host, ...]:
        """Members of the pool's host resource group (ListGroupResources), described in batches."""
        cfg = hosts_config(pool)
        members = self._aws.paginate(
            "resource-groups", "list_group_resources", "Resources", Group=cfg.host_resource_group
        )
        host_ids = [
            _host_id_of(str(m["Identifier"]["ResourceArn"]))
            for m in members
            if m.get("Identifier", {}).get("ResourceType") == "AWS::EC2::Host"
        ]
        raw: list[dict[str, Any]] = []
        for chunk in _chunks(host_ids, _IDS_PER_CALL):
            raw += self._describe(HostIds=chunk)
        return tuple(replace(_host(h, pool), in_group=True) for h in raw if h.get("State") in _LIVE_STATES)

    def _unmet_since(self, pool: Pool) -> datetime | None:
        got = self._aws.call("resource-groups", "get_tags", Arn=self._group_arn(pool))
        return _parse_time(got.get("Tags", {}).get(TAG_UNMET_SINCE))

    def _group_arn(self, pool: Pool) -> str:
        """The host resource group's ARN (Tag and GetTags take only ARNs), built from this account's identity.

        The account is read once per container (STS GetCallerIdentity needs no permission).
        """
        if self._account is None:
            self._account = str(self._aws.call("sts", "get_caller_identity")["Account"])
        meta = self._aws.client("resource-groups").meta
        name = hosts_config(pool).host_resource_group
        return f"arn:{meta.partition}:resource-groups:{meta.region_name}:{self._account}:group/{name}"

    def _host_arns(self, host_ids: Sequence[str]) -> list[str]:
        """arn:<partition>:ec2:<region>:<owner>:dedicated-host/<id>; the owner comes from DescribeHosts."""
        client = self._aws.client("ec2")
        partition, region = client.meta.partition, client.meta.region_name
        owners: dict[str, str] = {}
        for chunk in _chunks(host_ids, _IDS_PER_CALL):
            owners.update({str(h["HostId"]): str(h["OwnerId"]) for h in self._describe(HostIds=chunk)})
        return [
            f"arn:{partition}:ec2:{region}:{owners[host_id]}:dedicated-host/{host_id}"
            for host_id in host_ids
            if host_id in owners
        ]

    def _tag(self, resource_ids: Sequence[str], key: str, value: str) -> None:
        for chunk in _chunks(resource_ids, _IDS_PER_CALL):
            self._aws.call("ec2", "create_tags", Resources=chunk, Tags=[{"Key": key, "Value": value}])


@dataclass
class _MemoryHost:
    host_id: str
    pool: str
    cfg: HostsConfig
    zone: str
    allocated_at: datetime
    state: HostState = HostState.AVAILABLE
    instance_ids: list[str] = field(default_factory=list)
    scrubbing_until: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)


class MemoryHosts:
    """In-memory twin of `Ec2Hosts` for the simulator and tests; passes the same contract tests.

    Besides the HostPort calls it plays AWS's part: `place` puts a launched machine on a host (as a host
    resource group launch would), `end` takes it off (a Mac host then scrubs for the pool's `scrub_time`),
    and a scrub ends by itself when `clock()` passes it. Release follows AWS: never a host with an instance,
    never before the minimum allocation.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._hosts: dict[str, _MemoryHost] = {}
        self._unmet: dict[str, datetime] = {}
        self._tokens: dict[str, tuple[str, ...]] = {}
        self._licenses: dict[str, LicenseRoom] = {}
        #: Root-volume replacement tasks: id -> (instance, TaskState); ClientToken -> id.
        self.replace_tasks: dict[str, tuple[str, str]] = {}
        self._replace_tokens: dict[str, str] = {}
        self.calls = 0

    def read_pools(self, pools: Sequence[Pool]) -> dict[str, HostPoolView]:
        self.calls += 1
        self._advance()
        views: dict[str, HostPoolView] = {}
        for pool in pools:
            if pool.hosts is None:
                continue
            hosts = tuple(self._view(h) for h in self._hosts.values() if h.pool == pool.name and _live(h))
            views[pool.name] = HostPoolView(pool.name, hosts, self._unmet.get(pool.name))
        return views

    def allocate(self, pool: Pool, zone: str, quantity: int, token: str) -> tuple[str, ...]:
        self.calls += 1
        if token in self._tokens:
            return self._tokens[token]
        cfg = hosts_config(pool)
        now = self._clock()
        ids: list[str] = []
        for _ in range(quantity):
            host_id = f"h-{len(self._hosts) + 1:017x}"
            self._hosts[host_id] = _MemoryHost(host_id, pool.name, cfg, zone, now, tags={TAG_POOL: pool.name})
            ids.append(host_id)
        self._tokens[token] = tuple(ids)
        return tuple(ids)

    def associate(self, pool: Pool, host_ids: Sequence[str]) -> tuple[str, ...]:
        self.calls += 1
        group = hosts_config(pool).host_resource_group
        for host_id in host_ids:
            self._hosts[host_id].tags[TAG_HOST_GROUP] = group
        return tuple(host_ids)

    def release(self, host_ids: Sequence[str]) -> ReleaseResult:
        self.calls += 1
        now = self._clock()
        released: list[str] = []
        failed: list[tuple[str, str]] = []
        for host_id in host_ids:
            host = self._hosts.get(host_id)
            code = self._release_refusal(host, now)
            if host is None or code:
                failed.append((host_id, code or "InvalidHostID.NotFound"))
                continue
            host.state = HostState.RELEASED
            released.append(host_id)
        return ReleaseResult(tuple(released), tuple(failed))

    def mark_idle(self, marks: Sequence[IdleMark]) -> None:
        self.calls += 1
        for mark in marks:
            tags = self._hosts[mark.host_id].tags
            if mark.since is None:
                tags.pop(TAG_IDLE_SINCE, None)
            else:
                tags[TAG_IDLE_SINCE] = format_gitlab_iso_seconds(mark.since)

    def mark_unmet(self, pool: Pool, since: datetime | None) -> None:
        self.calls += 1
        if since is None:
            self._unmet.pop(pool.name, None)
        else:
            self._unmet[pool.name] = since

    def license_room(self, license_configuration: str) -> LicenseRoom:
        self.calls += 1
        return self._licenses.get(license_configuration, LicenseRoom("Socket", None, 0, False))

    def replace_root_volume(self, instance_id: str, token: str) -> str:
        self.calls += 1
        if token not in self._replace_tokens:
            task_id = f"replacevol-{len(self.replace_tasks) + 1:017x}"
            self.replace_tasks[task_id] = (instance_id, "pending")
            self._replace_tokens[token] = task_id
        return self._replace_tokens[token]

    def replace_task_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        self.calls += 1
        return {t: self.replace_tasks[t][1] for t in task_ids if t in self.replace_tasks}

    def set_replace_state(self, task_id: str, state: str) -> None:
        """AWS's part: the task moves on (`in-progress`, `succeeded`, `failed`...)."""
        instance_id, _ = self.replace_tasks[task_id]
        self.replace_tasks[task_id] = (instance_id, state)

    # AWS's part, for the simulator and tests ------------------------------------------------------------

    def place(self, pool: str, instance_id: str, prefer: Sequence[str] = ()) -> str | None:
        """Put a launched machine on a host of its pool's group: a preferred one if it can, else the first.

        None when no host can take it (EC2 would fail the launch with insufficient host capacity).
        """
        self._advance()
        open_hosts = {
            h.host_id: h for h in self._hosts.values() if h.pool == pool and self._takes_instance(h)
        }
        choice = next((open_hosts[h] for h in prefer if h in open_hosts), None)
        choice = choice or next(iter(open_hosts.values()), None)
        if choice is None:
            return None
        choice.instance_ids.append(instance_id)
        return choice.host_id

    def end(self, instance_id: str) -> None:
        """The machine stopped or ended: its slot frees, and a host with a scrub time starts scrubbing."""
        now = self._clock()
        for host in self._hosts.values():
            if instance_id in host.instance_ids:
                host.instance_ids.remove(instance_id)
                if host.cfg.scrub_time > timedelta(0):
                    host.state = HostState.PENDING
                    host.scrubbing_until = now + host.cfg.scrub_time
                return

    def host_of(self, instance_id: str) -> str | None:
        return next((h.host_id for h in self._hosts.values() if instance_id in h.instance_ids), None)

    def _advance(self) -> None:
        now = self._clock()
        for host in self._hosts.values():
            if host.state is HostState.PENDING and host.scrubbing_until and host.scrubbing_until <= now:
                host.state = HostState.AVAILABLE
                host.scrubbing_until = None

    def _takes_instance(self, host: _MemoryHost) -> bool:
        room = len(host.instance_ids) < host.cfg.slots_per_host
        return TAG_HOST_GROUP in host.tags and host.state is HostState.AVAILABLE and room

    def _release_refusal(self, host: _MemoryHost | None, now: datetime) -> str:
        if host is None:
            return ""
        if not _live(host):
            return "InvalidHost.Released"
        if host.instance_ids:
            return "HostInUse"  # this twin's code: EC2 refuses to release a host with instances
        if now - host.allocated_at < host.cfg.min_allocation:
            return "MinimumAllocationNotMet"  # this twin's code: a Mac host is held for 24 h at least
        return ""

    def _view(self, host: _MemoryHost) -> Host:
        available = host.state is HostState.AVAILABLE
        return Host(
            host_id=host.host_id,
            state=host.state,
            allocated_at=host.allocated_at,
            instance_ids=tuple(host.instance_ids),
            free_slots=max(0, host.cfg.slots_per_host - len(host.instance_ids)) if available else 0,
            total_slots=host.cfg.slots_per_host,
            availability_zone=host.zone,
            idle_since=_parse_time(host.tags.get(TAG_IDLE_SINCE)),
            scrubbing_until=host.scrubbing_until,
            in_group=host.tags.get(TAG_HOST_GROUP) == host.cfg.host_resource_group,
        )


@dataclass
class HostsApplied:
    """What `apply_host_plan` did, for the reconcile result, logs and the demo."""

    pool: str
    allocated: tuple[str, ...] = ()
    associated: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    release_failed: tuple[tuple[str, str], ...] = ()
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False


def apply_host_plan(
    port: HostPort, pool: Pool, plan: HostPlan, view: HostPoolView, *, dry_run: bool = False
) -> HostsApplied:
    """Execute a HostPlan: join strays to the group, allocate (next zone on a capacity error), release, mark.

    Each step stands alone: a failed step is recorded in `errors` and the next tick, which re-reads
    everything, heals it; nothing is half-applied silently. `dry_run` records the intent and calls nothing.
    """
    applied = HostsApplied(pool.name, dry_run=dry_run)
    if dry_run:
        applied.allocated = tuple(f"(new host in {zone})" for zone in plan.allocate_zones)
        applied.released = plan.release
        applied.associated = plan.associate
        return applied
    steps: list[tuple[str, Callable[[], None]]] = [
        ("associate", lambda: _associate(port, pool, plan.associate, applied)),
        ("allocate", lambda: _allocate(port, pool, plan, applied)),
        ("release", lambda: _release(port, plan.release, applied)),
        ("mark idle", lambda: port.mark_idle(plan.idle_marks) if plan.idle_marks else None),
        ("mark unmet", lambda: _mark_unmet(port, pool, plan, view)),
    ]
    for name, step in steps:
        try:
            step()
        except AwsCallError as exc:
            applied.errors.append(f"{name}: {exc}")
            logger.warning("host step failed", extra={"pool": pool.name, "step": name, "error": str(exc)})
    return applied


def allocation_token(pool: str, zone: str, now: datetime, attempt: int = 0) -> str:
    """AllocateHosts ClientToken: the same decision retried never allocates twice (a host costs 24 h)."""
    digest = hashlib.sha256(f"{pool}|{zone}|{now.isoformat()}|{attempt}".encode()).hexdigest()
    return f"rs-{digest[:40]}"


def _associate(port: HostPort, pool: Pool, host_ids: Sequence[str], applied: HostsApplied) -> None:
    if host_ids:
        applied.associated += port.associate(pool, host_ids)


def _allocate(port: HostPort, pool: Pool, plan: HostPlan, applied: HostsApplied) -> None:
    """Allocate per planned zone; on a capacity error try the pool's other zones, in config order."""
    zones = hosts_config(pool).availability_zones
    wanted: dict[str, int] = {}
    for zone in plan.allocate_zones:
        wanted[zone] = wanted.get(zone, 0) + 1
    for zone, quantity in wanted.items():
        fallbacks = [zone, *[z for z in zones if z != zone]]
        for attempt, candidate in enumerate(fallbacks):
            try:
                token = allocation_token(pool.name, candidate, plan.now, attempt)
                new = port.allocate(pool, candidate, quantity, token)
            except AwsCallError as exc:
                if exc.code not in CAPACITY_CODES or attempt == len(fallbacks) - 1:
                    raise
                logger.info("no host capacity, trying the next zone", extra={"pool": pool.name, "zone": zone})
                continue
            applied.allocated += new
            _associate(port, pool, new, applied)
            break


def _release(port: HostPort, host_ids: Sequence[str], applied: HostsApplied) -> None:
    if host_ids:
        result = port.release(host_ids)
        applied.released += result.released
        applied.release_failed += result.failed


def _mark_unmet(port: HostPort, pool: Pool, plan: HostPlan, view: HostPoolView) -> None:
    if hosts_config(pool).host_management is HostManagement.SCALER and plan.unmet_since != view.unmet_since:
        port.mark_unmet(pool, plan.unmet_since)


def _host(raw: dict[str, Any], pool: Pool) -> Host:
    """One DescribeHosts entry as the planner sees it."""
    cfg = hosts_config(pool)
    tags = _tags(raw)
    props = raw.get("HostProperties", {})
    return Host(
        host_id=str(raw["HostId"]),
        state=_state(raw.get("State")),
        allocated_at=_utc(raw.get("AllocationTime")),
        instance_ids=tuple(str(i["InstanceId"]) for i in raw.get("Instances", [])),
        free_slots=_free_slots(raw, cfg.instance_type),
        total_slots=_total_slots(raw, cfg.instance_type),
        availability_zone=str(raw.get("AvailabilityZone", "")),
        idle_since=_parse_time(tags.get(TAG_IDLE_SINCE)),
        in_group=tags.get(TAG_HOST_GROUP) == cfg.host_resource_group,
        sockets=int(props.get("Sockets", 0) or 0),
        cores=int(props.get("Cores", 0) or 0),
    )


def _free_slots(raw: dict[str, Any], instance_type: str) -> int | None:
    """AvailableInstanceCapacity of the pool's instance type; None when AWS reported no capacity at all."""
    capacity = raw.get("AvailableCapacity")
    if not capacity:
        return None
    for entry in capacity.get("AvailableInstanceCapacity", []):
        if entry.get("InstanceType") == instance_type:
            return int(entry.get("AvailableCapacity", 0))
    return 0


def _total_slots(raw: dict[str, Any], instance_type: str) -> int | None:
    """TotalCapacity of the pool's instance type: machines the host holds when empty; None when unreported.

    EC2 API reference, InstanceCapacity: "The total number of instances that can be launched onto the
    Dedicated Host if there are no instances running on it". A family host lists every size it supports.
    """
    for entry in raw.get("AvailableCapacity", {}).get("AvailableInstanceCapacity", []):
        if entry.get("InstanceType") == instance_type and entry.get("TotalCapacity"):
            return int(entry["TotalCapacity"])
    return None


def _state(value: object) -> HostState:
    try:
        return HostState(str(value))
    except ValueError:
        logger.warning("unknown host state, treated as unusable", extra={"state": str(value)})
        return HostState.UNKNOWN


def _tags(raw: dict[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in raw.get("Tags", [])}


def _filter(name: str, *values: str) -> dict[str, Any]:
    return {"Name": name, "Values": list(values)}


def _host_id_of(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    values = list(items)
    return [values[i : i + size] for i in range(0, len(values), size)]


def _utc(value: object) -> datetime:
    """AllocationTime as an aware UTC datetime (botocore parses it in the local zone)."""
    return as_utc(value) if isinstance(value, datetime) else from_epoch(0)


def _parse_time(value: str | None) -> datetime | None:
    """A tag's ISO time; a value someone edited into nonsense reads as unset (the clock restarts, safely)."""
    try:
        return parse_iso(value)
    except ValueError:
        logger.warning("unreadable time tag, ignored", extra={"value": value})
        return None


def _live(host: _MemoryHost) -> bool:
    return host.state not in {HostState.RELEASED, HostState.RELEASED_PERMANENT_FAILURE}
