"""infra/ synthesizes offline into the stack issue #9 asks for, lints clean, grants exactly what code calls.

One synth per module (a few seconds once jsii is up): the real app.py, packaged without wheels
(`--no-dependencies`, the template is under test here, not the vendored dependencies), with cdk.json's
context and the same `build()` that `python app.py` runs. Every test reads that one template.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "18,20,22,24")

from aws_cdk.assertions import Match, Template

from chalicelib.config import load_config_file
from chalicelib.resources import (
    TABLE_TTL_ATTRIBUTE,
    TAG_DEPLOYMENT,
    TAG_INSTANCE_ARN,
    TICK_STEPS,
    Names,
    table_definition,
)
from infra.app import build
from infra.metrics import (
    GLOBAL_METRICS,
    JOB_METRICS,
    LATENCY_METRICS,
    MACHINE_METRICS,
    SCALING_METRICS,
    TIMING_METRICS,
)
from infra.package import package
from infra.policy import iam_action
from infra.userdata import render
from tests.functional.test_infra_policy import code_calls, needs_grant

ROOT = Path(__file__).resolve().parents[2]
CDK_JSON = json.loads((ROOT / "infra" / "cdk.json").read_text(encoding="utf-8"))
CONTEXT: dict[str, Any] = dict(CDK_JSON["context"])
EXAMPLE = load_config_file(ROOT / "examples" / "config.toml")
PREFIX = "runner-scaler-dev"  # the dev stage of .chalice/config.json, cdk.json's default stage
NAMES = Names(PREFIX)


@dataclass(frozen=True)
class Synth:
    template: Template
    raw: dict[str, Any]
    path: Path

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.raw["Resources"].items() if v["Type"] == kind}

    def one(self, kind: str, **match: Any) -> tuple[str, dict[str, Any]]:
        found = [
            (k, v)
            for k, v in self.resources(kind).items()
            if all(v["Properties"].get(p) == value for p, value in match.items())
        ]
        assert len(found) == 1, f"{len(found)} {kind} match {match}"
        return found[0]


def _synth(workdir: Path) -> Synth:
    """Package (no wheels), then synthesize with cdk.json's context; chalice.out lands in `workdir`."""
    packaged = package(
        workdir / "package",
        stage=CONTEXT["stage"],
        prefix=PREFIX,
        region=CONTEXT["region"],
        with_dependencies=False,
    )
    context = {**CONTEXT, "config": str(ROOT / "examples" / "config.toml"), "chalice_package": str(packaged)}
    with contextlib.chdir(workdir):  # chalice.cdk writes chalice.out/ into the working directory
        app, stack = build(context, outdir=str(workdir / "cdk.out"), validate=False)
        assembly = app.synth()
    artifact = assembly.get_stack_artifact(stack.artifact_id)
    path = Path(assembly.directory) / artifact.template_file
    return Synth(Template.from_stack(stack), json.loads(path.read_text(encoding="utf-8")), path)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The real app.py in the stack, synthesized once for the module."""
    return _synth(tmp_path_factory.mktemp("synth"))


def statements(raw: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement in the template: role and policy documents, resource policies, JSON strings too."""
    for logical, resource in raw["Resources"].items():
        props = resource.get("Properties", {})
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        for key in ("PolicyDocument", "AssumeRolePolicyDocument", "KeyPolicy"):
            if key in props:
                documents.append(props[key])
        for document in documents:
            if isinstance(document, str):
                document = json.loads(document)
            for statement in document.get("Statement", []):
                yield logical, statement


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def lambda_role_statements(synth: Synth) -> list[dict[str, Any]]:
    roles = [
        (k, v)
        for k, v in synth.resources("AWS::IAM::Role").items()
        if "lambda.amazonaws.com" in json.dumps(v["Properties"]["AssumeRolePolicyDocument"])
        and v["Properties"].get("Policies")
        and k.startswith("AppRole")
    ]
    assert len(roles) == 1
    return [s for p in roles[0][1]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


# -- state -----------------------------------------------------------------------------------------


def test_table_mirrors_table_definition_with_ttl_and_pitr(real: Synth) -> None:
    definition = table_definition(NAMES.table)
    real.template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": Match.object_like(
                {
                    **{k: v for k, v in definition.items()},
                    "TimeToLiveSpecification": {"AttributeName": TABLE_TTL_ATTRIBUTE, "Enabled": True},
                    "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                }
            ),
            "DeletionPolicy": "Retain",
        },
    )


