"""HostPort contract: `Ec2Hosts` on moto and the in-memory `MemoryHosts` pass the same tests.

moto allocates, describes, tags and releases hosts, but plays none of AWS's host lifecycle: it never puts an
instance on a host, never scrubs a Mac host, reports no free capacity, stamps AllocationTime with the wall
clock and does not implement Resource Groups' GroupResources. `MotoHostWorld` plays that part on moto's
backend, driven by the test's fake clock, through the `AwsClients` fault-injection seam (no mock.patch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from chalicelib.aws import AwsClients, fault
from chalicelib.capacity.hosts import HostState, IdleMark, host_free_slots, plan_hosts
from chalicelib.config import HostsConfig, Pool
from chalicelib.hosts import (
    TAG_HOST_GROUP,
    Ec2Hosts,
    HostPort,
    MemoryHosts,
    apply_host_plan,
    hosts_config,
)
from chalicelib.resources import TAG_POOL
from tests.builders import T0, pool

REGION = "us-east-1"

MAC = pool(
    name="macos",
    asg="asg-macos",
    platform="macos",
    tags=["macos"],
    run_untagged=False,
    max_instances=3,
    hosts={
        "instance_type": "mac2.metal",
        "host_resource_group": "macos-hosts",
        "max_hosts": 3,
        "scrub_time": "50m",
        "availability_zones": ["us-east-1a", "us-east-1b"],
    },
    policy=[{"idle_time": "1h"}],
)
WINDOWS = pool(
    name="windows",
    asg="asg-windows",
    platform="windows",
    tags=["windows"],
    run_untagged=False,
    max_instances=8,
    hosts={
        "instance_type": "m6i.2xlarge",
        "host_family": "m6i",
        "host_resource_group": "windows-hosts",
        "slots_per_host": 4,
        "max_hosts": 2,
        "scrub_time": "0s",
        "availability_zones": ["us-east-1a"],
    },
    policy=[{"idle_time": "30m"}],
)
LINUX = pool(name="linux", asg="asg-linux")
POOLS = (MAC, WINDOWS)


class HostWorld(Protocol):
    """AWS's part of the host lifecycle: machines land on hosts and leave them (then a Mac host scrubs)."""

    def place(self, pool: str, instance_id: str, prefer: Sequence[str] = ()) -> str | None: ...

    def end(self, instance_id: str) -> None: ...

    def host_of(self, instance_id: str) -> str | None: ...


