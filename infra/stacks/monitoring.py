"""What tells an operator (and the scaler itself) that something is wrong: alarms, their topic, a dashboard.

Every alarm publishes to one SNS topic the app's `on_sns_message` handler subscribes to (immediate reconcile
or a recorded fault) and carries its runbook in its description. The dashboard reads the EMF metrics of
`chalicelib.metrics` (namespace RunnerScaler, dimensions pool + platform). Imports CDK and chalicelib names.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct

from chalicelib.config import Pool
from chalicelib.hook_sync import HOOK_CHECK_INTERVAL
from chalicelib.metrics import NAMESPACE
from chalicelib.resources import ALARM_TOPIC_SUFFIX, TICK_STEPS, TickStep
from chalicelib.triggers import CERT_CHECK_INTERVAL_SECONDS, SWEEP_INTERVAL_SECONDS
from infra.metrics import (
    GLOBAL_METRICS,
    JOB_METRICS,
    LATENCY_METRICS,
    MACHINE_METRICS,
    SCALING_METRICS,
    TIMING_METRICS,
)
from infra.settings import Settings
from infra.stacks.wiring import LAUNCH_UNSUCCESSFUL

QUEUE_AGE_SECONDS = 120
#: Percentiles of the latency metrics: the typical wait and the bad one. Over 5 minutes, since single
#: values are sparse on a quiet pool and a 1-minute percentile of one value says little.
PERCENTILES = ("p50", "p95")
LATENCY_PERIOD = cdk.Duration.minutes(5)
LATENCY_TITLES = {
    "JobQueueSeconds": "Job wait for a runner (s)",
    "ScaleUpSeconds": "Scale-up: pending job to new machine in service (s)",
}


class Monitoring(Construct):
    """The launch-failure rule, alarms with runbooks (to the alarm topic), and the dashboard."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        settings: Settings,
        *,
        topic: sns.Topic,
        queue_name: str,
        dead_letter_queue_name: str,
        failed_events_queue_name: str,
        tick_function: str | None,
        machine_events_function: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        prefix = settings.prefix
        self.topic = topic
        self.launch_failures = _launch_failure_rule(self, settings)
        self.alarms: list[cloudwatch.CfnAlarm] = []
        self._alarm(
            "QueueAge",
            f"{prefix}-dirty-queue-age",
            namespace="AWS/SQS",
            metric="ApproximateAgeOfOldestMessage",
            dimensions={"QueueName": queue_name},
            statistic="Maximum",
            threshold=QUEUE_AGE_SECONDS,
            periods=(5, 3),
            runbook=(
                f"Pool-dirty messages wait more than {QUEUE_AGE_SECONDS}s: fast scale-up is stalled and "
                "jobs wait for the one-minute tick. Check the PoolDirty function's errors and throttles in "
                "its log group; a reconcile that keeps failing for one pool holds that pool's FIFO group. "
                "The tick still heals."
            ),
        )
        self._alarm(
            "DeadLetters",
            f"{prefix}-dirty-dlq-depth",
            namespace="AWS/SQS",
            metric="ApproximateNumberOfMessagesVisible",
            dimensions={"QueueName": dead_letter_queue_name},
            statistic="Maximum",
            threshold=1,
            periods=(1, 1),
            runbook=(
                "A pool-dirty message failed 5 times and was dead-lettered. Read it (it names the pool), "
                "find the matching error in the PoolDirty logs, fix the cause, then delete the message: "
                "the tick has reconciled the pool since, so redriving is not needed."
            ),
        )
        self._alarm(
            "FailedEvents",
            f"{prefix}-failed-events-depth",
            namespace="AWS/SQS",
            metric="ApproximateNumberOfMessagesVisible",
            dimensions={"QueueName": failed_events_queue_name},
            statistic="Maximum",
            threshold=1,
            periods=(1, 1),
            runbook=(
                "An asynchronous invocation (a lifecycle hook, Spot or EC2 event, alarm, rotation or the "
                "schedule) failed all of Lambda's retries and its event was kept in this queue. Each message "
                "is Lambda's invocation record: `requestContext.functionArn` names the function, "
                "`responsePayload` the error when the function ran, `requestPayload` the event. A launch "
                "hook's action has timed out by now (the machine was abandoned); a lost EC2 event is healed "
                "by the tick. Fix the cause in that function's log group, then delete the messages."
            ),
        )
        self._alarm(
            "LaunchFailures",
            f"{prefix}-launch-failures",
            namespace="AWS/Events",
            metric="TriggeredRules",
            dimensions={"RuleName": self.launch_failures.ref},
            statistic="Sum",
            threshold=1,
            periods=(1, 1),
            period_seconds=300,
            runbook=(
                "Auto Scaling could not launch a machine (event log group "
                f"/aws/events/{prefix}/launch-failures has the StatusMessage). Usual causes: no Spot "
                "capacity for the listed types (add types or raise on_demand_percentage), an AMI or "
                "instance type not offered in the subnet's zone, no free dedicated host in the host "
                "resource group, or an instance profile / KMS permission missing. Jobs queue meanwhile."
            ),
        )
        for pool in settings.config.pools:
            self._alarm(
                f"ReconcileErrors-{pool.name}",
                f"{prefix}-{pool.name}-reconcile-errors",
                namespace=NAMESPACE,
                metric="ReconcileErrors",
                dimensions=_pool_dimensions(settings, pool),
                statistic="Sum",
                threshold=1,
                periods=(5, 3),
                runbook=(
                    f"Reconciling pool {pool.name} failed in 3 of the last 5 minutes. Search the Tick "
                    f'and PoolDirty logs for pool "{pool.name}": AWS throttling or permissions '
                    "(AccessDenied names the action), GitLab unreachable or its token revoked, or an "
                    "invalid config in SSM. Machines are neither added nor removed while it lasts."
                ),
            )
            self._alarm(
                f"PoolFaults-{pool.name}",
                f"{prefix}-{pool.name}-pool-faults",
                namespace=NAMESPACE,
                metric="PoolFaults",
                dimensions=_pool_dimensions(settings, pool),
                statistic="Sum",
                threshold=1,
                periods=(1, 1),
                runbook=(
                    f"Pool {pool.name} has a fault. `machine launch failed; ending the machine` in the "
                    "MachineEvents log: a machine could not be prepared for a reason a retry does not fix "
                    "(no base certificates yet: run `runner-scaler certs regenerate-base-certs`; GitLab "
                    "refused to create its runner: check the API token's scope and the runner scope). The "
                    "machine was terminated and the pool launches nothing for 30 minutes. `pool faults` in "
                    "the Tick or PoolDirty log: a dedicated-host step failed (AccessDenied names the action)."
                ),
            )
            self._alarm(
                f"LongPendingJobs-{pool.name}",
                f"{prefix}-{pool.name}-long-pending-jobs",
                namespace=NAMESPACE,
                metric="LongPendingJobs",
                dimensions=_pool_dimensions(settings, pool),
                statistic="Maximum",
                threshold=1,
                periods=(5, 3),
                runbook=(
                    f"Jobs of pool {pool.name} have been pending longer than stale_job_after while the pool "
                    "had room (below max_instances, or an idle machine): capacity does not explain the wait. "
                    "Usual causes: the jobs' tags match a pool whose runners never come online (user data "
                    "or runner token trouble: read a machine's console output), machines booting past "
                    "boot_timeout (MachinesBooting high), or a runner scope (runner_type, locked) that "
                    "excludes the project. `runner-scaler status` shows the pool's machines."
                ),
            )
        self._alarm(
            "ConfigRejected",
            f"{prefix}-config-rejected",
            namespace=NAMESPACE,
            metric="ConfigRejected",
            dimensions=settings.metric_dimensions(),
            statistic="Sum",
            threshold=1,
            periods=(1, 1),
            period_seconds=300,
            runbook=(
                f"The config parameter /{prefix}/config holds a version that does not validate: every "
                "warm function keeps the last good config and says so once a minute (`config rejected` "
                "in its log names both versions and the problems by field). A cold container cannot start "
                "until it is fixed. Run `runner-scaler validate-config` on the file and put it again, or "
                "roll back to the previous version (docs/operations.md, Config changes)."
            ),
        )
        for step in TICK_STEPS:
            runs = _tick_step_runs_per_hour(step)
            self._alarm(
                f"TickStepFailed-{step.replace(' ', '-')}",
                f"{prefix}-tick-{step.replace(' ', '-')}-failed",
                namespace=NAMESPACE,
                metric="TickStepFailed",
                dimensions=settings.metric_dimensions(step=step),
                statistic="Sum",
                threshold=max(2, runs // 2),
                periods=(1, 1),
                period_seconds=3600,
                runbook=(
                    f"The tick's {step!r} step failed in at least half of its {runs} runs of the last hour. "
                    "The tick still reconciled every pool, but what this step repairs is not repaired "
                    "(claim: every periodic step; resolve: jobs without a pool; heal: lost or late job "
                    "webhooks; hook check: disabled project hooks; sweep: stuck machines and runners "
                    "deleted outside the scaler; certs: Docker TLS rotation). Search the Tick log for "
                    f'"tick step failed" with step "{step}": the error and its traceback are there.'
                ),
            )
        if tick_function:
            self._function_errors(
                "TickErrors",
                f"{prefix}-tick-errors",
                tick_function,
                "The one-minute tick crashed in 3 of the last 5 minutes: nothing heals lost webhooks or "
                "removes used-up machines. Read the Tick function's log group for the traceback.",
            )
        if machine_events_function:
            self._function_errors(
                "MachineEventErrors",
                f"{prefix}-machine-event-errors",
                machine_events_function,
                "Lifecycle hooks or Spot events failed in 3 of the last 5 minutes. `machine launch "
                "deferred` in the MachineEvents log means GitLab rate-limited or failed while creating "
                "runners (Lambda retries twice, then the launch hook abandons the machine); other "
                "errors carry a traceback. New machines get no runner meanwhile.",
            )
        self.dashboard = _dashboard(self, settings, self.alarms, queue_name, dead_letter_queue_name)

    def _function_errors(self, construct_id: str, name: str, function: str, runbook: str) -> None:
        """A Lambda function that errored in 3 of the last 5 minutes."""
        self._alarm(
            construct_id,
            name,
            namespace="AWS/Lambda",
            metric="Errors",
            dimensions={"FunctionName": function},
            statistic="Sum",
            threshold=1,
            periods=(5, 3),
            runbook=runbook,
        )

    def _alarm(
        self,
        construct_id: str,
        name: str,
        *,
        namespace: str,
        metric: str,
        dimensions: dict[str, str],
        statistic: str,
        threshold: float,
        periods: tuple[int, int],
        runbook: str,
        period_seconds: int = 60,
    ) -> None:
        evaluation, datapoints = periods
        alarm = cloudwatch.CfnAlarm(
            self,
            construct_id,
            alarm_name=name,
            alarm_description=f"RUNBOOK: {runbook}",
            namespace=namespace,
            metric_name=metric,
            dimensions=[
                cloudwatch.CfnAlarm.DimensionProperty(name=k, value=v) for k, v in dimensions.items()
            ],
            statistic=statistic,
            period=period_seconds,
            evaluation_periods=evaluation,
            datapoints_to_alarm=datapoints,
            threshold=threshold,
            comparison_operator="GreaterThanOrEqualToThreshold",
            treat_missing_data="notBreaching",
            # OK actions too: the app's handler clears a recorded fault when the alarm recovers.
            alarm_actions=[self.topic.topic_arn],
            ok_actions=[self.topic.topic_arn],
        )
        self.alarms.append(alarm)


def _tick_step_runs_per_hour(step: TickStep) -> int:
    """How often a tick step runs: the tick runs every minute, the windowed steps once per window."""
    seconds = {
        "sweep": SWEEP_INTERVAL_SECONDS,
        "certs": CERT_CHECK_INTERVAL_SECONDS,
        "hook check": int(HOOK_CHECK_INTERVAL.total_seconds()),
    }.get(step, 60)
    return 3600 // seconds


def alarm_topic(scope: Construct, settings: Settings) -> sns.Topic:
    """The topic every alarm publishes to; made first, since the app subscribes to it."""
    return sns.Topic(
        scope, "AlarmTopic", topic_name=f"{settings.prefix}{ALARM_TOPIC_SUFFIX}", enforce_ssl=True
    )


def _pool_dimensions(settings: Settings, pool: Pool) -> dict[str, str]:
    return settings.metric_dimensions(pool=pool.name, platform=pool.platform.value)


def _launch_failure_rule(scope: Construct, settings: Settings) -> events.CfnRule:
    """Failed launches of our groups, kept in a log group: the alarm counts them, the operator reads them."""
    log_group = logs.CfnLogGroup(
        scope,
        "LaunchFailureLog",
        log_group_name=f"/aws/events/{settings.prefix}/launch-failures",
        retention_in_days=settings.log_retention_days,
    )
    logs.CfnResourcePolicy(
        scope,
        "LaunchFailureLogPolicy",
        policy_name=f"{settings.prefix}-launch-failures",
        policy_document=cdk.Stack.of(scope).to_json_string(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "EventBridgeWrites",
                        "Effect": "Allow",
                        "Principal": {"Service": ["events.amazonaws.com", "delivery.logs.amazonaws.com"]},
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                        "Resource": f"{log_group.attr_arn}",
                    }
                ],
            }
        ),
    )
    return events.CfnRule(
        scope,
        "LaunchFailureRule",
        description=f"{settings.prefix}: Auto Scaling could not launch a machine",
        event_pattern={
            "source": ["aws.autoscaling"],
            "detail-type": [LAUNCH_UNSUCCESSFUL],
            "detail": {"AutoScalingGroupName": [p.asg for p in settings.config.pools]},
        },
        targets=[events.CfnRule.TargetProperty(id="log", arn=log_group.attr_arn)],
    )