def test_dirty_queue_is_fifo_and_redrives_to_its_dlq(real: Synth) -> None:
    dlq, _ = real.one("AWS::SQS::Queue", QueueName=NAMES.dead_letter_queue)
    _, queue = real.one("AWS::SQS::Queue", QueueName=NAMES.queue)
    assert queue["Properties"]["FifoQueue"] is True
    assert queue["Properties"]["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]},
        "maxReceiveCount": 5,
    }
    assert real.resources("AWS::SQS::Queue")[dlq]["Properties"]["FifoQueue"] is True


def test_secrets_exist_under_the_names_the_runtime_reads(real: Synth) -> None:
    names = {s["Properties"]["Name"] for s in real.resources("AWS::SecretsManager::Secret").values()}
    assert names == {
        EXAMPLE.gitlab.api_token_secret,
        EXAMPLE.gitlab.webhook_tokens_secret,
        NAMES.base_certs_secret,
    }


def test_cache_bucket_is_private_encrypted_expiring_and_tls_only(real: Synth) -> None:
    logical, bucket = real.one("AWS::S3::Bucket", BucketName="runner-scaler-cache")
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert props["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == CONTEXT["cache_expiration_days"]
    deny = [
        s
        for _, s in statements(real.raw)
        if s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert any(logical in json.dumps(s["Resource"]) for s in deny)


def test_config_parameter_holds_the_config_file(real: Synth) -> None:
    _, parameter = real.one("AWS::SSM::Parameter", Name=NAMES.config_parameter)
    assert parameter["Properties"]["Value"] == (ROOT / "examples" / "config.toml").read_text(encoding="utf-8")


# -- pools -----------------------------------------------------------------------------------------


def test_example_config_makes_three_groups_and_two_host_resource_groups(real: Synth) -> None:
    real.template.resource_count_is("AWS::AutoScaling::AutoScalingGroup", 3)
    real.template.resource_count_is("AWS::ResourceGroups::Group", 2)
    groups = {g["Properties"]["Name"] for g in real.resources("AWS::ResourceGroups::Group").values()}
    assert groups == {"runner-scaler-windows-hosts", "runner-scaler-macos-hosts"}


@pytest.mark.parametrize("pool", [p.name for p in EXAMPLE.pools])
def test_group_starts_empty_protected_and_hooked(real: Synth, pool: str) -> None:
    _, group = real.one("AWS::AutoScaling::AutoScalingGroup", AutoScalingGroupName=EXAMPLE.pool(pool).asg)
    props = group["Properties"]
    assert props["MinSize"] == "0"
    assert "DesiredCapacity" not in props  # starts at MinSize; never reset by a stack update
    assert props["NewInstancesProtectedFromScaleIn"] is True
    hooks = {h["LifecycleTransition"]: h for h in props["LifecycleHookSpecificationList"]}
    assert set(hooks) == {"autoscaling:EC2_INSTANCE_LAUNCHING", "autoscaling:EC2_INSTANCE_TERMINATING"}
    assert all(h["HeartbeatTimeout"] > 0 for h in hooks.values())
    tags = {t["Key"]: t["Value"] for t in props["Tags"]}
    assert tags[TAG_DEPLOYMENT] == PREFIX


@pytest.mark.parametrize("pool", [p.name for p in EXAMPLE.pools])
def test_az_rebalance_is_suspended_on_every_group(real: Synth, pool: str) -> None:
    asg = EXAMPLE.pool(pool).asg
    calls = [json.dumps(r["Properties"]) for r in real.resources("Custom::AWS").values()]
    suspending = [
        c for c in calls if "suspendProcesses" in c and f'\\"AutoScalingGroupName\\":\\"{asg}\\"' in c
    ]
    assert suspending and all("AZRebalance" in c for c in suspending)


def test_spot_pool_mixes_instances_and_host_pools_do_not(real: Synth) -> None:
    _, linux = real.one("AWS::AutoScaling::AutoScalingGroup", AutoScalingGroupName="runner-scaler-linux")
    policy = linux["Properties"]["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["m7i.large", "m7i.xlarge"]
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert "OnDemandAllocationStrategy" in policy["InstancesDistribution"]
    for asg in ("runner-scaler-windows", "runner-scaler-macos"):
        _, group = real.one("AWS::AutoScaling::AutoScalingGroup", AutoScalingGroupName=asg)
        assert "MixedInstancesPolicy" not in group["Properties"]
        assert "LaunchTemplate" in group["Properties"]


@pytest.mark.parametrize("pool", [p.name for p in EXAMPLE.pools])
def test_launch_template_requires_imdsv2_encrypts_and_runs_the_rendered_user_data(
    real: Synth, pool: str
) -> None:
    _, template = real.one("AWS::EC2::LaunchTemplate", LaunchTemplateName=f"{PREFIX}-{pool}")
    data = template["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    # one hop: a container, one more hop away, gets no metadata token; no IPv6 endpoint (docs/security.md)
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert data["MetadataOptions"].get("HttpProtocolIpv6", "disabled") == "disabled"
    assert all(m["Ebs"]["Encrypted"] is True for m in data["BlockDeviceMappings"])
    assert data["UserData"] == {"Fn::Base64": render(EXAMPLE.pool(pool), PREFIX)}
    ami = CONTEXT["amis"][EXAMPLE.pool(pool).platform.value]
    assert data["ImageId"] == (ami["id"] if isinstance(ami, dict) else ami)


@pytest.mark.parametrize("pool", ["windows", "macos"])
def test_host_pools_launch_into_their_host_resource_group_with_a_licence(real: Synth, pool: str) -> None:
    hosts = EXAMPLE.pool(pool).hosts
    assert hosts is not None
    group_logical, group = real.one("AWS::ResourceGroups::Group", Name=hosts.host_resource_group)
    configuration = {c["Type"]: c["Parameters"] for c in group["Properties"]["Configuration"]}
    management = {p["Name"]: p["Values"] for p in configuration["AWS::EC2::HostManagement"]}
    assert management["allowed-host-families"] == [hosts.host_family]
    assert management["auto-allocate-host"] == ["false"]  # host_management = "scaler"
    assert {"Name": "allowed-resource-types", "Values": ["AWS::EC2::Host"]} in configuration[
        "AWS::ResourceGroups::Generic"
    ]
    _, asg = real.one("AWS::AutoScaling::AutoScalingGroup", AutoScalingGroupName=EXAMPLE.pool(pool).asg)
    in_zones = [s["id"] for s in CONTEXT["subnets"] if s["az"] in hosts.availability_zones]
    assert asg["Properties"]["VPCZoneIdentifier"] == in_zones  # hosts are allocated in those zones only
    _, template = real.one("AWS::EC2::LaunchTemplate", LaunchTemplateName=f"{PREFIX}-{pool}")
    data = template["Properties"]["LaunchTemplateData"]
    assert data["Placement"] == {
        "Tenancy": "host",
        "HostResourceGroupArn": {"Fn::GetAtt": [group_logical, "Arn"]},
    }
    licence = data["LicenseSpecifications"][0]["LicenseConfigurationArn"]
    assert licence == management["allowed-host-based-license-configurations"][0]
    assert "createLicenseConfiguration" in json.dumps(real.raw["Resources"][licence["Ref"]])


def machine_role_statements(synth: Synth, pool: str) -> list[dict[str, Any]]:
    """The statements of the role a pool's launch template gives its machines (through its profile)."""
    _, template = synth.one("AWS::EC2::LaunchTemplate", LaunchTemplateName=f"{PREFIX}-{pool}")
    profile = template["Properties"]["LaunchTemplateData"]["IamInstanceProfile"]["Arn"]["Fn::GetAtt"][0]
    role = synth.raw["Resources"][profile]["Properties"]["Roles"][0]["Ref"]
    policies = synth.raw["Resources"][role]["Properties"]["Policies"]
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


def arn_text(value: Any) -> str:
    """An ARN as text, the stack's partition read as `aws` (CDK writes `Fn::Join` with `AWS::Partition`)."""
    if isinstance(value, dict) and "Fn::Join" in value:
        parts = value["Fn::Join"][1]
        return "".join("aws" if p == {"Ref": "AWS::Partition"} else str(p) for p in parts)
    return str(value)


#: Everything a machine's role may do: read and then delete its own secret, use its pool's cache prefix.
MACHINE_ACTIONS = {
    "secretsmanager:GetSecretValue",
    "secretsmanager:DeleteSecret",
    "s3:ListBucket",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
}


@pytest.mark.parametrize("pool", [p.name for p in EXAMPLE.pools])
def test_machine_reads_then_deletes_only_its_own_secret(real: Synth, pool: str) -> None:
    grants = machine_role_statements(real, pool)
    secret = [s for s in grants if any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))]
    assert len(secret) == 1
    # THEN only the secret tagged with the caller's own instance ARN (IAM condition keys for EC2 instance
    # role credentials: ec2:SourceInstanceARN), and only to read it and delete it: the user data deletes it
    # right after its one read, so from then on nothing, this instance included, can read it
    assert sorted(as_list(secret[0]["Action"])) == [
        "secretsmanager:DeleteSecret",
        "secretsmanager:GetSecretValue",
    ]
    assert secret[0]["Condition"] == {
        "StringEquals": {f"secretsmanager:ResourceTag/{TAG_INSTANCE_ARN}": "${ec2:SourceInstanceARN}"}
    }
    assert f":secret:{PREFIX}/machines/*" in json.dumps(secret[0]["Resource"])


@pytest.mark.parametrize("pool", [p.name for p in EXAMPLE.pools])
def test_machine_role_reaches_no_other_instance_and_no_other_pools_cache(real: Synth, pool: str) -> None:
    grants = machine_role_statements(real, pool)
    actions = {a for s in grants for a in as_list(s["Action"])}
    # THEN no Auto Scaling or EC2 right at all: a job that got the role could not end any machine
    assert actions <= MACHINE_ACTIONS
    assert all(s["Effect"] == "Allow" and "NotAction" not in s and "NotResource" not in s for s in grants)
    # AND S3 only under this pool's prefix of its cache bucket
    bucket = EXAMPLE.pool(pool).cache_bucket
    s3 = [s for s in grants if as_list(s["Action"])[0].startswith("s3:")]
    if not bucket:
        assert s3 == []
        return
    objects = next(s for s in s3 if "s3:GetObject" in as_list(s["Action"]))
    assert [arn_text(r) for r in as_list(objects["Resource"])] == [f"arn:aws:s3:::{bucket}/{pool}/*"]
    listing = next(s for s in s3 if as_list(s["Action"]) == ["s3:ListBucket"])
    assert arn_text(listing["Resource"]) == f"arn:aws:s3:::{bucket}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{pool}/*"]}}
    # AND the runner writes there: its --cache-path is the same prefix
    assert f'--cache-path "{pool}"' in render(EXAMPLE.pool(pool), PREFIX)


