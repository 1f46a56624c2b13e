"""infra/ gives each pool whose warm_pool is not off an `AWS::AutoScaling::WarmPool` (CDK L1 CfnWarmPool) that
never reuses a machine on scale-in, and none to a Spot or dedicated-host pool (a Spot group has a mixed
instances policy, on which AWS allows no warm pool: "Warm pools for Amazon EC2 Auto Scaling", limitations;
PutWarmPool API reference). Synthesizes only the pools' construct, from a config of its own (the example's
pools are all Spot or on hosts), with cdk.json's context.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "18,20,22,24")

import aws_cdk as cdk
from aws_cdk.assertions import Template

from infra.policy import Scope
from infra.settings import load_settings
from infra.stacks.pools import Pools

ROOT = Path(__file__).resolve().parents[2]
CONTEXT: dict[str, Any] = dict(
    json.loads((ROOT / "infra" / "cdk.json").read_text(encoding="utf-8"))["context"]
)

CONFIG = """
[gitlab]
url = "https://gitlab.example.com"

[[pools]]
name = "auto"
asg = "warm-auto"
tags = ["auto"]
max_instances = 8
instance_types = ["m7i.large"]

[[pools]]
name = "fixed"
asg = "warm-fixed"
tags = ["fixed"]
max_instances = 4
instance_types = ["m7i.large"]
warm_pool = 3
warm_pool_state = "hibernated"

[[pools]]
name = "off"
asg = "warm-off"
tags = ["off"]
max_instances = 4
instance_types = ["m7i.large"]
warm_pool = "off"

[[pools]]
name = "spot"
asg = "warm-spot"
tags = ["spot"]
max_instances = 4
instance_types = ["m7i.large", "m6i.large"]
spot = true
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    config = tmp_path_factory.mktemp("warm") / "scaler.toml"
    config.write_text(CONFIG, encoding="utf-8")
    settings = load_settings({**CONTEXT, "config": str(config)})
    app = cdk.App()
    stack = cdk.Stack(app, "Warm", env=cdk.Environment(account=settings.account, region=settings.region))
    scope = Scope(
        names=settings.names, config=settings.config, region=settings.region, account=settings.account
    )
    Pools(stack, "Pools", settings, scope)
    return Template.from_stack(stack)


@pytest.fixture(scope="module")
def warm_pools(template: Template) -> dict[str, dict[str, Any]]:
    found = template.find_resources("AWS::AutoScaling::WarmPool")
    return {r["Properties"]["AutoScalingGroupName"]: dict(r) for r in found.values()}


def test_only_on_demand_pools_with_a_warm_pool_get_one(warm_pools: dict[str, dict[str, Any]]) -> None:
    assert set(warm_pools) == {"warm-auto", "warm-fixed"}


def test_auto_starts_empty_and_fixed_at_its_size_never_reusing_machines(
    warm_pools: dict[str, dict[str, Any]],
) -> None:
    auto, fixed = warm_pools["warm-auto"], warm_pools["warm-fixed"]
    assert auto["Properties"] == {
        "AutoScalingGroupName": "warm-auto",
        "MinSize": 0,
        "MaxGroupPreparedCapacity": 0,
        "PoolState": "Stopped",
        "InstanceReusePolicy": {"ReuseOnScaleIn": False},
    }
    assert fixed["Properties"]["MinSize"] == fixed["Properties"]["MaxGroupPreparedCapacity"] == 3
    assert fixed["Properties"]["PoolState"] == "Hibernated"
    assert fixed["Properties"]["InstanceReusePolicy"] == {"ReuseOnScaleIn": False}
    # The group exists before its warm pool (CloudFormation creates the dependency first).
    assert any("Group" in d for d in auto["DependsOn"])


def test_only_a_hibernated_warm_pool_launches_with_hibernation_configured(template: Template) -> None:
    """EC2 hibernates only an instance launched with hibernation configured ("Hibernate your Amazon EC2
    instance", prerequisites)."""
    found = template.find_resources("AWS::EC2::LaunchTemplate")
    hibernation = {}
    for resource in found.values():
        props = resource["Properties"]
        pool_name = str(props["LaunchTemplateName"]).rsplit("-", 1)[-1]
        hibernation[pool_name] = props["LaunchTemplateData"].get("HibernationOptions")
    assert hibernation == {"auto": None, "fixed": {"Configured": True}, "off": None, "spot": None}
