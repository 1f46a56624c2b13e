"""The moto fixture chain: fake credentials -> mock_aws -> AwsClients -> resources (moto's own guidance)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from chalicelib.aws import AwsClients
from chalicelib.config import Config, load_config_file
from chalicelib.gitlab import GitLabClient
from chalicelib.resources import Names
from chalicelib.runtime import Runtime, install
from tests.gitlab_fixtures import T0, Clock, WebhookReceiver
from tests.iam import ACCOUNT, ADMIN_POLICY
from toolkit.devtools.bootstrap import LocalStack, bootstrap
from toolkit.devtools.fake_gitlab import FakeGitLab


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def mocked_aws(aws_credentials: None) -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def aws(mocked_aws: None) -> AwsClients:
    return AwsClients(region="us-east-1", sleep=lambda _s: None)


def describe_group(aws: AwsClients, asg: str) -> dict[str, Any]:
    groups = aws.call("autoscaling", "describe_auto_scaling_groups", AutoScalingGroupNames=[asg])
    return dict(groups["AutoScalingGroups"][0])


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WEBHOOK_TOKENS = ["old-hook-token", "new-hook-token"]


@dataclass
class Stack:
    """A bootstrapped local deployment: moto resources + an installed Runtime + the Chalice test client."""

    aws: AwsClients
    config: Config
    runtime: Runtime
    local: LocalStack
    clock: list[datetime]
    #: Pool messages drained by `resolve_asks`, handed out first by the next `queued_messages`.
    held: list[str] = field(default_factory=list)

    def advance(self, **delta: float) -> datetime:
        self.clock[0] += timedelta(**delta)
        return self.clock[0]

    def desired(self, asg: str) -> int:
        return int(describe_group(self.aws, asg)["DesiredCapacity"])

    def queued_pools(self) -> list[str]:
        """Drain the dirty queue (as Lambda would) and return the pools it named (resolve asks left out)."""
        bodies = [json.loads(body) for body in self.queued_messages()]
        return [body["pool"] for body in bodies if "pool" in body]

    def resolve_asks(self) -> int:
        """Deliver the queue's resolve asks (webhooks' asks for a pipeline's tags) to the `pool_dirty`
        Lambda, as SQS would; pool messages are held for `queued_messages`. Returns the asks delivered."""
        from chalice.test import Client

        from app import app

        asks: list[str] = []
        for body in self._drain():
            (asks if "resolve" in json.loads(body) else self.held).append(body)
        if asks:
            with Client(app) as client:
                for body in asks:  # batch size 1, as deployed
                    event = client.events.generate_sqs_event(
                        message_bodies=[body], queue_name="test-dirty.fifo"
                    )
                    client.lambda_.invoke("pool_dirty", event)
        return len(asks)

    def queued_messages(self) -> list[str]:
        """Drain the dirty queue (as Lambda would) and return the bodies of its messages."""
        out, self.held = self.held, []
        return out + self._drain()

    def _drain(self) -> list[str]:
        out: list[str] = []
        while True:
            got = self.aws.call(
                "sqs", "receive_message", QueueUrl=self.local.queue_url, MaxNumberOfMessages=10
            )
            messages = got.get("Messages", [])
            if not messages:
                return out
            for m in messages:
                out.append(m["Body"])
                self.aws.call(
                    "sqs", "delete_message", QueueUrl=self.local.queue_url, ReceiptHandle=m["ReceiptHandle"]
                )

    def fan_out(self) -> None:
        """Redeploy (a fresh container) with `tick_inline_pools = 0`: the tick queues every reconcile."""
        scaler = self.config.scaler.model_copy(update={"tick_inline_pools": 0})
        config = self.config.model_copy(update={"scaler": scaler})
        gitlab = self.runtime.gitlab if self.runtime.has_gitlab() else None
        self.runtime = Runtime(
            dict(self.runtime.environ), aws=self.aws, config=config, gitlab=gitlab, clock=self.runtime.clock
        )
        self.config = config
        install(self.runtime)


@pytest.fixture
def stack(aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    config = load_config_file(FIXTURES / "scaler.toml")
    names = Names("test")
    local = bootstrap(aws, config, names, WEBHOOK_TOKENS)
    clock = [datetime(2026, 11, 23, 12, 0, tzinfo=UTC)]
    rt = Runtime(
        {"RUNNER_SCALER_PREFIX": "test", "RUNNER_SCALER_QUEUE_URL": local.queue_url},
        aws=aws,
        config=config,
        clock=lambda: clock[0],
    )
    install(rt)
    yield Stack(aws, config, rt, local, clock)
    install(None)


@pytest.fixture
def fake_gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab() as fake:
        yield fake


@pytest.fixture
def gitlab_stack(stack: Stack, fake_gitlab: FakeGitLab) -> Stack:
    """The stack with GitLab wired in: the real adapter talking to the fake GitLab over HTTP."""
    client = GitLabClient(fake_gitlab.url, fake_gitlab.token, max_retries=1, obey_rate_limit=False)
    rt = Runtime(
        dict(stack.runtime.environ),
        aws=stack.aws,
        config=stack.config.model_copy(
            update={"gitlab": stack.config.gitlab.model_copy(update={"url": fake_gitlab.url})}
        ),
        gitlab=client,
        clock=stack.runtime.clock,
    )
    install(rt)
    stack.runtime = rt
    stack.config = rt.config
    return stack


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def fake(clock: Clock) -> Iterator[FakeGitLab]:
    """The fake GitLab on the test's clock (tests that need a different start override `clock`)."""
    with FakeGitLab(now=clock) as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as endpoint:
        yield endpoint