@pytest.mark.parametrize("pool", [p.name for p in EXAMPLE.pools])
def test_a_machine_that_shuts_itself_down_is_terminated(real: Synth, pool: str) -> None:
    # The machine leaves by `shutdown` once its runner exits; the scaler decrements its group.
    _, template = real.one("AWS::EC2::LaunchTemplate", LaunchTemplateName=f"{PREFIX}-{pool}")
    assert template["Properties"]["LaunchTemplateData"]["InstanceInitiatedShutdownBehavior"] == "terminate"


# -- the app and its wiring ------------------------------------------------------------------------


def test_every_function_runs_with_the_stack_role_and_resource_names(real: Synth) -> None:
    functions = real.resources("AWS::Serverless::Function")
    assert functions
    role = next(k for k in real.resources("AWS::IAM::Role") if k.startswith("AppRole"))
    for logical, function in functions.items():
        props = function["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [role, "Arn"]}, logical
        env = props["Environment"]["Variables"]
        assert env["RUNNER_SCALER_PREFIX"] == PREFIX
        assert env["RUNNER_SCALER_CONFIG_PARAM"] == NAMES.config_parameter
        assert env["RUNNER_SCALER_TABLE"]["Ref"].startswith("StateTable")
        assert env["RUNNER_SCALER_QUEUE_URL"]["Fn::GetAtt"][1] == "QueueUrl"
        assert "Ref" in props["LoggingConfig"]["LogGroup"]


def test_every_function_is_actively_traced_and_may_send_its_segments(real: Synth) -> None:
    functions = real.resources("AWS::Serverless::Function")
    assert {f["Properties"]["Tracing"] for f in functions.values()} == {"Active"}
    granted = {
        a for s in lambda_role_statements(real) if s["Effect"] == "Allow" for a in as_list(s["Action"])
    }
    assert {"xray:PutTraceSegments", "xray:PutTelemetryRecords"} <= granted


#: Each function's memory as the CPU-share benchmark chose it (sim/bench_cpu_share.py: Lambda's CPU is
#: memory/1769 of a vCPU, Lambda developer guide "Configure Lambda function memory").
CHOSEN_MEMORY_MB = {
    name: chosen["memory_mb"]
    for name, chosen in json.loads((ROOT / "bench" / "cpu_share.json").read_text(encoding="utf-8"))[
        "chosen_memory_mb"
    ].items()
}
#: SAM handler -> Chalice function name: the API handler is Chalice's `api_handler` (app.app).
HANDLER_NAMES = {"app.app": "api_handler"}


def test_chalice_config_gives_every_function_its_measured_memory_in_every_stage() -> None:
    # GIVEN the `chalice deploy` path's config (per-function `lambda_memory_size`, Chalice config docs)
    config = json.loads((ROOT / ".chalice" / "config.json").read_text(encoding="utf-8"))
    for stage, settings in config["stages"].items():
        functions = settings["lambda_functions"]
        # THEN every function has the memory the benchmark chose, none left at Lambda's 128 MB by default
        got = {name: functions.get(name, {}).get("lambda_memory_size") for name in CHOSEN_MEMORY_MB}
        assert got == CHOSEN_MEMORY_MB, stage


def test_every_function_in_the_stack_gets_its_measured_memory(real: Synth) -> None:
    # GIVEN the CDK path, packaged from the same .chalice config
    functions = real.resources("AWS::Serverless::Function")
    got = {
        HANDLER_NAMES.get(f["Properties"]["Handler"], f["Properties"]["Handler"].removeprefix("app.")): f[
            "Properties"
        ].get("MemorySize")
        for f in functions.values()
    }
    # THEN every function the stack deploys has the memory the benchmark chose for it
    assert got == CHOSEN_MEMORY_MB


def test_dirty_queue_source_is_bound_to_the_stack_queue(real: Synth) -> None:
    queue, _ = real.one("AWS::SQS::Queue", QueueName=NAMES.queue)
    props = real.raw["Resources"]["PoolDirty"]["Properties"]
    (event,) = props["Events"].values()
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # One message per invocation: a failed reconcile fails its invocation (and only its own message), so
    # SQS retries it and dead-letters it after maxReceiveCount (tests/functional/test_dirty_retry.py).
    assert event["Properties"]["BatchSize"] == 1


def one_handler(found: list[str], what: str) -> str:
    assert len(found) == 1, f"{what}: {found}"
    return found[0]


def test_lifecycle_and_spot_events_reach_the_cw_event_handler_scoped_to_our_groups(real: Synth) -> None:
    lifecycle_types = ["EC2 Instance-launch Lifecycle Action", "EC2 Instance-terminate Lifecycle Action"]
    functions = real.resources("AWS::Serverless::Function")
    rules = {  # rules whose target is one of the app's functions, by the detail-types they match
        tuple(r["Properties"]["EventPattern"]["detail-type"]): r["Properties"]
        for r in real.resources("AWS::Events::Rule").values()
        if r["Properties"]["Targets"][0]["Arn"].get("Fn::GetAtt", [""])[0] in functions
    }
    lifecycle_targets = [
        r["Targets"][0]["Arn"]["Fn::GetAtt"][0] for k, r in rules.items() if list(k) == lifecycle_types
    ]
    handler = one_handler(lifecycle_targets, "on_cw_event handler for lifecycle actions")
    target_arn = {"Fn::GetAtt": [handler, "Arn"]}
    lifecycle = rules[tuple(lifecycle_types)]
    assert lifecycle["Targets"][0]["Arn"] == target_arn
    assert lifecycle["EventPattern"]["detail"]["AutoScalingGroupName"] == [p.asg for p in EXAMPLE.pools]
    spot = rules[("EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation")]
    assert spot["Targets"][0]["Arn"] == target_arn
    permitted = [
        p["Properties"]
        for p in real.resources("AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "events.amazonaws.com"
    ]
    routed = [r for r in rules.values() if r["Targets"][0]["Arn"] == target_arn]
    assert len([p for p in permitted if p["FunctionName"] == target_arn]) == len(routed)
    # The app's own unscoped rule is replaced by these.
    events = real.raw["Resources"][handler]["Properties"].get("Events", {})
    assert not [e for e in events.values() if e["Type"] == "CloudWatchEvent"]


def test_alarm_topic_feeds_the_sns_handler(real: Synth) -> None:
    topic, _ = real.one("AWS::SNS::Topic", TopicName=f"{PREFIX}-alarms")
    sources = {
        logical: event
        for logical, f in real.resources("AWS::Serverless::Function").items()
        for event in (f["Properties"].get("Events") or {}).values()
        if event["Type"] == "SNS"
    }
    handler = one_handler(list(sources), "on_sns_message handler")
    assert sources[handler] == {"Type": "SNS", "Properties": {"Topic": {"Ref": topic}}}


def test_rotation_schedule_points_at_the_rotation_function(real: Synth) -> None:
    handler = one_handler(
        [k for k in real.resources("AWS::Serverless::Function") if k == "RotateBaseCerts"],
        "@app.lambda_function(name='rotate_base_certs')",
    )
    secret, _ = real.one("AWS::SecretsManager::Secret", Name=NAMES.base_certs_secret)
    _, schedule = real.one("AWS::SecretsManager::RotationSchedule")
    assert schedule["Properties"]["SecretId"] == {"Ref": secret}
    assert schedule["Properties"]["RotationLambdaARN"] == {"Fn::GetAtt": [handler, "Arn"]}
    real.template.has_resource_properties(
        "AWS::Lambda::Permission",
        {
            "Principal": "secretsmanager.amazonaws.com",
            "FunctionName": {"Fn::GetAtt": [handler, "Arn"]},
            "SourceArn": {"Ref": secret},
        },
    )


# -- monitoring ------------------------------------------------------------------------------------


def test_alarms_carry_runbooks_and_publish_to_the_app_topic(real: Synth) -> None:
    topic, _ = real.one("AWS::SNS::Topic", TopicName=f"{PREFIX}-alarms")
    alarms = real.resources("AWS::CloudWatch::Alarm")
    metrics = {(a["Properties"]["Namespace"], a["Properties"]["MetricName"]) for a in alarms.values()}
    assert {
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/Events", "TriggeredRules"),
        ("RunnerScaler", "ReconcileErrors"),
        ("RunnerScaler", "LongPendingJobs"),
    } <= metrics
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["AlarmDescription"].startswith("RUNBOOK: ") and len(props["AlarmDescription"]) > 80
        assert props["AlarmActions"] == [{"Ref": topic}]


def test_every_tick_step_and_the_failed_events_queue_have_an_alarm(real: Synth) -> None:
    """A repair step that keeps failing, or an asynchronous event Lambda gave up on, reaches a human."""
    alarms = {
        a["Properties"]["AlarmName"]: a["Properties"]
        for a in real.resources("AWS::CloudWatch::Alarm").values()
    }
    steps = {
        next(d["Value"] for d in props["Dimensions"] if d["Name"] == "step"): props
        for props in alarms.values()
        if props["MetricName"] == "TickStepFailed"
    }
    assert set(steps) == set(TICK_STEPS)
    # under the dimensions EMF gives TickStepFailed: its `step`, plus Powertools' `service`
    env = real.raw["Resources"]["Tick"]["Properties"]["Environment"]["Variables"]
    service = env["POWERTOOLS_SERVICE_NAME"]
    for step, props in steps.items():
        assert props["Namespace"] == "RunnerScaler"
        assert props["Dimensions"] == [{"Name": "step", "Value": step}, {"Name": "service", "Value": service}]
    # a step that runs every minute alarms on half its runs in an hour, one run every 15 minutes on two
    assert steps["heal"]["Threshold"] == 30 and steps["certs"]["Threshold"] == 2
    failed = alarms[f"{PREFIX}-failed-events-depth"]
    assert failed["Dimensions"] == [{"Name": "QueueName", "Value": f"{PREFIX}-failed-events"}]


def test_a_rejected_config_version_has_an_alarm_on_the_metric_the_app_emits(real: Synth) -> None:
    """ConfigRejected (chalicelib/parameters.py) is emitted with no dimension of its own: the alarm watches it
    under the only dimension EMF adds, Powertools' `service`, as the per-pool alarms do."""
    env = real.raw["Resources"]["Tick"]["Properties"]["Environment"]["Variables"]
    real.template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "AlarmName": f"{PREFIX}-config-rejected",
            "Namespace": "RunnerScaler",
            "MetricName": "ConfigRejected",
            "Dimensions": [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}],
            "Threshold": 1,
        },
    )


