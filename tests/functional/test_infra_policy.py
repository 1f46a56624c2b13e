"""The IAM grants match what chalicelib calls, in both directions, and the wiring plan reads Chalice right.

No CDK here (fast): `code_calls` derives (service, operation) pairs from chalicelib's source with a regex
over `.call(` / `.paginate(`, the same list test_infra.py checks against the synthesized Lambda policy.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chalicelib.config import load_config_file
from chalicelib.resources import Names
from infra.metrics import (
    GLOBAL_METRICS,
    JOB_METRICS,
    LATENCY_METRICS,
    MACHINE_METRICS,
    SCALING_METRICS,
    TIMING_METRICS,
)
from infra.policy import (
    CONFIG_GATED,
    NO_PERMISSION,
    Origin,
    Scope,
    chalice_policy,
    iam_action,
    lambda_grants,
)
from infra.settings import SettingsError, load_settings
from infra.stacks.wiring import WiringError, check_names, plan_wiring

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = load_config_file(ROOT / "examples" / "config.toml")
SCOPE = Scope(names=Names("runner-scaler"), config=EXAMPLE)

#: `.call("service", "operation"` / `.paginate("service", "operation"`, across line breaks.
CALL = re.compile(r"\.(?:call|paginate)\(\s*\"([\w-]+)\",\s*\"(\w+)\"")
#: An adapter's own wrapper: `self._aws.call("secretsmanager", operation, ...)` inside `def _call(...)`.
WRAPPED = re.compile(r"\.(?:call|paginate)\(\s*\"([\w-]+)\",\s*(\w+)\s*[,)]")
#: Any call through the seam: each must be one of the two forms above, or IAM cannot be derived from it.
ANY_CALL = re.compile(r"\.(?:call|paginate)\(\s*(?=[\w\"])")
DEF = re.compile(r"^\s*def (\w+)\(", re.MULTILINE)
#: The seam itself forwards `service`/`operation` variables: it is where calls go, not where they start.
SEAM = "chalicelib/aws.py"


def code_calls() -> dict[tuple[str, str], str]:
    """(boto service, snake_case operation) -> first "file:function" that calls it, in deployed code."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted((ROOT / "chalicelib").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == SEAM:
            continue
        text = path.read_text(encoding="utf-8")
        understood = {m.start() for m in CALL.finditer(text)} | {m.start() for m in WRAPPED.finditer(text)}
        for match in ANY_CALL.finditer(text):
            where = f"{relative}:{_enclosing_function(text, match.start())}"
            assert match.start() in understood, f"{where}: pass the service (and operation) as literals"
        for service, operation, function in _literal_calls(text) + _wrapped_calls(text):
            found.setdefault((service, operation), f"{relative}:{function}")
    return found


def _literal_calls(text: str) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2), _enclosing_function(text, m.start())) for m in CALL.finditer(text)]


def _wrapped_calls(text: str) -> list[tuple[str, str, str]]:
    """Calls through a wrapper such as `def _call(self, operation, ...)`: its callers name the operation."""
    calls = []
    for match in WRAPPED.finditer(text):
        wrapper = _enclosing_function(text, match.start())
        for use in re.finditer(rf"\b{wrapper}\(\s*\"(\w+)\"", text):
            calls.append((match.group(1), use.group(1), _enclosing_function(text, use.start())))
    return calls


def _enclosing_function(text: str, position: int) -> str:
    names = [m.group(1) for m in DEF.finditer(text, 0, position)]
    return names[-1] if names else "<module>"


def granted(grants: list[Any], origin: Origin | None = None) -> set[str]:
    return {a for g in grants if origin is None or g.origin is origin for a in g.actions}


def test_the_scan_finds_the_adapters_calls() -> None:
    calls = code_calls()
    assert ("autoscaling", "set_desired_capacity") in calls
    assert ("secretsmanager", "get_secret_value") in calls
    assert ("dynamodb", "query") in calls
    assert ("dynamodb", "create_table") not in calls  # toolkit's local bootstrap creates it; infra/ in AWS


