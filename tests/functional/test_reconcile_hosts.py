"""The reconciler on a macOS dedicated-host pool: no launch without a host, a host once demand lasts,
launches only onto available hosts, and no release before the 24-hour minimum."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chalicelib.aws import AwsClients
from chalicelib.config import config_from_dict
from chalicelib.fleet import AsgFleet
from chalicelib.hosts import MemoryHosts
from chalicelib.reconcile import Reconciler
from chalicelib.resources import Names
from chalicelib.store import DynamoStore, JobRecord
from tests.builders import T0
from tests.functional.conftest import describe_group
from toolkit.devtools.bootstrap import create_pool_group, ensure_table

MAC: dict[str, Any] = {
    "name": "macos",
    "asg": "asg-macos",
    "platform": "macos",
    "tags": ["macos"],
    "max_instances": 3,
    "hosts": {
        "instance_type": "mac2.metal",
        "host_resource_group": "mac-hosts",
        "max_hosts": 3,
        "allocate_after": "2m",
        "availability_zones": ["us-east-1a"],
    },
    "policy": [{"idle_count": 0, "idle_time": "30m"}],
}


def test_mac_pool_waits_for_a_host_then_launches_onto_it(aws: AwsClients) -> None:
    config = config_from_dict({"gitlab": {"url": "https://gitlab.example.com"}, "pools": [MAC]}, "test")
    pool = config.pools[0]
    ensure_table(aws, "test-state")
    create_pool_group(aws, pool, Names("test"), aws.call("ec2", "describe_subnets")["Subnets"][0]["SubnetId"])
    clock = [T0]
    hosts = MemoryHosts(lambda: clock[0])
    store = DynamoStore(aws, "test-state")
    reconciler = Reconciler(config, store, AsgFleet(aws), hosts=hosts)
    store.record_job(JobRecord("gitlab.example.com", 1, "pending", pool="macos"), T0)

    # GIVEN no host: nothing can launch, the unmet clock starts
    first = reconciler.reconcile_all(clock[0])[0]
    assert first.desired_after == 0 and first.host_plan is not None and first.host_plan.launchable == 0
    # WHEN demand lasts beyond allocate_after: a host is allocated (and joins the group)
    clock[0] += timedelta(minutes=3)
    reconciler.reconcile_all(clock[0])
    assert len(hosts.read_pools([pool])["macos"].hosts) == 1
    # THEN once it is available, the machine launches onto it
    clock[0] += timedelta(minutes=20)
    later = reconciler.reconcile_all(clock[0])[0]
    assert later.desired_after == 1
    assert describe_group(aws, "asg-macos")["DesiredCapacity"] == 1
    # The host is paid for 24 h: even idle and empty it stays inside that window.
    store.record_job(JobRecord("gitlab.example.com", 1, "canceled", pool="macos"), clock[0])
    for _ in range(6):
        clock[0] += timedelta(hours=2)
        reconciler.reconcile_all(clock[0])
    assert len(hosts.read_pools([pool])["macos"].hosts) == 1