def test_the_tick_and_machine_event_functions_have_error_alarms(real: Synth) -> None:
    alarms = real.resources("AWS::CloudWatch::Alarm").values()
    lambda_alarms = {
        a["Properties"]["AlarmName"]: a["Properties"]
        for a in alarms
        if a["Properties"]["Namespace"] == "AWS/Lambda"
    }
    assert {f"{PREFIX}-tick-errors", f"{PREFIX}-machine-event-errors"} <= set(lambda_alarms)
    machine = lambda_alarms[f"{PREFIX}-machine-event-errors"]
    assert machine["MetricName"] == "Errors" and "machine launch deferred" in machine["AlarmDescription"]


@pytest.mark.parametrize("metric", ["ReconcileErrors", "LongPendingJobs"])
def test_per_pool_alarms_use_the_dimensions_the_app_emits(real: Synth, metric: str) -> None:
    env = real.raw["Resources"]["Tick"]["Properties"]["Environment"]["Variables"]
    for pool in EXAMPLE.pools:
        real.template.has_resource_properties(
            "AWS::CloudWatch::Alarm",
            {
                "MetricName": metric,
                "Dimensions": Match.array_equals(
                    [
                        {"Name": "pool", "Value": pool.name},
                        {"Name": "platform", "Value": pool.platform.value},
                        {"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]},
                    ]
                ),
            },
        )


def test_dashboard_shows_the_emf_metrics_per_pool(real: Synth) -> None:
    _, dashboard = real.one("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in (*MACHINE_METRICS, *JOB_METRICS, *SCALING_METRICS, *TIMING_METRICS, *GLOBAL_METRICS):
        assert f'\\"{metric}\\"' in body
    for pool in EXAMPLE.pools:
        assert f'\\"pool\\",\\"{pool.name}\\"' in body


def test_dashboard_opens_with_job_wait_and_scale_up_percentiles_per_pool(real: Synth) -> None:
    _, dashboard = real.one("AWS::CloudWatch::Dashboard")
    body = json.loads("".join(str(part) for part in dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]))
    graphs = [w for w in body["widgets"] if w["type"] == "metric"]
    assert [g["properties"]["title"] for g in graphs[:2]] == [
        "Job wait for a runner (s)",
        "Scale-up: pending job to new machine in service (s)",
    ]
    for metric, graph in zip(LATENCY_METRICS, graphs, strict=False):
        lines = {(m[1], m[3], m[5], m[-1]["stat"]) for m in graph["properties"]["metrics"]}
        assert lines == {
            (metric, pool.name, pool.platform.value, stat)
            for pool in EXAMPLE.pools
            for stat in ("p50", "p95")
        }


def test_launch_failures_are_captured_for_the_alarm(real: Synth) -> None:
    rule, props = real.one(
        "AWS::Events::Rule", Description=f"{PREFIX}: Auto Scaling could not launch a machine"
    )
    assert props["Properties"]["EventPattern"]["detail-type"] == ["EC2 Instance Launch Unsuccessful"]
    real.template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {"MetricName": "TriggeredRules", "Dimensions": [{"Name": "RuleName", "Value": {"Ref": rule}}]},
    )


