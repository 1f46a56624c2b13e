"""The authorization dependencies AWS adds behind an API call, beyond the call's own action, with sources.

IAM authorizes some calls against more than one action: Auto Scaling checks that the caller may launch a
group's launch template, Secrets Manager that it may invoke the rotation function, tagging on create needs
the tagging action. moto checks none of these, so this table is the stand-in's memory of them: every call
chalicelib makes is looked up here, the rendered policies of both deploy paths must grant each dependency
(tests/functional/test_authorization.py), and the enforcing test AWS evaluates them on every call
(tests/iam.py). Plain data; imports the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Dependency:
    """`action` on a resource of kind `resource` is also authorized when `call` is made (under `when`).

    `context` holds the condition keys AWS sets for that check, so a grant scoped with them still matches.
    `applies` False records a dependency we avoid by design (e.g. no customer managed KMS key): the check
    then asserts the design instead (see `avoided_by`).
    """

    call: tuple[str, str]  # boto3 (service, operation)
    action: str
    resource: str  # "launch-template", "role", "instance", "volume", "function", "secret", "dedicated-host",
    # "table"
    when: str
    source: str
    context: Mapping[str, str] = field(default_factory=dict)
    applies: bool = True
    avoided_by: str = ""


_LAUNCH_TEMPLATE_PERMISSIONS = (
    'Amazon EC2 Auto Scaling User Guide, "Control Amazon EC2 launch template usage in Auto Scaling groups" '
    "(autoscaling/ec2/userguide/ec2-auto-scaling-launch-template-permissions.html): the permissions for "
    "ec2:RunInstances and iam:PassRole are checked when a group that uses a launch template is created or "
    "updated"
)
_TAG_ON_CREATE = (
    'Amazon EC2 User Guide, "Grant permission to tag Amazon EC2 resources during creation" '
    "(AWSEC2/latest/UserGuide/supported-iam-actions-tagging.html): a create call with TagSpecifications also "
    "needs ec2:CreateTags, which may be limited with the ec2:CreateAction condition key"
)
_PASS_ROLE = (
    'IAM User Guide, "Grant a user permissions to pass a role to an AWS service" '
    "(IAM/latest/UserGuide/id_roles_use_passrole.html): iam:PassedToService narrows PassRole to one service"
)

_TRANSACTIONS = (
    'Amazon DynamoDB Developer Guide, "Using IAM with DynamoDB transactions" '
    "(amazondynamodb/latest/developerguide/transaction-apis-iam.html): permissions for Put, Update, Delete "
    "and Get actions are governed by those of the underlying PutItem, UpdateItem, DeleteItem and GetItem"
)

DEPENDENCIES: tuple[Dependency, ...] = (
    Dependency(
        ("dynamodb", "transact_write_items"),
        "dynamodb:UpdateItem",
        "table",
        "the transaction's Update action (Store.register_runner: the machine record's runner)",
        _TRANSACTIONS,
    ),
    Dependency(
        ("autoscaling", "update_auto_scaling_group"),
        "ec2:RunInstances",
        "launch-template",
        "the group uses a launch template (every pool group does)",
        _LAUNCH_TEMPLATE_PERMISSIONS,
    ),
    Dependency(
        ("autoscaling", "update_auto_scaling_group"),
        "ec2:RunInstances",
        "instance",
        "the group uses a launch template: the instances, volumes and interfaces it would create",
        _LAUNCH_TEMPLATE_PERMISSIONS,
    ),
    Dependency(
        ("autoscaling", "update_auto_scaling_group"),
        "iam:PassRole",
        "role",
        "the launch template names an instance profile (every pool template does)",
        f"{_LAUNCH_TEMPLATE_PERMISSIONS}; {_PASS_ROLE}",
        context={"iam:PassedToService": "ec2.amazonaws.com"},
    ),
    Dependency(
        ("autoscaling", "update_auto_scaling_group"),
        "ec2:CreateTags",
        "instance",
        "the launch template has tag specifications (every pool template tags instances and volumes)",
        f"{_LAUNCH_TEMPLATE_PERMISSIONS}; {_TAG_ON_CREATE}",
        context={"ec2:CreateAction": "RunInstances"},
    ),
    Dependency(
        ("secretsmanager", "rotate_secret"),
        "lambda:InvokeFunction",
        "function",
        "always: RotateSecret invokes the secret's rotation function",
        'AWS Secrets Manager User Guide, "Permissions for rotation" (secretsmanager/latest/userguide/'
        'rotating-secrets-required-permissions-function.html) and the RotateSecret API reference: "you also '
        'need lambda:InvokeFunction permissions on the rotation function"',
    ),
    Dependency(
        ("secretsmanager", "create_secret"),
        "secretsmanager:TagResource",
        "secret",
        "CreateSecret with Tags (machine secrets and the base certificates are created tagged)",
        'CreateSecret API reference, "Required permissions": "To add tags to the secret, you must also have '
        'secretsmanager:TagResource"',
    ),
    Dependency(
        ("ec2", "allocate_hosts"),
        "ec2:CreateTags",
        "dedicated-host",
        "AllocateHosts with TagSpecifications (hosts are tagged with their pool at allocation)",
        _TAG_ON_CREATE,
        context={"ec2:CreateAction": "AllocateHosts"},
    ),
    Dependency(
        ("sqs", "send_message"),
        "kms:GenerateDataKey",
        "key",
        "only if the queue is encrypted with a customer managed KMS key",
        'Amazon SQS Developer Guide, "Key management" (SQS-managed SSE needs no KMS permission)',
        applies=False,
        avoided_by="the queues name no KMS key (chalicelib.resources.queue_attributes)",
    ),
    Dependency(
        ("secretsmanager", "get_secret_value"),
        "kms:Decrypt",
        "key",
        "only if the secret is encrypted with a customer managed KMS key",
        'AWS Secrets Manager User Guide, "Secret encryption and decryption in AWS Secrets Manager" (the '
        "AWS managed key aws/secretsmanager needs no KMS permission in the caller's policy)",
        applies=False,
        avoided_by="the secrets name no KmsKeyId (infra/stacks/state.py, chalicelib/secrets.py)",
    ),
)


def dependencies_of(service: str, operation: str) -> tuple[Dependency, ...]:
    """The dependencies that apply to one call (an empty tuple for most calls)."""
    return tuple(d for d in DEPENDENCIES if d.call == (service, operation) and d.applies)
