"""Machines per host as `Ec2Hosts` reads them from DescribeHosts, checked with botocore's Stubber.

moto's DescribeHosts reports no AvailableCapacity at all, so the shape AWS documents (EC2 API reference,
AvailableCapacity / InstanceCapacity: per instance type, AvailableCapacity and TotalCapacity) is stubbed at
the `AwsClients` seam; Stubber checks the response against the EC2 service model.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import Stubber

from chalicelib.aws import AwsClients
from chalicelib.capacity.hosts import host_slots
from chalicelib.config import Pool
from chalicelib.hosts import TAG_HOST_GROUP, Ec2Hosts
from chalicelib.resources import TAG_POOL
from tests.functional.test_hosts_contract import WINDOWS, boto_session

ACCOUNT = "123456789012"
GROUP_ARN = f"arn:aws:resource-groups:us-east-1:{ACCOUNT}:group/windows-hosts"
ALLOCATED = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
LIVE = ["available", "pending", "configuring", "under-assessment", "permanent-failure"]


def derived(p: Pool) -> Pool:
    """The pool with slots_per_host left out of its [pools.hosts] table."""
    table = p.hosts.model_dump(exclude={"slots_per_host"}, exclude_unset=True)  # type: ignore[union-attr]
    return Pool.model_validate({**p.model_dump(exclude_unset=True), "hosts": table})


def windows_host(host_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "HostId": host_id,
        "State": "available",
        "AllocationTime": ALLOCATED,
        "AvailabilityZone": "us-east-1a",
        "HostProperties": {"Sockets": 2, "Cores": 64, "TotalVCpus": 128, "InstanceFamily": "m6i"},
        "Tags": [{"Key": TAG_POOL, "Value": "windows"}, {"Key": TAG_HOST_GROUP, "Value": "windows-hosts"}],
        **fields,
    }


@pytest.fixture
def aws(aws_credentials: None) -> AwsClients:
    return AwsClients(boto_session(), region="us-east-1", sleep=lambda _s: None)


@pytest.fixture
def stub(aws: AwsClients) -> Iterator[dict[str, Stubber]]:
    stubbers = {service: Stubber(aws.client(service)) for service in ("ec2", "sts", "resource-groups")}
    for stubber in stubbers.values():
        stubber.activate()
    yield stubbers
    for stubber in stubbers.values():
        stubber.assert_no_pending_responses()
        stubber.deactivate()


def expect_read(stub: dict[str, Stubber], hosts: list[dict[str, Any]]) -> None:
    """One scaler-pool read: DescribeHosts by the pool tag, then the group's unmet clock."""
    stub["ec2"].add_response(
        "describe_hosts",
        {"Hosts": hosts},
        {"Filter": [{"Name": "tag-key", "Values": [TAG_POOL]}, {"Name": "state", "Values": LIVE}]},
    )
    stub["sts"].add_response(
        "get_caller_identity", {"Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:role/x"}
    )
    stub["resource-groups"].add_response("get_tags", {"Arn": GROUP_ARN, "Tags": {}}, {"Arn": GROUP_ARN})


def test_a_family_host_reports_how_many_of_the_pool_type_it_holds(
    aws: AwsClients, stub: dict[str, Stubber]
) -> None:
    # GIVEN an m6i host with two m6i.2xlarge on it, listing every size it supports, and one still coming up
    capacity = {
        "AvailableInstanceCapacity": [
            {"InstanceType": "m6i.large", "AvailableCapacity": 56, "TotalCapacity": 64},
            {"InstanceType": "m6i.2xlarge", "AvailableCapacity": 14, "TotalCapacity": 16},
        ],
        "AvailableVCpus": 112,
    }
    running = [{"InstanceId": f"i-{n}", "InstanceType": "m6i.2xlarge"} for n in (1, 2)]
    expect_read(
        stub,
        [
            windows_host("h-1", AvailableCapacity=capacity, Instances=running),
            windows_host("h-2", State="pending"),
        ],
    )
    pool = derived(WINDOWS)
    # WHEN the pool is read
    view = Ec2Hosts(aws).read_pools([pool])["windows"]
    # THEN the pool's own type is what counts (16, not the 64 m6i.large), the coming host says nothing yet,
    # and with slots_per_host unset that is how many machines a host takes
    assert {h.host_id: (h.total_slots, h.free_slots) for h in view.hosts} == {
        "h-1": (16, 14),
        "h-2": (None, None),
    }
    assert view.slots_per_host == 16
    assert host_slots(pool, view.slots_per_host) == 16


def test_a_configured_value_overrides_what_the_host_reports(
    aws: AwsClients, stub: dict[str, Stubber]
) -> None:
    capacity = {
        "AvailableInstanceCapacity": [
            {"InstanceType": "m6i.2xlarge", "AvailableCapacity": 16, "TotalCapacity": 16}
        ]
    }
    expect_read(stub, [windows_host("h-1", AvailableCapacity=capacity)])
    view = Ec2Hosts(aws).read_pools([WINDOWS])["windows"]  # WINDOWS sets slots_per_host = 4
    assert view.slots_per_host == 16
    assert host_slots(WINDOWS, view.slots_per_host) == 4


def test_no_reported_capacity_leaves_the_size_unknown(aws: AwsClients, stub: dict[str, Stubber]) -> None:
    expect_read(stub, [windows_host("h-1")])
    view = Ec2Hosts(aws).read_pools([derived(WINDOWS)])["windows"]
    assert view.slots_per_host is None
    assert host_slots(derived(WINDOWS), view.slots_per_host) is None  # the planner allocates one host first
