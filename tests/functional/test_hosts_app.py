"""Host pools through the Chalice app: the `tick` handler allocates, sizes and releases dedicated hosts.

The Runtime is the deployed one (Ec2Hosts on `AwsClients`); only AWS's side is played. moto allocates,
describes, tags and releases hosts; `MotoHostWorld` adds what moto lacks (AllocationTime on the test's clock,
per-type capacity, GroupResources) through the `AwsClients` fault-injection seam. In this world an m6i host
holds 4 m6i.2xlarge; the app's Windows pool does not say so, and learns it from DescribeHosts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from chalice.test import Client
from moto import mock_aws

from app import app
from chalicelib.aws import AwsClients
from chalicelib.capacity.hosts import hosts_config
from chalicelib.config import Config, Pool, config_from_dict
from chalicelib.hosts import TAG_HOST_GROUP, TAG_IDLE_SINCE
from chalicelib.resources import TAG_POOL, Names
from chalicelib.runtime import Runtime, install
from chalicelib.store import JobRecord
from tests.builders import T0
from tests.functional.conftest import WEBHOOK_TOKENS, describe_group
from tests.functional.test_hosts_contract import MotoHostWorld
from toolkit.devtools.bootstrap import bootstrap

GITLAB = "gitlab.example.com"
MAC: dict[str, Any] = {
    "name": "macos",
    "asg": "test-macos",
    "platform": "macos",
    "tags": ["macos"],
    "max_instances": 3,
    "hosts": {
        "instance_type": "mac2.metal",
        "host_resource_group": "macos-hosts",
        "max_hosts": 3,
        "allocate_after": "0s",
        "availability_zones": ["us-east-1a"],
    },
    "policy": [{"idle_count": 0, "idle_time": "1h"}],
}
WINDOWS: dict[str, Any] = {
    "name": "windows",
    "asg": "test-windows",
    "platform": "windows",
    "tags": ["windows"],
    "max_instances": 8,
    "hosts": {  # no slots_per_host: derived from what the hosts report
        "instance_type": "m6i.2xlarge",
        "host_family": "m6i",
        "host_resource_group": "windows-hosts",
        "max_hosts": 2,
        "scrub_time": "0s",
        "allocate_after": "0s",
        "availability_zones": ["us-east-1a"],
    },
    "policy": [{"idle_count": 0, "idle_time": "30m"}],
}
#: AWS's truth in this world: what an m6i host holds of m6i.2xlarge (TotalCapacity), known to the world only.
WINDOWS_HOST_HOLDS = 4


@dataclass
class HostStack:
    """The deployed app on moto with two host pools, and AWS's part played on the test's clock."""

    aws: AwsClients
    runtime: Runtime
    clock: list[datetime]
    world: MotoHostWorld

    def advance(self, **delta: float) -> None:
        self.clock[0] += timedelta(**delta)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.runtime.config.pools if p.name == name)

    def record_pending(self, pool: str, *job_ids: int) -> None:
        for job_id in job_ids:
            self.runtime.store.record_job(JobRecord(GITLAB, job_id, "pending", pool=pool), self.clock[0])

    def tick(self) -> dict[str, Any]:
        with Client(app) as client:
            event = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
            payload: dict[str, Any] = client.lambda_.invoke("tick", event).payload
        return payload["pools"]

    def desired(self, pool: str) -> int:
        return int(describe_group(self.aws, self.pool(pool).asg)["DesiredCapacity"])

    def hosts(self, pool: str) -> list[dict[str, Any]]:
        """DescribeHosts, as an operator would run it: every host of the pool, released ones too."""
        raw = self.aws.call("ec2", "describe_hosts")["Hosts"]
        return [h for h in raw if _tags(h).get(TAG_POOL) == pool]

    def live_hosts(self, pool: str) -> list[dict[str, Any]]:
        return [h for h in self.hosts(pool) if h["State"] != "released"]


def _tags(raw: dict[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t["Value"]) for t in raw.get("Tags", [])}


def _create_host_groups(aws: AwsClients, config: Config) -> None:
    """The host resource groups infra/ creates (License Manager host management, scaler-managed hosts)."""
    for p in config.pools:
        aws.call(
            "resource-groups",
            "create_group",
            Name=hosts_config(p).host_resource_group,
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


@pytest.fixture
def host_stack(aws_credentials: None, request: pytest.FixtureRequest) -> Iterator[HostStack]:
    """The app on moto with a Mac and a Windows host pool; an indirect parameter (a dict) is merged into the
    Mac pool's [pools.hosts]."""
    mac = {**MAC, "hosts": {**MAC["hosts"], **getattr(request, "param", {})}}
    with mock_aws():
        config = config_from_dict({"gitlab": {"url": f"https://{GITLAB}"}, "pools": [mac, WINDOWS]}, "test")
        clock = [T0]
        truth = [  # the world knows how many machines a host really holds; the app's config does not
            p.model_copy(
                update={"hosts": hosts_config(p).model_copy(update={"slots_per_host": WINDOWS_HOST_HOLDS})}
            )
            if p.name == "windows"
            else p
            for p in config.pools
        ]
        world = MotoHostWorld(truth, clock)
        aws = AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=world.inject)
        local = bootstrap(aws, config, Names("test"), WEBHOOK_TOKENS)
        _create_host_groups(aws, config)
        rt = Runtime(
            {"RUNNER_SCALER_PREFIX": "test", "RUNNER_SCALER_QUEUE_URL": local.queue_url},
            aws=aws,
            config=config,
            clock=lambda: clock[0],
        )
        install(rt)
        yield HostStack(aws, rt, clock, world)
        install(None)