# -- IAM -------------------------------------------------------------------------------------------


def test_no_allow_statement_has_a_wildcard_action(real: Synth) -> None:
    for logical, statement in statements(real.raw):
        if statement["Effect"] != "Allow":
            continue  # Deny guardrails (TLS-only bucket and topic) are meant to be broad
        for action in as_list(statement.get("Action", [])):
            assert "*" not in action, f"{logical}: {action}"


def test_wildcard_resources_are_only_where_aws_forces_them(real: Synth) -> None:
    allowed = {
        "DescribeFleet": "Describe calls have no resource-level permission",
        "Tracing": "X-Ray's PutTraceSegments / PutTelemetryRecords have none either",
        # macOS root-volume reuse polls its tasks: an EC2 Describe call, with no resource type either
        "ReadMacRootVolumeTasks": "DescribeReplaceRootVolumeTasks is a Describe call",
    }
    for logical, statement in statements(real.raw):
        if statement["Effect"] == "Allow" and "*" in as_list(statement.get("Resource", [])):
            actions = as_list(statement["Action"])
            assert statement.get("Sid") in allowed or actions == [
                "license-manager:CreateLicenseConfiguration"
            ], f"{logical}: {actions} on *"


def test_lambda_policy_allows_every_call_chalicelib_makes(real: Synth) -> None:
    granted = {
        a for s in lambda_role_statements(real) if s["Effect"] == "Allow" for a in as_list(s["Action"])
    }
    missing = sorted(
        f"{iam_action(*call)} ({where})"
        for call, where in code_calls().items()
        if needs_grant(call) and iam_action(*call) not in granted
    )
    assert not missing, "add these to infra/policy.py lambda_grants: " + ", ".join(missing)