class MotoHostWorld:
    """Plays AWS's host lifecycle on moto's EC2 backend, on the test's clock.

    Hooked in as the `AwsClients` fault injector: before every DescribeHosts it brings moto up to the clock
    (allocation times, scrubs that ended, free capacity); it answers GroupResources, which moto lacks, with
    an empty success; and it can fail the next AllocateHosts once with an AWS error code.
    """

    def __init__(self, pools: Sequence[Pool], clock: list[datetime]) -> None:
        self._pools = {p.name: hosts_config(p) for p in pools}
        self._clock = clock
        self._seen: set[str] = set()
        self._scrub_until: dict[str, datetime] = {}
        self.fail_next_allocate = ""

    def inject(self, service: str, operation: str) -> dict[str, Any] | None:
        if (service, operation) == ("ec2", "DescribeHosts"):
            self.catch_up()
        if (service, operation) == ("ec2", "AllocateHosts") and self.fail_next_allocate:
            code, self.fail_next_allocate = self.fail_next_allocate, ""
            return fault(code)
        if (service, operation) == ("resource-groups", "GroupResources"):
            return {"Succeeded": [], "Failed": [], "Pending": [], "ResponseMetadata": {"HTTPStatusCode": 200}}
        return None

    def catch_up(self) -> None:
        now = self._clock[0]
        for host in self._hosts().values():
            if host.id not in self._seen:
                host.allocation_time = now.timestamp()  # AWS stamps the allocation with ITS clock
                self._seen.add(host.id)
            until = self._scrub_until.get(host.id)
            if host.state == "pending" and until is not None and until <= now:
                host.state = "available"
                del self._scrub_until[host.id]
            cfg = self._cfg(host)
            if cfg is not None:
                used = len(self._instances(host))
                free = cfg.slots_per_host - used if host.state == "available" else 0
                host.available_capacity = {
                    "AvailableInstanceCapacity": [
                        {
                            "InstanceType": cfg.instance_type,
                            "AvailableCapacity": free,
                            "TotalCapacity": cfg.slots_per_host,
                        }
                    ]
                }

    def place(self, pool: str, instance_id: str, prefer: Sequence[str] = ()) -> str | None:
        """A host resource group launch: onto an available member host of the pool with room, else fail."""
        self.catch_up()
        cfg = self._pools[pool]
        open_hosts = {
            h.id: h
            for h in self._hosts().values()
            if self._tags(h).get(TAG_POOL) == pool
            and self._tags(h).get(TAG_HOST_GROUP) == cfg.host_resource_group
            and h.state == "available"
            and len(self._instances(h)) < cfg.slots_per_host
        }
        choice = next((open_hosts[h] for h in prefer if h in open_hosts), None)
        choice = choice or next(iter(open_hosts.values()), None)
        if choice is None:
            return None
        entry = {"InstanceId": instance_id, "InstanceType": cfg.instance_type, "OwnerId": DEFAULT_ACCOUNT_ID}
        choice.instances = [*self._instances(choice), entry]
        return str(choice.id)

    def end(self, instance_id: str) -> None:
        for host in self._hosts().values():
            kept = [i for i in self._instances(host) if i["InstanceId"] != instance_id]
            if len(kept) == len(self._instances(host)):
                continue
            host.instances = kept
            cfg = self._cfg(host)
            if cfg is not None and cfg.scrub_time > timedelta(0):
                host.state = "pending"  # the Mac scrubbing workflow
                self._scrub_until[host.id] = self._clock[0] + cfg.scrub_time
            return

    def host_of(self, instance_id: str) -> str | None:
        for host in self._hosts().values():
            if any(i["InstanceId"] == instance_id for i in self._instances(host)):
                return str(host.id)
        return None

    def _hosts(self) -> dict[str, Any]:
        hosts: dict[str, Any] = ec2_backends[DEFAULT_ACCOUNT_ID][REGION].hosts
        return hosts

    def _cfg(self, host: Any) -> HostsConfig | None:
        return self._pools.get(self._tags(host).get(TAG_POOL, ""))

    @staticmethod
    def _tags(host: Any) -> dict[str, str]:
        return {t["key"]: t["value"] for t in host.get_tags()}

    @staticmethod
    def _instances(host: Any) -> list[dict[str, str]]:
        return list(getattr(host, "instances", []))


@dataclass
class HostsEnv:
    """A port, the world behind it and the clock both read."""

    kind: str
    port: HostPort
    world: HostWorld
    clock: list[datetime]
    calls: Callable[[], int]

    def advance(self, **delta: float) -> datetime:
        self.clock[0] += timedelta(**delta)
        return self.clock[0]

    def hosts(self, pool: Pool) -> list[Any]:
        return list(self.port.read_pools([pool])[pool.name].hosts)


def memory_env() -> HostsEnv:
    clock = [T0]
    port = MemoryHosts(lambda: clock[0])
    return HostsEnv("memory", port, port, clock, lambda: port.calls)


@functools.cache
def boto_session() -> boto3.session.Session:
    """One session for every test here: botocore then parses each service model once, not once per test.

    Built on first use, inside a test, once mock_aws and the fake credentials are in place.
    """
    return boto3.session.Session()