def test_pending_jobs_allocate_hosts_then_launch_onto_them(host_stack: HostStack) -> None:
    # GIVEN no host at all, 3 macOS jobs and 6 Windows jobs pending
    host_stack.record_pending("macos", 1, 2, 3)
    host_stack.record_pending("windows", 11, 12, 13, 14, 15, 16)

    # WHEN the tick runs
    first = host_stack.tick()

    # THEN nothing launches yet (no host can take a machine), but hosts are allocated into their groups:
    # one Mac host per job (a Mac host holds one instance), and one Windows host only, since its size is
    # unknown until AWS reports it
    assert {name: pool["desired"] for name, pool in first.items()} == {"macos": 0, "windows": 0}
    assert (host_stack.desired("macos"), host_stack.desired("windows")) == (0, 0)
    mac_hosts = host_stack.live_hosts("macos")
    assert len(mac_hosts) == 3
    assert all(h["HostProperties"] == {"InstanceType": "mac2.metal"} for h in mac_hosts)
    (windows_host,) = host_stack.live_hosts("windows")
    assert windows_host["HostProperties"] == {"InstanceFamily": "m6i"}
    assert [_tags(h)[TAG_HOST_GROUP] for h in [*mac_hosts, windows_host]] == ["macos-hosts"] * 3 + [
        "windows-hosts"
    ]
    assert all(h["AutoPlacement"] == "off" for h in [*mac_hosts, windows_host])

    # WHEN the hosts are available a minute later and the tick runs again
    host_stack.advance(minutes=1)
    second = host_stack.tick()

    # THEN each Mac host takes one machine; the Windows host holds 4 (as DescribeHosts reports), so 4
    # machines launch and one more host is allocated for the other 2 -- not one host per machine
    assert (second["macos"]["errors"], second["windows"]["errors"]) == ([], [])
    assert (host_stack.desired("macos"), host_stack.desired("windows")) == (3, 4)
    assert len(host_stack.live_hosts("macos")) == 3
    assert len(host_stack.live_hosts("windows")) == 2


@pytest.mark.parametrize("host_stack", [{"keep_ready": False}], indirect=True)
def test_an_idle_mac_host_goes_after_its_24_hours_and_a_younger_one_stays(host_stack: HostStack) -> None:
    # GIVEN two Mac hosts in the group: one allocated at T0, one 20 hours later (no standby Macs: the hosts'
    # own release rule; with them, see test_a_paid_mac_host_holds_a_standby_mac_and_goes_once_it_waits_idle)
    port = host_stack.runtime.hosts
    assert port is not None
    mac = host_stack.pool("macos")
    (old,) = port.allocate(mac, "us-east-1a", 1, "token-old")
    port.associate(mac, [old])  # DescribeHosts inside stamps AllocationTime with the test's clock
    host_stack.advance(hours=20)
    (young,) = port.allocate(mac, "us-east-1a", 1, "token-young")
    port.associate(mac, [young])

    # WHEN, 25 hours after the first allocation, ticks run with no demand
    host_stack.advance(hours=5)
    host_stack.tick()

    # THEN the first tick only starts both hosts' idle clocks (kept as a tag on each host)
    assert {h["HostId"]: h["State"] for h in host_stack.hosts("macos")} == {
        old: "available",
        young: "available",
    }
    assert {h["HostId"]: _tags(h).get(TAG_IDLE_SINCE) for h in host_stack.hosts("macos")} == {
        old: "2026-11-24T13:00:00Z",
        young: "2026-11-24T13:00:00Z",
    }

    # WHEN the pool's idle_time (1 h) has passed
    host_stack.advance(hours=1, minutes=1)
    result = host_stack.tick()

    # THEN the host past its 24-hour minimum is released; the one 6 hours old, just as idle, is kept --
    # it is paid for until its day is up, so releasing it would save nothing and lose capacity
    assert result["macos"]["errors"] == []
    assert {h["HostId"]: h["State"] for h in host_stack.hosts("macos")} == {
        old: "released",
        young: "available",
    }
    assert host_stack.desired("macos") == 0

    # WHEN its own 24 hours are up too
    host_stack.clock[0] = T0 + timedelta(hours=44, minutes=1)
    host_stack.tick()

    # THEN it goes as well
    assert {h["HostId"]: h["State"] for h in host_stack.hosts("macos")} == {
        old: "released",
        young: "released",
    }