def test_group_actions_need_the_deployment_tag(real: Synth) -> None:
    writes = [
        s for s in lambda_role_statements(real) if "autoscaling:SetDesiredCapacity" in as_list(s["Action"])
    ]
    assert writes and all(
        s["Condition"] == {"StringEquals": {f"autoscaling:ResourceTag/{TAG_DEPLOYMENT}": PREFIX}}
        for s in writes
    )


# -- lint ------------------------------------------------------------------------------------------


#: The Lambda function CDK's `AwsCustomResource` shares across the stack (a fixed id in every CDK app).
CDK_CUSTOM_RESOURCE_FUNCTION = "AWS679f53fac002430cb0da5b7982bd2287"


def tolerated(rule: str, path: list[Any]) -> bool:
    """Findings on CDK's own resources, not ours, that we accept: W3005 (DependsOn already implied by a
    GetAtt) on the custom-resource function, because `lambda.Function` always adds a DependsOn on its role,
    next to `Role: !GetAtt ServiceRole.Arn`. Harmless, and not ours to change."""
    return rule == "W3005" and len(path) > 1 and str(path[1]).startswith(CDK_CUSTOM_RESOURCE_FUNCTION)


def test_cfn_lint_finds_no_error_and_no_warning(real: Synth) -> None:
    from cfnlint.api import ManualArgs, lint

    # GIVEN the template; WHEN the pinned cfn-lint checks it with its default rules (errors and warnings)
    matches = lint(real.path.read_text(encoding="utf-8"), config=ManualArgs(regions=[CONTEXT["region"]]))
    # THEN it finds nothing, except what `tolerated` names and explains
    found = [f"{m.rule.id} {m.path}: {m.message}" for m in matches if not tolerated(m.rule.id, m.path)]
    assert found == [], "\n".join(found)


