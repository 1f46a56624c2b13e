"""runner-scaler's Chalice app: event in -> model -> one call into chalicelib -> response.

No logic and no boto3 here; every handler parses its event, calls one use case with the ports the wiring
(chalicelib.runtime) built for this container, the config read once per invocation, and shapes the answer.
"""

from __future__ import annotations

from typing import Any

from chalice import Chalice, Rate, Response

from chalicelib import runtime
from chalicelib.resources import ALARM_TOPIC_SUFFIX, names_from_env

app = Chalice(app_name="runner-scaler")
NAMES = names_from_env()  # resource names only: no client is built at import time
ALARM_TOPIC = f"{NAMES.prefix}{ALARM_TOPIC_SUFFIX}"


@app.route("/health", methods=["GET"])
def health() -> dict[str, str]:
    """Liveness for load balancers and the demo: no AWS call."""
    return {"status": "ok"}


@app.route(
    "/webhooks/gitlab",
    methods=["POST"],
    content_types=["application/json", "text/plain", "application/octet-stream"],
)
def gitlab_webhook() -> Response:
    """GitLab Job and Pipeline hooks (project or group): record the job, mark its pool dirty, answer 202."""
    from chalicelib.webhooks import receive

    request = app.current_request
    assert request is not None  # Chalice sets it for every route invocation
    with runtime.invocation() as wiring:
        answer = receive(wiring.ports, request.headers, request.raw_body)
    return Response(body=answer.body, status_code=answer.status, headers={"Content-Type": "application/json"})


@app.schedule(Rate(1, unit=Rate.MINUTES), name="tick")
def tick(event: Any) -> dict[str, Any]:
    """Every minute: reconcile every pool (or queue one reconcile per pool); heals what events left behind."""
    from chalicelib.triggers import run_tick

    with runtime.invocation() as wiring:
        tick = run_tick(wiring.ports, owner=event.context.aws_request_id)
    pools = {r.pool: {"desired": r.desired_after, "errors": r.errors} for r in tick.results}
    return {"pools": pools, "queued": tick.queued, "unqueued": tick.unqueued}


# One message (one pool) per invocation: pools reconcile in parallel, and no invocation's CPU grows with
# the fleet (bench/reconcile.json: a pool of 1,000 machines reconciles in well under a second).
@app.on_sqs_message(queue=NAMES.queue, batch_size=1, name="pool_dirty")
def pool_dirty(event: Any) -> dict[str, Any]:
    """A pool's jobs changed: reconcile it now (the fast scale-up path); failures go back to the queue."""
    from chalicelib.triggers import process_dirty_batch

    with runtime.invocation() as wiring:
        return process_dirty_batch(wiring.ports, event.to_dict(), owner=event.context.aws_request_id)


@app.lambda_function(name="rotate_base_certs")
def rotate_base_certs(event: dict[str, Any], context: Any) -> dict[str, str]:
    """Secrets Manager rotation of the fleet's Docker TLS CA: one of the four steps per invocation."""
    from chalicelib.rotation import run_rotation_event

    with runtime.invocation() as wiring:
        return run_rotation_event(wiring.cert_ports, event)


@app.on_cw_event(
    {
        "source": ["aws.autoscaling", "aws.ec2"],
        "detail-type": [
            "EC2 Instance-launch Lifecycle Action",
            "EC2 Instance-terminate Lifecycle Action",
            "EC2 Instance Launch Unsuccessful",
            "EC2 Spot Instance Interruption Warning",
            "EC2 Instance Rebalance Recommendation",
            "EC2 Instance State-change Notification",
        ],
    },
    name="machine_events",
)
def machine_events(event: Any) -> dict[str, Any]:
    """ASG lifecycle hooks, Spot warnings and state changes: prepare, drain or clean up one machine."""
    from chalicelib.lifecycle import handle_machine_event

    with runtime.invocation() as wiring:
        return handle_machine_event(wiring.ports, event.to_dict())


@app.on_sns_message(topic=ALARM_TOPIC, name="alarms")
def alarms(event: Any) -> dict[str, Any]:
    """CloudWatch alarms: reconcile now, redrive dead letters, or steer launches away from failed capacity."""
    from chalicelib.alarms import handle_alarm_message

    with runtime.invocation() as wiring:
        return handle_alarm_message(wiring.ports, event.message, owner=event.context.aws_request_id)
