"""The scaler's own state and inputs: table, dirty queue + DLQ, config parameter, secrets, cache buckets.

Shapes come from `chalicelib.resources` (table_definition, queue_attributes, Names) and are copied into
CloudFormation property for property, so the local bootstrap, the tests and AWS hold the same schema.
"""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from chalicelib.resources import TABLE_TTL_ATTRIBUTE, TAG_DEPLOYMENT, queue_attributes, table_definition
from infra.settings import Settings

#: SSM standard parameters hold 4 KB; advanced ones 8 KB (Systems Manager quotas).
STANDARD_PARAMETER_BYTES = 4096
ADVANCED_PARAMETER_BYTES = 8192
DLQ_RETENTION_SECONDS = 14 * 24 * 3600  # the most SQS keeps: time to read what failed


class State(Construct):
    """Table, queues, config parameter, secrets and cache buckets of one deployment."""

    def __init__(self, scope: Construct, construct_id: str, settings: Settings) -> None:
        super().__init__(scope, construct_id)
        names = settings.names
        self.table = _table(self, names.table)
        self.dead_letter_queue = sqs.CfnQueue(
            self,
            "DeadLetterQueue",
            queue_name=names.dead_letter_queue,
            fifo_queue=True,
            message_retention_period=DLQ_RETENTION_SECONDS,
            sqs_managed_sse_enabled=True,
        )
        self.queue = _dirty_queue(self, names.queue, self.dead_letter_queue.attr_arn)
        # The functions' on-failure destination (App's EventInvokeConfig): events Lambda gave up on.
        self.failed_events_queue = sqs.CfnQueue(
            self,
            "FailedEventsQueue",
            queue_name=names.failed_events_queue,
            message_retention_period=DLQ_RETENTION_SECONDS,
            sqs_managed_sse_enabled=True,
        )
        self.config_parameter = _config_parameter(self, settings)
        self.secrets = Secrets(self, "Secrets", settings)
        # Buckets the stack owns; an existing one (cache_bucket_existing) is only granted to its pools'
        # machines (infra/policy.py machine_grants), never created: CloudFormation fails on a taken name.
        self.cache_buckets = {
            name: _cache_bucket(self, name, settings.cache_expiration_days)
            for name in sorted(
                {
                    p.cache_bucket
                    for p in settings.config.pools
                    if p.cache_bucket and not p.cache_bucket_existing
                }
            )
        }
        cdk.Tags.of(self).add(TAG_DEPLOYMENT, settings.prefix)


def _table(scope: Construct, name: str) -> dynamodb.CfnTable:
    definition = table_definition(name)
    table = dynamodb.CfnTable(
        scope,
        "Table",
        key_schema=[
            dynamodb.CfnTable.KeySchemaProperty(attribute_name=k["AttributeName"], key_type=k["KeyType"])
            for k in _records(definition["KeySchema"])
        ],
        time_to_live_specification=dynamodb.CfnTable.TimeToLiveSpecificationProperty(
            attribute_name=TABLE_TTL_ATTRIBUTE, enabled=True
        ),
        point_in_time_recovery_specification=dynamodb.CfnTable.PointInTimeRecoverySpecificationProperty(
            point_in_time_recovery_enabled=True
        ),
        deletion_protection_enabled=True,
    )
    # CreateTable's arguments and CloudFormation's properties share names: copy them verbatim.
    for key, value in definition.items():
        table.add_property_override(key, value)
    table.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
    return table


