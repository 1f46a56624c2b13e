"""The Chalice app inside the stack: `chalice.cdk.Chalice`, with this deployment's role, names and wiring.

Packaging happens once per synth in a child process (`infra.package`), or not at all when context
`chalice_package` names a prebuilt directory. Every function then gets the stack's least-privilege role,
the resource names as environment variables, its own log group (with retention), and event sources bound
to this stack's queue, topic, rules and rotation schedule (see `wiring.plan_wiring`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from chalice.cdk import Chalice
from constructs import Construct

from chalicelib.resources import ALARM_TOPIC_SUFFIX, ENV_CONFIG_PARAM, ENV_PREFIX, ENV_QUEUE_URL, ENV_TABLE
from infra.package import package
from infra.policy import Scope, functions_vpc_grants, lambda_grants, policy_document, rotation_function_name
from infra.settings import ROOT, Settings
from infra.stacks.wiring import RuleTarget, check_names, plan_wiring

PACKAGE_FILES = ("sam.json", "deployment.zip")
#: The functions' fingerprint of the config they were deployed with (first 16 hex of its SHA-256).
ENV_CONFIG_SHA = "RUNNER_SCALER_CONFIG_SHA256"


def config_digest(config_file: Path) -> str:
    return hashlib.sha256(config_file.read_bytes()).hexdigest()[:16]


class ChaliceApp(Chalice):
    """`chalice.cdk.Chalice` that packages in a child process, or copies a prebuilt package."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings) -> None:
        # Chalice's __init__ packages straight away, so _package_app needs the settings before it runs.
        self._settings = settings
        super().__init__(scope, construct_id, source_dir=str(ROOT), preserve_logical_ids=True)
        self.sam = json.loads((Path(self._sam_package_dir) / "sam.json").read_text(encoding="utf-8"))

    def _package_app(self) -> None:
        settings = self._settings
        out = Path(self._sam_package_dir)
        if settings.chalice_package is None:
            package(out, stage=settings.stage, prefix=settings.prefix, region=settings.region)
            return
        out.mkdir(parents=True, exist_ok=True)
        for name in PACKAGE_FILES:
            source = settings.chalice_package / name
            if not source.is_file():
                raise FileNotFoundError(
                    f"context chalice_package={settings.chalice_package}: no {name}; make it with "
                    "`python -m infra.package --out <dir> ...`"
                )
            shutil.copy2(source, out / name)


