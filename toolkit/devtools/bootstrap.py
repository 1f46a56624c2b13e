"""Create, on moto (in-process or server) or an empty test account, the resources the config names.

Shared by tests, `runner-scaler replay` and the demo, using the same definitions as infra/ (resources.py),
so the local stack and the deployed one never drift. Not imported by the Lambda path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from chalicelib.aws import AwsClients
from chalicelib.config import Config, Pool
from chalicelib.errors import AwsCallError
from chalicelib.resources import (
    TABLE_TTL_ATTRIBUTE,
    TAG_DEPLOYMENT,
    TAG_POOL,
    Names,
    queue_attributes,
    table_definition,
)

# A placeholder AMI id: moto accepts any id of this shape.
LOCAL_AMI = "ami-12c6146b"


@dataclass(frozen=True)
class LocalStack:
    names: Names
    table: str
    queue_url: str
    dead_letter_url: str
    subnet_id: str


def bootstrap(
    aws: AwsClients, config: Config, names: Names, webhook_tokens: list[str], *, queue_delay: int = 0
) -> LocalStack:
    """Table, queues, webhook-token secret, and one launch template + ASG per pool (min 0, desired 0).

    The dirty queue's production delivery delay is wall time in moto; local runs read messages at once
    unless `queue_delay` asks for the production behaviour.
    """
    ensure_table(aws, names.table)
    dlq = aws.call("sqs", "create_queue", QueueName=names.dead_letter_queue, Attributes={"FifoQueue": "true"})
    dlq_arn = aws.call("sqs", "get_queue_attributes", QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    attributes = queue_attributes(dlq_arn, queue_delay)
    queue = aws.call("sqs", "create_queue", QueueName=names.queue, Attributes=attributes)
    tokens_secret = config.gitlab.webhook_tokens_secret or names.webhook_tokens_secret
    _put_secret(aws, tokens_secret, json.dumps({"tokens": webhook_tokens}))
    subnet_id = _subnet(aws)
    for pool in config.pools:
        create_pool_group(aws, pool, names, subnet_id)
    return LocalStack(names, names.table, queue["QueueUrl"], dlq["QueueUrl"], subnet_id)


def create_pool_group(aws: AwsClients, pool: Pool, names: Names, subnet_id: str) -> None:
    """Launch template + ASG as infra/ makes them: protected from scale-in, starting empty."""
    template = f"{names.prefix}-{pool.name}"
    instance_type = pool.instance_types[0] if pool.instance_types else "t3.micro"
    aws.call(
        "ec2",
        "create_launch_template",
        LaunchTemplateName=template,
        LaunchTemplateData={
            "ImageId": LOCAL_AMI,
            "InstanceType": instance_type,
            "MetadataOptions": {"HttpTokens": "required"},
        },
    )
    spec = {"LaunchTemplateName": template, "Version": "$Latest"}
    # A Spot pool gets the mixed-instances policy infra/stacks/pools.py gives it (all Spot, types in order).
    launch: dict[str, object] = (
        {
            "MixedInstancesPolicy": {
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": spec,
                    "Overrides": [{"InstanceType": t} for t in pool.instance_types],
                },
                "InstancesDistribution": {
                    "OnDemandBaseCapacity": 0,
                    "OnDemandPercentageAboveBaseCapacity": 0,
                    "OnDemandAllocationStrategy": "prioritized",
                    "SpotAllocationStrategy": "price-capacity-optimized",
                },
            }
        }
        if pool.spot and not pool.hosts and pool.instance_types
        else {"LaunchTemplate": spec}
    )
    aws.call(
        "autoscaling",
        "create_auto_scaling_group",
        AutoScalingGroupName=pool.asg,
        **launch,
        MinSize=0,
        MaxSize=pool.max_instances,
        DesiredCapacity=0,
        VPCZoneIdentifier=subnet_id,
        NewInstancesProtectedFromScaleIn=True,
        Tags=[
            {"Key": TAG_POOL, "Value": pool.name, "PropagateAtLaunch": True},
            {"Key": TAG_DEPLOYMENT, "Value": names.prefix, "PropagateAtLaunch": True},
        ],
    )


def _subnet(aws: AwsClients) -> str:
    subnets = aws.call("ec2", "describe_subnets").get("Subnets", [])
    if subnets:
        return str(subnets[0]["SubnetId"])
    vpc = aws.call("ec2", "create_vpc", CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    return str(aws.call("ec2", "create_subnet", VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"])


def _put_secret(aws: AwsClients, name: str, value: str) -> None:
    aws.call("secretsmanager", "create_secret", Name=name, SecretString=value)


def ensure_table(aws: AwsClients, table: str) -> None:
    """Create the table (local bootstrap and tests; infra/ creates it in AWS) and turn TTL on."""
    try:
        aws.call("dynamodb", "create_table", **table_definition(table))
    except AwsCallError as exc:
        if exc.code != "ResourceInUseException":
            raise
        return
    aws.call(
        "dynamodb",
        "update_time_to_live",
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_TTL_ATTRIBUTE},
    )