def _dirty_queue(scope: Construct, name: str, dead_letter_arn: str) -> sqs.CfnQueue:
    placeholder = "DEAD-LETTER-ARN"
    attributes = queue_attributes(placeholder)
    redrive = json.loads(attributes.pop("RedrivePolicy"))
    queue = sqs.CfnQueue(scope, "DirtyQueue", queue_name=name, sqs_managed_sse_enabled=True)
    for key, value in attributes.items():
        queue.add_property_override(key, _typed(value))
    queue.add_property_override(
        "RedrivePolicy",
        {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": int(redrive["maxReceiveCount"])},
    )
    return queue


def _config_parameter(scope: Construct, settings: Settings) -> ssm.CfnParameter:
    text = settings.config_file.read_text(encoding="utf-8")
    size = len(text.encode("utf-8"))
    if size > ADVANCED_PARAMETER_BYTES:
        raise ValueError(
            f"{settings.config_file}: {size} bytes; an SSM parameter holds {ADVANCED_PARAMETER_BYTES} at most"
        )
    return ssm.CfnParameter(
        scope,
        "ConfigParameter",
        name=settings.names.config_parameter,
        type="String",  # CloudFormation cannot create SecureString; the config names secrets, holds none
        value=text,
        tier="Advanced" if size > STANDARD_PARAMETER_BYTES else "Standard",
        description=f"runner-scaler pools and policies (TOML), from {settings.config_file.name}",
    )


def _cache_bucket(scope: Construct, name: str, expiration_days: int) -> s3.Bucket:
    bucket = s3.Bucket(
        scope,
        f"Cache-{name}",
        bucket_name=name,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        enforce_ssl=True,
        versioned=False,  # a cache: an old version is never worth paying for
        lifecycle_rules=[
            s3.LifecycleRule(
                id="expire-cache",
                expiration=cdk.Duration.days(expiration_days),
                abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
            )
        ],
        removal_policy=cdk.RemovalPolicy.RETAIN,
    )
    return bucket


class Secrets(Construct):
    """GitLab API token, webhook tokens, the fleet's base certs and (when config names it) a custom CA.

    Names follow `chalicelib.runtime`: config's secret name when it gives one, else the deployment's.
    Values are placeholders an operator replaces (`aws secretsmanager put-secret-value`), except the webhook
    token (usable as generated) and the base certs (the rotation function writes them on first rotation).
    """

    def __init__(self, scope: Construct, construct_id: str, settings: Settings) -> None:
        super().__init__(scope, construct_id)
        names, gitlab = settings.names, settings.config.gitlab
        self.gitlab_token = _secret(
            self,
            "GitLabToken",
            gitlab.api_token_secret or names.gitlab_token_secret,
            "GitLab API token (scope create_runner + api). Placeholder: put the real token after deploy.",
        )
        self.webhook_tokens = _secret(
            self,
            "WebhookTokens",
            gitlab.webhook_tokens_secret or names.webhook_tokens_secret,
            'X-Gitlab-Token values accepted by /webhooks/gitlab: one token, or {"tokens": [...]} to rotate.',
        )
        self.base_certs = _secret(
            self,
            "BaseCerts",
            names.base_certs_secret,
            "Fleet Docker TLS CA and client certificate, written and rotated by rotate_base_certs.",
        )
        self.custom_ca = (
            _secret(
                self,
                "GitLabCa",
                gitlab.ca_bundle_secret,
                "PEM bundle of the CA that signed the self-hosted GitLab's certificate. Placeholder: put it.",
            )
            if gitlab.ca_bundle_secret
            else None
        )


def _secret(scope: Construct, construct_id: str, name: str, description: str) -> secretsmanager.CfnSecret:
    return secretsmanager.CfnSecret(
        scope,
        construct_id,
        name=name,
        description=description,
        generate_secret_string=secretsmanager.CfnSecret.GenerateSecretStringProperty(
            password_length=48, exclude_punctuation=True
        ),
    )


def _records(value: object) -> list[dict[str, Any]]:
    assert isinstance(value, list)
    return [dict(item) for item in value]


def _typed(value: str) -> bool | int | str:
    """SQS attribute strings as CloudFormation's typed properties ("true" -> true, "120" -> 120)."""
    if value in {"true", "false"}:
        return value == "true"
    return int(value) if value.isdigit() else value
