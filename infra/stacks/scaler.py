"""The whole deployment as one stack: state, pools, the Chalice app and its monitoring.

Order matters only where one part names another: the app needs the queue, table, alarm topic and group
names; the alarms need the app's tick function. Imports CDK, infra's constructs and settings.
"""

from __future__ import annotations

import dataclasses

import aws_cdk as cdk
from constructs import Construct

from chalicelib.resources import TAG_DEPLOYMENT
from infra.policy import Scope, rotation_function_name
from infra.settings import Settings
from infra.stacks.chalice_app import App
from infra.stacks.monitoring import Monitoring, alarm_topic
from infra.stacks.pools import Pools
from infra.stacks.state import State

#: The Chalice handler the TickErrors alarm watches (`@app.schedule(..., name="tick")`).
TICK_FUNCTION = "Tick"
#: Chalice's logical id of `machine_events`: a launch deferred past every retry shows as its errors.
MACHINE_EVENTS_FUNCTION = "MachineEvents"


class ScalerStack(cdk.Stack):
    """runner-scaler for one deployment prefix, in one account and region given as context."""

    def __init__(self, scope: Construct, construct_id: str, settings: Settings) -> None:
        super().__init__(
            scope,
            construct_id,
            env=cdk.Environment(account=settings.account, region=settings.region),
            description=f"runner-scaler {settings.prefix}: GitLab runner pools on EC2 Auto Scaling (infra/)",
        )
        grant_scope = Scope(
            names=settings.names,
            config=settings.config,
            partition=cdk.Aws.PARTITION,
            region=settings.region,
            account=settings.account,
        )
        self.state = State(self, "State", settings)
        self.pools = Pools(self, "Pools", settings, grant_scope)
        grant_scope = dataclasses.replace(
            grant_scope,
            launch_templates=self.pools.launch_templates,
            machine_roles=self.pools.machine_roles,
            rotation_function=grant_scope.arn(
                "lambda", f"function:{rotation_function_name(settings.prefix)}"
            ),
        )
        queue = self.state.queue
        topic = alarm_topic(self, settings)
        self.app = App(
            self,
            "App",
            settings,
            grant_scope,
            queue_arn=queue.attr_arn,
            queue_url=queue.attr_queue_url,
            failed_events_arn=self.state.failed_events_queue.attr_arn,
            table_name=self.state.table.ref,
            topic_arn=topic.topic_arn,
            base_certs=self.state.secrets.base_certs,
            groups=[p.asg for p in settings.config.pools],
        )
        tick = TICK_FUNCTION if TICK_FUNCTION in self.app.wiring.functions else None
        machines = MACHINE_EVENTS_FUNCTION if MACHINE_EVENTS_FUNCTION in self.app.wiring.functions else None
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            settings,
            topic=topic,
            queue_name=settings.names.queue,
            dead_letter_queue_name=settings.names.dead_letter_queue,
            failed_events_queue_name=settings.names.failed_events_queue,
            tick_function=self.app.function_name(tick) if tick else None,
            machine_events_function=self.app.function_name(machines) if machines else None,
        )
        cdk.Tags.of(self).add(TAG_DEPLOYMENT, settings.prefix)