@pytest.mark.parametrize(
    ("service", "operation", "action"),
    [
        ("autoscaling", "set_desired_capacity", "autoscaling:SetDesiredCapacity"),
        (
            "autoscaling",
            "terminate_instance_in_auto_scaling_group",
            "autoscaling:TerminateInstanceInAutoScalingGroup",
        ),
        ("resource-groups", "group_resources", "resource-groups:GroupResources"),
        ("license-manager", "get_license_configuration", "license-manager:GetLicenseConfiguration"),
        ("dynamodb", "batch_write_item", "dynamodb:BatchWriteItem"),
        ("s3", "list_objects_v2", "s3:ListBucket"),
        ("sqs", "send_message_batch", "sqs:SendMessage"),
        ("elbv2", "describe_target_groups", "elasticloadbalancing:DescribeTargetGroups"),
    ],
)
def test_operation_maps_to_its_iam_action(service: str, operation: str, action: str) -> None:
    assert iam_action(service, operation) == action


def needs_grant(call: tuple[str, str], scope: Scope = SCOPE) -> bool:
    """Whether this deployment must grant `call`: not when AWS needs none, nor when config never asks."""
    if call in NO_PERMISSION:
        return False
    if call in CONFIG_GATED:
        return any(p.hosts and p.hosts.license_configuration for p in scope.config.pools)
    return True


def test_every_call_in_code_is_granted() -> None:
    grants = granted(lambda_grants(SCOPE))
    missing = {
        iam_action(*call): where
        for call, where in code_calls().items()
        if needs_grant(call) and iam_action(*call) not in grants
    }
    assert not missing, f"add to infra/policy.py lambda_grants: {missing}"


def test_a_named_licence_configuration_is_readable_and_nothing_else() -> None:
    arn = "arn:aws:license-manager:eu-west-1:111111111111:license-configuration:lic-0123456789abcdef"
    pools = tuple(
        p.model_copy(update={"hosts": p.hosts.model_copy(update={"license_configuration": arn})})
        if p.hosts and p.platform.value == "windows"
        else p
        for p in EXAMPLE.pools
    )
    scope = Scope(names=Names("x"), config=EXAMPLE.model_copy(update={"pools": pools}))
    (grant,) = [g for g in lambda_grants(scope) if "license-manager:GetLicenseConfiguration" in g.actions]
    assert grant.resources == (arn,)
    assert needs_grant(("license-manager", "get_license_configuration"), scope)


def test_every_code_grant_is_still_called() -> None:
    """A CODE grant whose call went away is dead weight: drop it (or mark it PLANNED, with the reason)."""
    called = {iam_action(*call) for call in code_calls()}
    stale = granted(lambda_grants(SCOPE), Origin.CODE) - called
    assert not stale, f"no chalicelib call needs {sorted(stale)}"


def test_grants_have_no_wildcard_action_and_justify_wildcard_resources() -> None:
    for grant in lambda_grants(SCOPE):
        assert all("*" not in a for a in grant.actions), grant.sid
        if "*" in grant.resources:
            assert "AWS forces `*`" in grant.why, grant.sid


def test_without_host_pools_no_host_grant_is_made() -> None:
    linux_only = EXAMPLE.model_copy(update={"pools": tuple(p for p in EXAMPLE.pools if p.hosts is None)})
    actions = granted(lambda_grants(Scope(names=Names("x"), config=linux_only)))
    assert not {a for a in actions if a.startswith(("resource-groups:", "license-manager:"))}
    assert "ec2:AllocateHosts" not in actions


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_chalice_policy_files_are_generated_from_the_same_grants(stage: str) -> None:
    path = ROOT / ".chalice" / f"policy-{stage}.json"
    assert json.loads(path.read_text(encoding="utf-8")) == chalice_policy(stage, EXAMPLE), (
        f"regenerate: python -m infra.policy --write (then commit {path.name})"
    )


def test_the_dead_letter_redrive_may_read_and_delete_on_the_dead_letter_queue_only() -> None:
    # chalicelib/alarms.py reads and deletes on <prefix>-dirty-dlq.fifo: the queue grants name the main queue
    (grant,) = [g for g in lambda_grants(SCOPE) if g.sid == "DeadLetterRedrive"]
    assert set(grant.actions) == {"sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:DeleteMessage"}
    assert [r.rsplit(":", 1)[-1] for r in grant.resources] == [SCOPE.names.dead_letter_queue]