class App(Construct):
    """The functions, their role and log groups, and their event sources bound to this stack."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: Settings,
        grant_scope: Scope,
        *,
        queue_arn: str,
        queue_url: str,
        failed_events_arn: str,
        table_name: str,
        topic_arn: str,
        base_certs: secretsmanager.CfnSecret,
        groups: list[str],
    ) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        self.chalice = ChaliceApp(self, "Chalice", settings=settings)
        self.wiring = plan_wiring(self.chalice.sam)
        for warning in self.wiring.warnings:
            cdk.Annotations.of(self).add_warning_v2("runner-scaler:wiring", warning)
        self.log_groups = {
            logical: logs.CfnLogGroup(
                self,
                f"Logs{logical}",
                log_group_name=f"/aws/lambda/{settings.prefix}/{logical}",
                retention_in_days=settings.log_retention_days,
            )
            for logical in self.wiring.functions
        }
        scoped = dataclasses.replace(
            grant_scope, log_groups=tuple(g.attr_arn for g in self.log_groups.values())
        )
        self.role = iam.CfnRole(
            self,
            "Role",
            assume_role_policy_document={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            description=f"runner-scaler {settings.prefix}: exactly what chalicelib calls (infra/policy.py)",
            policies=[
                iam.CfnRole.PolicyProperty(
                    policy_name="scaler", policy_document=policy_document(lambda_grants(scoped))
                ),
                *(
                    [
                        iam.CfnRole.PolicyProperty(
                            policy_name="vpc", policy_document=policy_document(functions_vpc_grants())
                        )
                    ]
                    if settings.functions_vpc
                    else []
                ),
            ],
        )
        environment = {
            ENV_PREFIX: settings.prefix,
            ENV_TABLE: table_name,
            ENV_QUEUE_URL: queue_url,
            ENV_CONFIG_PARAM: settings.names.config_parameter,
            # A container reads the config once; a new config changes this value, so the deploy that stores
            # it also updates every function's configuration, and Lambda runs later invocations in new
            # execution environments that read the new config (docs/operations.md, "Config changes").
            ENV_CONFIG_SHA: config_digest(settings.config_file),
        }
        for logical in self.wiring.functions:
            function = self.chalice.get_resource(logical)
            function.add_property_override("Role", self.role.attr_arn)
            for key, value in environment.items():
                function.add_property_override(f"Environment.Variables.{key}", value)
            function.add_property_override("LoggingConfig", {"LogGroup": self.log_groups[logical].ref})
            if settings.functions_vpc:
                # A private GitLab: the functions run in these subnets (Lambda Developer Guide, "Giving Lambda
                # functions access to resources in an Amazon VPC"); AWS APIs go through NAT or VPC endpoints.
                function.add_property_override(
                    "VpcConfig",
                    {
                        "SubnetIds": list(settings.functions_vpc.subnet_ids),
                        "SecurityGroupIds": list(settings.functions_vpc.security_group_ids),
                    },
                )
        self._bind_sources(queue_arn, topic_arn)
        self.rules = [self._rule(target, groups) for target in self.wiring.rules]
        for logical, event in self.wiring.replaced_events:
            self.chalice.get_resource(logical).add_deletion_override(f"Properties.Events.{event}")
        self.rotation = self._rotation(base_certs)
        self.invoke_configs = [
            self._on_failure(logical, failed_events_arn) for logical in self._async_functions()
        ]

    def _async_functions(self) -> list[str]:
        """Functions AWS invokes asynchronously: EventBridge rule targets, the schedule, SNS subscribers."""
        wanted = {r.function for r in self.wiring.rules} | {b.function for b in self.wiring.topics}
        wanted |= {f for f in self.wiring.functions if "Schedule" in json.dumps(self._events(f))}
        return sorted(wanted)

    def _events(self, logical: str) -> Any:
        return self.chalice.sam["Resources"][logical]["Properties"].get("Events", {})

    def _on_failure(self, logical: str, destination: str) -> lambda_.CfnEventInvokeConfig:
        """Lambda retries a failed asynchronous invocation twice, then drops it unless the function has an
        on-failure destination ("Asynchronous invocation", AWS Lambda Developer Guide): a launch hook whose
        three attempts failed (GitLab down) is kept there, with its event, for the operator."""
        return lambda_.CfnEventInvokeConfig(
            self,
            f"OnFailure{logical}",
            function_name=self.function_name(logical),
            qualifier="$LATEST",
            maximum_retry_attempts=2,
            destination_config=lambda_.CfnEventInvokeConfig.DestinationConfigProperty(
                on_failure=lambda_.CfnEventInvokeConfig.OnFailureProperty(destination=destination)
            ),
        )

    def function_arn(self, logical: str) -> str:
        return self.chalice.get_resource(logical).get_att("Arn").to_string()

    def function_name(self, logical: str) -> str:
        return self.chalice.get_resource(logical).ref

    def _bind_sources(self, queue_arn: str, topic_arn: str) -> None:
        names = self.settings.names
        check_names(self.wiring, queue=names.queue, topic=f"{names.prefix}{ALARM_TOPIC_SUFFIX}")
        for binding in self.wiring.queues:
            source = self._event(binding.function, binding.event)
            source.add_property_override("Queue", queue_arn)
            # The handler answers with batchItemFailures (powertools process_partial_response); Lambda reads
            # them only with this response type, else one failed pool would redeliver the whole batch.
            source.add_property_override("FunctionResponseTypes", ["ReportBatchItemFailures"])
        for binding in self.wiring.topics:
            self._event(binding.function, binding.event).add_property_override("Topic", topic_arn)

    def _event(self, function: str, event: str) -> _EventOverride:
        return _EventOverride(self.chalice.get_resource(function), event)

    def _rule(self, target: RuleTarget, groups: list[str]) -> events.CfnRule:
        pattern: dict[str, Any] = {"source": [target.kind.source], "detail-type": list(target.detail_types)}
        if target.kind.per_group:
            pattern["detail"] = {"AutoScalingGroupName": groups}
        arn = self.function_arn(target.function)
        rule = events.CfnRule(
            self,
            f"{target.kind.name}Rule",
            description=f"{self.settings.prefix}: {', '.join(target.detail_types)} -> {target.function}",
            event_pattern=pattern,
            targets=[
                events.CfnRule.TargetProperty(
                    id=target.function,
                    arn=arn,
                    # A lost event is healed by the tick; retry briefly, then give up rather than pile up.
                    retry_policy=events.CfnRule.RetryPolicyProperty(
                        maximum_event_age_in_seconds=600, maximum_retry_attempts=4
                    ),
                )
            ],
        )
        lambda_.CfnPermission(
            self,
            f"{target.kind.name}RuleInvoke",
            action="lambda:InvokeFunction",
            function_name=arn,
            principal="events.amazonaws.com",
            source_arn=rule.attr_arn,
        )
        return rule

    def _rotation(self, base_certs: secretsmanager.CfnSecret) -> secretsmanager.CfnRotationSchedule | None:
        logical = self.wiring.rotation_function
        if logical is None:
            return None
        self.chalice.get_resource(logical).add_property_override(
            "FunctionName", rotation_function_name(self.settings.prefix)
        )
        arn = self.function_arn(logical)
        permission = lambda_.CfnPermission(
            self,
            "RotationInvoke",
            action="lambda:InvokeFunction",
            function_name=arn,
            principal="secretsmanager.amazonaws.com",
            source_arn=base_certs.ref,
        )
        scaler = self.settings.config.scaler
        # Rotate when the CA reaches NotAfter - regenerate_before (Secrets Manager allows 1..1000 days).
        days = int((scaler.cert_validity - scaler.regenerate_before).total_seconds() // 86400)
        schedule = secretsmanager.CfnRotationSchedule(
            self,
            "BaseCertsRotation",
            secret_id=base_certs.ref,
            rotation_lambda_arn=arn,
            rotation_rules=secretsmanager.CfnRotationSchedule.RotationRulesProperty(
                automatically_after_days=max(1, min(1000, days))
            ),
            # The first rotation writes the CA and client certificate the placeholder stands for.
            rotate_immediately_on_update=True,
        )
        schedule.add_resource_dependency(permission)
        return schedule


class _EventOverride:
    """Property overrides of one event source inside a SAM function."""

    def __init__(self, function: cdk.CfnResource, event: str) -> None:
        self._function = function
        self._event = event

    def add_property_override(self, key: str, value: Any) -> None:
        self._function.add_property_override(f"Events.{self._event}.Properties.{key}", value)