def test_asynchronous_invocations_have_an_on_failure_destination(real: Synth) -> None:
    """Lambda retries an asynchronous invocation twice, then drops it unless it has an on-failure destination
    (AWS Lambda Developer Guide, "Asynchronous invocation"): a launch hook that failed three times is kept."""
    queue, props = real.one("AWS::SQS::Queue", QueueName=NAMES.failed_events_queue)
    assert "FifoQueue" not in props["Properties"]  # Lambda destinations take standard queues only
    configs = {
        c["Properties"]["FunctionName"]["Ref"]: c["Properties"]
        for c in real.resources("AWS::Lambda::EventInvokeConfig").values()
    }
    # THEN every function EventBridge or SNS invokes has one, pointing at the failed-events queue
    assert {"MachineEvents", "Tick", "Alarms"} <= set(configs)
    for config in configs.values():
        assert config["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": [queue, "Arn"]}
        assert config["MaximumRetryAttempts"] == 2
    # AND the functions' role may send there (Lambda sends with the function's role)
    sends = [s for s in lambda_role_statements(real) if "sqs:SendMessage" in as_list(s["Action"])]
    assert any(NAMES.failed_events_queue in json.dumps(s["Resource"]) for s in sends)


def test_pool_dirty_timeout_fits_the_queue_visibility_timeout(real: Synth) -> None:
    """ "Using Lambda with Amazon SQS": the visibility timeout is at least six times the function timeout."""
    _, queue = real.one("AWS::SQS::Queue", QueueName=NAMES.queue)
    function = real.raw["Resources"]["PoolDirty"]["Properties"]
    assert int(queue["Properties"]["VisibilityTimeout"]) >= 6 * int(function["Timeout"])