@dataclass
class IamStack:
    """A `Stack` whose app runs as an IAM user carrying exactly one deploy path's rendered policy.

    `stack.aws` is an administrator (set-up and assertions); the installed runtime signs as the app.
    `authorizer` saw every check of the app's calls (tests/iam.py).
    """

    stack: Stack
    path: str
    policy: dict[str, Any]
    authorizer: Any
    rotation_function: str
    gitlab: FakeGitLab


def _rendered_policy(path: str, config: Config, pools: Any, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """(policy, rotation function name) as each deploy path renders them for the prefix "test"."""
    from infra.policy import Scope, chalice_policy, lambda_grants, policy_document, rotation_function_name
    from tests.iam import ACCOUNT, CHALICE_APP, CHALICE_STAGE, REGION

    if path == "chalice":
        chalice_config = tmp_path / "config.json"
        stage = {"environment_variables": {"RUNNER_SCALER_PREFIX": "test"}}
        chalice_config.write_text(json.dumps({"app_name": CHALICE_APP, "stages": {CHALICE_STAGE: stage}}))
        return chalice_policy(
            CHALICE_STAGE, config, chalice_config
        ), f"{CHALICE_APP}-{CHALICE_STAGE}-rotate_base_certs"
    function = rotation_function_name("test")
    scope = Scope(
        names=Names("test"),
        config=config,
        region=REGION,
        account=ACCOUNT,
        log_groups=(f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/test/Tick",),
        launch_templates=pools.launch_templates,
        machine_roles=pools.machine_roles,
        rotation_function=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}",
    )
    return policy_document(lambda_grants(scope)), function


@pytest.fixture(params=["chalice", "cdk"])
def iam_stack(
    aws_credentials: None, request: pytest.FixtureRequest, tmp_path: Path, fake_gitlab: FakeGitLab
) -> Iterator[IamStack]:
    """The test AWS enforcing IAM (moto's enforcement + tests/iam.py's resources, conditions, dependencies)
    on the app, under the policy `chalice deploy` attaches or the one the CDK stack renders.

    Resources are made as an administrator before enforcement starts, as a deployment makes them. A test
    may drop grants first with `request.node` marker `without_grants(sid, ...)`.
    """
    from moto.core import enable_iam_authentication

    from tests.functional.certs_fixtures import STUB_LAMBDA, create_rotation_function
    from tests.iam import REGION, Authorizer, dress_pools, moto_policy, user_session

    dropped = set()
    for marker in request.node.iter_markers("without_grants"):
        dropped.update(marker.args)
    with mock_aws(config=STUB_LAMBDA):
        bootstrap_aws = AwsClients(region=REGION, sleep=lambda _s: None)
        config = load_config_file(FIXTURES / "scaler.toml")
        names = Names("test")
        local = bootstrap(bootstrap_aws, config, names, WEBHOOK_TOKENS)
        pools = dress_pools(bootstrap_aws, config, names.prefix)
        policy, function = _rendered_policy(request.param, config, pools, tmp_path)
        policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] not in dropped]
        function_arn = create_rotation_function(bootstrap_aws, function)
        admin = AwsClients(
            user_session(bootstrap_aws, "admin", ADMIN_POLICY), region=REGION, sleep=lambda _s: None
        )
        app_session = user_session(bootstrap_aws, "scaler", moto_policy(policy))
        authorizer = Authorizer(policy, admin, ACCOUNT, REGION)
        authorizer.register(app_session)
        clock = [datetime(2026, 11, 23, 12, 0, tzinfo=UTC)]
        gitlab = GitLabClient(fake_gitlab.url, fake_gitlab.token, max_retries=1, obey_rate_limit=False)
        config = config.model_copy(
            update={"gitlab": config.gitlab.model_copy(update={"url": fake_gitlab.url})}
        )
        rt = Runtime(
            {"RUNNER_SCALER_PREFIX": "test", "RUNNER_SCALER_QUEUE_URL": local.queue_url},
            aws=AwsClients(app_session, region=REGION, sleep=lambda _s: None),
            config=config,
            gitlab=gitlab,
            clock=lambda: clock[0],
        )
        install(rt)
        with enable_iam_authentication():
            stack = Stack(admin, config, rt, local, clock)
            yield IamStack(stack, request.param, policy, authorizer, function_arn, fake_gitlab)
        install(None)