def _dashboard(
    scope: Construct,
    settings: Settings,
    alarms: Sequence[cloudwatch.CfnAlarm],
    queue_name: str,
    dead_letter_queue_name: str,
) -> cloudwatch.Dashboard:
    dashboard = cloudwatch.Dashboard(scope, "Dashboard", dashboard_name=f"{settings.prefix}-scaler")
    dashboard.add_widgets(
        cloudwatch.AlarmStatusWidget(
            title="Alarms",
            alarms=[cloudwatch.Alarm.from_alarm_arn(scope, f"Ref{a.node.id}", a.attr_arn) for a in alarms],
            width=24,
        )
    )
    # First question, first row: do jobs wait, and is it for a machine?
    dashboard.add_widgets(*(_latency_graph(settings, name) for name in LATENCY_METRICS))
    for pool in settings.config.pools:
        dimensions = _pool_dimensions(settings, pool)
        dashboard.add_widgets(
            _graph(f"{pool.name}: machines", MACHINE_METRICS, dimensions, "Maximum"),
            _graph(f"{pool.name}: jobs (slots)", JOB_METRICS, dimensions, "Maximum"),
            _graph(f"{pool.name}: scaling and errors", SCALING_METRICS, dimensions, "Sum"),
            _graph(f"{pool.name}: decision and drain seconds", TIMING_METRICS, dimensions, "Maximum"),
        )
    dashboard.add_widgets(
        _graph("Reconciles and AWS calls", GLOBAL_METRICS, settings.metric_dimensions(), "Sum", width=12),
        cloudwatch.GraphWidget(
            title="Dirty queue",
            left=[
                cloudwatch.Metric(
                    namespace="AWS/SQS",
                    metric_name="ApproximateAgeOfOldestMessage",
                    dimensions_map={"QueueName": queue_name},
                    statistic="Maximum",
                )
            ],
            right=[
                cloudwatch.Metric(
                    namespace="AWS/SQS",
                    metric_name="ApproximateNumberOfMessagesVisible",
                    dimensions_map={"QueueName": dead_letter_queue_name},
                    statistic="Maximum",
                    label="dead letters",
                )
            ],
            width=12,
        ),
    )
    return dashboard


def _latency_graph(settings: Settings, metric: str) -> cloudwatch.GraphWidget:
    """One latency metric, p50 and p95 for every pool, on one graph (LATENCY_METRICS)."""
    return cloudwatch.GraphWidget(
        title=LATENCY_TITLES[metric],
        left=[
            cloudwatch.Metric(
                namespace=NAMESPACE,
                metric_name=metric,
                dimensions_map=_pool_dimensions(settings, pool),
                statistic=percentile,
                period=LATENCY_PERIOD,
                label=f"{pool.name} {percentile}",
            )
            for pool in settings.config.pools
            for percentile in PERCENTILES
        ],
        left_y_axis=cloudwatch.YAxisProps(min=0, label="seconds", show_units=False),
        width=12,
    )


def _graph(
    title: str, metrics: Sequence[str], dimensions: dict[str, str], statistic: str, width: int = 8
) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(
        title=title,
        left=[
            cloudwatch.Metric(
                namespace=NAMESPACE,
                metric_name=name,
                dimensions_map=dimensions or None,
                statistic=statistic,
                period=cdk.Duration.minutes(1),
            )
            for name in metrics
        ],
        width=width,
    )