def test_active_tracing_comes_with_its_grant() -> None:
    """`xray: true` in .chalice/config.json turns tracing on; with `autogen_policy` off, the grant is ours."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text(encoding="utf-8"))
    assert config.get("xray") is True
    (grant,) = [g for g in lambda_grants(SCOPE) if g.sid == "Tracing"]
    assert set(grant.actions) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    assert grant.origin is Origin.SERVICE


# -- metrics the dashboard and alarms read ---------------------------------------------------------


def test_every_metric_the_dashboard_reads_is_emitted(capsys: pytest.CaptureFixture[str]) -> None:
    from chalicelib.metrics import emit_reconcile
    from chalicelib.reconcile import ReconcileResult

    drained = ReconcileResult(pool="linux", now=datetime(2026, 1, 5, 9, 0, tzinfo=UTC), drain_seconds=[0.4])
    emit_reconcile(EXAMPLE, [drained], 3)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emitted = {m["Name"] for b in blobs for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert set(MACHINE_METRICS + JOB_METRICS + SCALING_METRICS + TIMING_METRICS + GLOBAL_METRICS) <= emitted


def test_the_latency_metrics_the_dashboard_reads_are_emitted_per_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from chalicelib.metrics import emit_job_wait, emit_scale_up

    emit_job_wait("linux", "linux", 12.5)
    emit_scale_up("linux", "linux", 95.0)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emitted = {m["Name"] for b in blobs for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert emitted == set(LATENCY_METRICS)
    assert all((b["pool"], b["platform"]) == ("linux", "linux") for b in blobs)


# -- wiring plan (pure) ----------------------------------------------------------------------------


def _sam(events: dict[str, Any]) -> dict[str, Any]:
    return {"Resources": {"Handler": {"Type": "AWS::Serverless::Function", "Properties": {"Events": events}}}}


def test_cw_pattern_fully_covered_by_infra_rules_is_replaced() -> None:
    wiring = plan_wiring(
        _sam(
            {
                "Ev": {
                    "Type": "CloudWatchEvent",
                    "Properties": {
                        "Pattern": {
                            "source": ["aws.autoscaling"],
                            "detail-type": ["EC2 Instance-launch Lifecycle Action"],
                        }
                    },
                }
            }
        )
    )
    assert [(r.kind.name, r.detail_types) for r in wiring.rules] == [
        ("Lifecycle", ("EC2 Instance-launch Lifecycle Action",))
    ]
    assert wiring.replaced_events == (("Handler", "Ev"),)


def test_cw_pattern_with_an_unknown_kind_is_kept_and_reported() -> None:
    pattern = {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning", "Other"]}
    wiring = plan_wiring(_sam({"Ev": {"Type": "CloudWatchEvent", "Properties": {"Pattern": pattern}}}))
    assert wiring.replaced_events == ()
    assert any("Other" in w for w in wiring.warnings)


def test_queue_named_for_another_deployment_is_refused() -> None:
    queue = {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:other-dirty.fifo"}
    wiring = plan_wiring(_sam({"Q": {"Type": "SQS", "Properties": {"Queue": queue}}}))
    with pytest.raises(WiringError, match=r"other-dirty\.fifo"):
        check_names(wiring, queue="mine-dirty.fifo", topic="mine-alarms")


# -- settings --------------------------------------------------------------------------------------


def _context(**changes: Any) -> dict[str, Any]:
    context = dict(json.loads((ROOT / "infra" / "cdk.json").read_text(encoding="utf-8"))["context"])
    context.update(changes)
    return context


def test_settings_from_cdk_json_need_no_lookup() -> None:
    settings = load_settings(_context())
    assert settings.prefix == "runner-scaler-dev"
    assert settings.subnets_for(("eu-west-1a",)) == ("subnet-0a1b2c3d4e5f60001",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"amis": {"linux": "ami-0a1b2c3d4e5f60101"}}, "amis.macos"),
        ({"account": "me"}, "12-digit"),
        ({"subnets": []}, "subnets"),
    ],
)
def test_settings_errors_name_the_context_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(_context(**changes))