def test_a_paid_mac_host_holds_a_standby_mac_and_goes_once_it_waits_idle(host_stack: HostStack) -> None:
    # GIVEN one Mac host allocated into the group, and no job anywhere
    port = host_stack.runtime.hosts
    assert port is not None
    mac = host_stack.pool("macos")
    (host,) = port.allocate(mac, "us-east-1a", 1, "token-standby")
    port.associate(mac, [host])

    # WHEN the tick runs
    first = host_stack.tick()

    # THEN a Mac launches onto it though no job waits: AWS bills the Mac host, not the instance on it
    # ("Amazon EC2 Mac instances"), for at least 24 hours, so a booted Mac waiting there costs nothing more
    assert first["macos"]["errors"] == [] and host_stack.desired("macos") == 1
    (instance_id,) = [i["InstanceId"] for i in describe_group(host_stack.aws, "test-macos")["Instances"]]
    assert host_stack.world.place("macos", instance_id) == host

    # WHEN 20 hours pass with no job (idle_time is 1 h), inside the host's 24 hours
    host_stack.advance(hours=20)
    host_stack.tick()
    # THEN the standby Mac stays: its host is paid for anyway
    assert host_stack.desired("macos") == 1 and _state(host_stack.aws, instance_id) == "running"

    # WHEN the host's 24 hours are up, its Mac still without a job
    host_stack.advance(hours=4, minutes=1)
    ended = host_stack.tick()
    # THEN the Mac is drained and terminated, so that the host can go (a host with an instance cannot be
    # released: "Release Dedicated Hosts"); no new Mac takes its place
    assert ended["macos"]["errors"] == [] and host_stack.desired("macos") == 0
    assert _state(host_stack.aws, instance_id) in {"shutting-down", "terminated"}
    host_stack.world.end(instance_id)  # AWS: the host scrubs once its Mac ended

    # WHEN the scrub is over and the empty host has been idle for idle_time
    host_stack.tick()
    host_stack.advance(hours=1, minutes=1)
    host_stack.tick()
    # THEN the host is released, and nothing was launched onto it meanwhile
    assert [h["State"] for h in host_stack.hosts("macos")] == ["released"]
    assert host_stack.desired("macos") == 0


def _state(aws: AwsClients, instance_id: str) -> str:
    reservations = aws.call("ec2", "describe_instances", InstanceIds=[instance_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def test_a_standby_mac_never_allocates_a_host_while_its_kept_host_scrubs(host_stack: HostStack) -> None:
    # GIVEN a Mac host inside its 24 hours whose standby Mac just ended (the host scrubs, state pending)
    port = host_stack.runtime.hosts
    assert port is not None
    mac = host_stack.pool("macos")
    (host,) = port.allocate(mac, "us-east-1a", 1, "token-scrub")
    port.associate(mac, [host])
    host_stack.tick()
    (instance_id,) = [i["InstanceId"] for i in describe_group(host_stack.aws, "test-macos")["Instances"]]
    assert host_stack.world.place("macos", instance_id) == host
    host_stack.advance(hours=2)  # the host is no longer one coming up: an unplaced machine would allocate
    host_stack.aws.call(
        "autoscaling",
        "terminate_instance_in_auto_scaling_group",
        InstanceId=instance_id,
        ShouldDecrementDesiredCapacity=True,
    )
    host_stack.world.end(instance_id)

    # WHEN ticks run during the scrub, with no job anywhere (allocate_after is 0 s)
    host_stack.advance(minutes=1)
    first = host_stack.tick()
    host_stack.advance(minutes=10)
    second = host_stack.tick()

    # THEN the kept host waits for its scrub to end: its standby Mac is wanted, but no host is allocated
    # for it (a standby only fills hosts already paid for)
    assert (first["macos"]["errors"], second["macos"]["errors"]) == ([], [])
    assert [h["HostId"] for h in host_stack.live_hosts("macos")] == [host]
    assert host_stack.desired("macos") == 0

    # WHEN the scrub (50 minutes) is over
    host_stack.advance(minutes=45)
    host_stack.tick()
    # THEN the host gets its standby Mac again, still on the one host
    assert host_stack.desired("macos") == 1 and len(host_stack.live_hosts("macos")) == 1
