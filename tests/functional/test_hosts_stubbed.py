"""The host calls moto cannot answer, checked with botocore's Stubber at the `AwsClients` seam.

moto has no License Manager, and its Resource Groups lack GroupResources and ListGroupResources. Stubber
records the exact request we send and the response AWS documents; the adapter runs unchanged above it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from botocore.stub import Stubber

from chalicelib.aws import AwsClients
from chalicelib.capacity.hosts import HostState, LicenseRoom
from chalicelib.errors import AwsCallError
from chalicelib.hosts import TAG_HOST_GROUP, Ec2Hosts
from tests.functional.test_hosts_contract import MAC, WINDOWS, boto_session

LICENSE_ARN = (
    "arn:aws:license-manager:us-east-1:123456789012:license-configuration:lic-" + "0123456789abcdef" * 2
)
HOST_ARN = "arn:aws:ec2:us-east-1:123456789012:dedicated-host/{}"


@pytest.fixture
def aws(aws_credentials: None) -> AwsClients:
    return AwsClients(boto_session(), region="us-east-1", sleep=lambda _s: None)


@pytest.fixture
def stub(aws: AwsClients) -> Iterator[dict[str, Stubber]]:
    stubbers = {
        service: Stubber(aws.client(service))
        for service in ("license-manager", "resource-groups", "ec2", "sts")
    }
    for stubber in stubbers.values():
        stubber.activate()
    yield stubbers
    for stubber in stubbers.values():
        stubber.assert_no_pending_responses()
        stubber.deactivate()


class TestLicenseRoom:
    def test_reads_count_hard_limit_and_consumption(self, aws: AwsClients, stub: dict[str, Stubber]) -> None:
        stub["license-manager"].add_response(
            "get_license_configuration",
            {
                "LicenseConfigurationArn": LICENSE_ARN,
                "LicenseCountingType": "Socket",
                "LicenseCount": 8,
                "LicenseCountHardLimit": True,
                "ConsumedLicenses": 6,
            },
            {"LicenseConfigurationArn": LICENSE_ARN},
        )
        room = Ec2Hosts(aws).license_room(LICENSE_ARN)
        assert room == LicenseRoom(counting="Socket", limit=8, consumed=6, hard_limit=True)
        assert room.remaining == 2

    def test_a_configuration_without_a_count_bounds_nothing(
        self, aws: AwsClients, stub: dict[str, Stubber]
    ) -> None:
        stub["license-manager"].add_response(
            "get_license_configuration",
            {"LicenseCountingType": "Core", "ConsumedLicenses": 64},
            {"LicenseConfigurationArn": LICENSE_ARN},
        )
        room = Ec2Hosts(aws).license_room(LICENSE_ARN)
        assert (room.limit, room.remaining) == (None, None)

    def test_a_refusal_is_translated_with_its_code(self, aws: AwsClients, stub: dict[str, Stubber]) -> None:
        stub["license-manager"].add_client_error(
            "get_license_configuration", service_error_code="AccessDeniedException", http_status_code=403
        )
        with pytest.raises(AwsCallError) as raised:
            Ec2Hosts(aws).license_room(LICENSE_ARN)
        assert (raised.value.code, raised.value.retryable) == ("AccessDeniedException", False)


class TestGroupMembership:
    def test_hosts_join_the_group_by_arn_and_only_members_are_tagged(
        self, aws: AwsClients, stub: dict[str, Stubber]
    ) -> None:
        stub["ec2"].add_response(
            "describe_hosts",
            {"Hosts": [{"HostId": h, "OwnerId": "123456789012"} for h in ("h-1", "h-2")]},
            {"HostIds": ["h-1", "h-2"]},
        )
        stub["resource-groups"].add_response(
            "group_resources",
            {
                "Succeeded": [HOST_ARN.format("h-1")],
                "Failed": [
                    {
                        "ResourceArn": HOST_ARN.format("h-2"),
                        "ErrorCode": "400",
                        "ErrorMessage": "wrong family",
                    }
                ],
            },
            {"Group": "macos-hosts", "ResourceArns": [HOST_ARN.format("h-1"), HOST_ARN.format("h-2")]},
        )
        stub["ec2"].add_response(
            "create_tags",
            {},
            {"Resources": ["h-1"], "Tags": [{"Key": TAG_HOST_GROUP, "Value": "macos-hosts"}]},
        )
        assert Ec2Hosts(aws).associate(MAC, ["h-1", "h-2"]) == ("h-1",)

    def test_an_auto_managed_pool_is_read_through_its_group(
        self, aws: AwsClients, stub: dict[str, Stubber]
    ) -> None:
        auto = MAC.model_copy(
            update={"hosts": MAC.hosts.model_copy(update={"host_management": "auto"})}  # type: ignore[union-attr]
        )
        stub["resource-groups"].add_response(
            "list_group_resources",
            {
                "Resources": [
                    {"Identifier": {"ResourceArn": HOST_ARN.format("h-1"), "ResourceType": "AWS::EC2::Host"}},
                    {"Identifier": {"ResourceArn": HOST_ARN.format("h-2"), "ResourceType": "AWS::EC2::Host"}},
                ]
            },
            {"Group": "macos-hosts"},
        )
        allocated = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
        stub["ec2"].add_response(
            "describe_hosts",
            {
                "Hosts": [
                    {
                        "HostId": "h-1",
                        "State": "pending",
                        "AllocationTime": allocated,
                        "AvailabilityZone": "us-east-1a",
                        "AvailableCapacity": {
                            "AvailableInstanceCapacity": [
                                {"InstanceType": "mac2.metal", "AvailableCapacity": 0, "TotalCapacity": 1}
                            ]
                        },
                    },
                    {"HostId": "h-2", "State": "released", "AllocationTime": allocated},
                ]
            },
            {"HostIds": ["h-1", "h-2"]},
        )
        view = Ec2Hosts(aws).read_pools([auto])["macos"]
        (host,) = view.hosts  # the released member is not read
        assert (host.host_id, host.state, host.scrubbing, host.in_group) == (
            "h-1",
            HostState.PENDING,
            True,
            True,
        )
        assert (host.allocated_at, host.free_slots) == (allocated, 0)


class TestDescribe:
    def test_instances_capacity_and_size_are_read_from_describe_hosts(
        self, aws: AwsClients, stub: dict[str, Stubber]
    ) -> None:
        stub["ec2"].add_response(
            "describe_hosts",
            {
                "Hosts": [
                    {
                        "HostId": "h-1",
                        "State": "available",
                        "AllocationTime": datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
                        "Instances": [{"InstanceId": "i-1", "InstanceType": "m6i.2xlarge"}],
                        "AvailableCapacity": {
                            "AvailableInstanceCapacity": [
                                {"InstanceType": "m6i.large", "AvailableCapacity": 24, "TotalCapacity": 32},
                                {"InstanceType": "m6i.2xlarge", "AvailableCapacity": 3, "TotalCapacity": 4},
                            ]
                        },
                        "HostProperties": {"Sockets": 2, "Cores": 64, "InstanceFamily": "m6i"},
                        "Tags": [
                            {"Key": "runner-scaler:pool", "Value": "windows"},
                            {"Key": TAG_HOST_GROUP, "Value": "windows-hosts"},
                            {"Key": "runner-scaler:idle-since", "Value": "not a time"},
                        ],
                    }
                ]
            },
            {
                "Filter": [
                    {"Name": "tag-key", "Values": ["runner-scaler:pool"]},
                    {
                        "Name": "state",
                        "Values": [
                            "available",
                            "pending",
                            "configuring",
                            "under-assessment",
                            "permanent-failure",
                        ],
                    },
                ]
            },
        )
        stub["sts"].add_response(
            "get_caller_identity", {"Account": "123456789012", "Arn": "arn:aws:iam::123456789012:role/x"}
        )
        group_arn = "arn:aws:resource-groups:us-east-1:123456789012:group/windows-hosts"
        stub["resource-groups"].add_response(
            "get_tags",
            {"Arn": group_arn, "Tags": {"runner-scaler:unmet-since": "2026-11-23T11:58:00Z"}},
            {"Arn": group_arn},
        )
        view = Ec2Hosts(aws).read_pools([WINDOWS])
        assert view["windows"].unmet_since == datetime(2026, 11, 23, 11, 58, tzinfo=UTC)
        (host,) = view["windows"].hosts
        assert (host.instance_ids, host.free_slots, host.sockets, host.cores) == (("i-1",), 3, 2, 64)
        assert host.in_group and host.idle_since is None  # a mangled tag reads as "no clock yet"


class TestReplaceRootVolume:
    def test_restores_the_launch_state_and_deletes_the_old_root(
        self, aws: AwsClients, stub: dict[str, Stubber]
    ) -> None:
        """GIVEN a used Mac instance, WHEN its root volume is replaced, THEN EC2 gets exactly InstanceId,
        DeleteReplacedRootVolume=True and the reuse's ClientToken: no SnapshotId nor ImageId, so the volume is
        restored to its launch state (EC2 API Reference, "CreateReplaceRootVolumeTask"; moto has no such
        call)."""
        stub["ec2"].add_response(
            "create_replace_root_volume_task",
            {
                "ReplaceRootVolumeTask": {
                    "ReplaceRootVolumeTaskId": "replacevol-0123456789abcdef0",
                    "InstanceId": "i-0123456789abcdef0",
                    "TaskState": "pending",
                    "DeleteReplacedRootVolume": True,
                }
            },
            {
                "InstanceId": "i-0123456789abcdef0",
                "DeleteReplacedRootVolume": True,
                "ClientToken": "reuse-i-0123456789abcdef0-1",
            },
        )
        task = Ec2Hosts(aws).replace_root_volume("i-0123456789abcdef0", "reuse-i-0123456789abcdef0-1")
        assert task == "replacevol-0123456789abcdef0"

    def test_a_refusal_surfaces_as_an_aws_call_error(self, aws: AwsClients, stub: dict[str, Stubber]) -> None:
        stub["ec2"].add_client_error(
            "create_replace_root_volume_task",
            service_error_code="IncorrectInstanceState",
            service_message="The instance is not running.",
            expected_params={
                "InstanceId": "i-0123456789abcdef0",
                "DeleteReplacedRootVolume": True,
                "ClientToken": "t",
            },
        )
        with pytest.raises(AwsCallError):
            Ec2Hosts(aws).replace_root_volume("i-0123456789abcdef0", "t")

    def test_task_states_are_read_by_id(self, aws: AwsClients, stub: dict[str, Stubber]) -> None:
        """DescribeReplaceRootVolumeTasks by task id; TaskState as the API Reference lists it
        ("ReplaceRootVolumeTask": pending, in-progress, failing, succeeded, failed, failed-detached)."""
        stub["ec2"].add_response(
            "describe_replace_root_volume_tasks",
            {
                "ReplaceRootVolumeTasks": [
                    {"ReplaceRootVolumeTaskId": "replacevol-1", "TaskState": "succeeded"},
                    {"ReplaceRootVolumeTaskId": "replacevol-2", "TaskState": "failed-detached"},
                ]
            },
            {"ReplaceRootVolumeTaskIds": ["replacevol-1", "replacevol-2", "replacevol-3"]},
        )
        states = Ec2Hosts(aws).replace_task_states(["replacevol-1", "replacevol-2", "replacevol-3"])
        assert states == {"replacevol-1": "succeeded", "replacevol-2": "failed-detached"}

    def test_task_states_on_a_later_page_are_read_too(
        self, aws: AwsClients, stub: dict[str, Stubber]
    ) -> None:
        """DescribeReplaceRootVolumeTasks is paginated (NextToken, EC2 API Reference): a task EC2 answers on
        the second page still gets its state, not "unlisted" (its Mac would wait out `boot_timeout`)."""
        ids = ["replacevol-1", "replacevol-2"]
        stub["ec2"].add_response(
            "describe_replace_root_volume_tasks",
            {
                "ReplaceRootVolumeTasks": [
                    {"ReplaceRootVolumeTaskId": "replacevol-1", "TaskState": "succeeded"}
                ],
                "NextToken": "page-2",
            },
            {"ReplaceRootVolumeTaskIds": ids},
        )
        stub["ec2"].add_response(
            "describe_replace_root_volume_tasks",
            {
                "ReplaceRootVolumeTasks": [
                    {"ReplaceRootVolumeTaskId": "replacevol-2", "TaskState": "in-progress"}
                ]
            },
            {"ReplaceRootVolumeTaskIds": ids, "NextToken": "page-2"},
        )
        states = Ec2Hosts(aws).replace_task_states(ids)
        assert states == {"replacevol-1": "succeeded", "replacevol-2": "in-progress"}