def moto_env(pools: Sequence[Pool] = POOLS) -> HostsEnv:
    """Ec2Hosts on moto (the caller holds mock_aws open), with each pool's host resource group created."""
    clock = [T0]
    world = MotoHostWorld(pools, clock)
    aws = AwsClients(boto_session(), region=REGION, sleep=lambda _s: None, fault_injector=world.inject)
    for p in pools:
        cfg = hosts_config(p)
        aws.call(
            "resource-groups",
            "create_group",
            Name=cfg.host_resource_group,
            Configuration=[
                {
                    "Type": "AWS::EC2::HostManagement",
                    "Parameters": [
                        {"Name": "auto-allocate-host", "Values": ["false"]},
                        {"Name": "auto-release-host", "Values": ["false"]},
                    ],
                },
                {
                    "Type": "AWS::ResourceGroups::Generic",
                    "Parameters": [{"Name": "allowed-resource-types", "Values": ["AWS::EC2::Host"]}],
                },
            ],
        )
    return HostsEnv("moto", Ec2Hosts(aws), world, clock, lambda: aws.total_calls)


@pytest.fixture
def moto_hosts(mocked_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """mock_aws, minus the thousands of default AMIs moto loads per EC2 backend (no test here needs one)."""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")


@pytest.fixture(params=["memory", "moto"])
def env(request: pytest.FixtureRequest) -> Iterator[HostsEnv]:
    if request.param == "memory":
        yield memory_env()
        return
    request.getfixturevalue("moto_hosts")
    yield moto_env()


def allocate_grouped(env: HostsEnv, p: Pool, zone: str, quantity: int) -> tuple[str, ...]:
    host_ids = env.port.allocate(p, zone, quantity, f"token-{p.name}-{zone}-{env.clock[0].isoformat()}")
    env.port.associate(p, host_ids)
    return host_ids


class TestRead:
    def test_allocated_hosts_read_back_with_zone_time_and_room(self, env: HostsEnv) -> None:
        host_ids = env.port.allocate(MAC, "us-east-1b", 2, "token-1")
        hosts = env.hosts(MAC)
        assert sorted(h.host_id for h in hosts) == sorted(host_ids)
        for host in hosts:
            assert (host.state, host.allocated_at, host.availability_zone) == (
                HostState.AVAILABLE,
                T0,
                "us-east-1b",
            )
            assert (host.instance_ids, host.in_group, host.idle_since) == ((), False, None)

    def test_each_pool_reads_only_its_own_hosts(self, env: HostsEnv) -> None:
        mac = env.port.allocate(MAC, "us-east-1a", 1, "token-mac")
        windows = env.port.allocate(WINDOWS, "us-east-1a", 2, "token-windows")
        views = env.port.read_pools([MAC, WINDOWS, LINUX])
        assert set(views) == {"macos", "windows"}  # a pool without hosts has no view
        assert [h.host_id for h in views["macos"].hosts] == list(mac)
        assert sorted(h.host_id for h in views["windows"].hosts) == sorted(windows)

    def test_a_host_takes_launches_once_it_joined_the_group(self, env: HostsEnv) -> None:
        (host_id,) = env.port.allocate(WINDOWS, "us-east-1a", 1, "token-1")
        assert env.world.place("windows", "i-early") is None
        assert env.port.associate(WINDOWS, [host_id]) == (host_id,)
        (host,) = env.hosts(WINDOWS)
        assert host.in_group
        assert host_free_slots(hosts_config(WINDOWS), host) == 4
        assert env.world.place("windows", "i-1") == host_id

    def test_released_hosts_are_no_longer_read(self, env: HostsEnv) -> None:
        keep, drop = env.port.allocate(MAC, "us-east-1a", 2, "token-1")
        env.advance(hours=25)
        result = env.port.release([drop])
        assert (result.released, result.failed) == ((drop,), ())
        assert [h.host_id for h in env.hosts(MAC)] == [keep]


class TestMarks:
    def test_the_idle_clock_is_kept_on_the_host(self, env: HostsEnv) -> None:
        first, second = env.port.allocate(MAC, "us-east-1a", 2, "token-1")
        since = T0 + timedelta(minutes=3)
        env.port.mark_idle([IdleMark(first, since), IdleMark(second, since)])
        assert {h.host_id: h.idle_since for h in env.hosts(MAC)} == {first: since, second: since}
        env.port.mark_idle([IdleMark(first, None)])
        assert {h.host_id: h.idle_since for h in env.hosts(MAC)} == {first: None, second: since}

    def test_the_unmet_clock_is_kept_on_the_host_resource_group(self, env: HostsEnv) -> None:
        assert env.port.read_pools([MAC])["macos"].unmet_since is None
        env.port.mark_unmet(MAC, T0)
        assert env.port.read_pools([MAC])["macos"].unmet_since == T0
        env.port.mark_unmet(MAC, None)
        assert env.port.read_pools([MAC])["macos"].unmet_since is None


class TestLifecycle:
    def test_a_mac_host_scrubs_after_its_machine_and_then_comes_back(self, env: HostsEnv) -> None:
        (host_id,) = allocate_grouped(env, MAC, "us-east-1a", 1)
        assert env.world.place("macos", "i-1") == host_id
        (host,) = env.hosts(MAC)
        assert (host.instance_ids, host_free_slots(hosts_config(MAC), host)) == (("i-1",), 0)

        env.advance(minutes=30)
        env.world.end("i-1")
        (host,) = env.hosts(MAC)
        assert host.scrubbing and host.instance_ids == ()
        assert env.world.place("macos", "i-2") is None  # nothing launches onto a scrubbing host

        env.advance(minutes=50)
        (host,) = env.hosts(MAC)
        assert host.state is HostState.AVAILABLE
        assert env.world.place("macos", "i-2") == host_id

    def test_a_windows_host_frees_its_slot_at_once(self, env: HostsEnv) -> None:
        (host_id,) = allocate_grouped(env, WINDOWS, "us-east-1a", 1)
        for n in range(4):
            assert env.world.place("windows", f"i-{n}") == host_id
        assert env.world.place("windows", "i-4") is None
        env.world.end("i-0")
        (host,) = env.hosts(WINDOWS)
        assert (host.state, len(host.instance_ids), host_free_slots(hosts_config(WINDOWS), host)) == (
            HostState.AVAILABLE,
            3,
            1,
        )


class TestApply:
    def test_a_plan_allocates_into_the_group_and_starts_clocks(self, env: HostsEnv) -> None:
        view = env.port.read_pools([WINDOWS])["windows"]
        plan = plan_hosts(WINDOWS, view.hosts, T0, wanted=6, unmet_since=T0 - timedelta(minutes=5))
        applied = apply_host_plan(env.port, WINDOWS, plan, view)
        assert (len(applied.allocated), applied.errors) == (2, [])
        hosts = env.hosts(WINDOWS)
        assert all(h.in_group for h in hosts)
        assert plan_hosts(WINDOWS, hosts, T0, wanted=6).launchable == 8

    def test_a_stray_host_is_healed_into_the_group(self, env: HostsEnv) -> None:
        env.port.allocate(MAC, "us-east-1a", 1, "token-1")  # the Lambda died before GroupResources
        view = env.port.read_pools([MAC])["macos"]
        plan = plan_hosts(MAC, view.hosts, T0)
        apply_host_plan(env.port, MAC, plan, view)
        assert [h.in_group for h in env.hosts(MAC)] == [True]

    def test_the_unmet_clock_is_written_only_when_it_changes(self, env: HostsEnv) -> None:
        view = env.port.read_pools([MAC])["macos"]
        plan = plan_hosts(MAC, view.hosts, T0, wanted=1, unmet_since=view.unmet_since)
        apply_host_plan(env.port, MAC, plan, view)
        view = env.port.read_pools([MAC])["macos"]
        assert view.unmet_since == T0
        before = env.calls()
        apply_host_plan(env.port, MAC, plan_hosts(MAC, view.hosts, T0, wanted=1, unmet_since=T0), view)
        assert env.calls() == before

    def test_a_dry_run_calls_nothing(self, env: HostsEnv) -> None:
        view = env.port.read_pools([MAC])["macos"]
        plan = plan_hosts(MAC, view.hosts, T0, wanted=2, unmet_since=T0 - timedelta(hours=1))
        before = env.calls()
        applied = apply_host_plan(env.port, MAC, plan, view, dry_run=True)
        assert env.calls() == before
        assert applied.allocated == ("(new host in us-east-1a)", "(new host in us-east-1b)")
        assert env.hosts(MAC) == []


class TestEc2Specifics:
    def test_mac_hosts_are_allocated_by_type_windows_hosts_by_family(self, moto_hosts: None) -> None:
        env = moto_env()
        env.port.allocate(MAC, "us-east-1a", 1, "token-mac")
        env.port.allocate(WINDOWS, "us-east-1a", 1, "token-windows")
        aws = AwsClients(boto_session(), region=REGION)
        props = {_tag(h, TAG_POOL): h["HostProperties"] for h in aws.call("ec2", "describe_hosts")["Hosts"]}
        assert props == {"macos": {"InstanceType": "mac2.metal"}, "windows": {"InstanceFamily": "m6i"}}

    def test_no_capacity_in_one_zone_falls_back_to_the_next(self, moto_hosts: None) -> None:
        env = moto_env()
        assert isinstance(env.world, MotoHostWorld)
        env.world.fail_next_allocate = "InsufficientHostCapacity"
        view = env.port.read_pools([MAC])["macos"]
        plan = plan_hosts(MAC, view.hosts, T0, wanted=1, unmet_since=T0 - timedelta(hours=1))
        assert plan.allocate_zones == ("us-east-1a",)
        applied = apply_host_plan(env.port, MAC, plan, view)
        assert applied.errors == []
        assert [h.availability_zone for h in env.hosts(MAC)] == ["us-east-1b"]

    def test_a_failed_step_is_recorded_and_the_others_still_run(self, moto_hosts: None) -> None:
        env = moto_env()
        assert isinstance(env.world, MotoHostWorld)
        env.world.fail_next_allocate = "HostLimitExceeded"  # a quota: another zone would not help
        view = env.port.read_pools([MAC])["macos"]
        plan = plan_hosts(MAC, view.hosts, T0, wanted=1, unmet_since=T0 - timedelta(hours=1))
        applied = apply_host_plan(env.port, MAC, plan, view)
        assert len(applied.errors) == 1 and "HostLimitExceeded" in applied.errors[0]
        assert env.port.read_pools([MAC])["macos"].unmet_since is None  # the mark-unmet step still ran


class TestMemorySpecifics:
    def test_release_refuses_an_occupied_or_still_paid_host_as_ec2_does(self) -> None:
        env = memory_env()
        busy, young = allocate_grouped(env, MAC, "us-east-1a", 2)
        env.world.place("macos", "i-1", prefer=[busy])
        result = env.port.release([busy, young, "h-missing"])
        assert result.released == ()
        assert dict(result.failed) == {
            busy: "HostInUse",
            young: "MinimumAllocationNotMet",
            "h-missing": "InvalidHostID.NotFound",
        }

    def test_the_same_allocation_token_allocates_once(self) -> None:
        env = memory_env()
        assert env.port.allocate(MAC, "us-east-1a", 1, "same") == env.port.allocate(
            MAC, "us-east-1a", 1, "same"
        )
        assert len(env.hosts(MAC)) == 1


def _tag(raw: dict[str, Any], key: str) -> str:
    return next(str(t["Value"]) for t in raw.get("Tags", []) if t["Key"] == key)