def test_the_fallback_and_rotation_dependencies_are_granted_on_the_stacks_own_resources(real: Synth) -> None:
    """UpdateAutoScalingGroup is also authorized against the launch template (ec2:RunInstances,
    iam:PassRole, ec2:CreateTags), RotateSecret against the rotation function (lambda:InvokeFunction):
    infra/authorization.py. The CDK role names the stack's own templates, machine roles and rotation
    function, not a pattern."""
    by_sid = {s["Sid"]: s for s in lambda_role_statements(real)}
    templates = real.resources("AWS::EC2::LaunchTemplate")
    linux_template = next(
        k for k, v in templates.items() if v["Properties"]["LaunchTemplateName"].endswith("-linux")
    )
    assert linux_template in json.dumps(by_sid["LaunchPoolTemplates"]["Resource"])
    assert linux_template in json.dumps(by_sid["LaunchFromPoolTemplates"]["Condition"]["ArnLike"])
    roles = [k for k, v in real.resources("AWS::IAM::Role").items() if k.startswith("PoolsPoollinux")]
    assert by_sid["PassMachineRoles"]["Resource"] == {"Fn::GetAtt": [roles[0], "Arn"]}
    assert by_sid["PassMachineRoles"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}
    }
    assert real.raw["Resources"][roles[0]]["Properties"]["Path"] == f"/{PREFIX}/"
    assert by_sid["TagLaunchedMachines"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": "RunInstances"}
    }
    # host pools never fall back, so their groups are not granted UpdateAutoScalingGroup
    retuned = json.dumps(by_sid["RetuneGroups"]["Resource"])
    assert "runner-scaler-linux" in retuned and "macos" not in retuned and "windows" not in retuned
    rotation = real.raw["Resources"]["RotateBaseCerts"]["Properties"]
    assert rotation["FunctionName"] == f"{PREFIX}-rotate_base_certs"
    assert f"function:{PREFIX}-rotate_base_certs" in json.dumps(by_sid["InvokeRotation"]["Resource"])
