"""Use case: everything between "the ASG launched an instance" and "the instance is gone".

Launch: create the machine's GitLab runner, issue its Docker server certificate (pools with docker_tcp_tls),
store them in the machine's own secret, record the machine, complete the lifecycle action. A permanent
failure is cleaned up, ends the machine with a decrement and faults the pool (no relaunch loop); a transient
one is cleaned up and left open for Lambda's retry.
Terminate: rescue an interrupted job, delete the runner and the secret, retire the record (kept a while, off
the index, so the other events of the same end find the work done).
Spot warning: pause the runner, mark the machine draining, and reconcile so a replacement launches.
Warm pool: a machine launched into the pool gets nothing (no runner, no secret) and is let go; it gets its
runner when it leaves the pool for the group, exactly as a plain launch. A machine that ran a job never
comes back from the pool into service.
Every step is idempotent: the same event delivered twice creates one runner. A launch that completes also
measures scale-up latency (`scale_up_seconds`), emitted by the entry point. No boto3 here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.capacity import free_slots
from chalicelib.config import Config, Pool
from chalicelib.errors import AwsCallError, GitLabError, MalformedEventError, NotFoundError, RetryLaterError
from chalicelib.fleet import Fleet
from chalicelib.jobs import DirtyMarker, runner_description
from chalicelib.resources import TAG_INSTANCE_ARN, TAG_POOL, Names
from chalicelib.store import Fault, JobRecord, MachineRecord, Store

if TYPE_CHECKING:
    from chalicelib.events.aws import LifecycleActionEvent
    from chalicelib.gitlab import GitLabApi
    from chalicelib.ports import Ports

logger = logging.getLogger(__name__)

CONTINUE = "CONTINUE"
ABANDON = "ABANDON"
#: Fault kind of a pool whose machines cannot be prepared (a permanent launch error): the reconciler
#: launches nothing into the pool until the fault expires.
PREPARE_FAULT = "prepare"
PREPARE_FAULT_BACKOFF_SECONDS = 1800
PREPARE_FAULT_BACKOFF = timedelta(seconds=PREPARE_FAULT_BACKOFF_SECONDS)
#: Lifecycle states in which a machine that shut itself down still counts in its group's desired capacity
#: and no removal has decremented it yet. A Terminating machine was removed by the scaler (decremented then);
#: a warm-pool one takes no TerminateInstanceInAutoScalingGroup (Amazon EC2 Auto Scaling API Reference).
_DECREMENTABLE = frozenset({"InService", "Standby"})


class MachineSecrets(Protocol):
    """Per-machine secrets: `<prefix>/machines/<instance-id>`, readable only by that instance."""

    def put_machine_secret(self, name: str, value: str, tags: dict[str, str]) -> None: ...

    def delete_machine_secret(self, name: str) -> None: ...

    def machine_secret_exists(self, name: str) -> bool: ...


class TlsIssuer(Protocol):
    """Issues a machine's Docker server certificate from the fleet CA; the CA key never leaves the issuer."""

    def issue(self, hosts: list[str], now: datetime) -> tuple[str, str, str]:
        """(server certificate PEM, server key PEM, trust bundle PEM)."""
        ...


@dataclass(frozen=True)
class LifecycleAction:
    """The fields of an ASG lifecycle event the use case needs."""

    asg: str
    hook: str
    token: str
    instance_id: str
    transition: str  # autoscaling:EC2_INSTANCE_LAUNCHING | autoscaling:EC2_INSTANCE_TERMINATING
    region: str = ""
    account: str = ""
    #: The instance's ARN when known already (a reused Mac's, kept in its record since its launch).
    arn: str = ""

    @property
    def instance_arn(self) -> str:
        """The ARN IAM sees as `ec2:SourceInstanceARN` on the machine's own requests."""
        return self.arn or f"arn:aws:ec2:{self.region}:{self.account}:instance/{self.instance_id}"


@dataclass
class LifecycleOutcome:
    instance_id: str
    result: str = CONTINUE
    runner_id: int | None = None
    created_runner: bool = False
    retried_jobs: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pool: str = ""
    #: Seconds the job this new machine serves had been pending when the machine came into service.
    scale_up_seconds: float | None = None
    #: Why the machine's pool got a fault (a permanent launch error), for the PoolFaults metric.
    pool_fault: str = ""


@dataclass
class Lifecycle:
    config: Config
    names: Names
    store: Store
    fleet: Fleet
    gitlab: GitLabApi
    secrets: MachineSecrets
    tls: TlsIssuer
    dirty: DirtyMarker
    gitlab_ca_bundle: str = ""

    def pool_of(self, asg: str) -> Pool | None:
        return next((p for p in self.config.pools if p.asg == asg), None)

    # -- launch ---------------------------------------------------------------------------------------
    def launch(
        self, action: LifecycleAction, now: datetime, *, from_warm_pool: bool = False
    ) -> LifecycleOutcome:
        """Prepare a machine coming into service: a fresh launch, or one leaving the warm pool
        (`from_warm_pool`), which gets its runner and token now, never before."""
        outcome = LifecycleOutcome(action.instance_id)
        pool = self.pool_of(action.asg)
        if pool is None:
            outcome.notes.append(f"group {action.asg} is not a runner-scaler pool; left alone")
            return outcome
        secret_name = self.names.machine_secret(action.instance_id)
        record = self.store.get_machine(action.instance_id)
        if from_warm_pool and record is not None and (record.retired_at is not None or record.job_ids):
            # It ran jobs and went back to the pool (a group whose warm pool reuses machines on scale-in;
            # the reconcile sets ReuseOnScaleIn false again). ABANDON on launch terminates the instance
            # ("Amazon EC2 Auto Scaling lifecycle hooks"): a used machine never takes another job.
            outcome.result = ABANDON
            outcome.notes.append("ran jobs before it went back to the warm pool: never reused, abandoned")
            logger.warning(
                "used machine left the warm pool; abandoned", extra={"instance_id": action.instance_id}
            )
            self._complete(action, ABANDON)
            return outcome
        # Prepared once its secret was stored. The secret alone is no witness: the machine deletes it once
        # read, and preparing again would delete the runner it uses. (A record from before `prepared_at`
        # existed has only the secret to show.)
        if (
            record is not None
            and record.runner_id is not None
            and (record.prepared_at is not None or self.secrets.machine_secret_exists(secret_name))
        ):
            outcome.runner_id = record.runner_id
            outcome.notes.append("already prepared (duplicate event)")
            self._complete(action, CONTINUE)
            return outcome
        try:
            self._prepare(pool, action, record, now, outcome)
        except (GitLabError, AwsCallError, NotFoundError) as exc:
            self._undo_launch(outcome, secret_name)
            if isinstance(exc, GitLabError | AwsCallError) and exc.retryable:
                # A rate limit or an outage: abandoning would replace the machine and pay a boot for nothing
                # (and, after a burst, hit the rate limit again). The action stays open; Lambda retries.
                logger.warning(
                    "machine launch deferred", extra={"instance_id": action.instance_id, "error": str(exc)}
                )
                raise RetryLaterError(f"launch of {action.instance_id} deferred: {exc}") from exc
            logger.error(
                "machine launch failed; ending the machine",
                extra={"instance_id": action.instance_id, "error": str(exc)},
            )
            outcome.result = ABANDON
            outcome.notes.append(str(exc))
            self._give_up(pool, action, str(exc), now, outcome)
            return outcome
        self._complete(action, outcome.result)
        if outcome.result == CONTINUE:
            outcome.pool = pool.name
            outcome.scale_up_seconds = self._scale_up_latency(pool, action.instance_id, now)
        return outcome

    def _scale_up_latency(self, pool: Pool, instance_id: str, now: datetime) -> float | None:
        """Measured after the lifecycle action completed (the machine is not kept waiting for it): two reads.

        None when no job waited for this machine, or when the state could not be read (logged; the launch
        itself went fine, so a lost measurement is not an error).
        """
        try:
            jobs = self.store.pool_jobs(pool.name)
            others = [m for m in self.store.machines(pool.name) if m.instance_id != instance_id]
        except AwsCallError as exc:
            logger.warning(
                "scale-up latency not measured",
                extra={"pool": pool.name, "instance_id": instance_id, "error": str(exc)},
            )
            return None
        waiting = [since for job in jobs if (since := pending_since(job)) is not None]
        # The slots ahead are counted only until they cover every waiting job: then no job waited for this
        # machine, whatever the rest add (a launch with nothing pending counts none).
        ahead = 0
        for m in others:
            if ahead >= len(waiting):
                return None
            if m.runner_id is not None and m.draining_since is None:  # a draining machine has no free slot
                ahead += free_slots(pool, running_jobs=len(m.running), jobs_started=m.jobs_started)
        return scale_up_seconds(waiting, ahead, now)

    def _prepare(
        self,
        pool: Pool,
        action: LifecycleAction,
        record: MachineRecord | None,
        now: datetime,
        outcome: LifecycleOutcome,
    ) -> None:
        description = runner_description(pool.name, action.instance_id)
        # A runner left by an attempt that stopped before storing its token cannot be reused: replace it. The
        # record names it (stored right after creation, below), so a launch never pages through every runner
        # in scope; one created by an attempt that died before that write is the orphan sweep's.
        if record is not None and record.runner_id is not None:
            self.gitlab.delete_runner(record.runner_id)
        settings = self.config.gitlab
        created = self.gitlab.create_runner(
            runner_type=settings.runner_type,
            group_id=settings.group_id,
            project_id=settings.project_id,
            description=description,
            tag_list=list(pool.tags),
            run_untagged=pool.run_untagged,
            locked=pool.locked,
            maintenance_note=f"Managed by runner-scaler (pool {pool.name}); deleted when the machine ends.",
        )
        outcome.runner_id = int(created.id)
        outcome.created_runner = True
        base = record or MachineRecord(instance_id=action.instance_id, pool=pool.name, launched_at=now)
        # Merges: never erases adoption. The ARN is kept for a reuse's new secret (`prepare_reused`). Jobs are
        # attributed to this machine by the runner's id (mapped in the same write), never by its editable
        # description: one all-or-nothing write, so a runner on the record is always mapped, and a failure
        # leaves neither (the runner is then deleted by `_undo_launch`).
        registered = replace(base, runner_id=int(created.id), instance_arn=action.instance_arn)
        self.store.register_runner(registered, now)
        payload: dict[str, Any] = {
            "pool": pool.name,
            "runner_id": int(created.id),
            "runner_token": created.token,
            "gitlab_url": settings.url,
            "executor": pool.executor,
            "max_builds": pool.max_use_count,
            "gitlab_ca_bundle": self.gitlab_ca_bundle,
        }
        if pool.docker_tcp_tls:
            # Only a pool that opened Docker's TLS listener reads these (the boot scripts' docker_tcp_tls
            # branch); issuing them costs an EC2 read of the addresses and a read of the fleet CA.
            server_cert, server_key, trust = self.tls.issue(
                self.fleet.instance_addresses(action.instance_id), now
            )
            payload.update(server_cert=server_cert, server_key=server_key, ca_bundle=trust)
        self.secrets.put_machine_secret(
            self.names.machine_secret(action.instance_id),
            json.dumps(payload),
            {TAG_POOL: pool.name, TAG_INSTANCE_ARN: action.instance_arn},
        )
        self.store.mark_prepared(action.instance_id, now)

    def _give_up(
        self, pool: Pool, action: LifecycleAction, reason: str, now: datetime, outcome: LifecycleOutcome
    ) -> None:
        """A permanent launch error (no base certs, a GitLab 4xx): end the machine without a replacement.

        Completing with ABANDON would make Auto Scaling terminate the instance and launch another at once
        to keep the desired capacity ("Amazon EC2 Auto Scaling lifecycle hooks": ABANDON on launch
        terminates the instance), which fails the same way: a loop that costs a boot each turn, and a
        50-minute host scrub on Mac. So the machine is terminated with a decrement
        (TerminateInstanceInAutoScalingGroup, ShouldDecrementDesiredCapacity), which ends its open launch
        action too, and the pool gets a fault the reconciler reads: no launch into it until the backoff
        passes. Only when the termination is refused is the action abandoned, as before.
        """
        fault = Fault(pool.name, PREPARE_FAULT, "", now + PREPARE_FAULT_BACKOFF, reason)
        try:
            self.store.put_fault(fault)
        except AwsCallError as exc:
            outcome.notes.append(f"pool fault not recorded: {exc}")
        outcome.pool, outcome.pool_fault = pool.name, reason
        try:
            self.fleet.terminate(action.instance_id)
        except AwsCallError as exc:
            outcome.notes.append(f"terminate refused, abandoning instead: {exc}")
            self._complete(action, ABANDON)
            return
        outcome.notes.append("terminated with a decrement; pool launches paused")

    def _undo_launch(self, outcome: LifecycleOutcome, secret_name: str) -> None:
        """Leave nothing behind after a failed launch: no runner, no secret."""
        if outcome.created_runner and outcome.runner_id is not None:
            try:
                self.gitlab.delete_runner(outcome.runner_id)
            except GitLabError as exc:
                outcome.notes.append(f"runner {outcome.runner_id} left for the orphan sweep: {exc}")
        try:
            self.secrets.delete_machine_secret(secret_name)
        except AwsCallError as exc:
            outcome.notes.append(f"secret left for the orphan sweep: {exc}")

    def clear_for_reuse(self, instance_id: str, runner_id: int | None) -> None:
        """A used Mac is about to get a fresh root volume: its runner (used, paused by the drain) and any
        secret left of its launch go, as at a termination. A leftover secret would hand the new volume the
        deleted runner's token; normally the machine deleted it once read. Raises GitLabError / AwsCallError
        (nothing is replaced then: the next reconcile tries again)."""
        if runner_id is not None:
            self.gitlab.delete_runner(runner_id)  # False when already gone: fine
        self.secrets.delete_machine_secret(self.names.machine_secret(instance_id))

    def prepare_reused(self, pool: Pool, record: MachineRecord, now: datetime) -> LifecycleOutcome:
        """A reused Mac's root volume is fresh (its replacement task succeeded): a new runner and a new
        secret, by the launch's own steps (`_prepare`). Called only then, never before: the old volume, which
        ran a job, never sees the new token. The new volume's user data reads the secret at boot as a new
        machine's does, and the secret is tagged with the same instance ARN, so the secret policy
        (`ec2:SourceInstanceARN`, infra/policy.py) lets this instance, and only it, read it.

        A failure is undone (no runner, no secret left) and raised: the record still names the task, so the
        next reconcile tries again.
        """
        action = LifecycleAction(pool.asg, "", "", record.instance_id, "reuse", arn=record.instance_arn)
        outcome = LifecycleOutcome(record.instance_id, pool=pool.name)
        try:
            self._prepare(pool, action, record, now, outcome)
        except (GitLabError, AwsCallError, NotFoundError):
            self._undo_launch(outcome, self.names.machine_secret(record.instance_id))
            raise
        return outcome

    def pass_warm(self, action: LifecycleAction, why: str) -> LifecycleOutcome:
        """A warm-pool transition that needs nothing from us: let it go on (CONTINUE).

        Entering the pool: the machine boots once (its user data pre-initializes it and waits, without a
        runner, while its target lifecycle state is Warmed:*), then Auto Scaling stops or hibernates it. No
        runner is created and no secret written: a stopped machine holds no credential. Leaving a warm
        instance to end (the pool shrank): it never had a runner. Without a completion the instance would
        wait in Warmed:Pending:Wait until the hook's heartbeat timeout ("Use lifecycle hooks with a warm
        pool in Auto Scaling group").
        """
        outcome = LifecycleOutcome(action.instance_id, notes=[why])
        if self.pool_of(action.asg) is None:
            outcome.notes.append(f"group {action.asg} is not a runner-scaler pool; left alone")
            return outcome
        self._complete(action, CONTINUE)
        return outcome

    # -- terminate ------------------------------------------------------------------------------------
    def terminate(
        self, action: LifecycleAction, now: datetime, *, record: MachineRecord | None = None
    ) -> LifecycleOutcome:
        """Clean up after a machine; `record`: its record, when the caller has just read it (saves a read)."""
        outcome = LifecycleOutcome(action.instance_id)
        pool = self.pool_of(action.asg)
        if record is None:
            record = self.store.get_machine(action.instance_id)
        if record is not None and record.retired_at is not None:
            # Another event of this machine's end (EC2's shutting-down, or the terminate hook) cleaned up.
            outcome.pool, outcome.runner_id = record.pool, record.runner_id
            outcome.notes.append("already cleaned up")
            self._complete(action, CONTINUE)
            return outcome
        if pool is not None:
            outcome.pool = pool.name
            try:
                self._retire(pool, action.instance_id, record, now, outcome)
            except (GitLabError, AwsCallError) as exc:
                # Termination goes on regardless (the instance is leaving); the orphan sweep finishes the job.
                outcome.notes.append(f"cleanup incomplete, left for the orphan sweep: {exc}")
        self._complete(action, CONTINUE)
        return outcome

    def _retire(
        self,
        pool: Pool,
        instance_id: str,
        record: MachineRecord | None,
        now: datetime,
        outcome: LifecycleOutcome,
    ) -> None:
        runner_id = record.runner_id if record else None
        if runner_id is None:
            description = runner_description(pool.name, instance_id)
            found = [
                r
                for r in self.gitlab.list_runners(description, **self._runner_scope())
                if r.description == description
            ]
            runner_id = found[0].id if found else None
        if runner_id is not None:
            if pool.retry_interrupted_jobs:
                # On every termination path, not only Spot: a job GitLab still shows running on a machine
                # that is going cannot finish (a job that slipped in past a drain, a manual termination).
                outcome.retried_jobs = self._rescue_jobs(runner_id, now)
            self.gitlab.delete_runner(runner_id)
            outcome.runner_id = runner_id
        self.secrets.delete_machine_secret(self.names.machine_secret(instance_id))
        # Retired, not deleted: the other events of this end find it done. No reconcile is asked for: the
        # scaler removed it (that reconcile counted it), or it ended itself after its jobs (demand is
        # unchanged), or it was interrupted (its jobs' retries come back pending, which asks); the tick
        # counts what is left.
        self.store.retire_machine(record or MachineRecord(instance_id, pool.name, now), now)

    def _rescue_jobs(self, runner_id: int, now: datetime) -> list[int]:
        """Retry, once per job, the jobs an interrupted machine was running (GitLab would fail them)."""
        retried: list[int] = []
        for job in self.gitlab.runner_jobs(runner_id, "running"):
            if not self.store.first_seen(f"retry#{job.project_id}#{job.id}", now):
                continue
            # GitLab retries only finished jobs; this one can never finish, its machine is going.
            self.gitlab.cancel_job(job.project_id, job.id)
            self.gitlab.retry_job(job.project_id, job.id)
            retried.append(int(job.id))
            logger.warning(
                "retried a job interrupted by Spot", extra={"job_id": job.id, "runner_id": runner_id}
            )
        return retried

    def shut_down(self, pool: Pool, instance_id: str) -> list[str]:
        """A machine of ours is shutting down without our terminate hook: take it out of its group.

        A machine shuts itself down once its runner has exited (its user data); the launch template's
        instance-initiated shutdown behaviour terminates it. Auto Scaling would replace it, so the scaler
        removes it with a decrement while it is still InService or Standby. Never a machine that is already
        Terminating (a scaler removal: it was decremented then) or gone. Notes say what was done.
        """
        try:
            # One read of the instance (DescribeAutoScalingInstances, inside `terminate`), not of its group.
            removed = self.fleet.terminate(instance_id, _DECREMENTABLE)
        except AwsCallError as exc:
            # It changed state meanwhile; the next reconcile counts what is really there.
            return [f"not decremented: {exc}"]
        if not removed:
            return ["not decremented: not InService or Standby in its group (or gone)"]
        return ["shut itself down: left its group with a decrement"]

    # -- spot -----------------------------------------------------------------------------------------
    def interrupted(
        self, instance_id: str, reason: str, now: datetime, *, hint: bool = False
    ) -> LifecycleOutcome:
        """Spot warning: stop new jobs, drain, and launch a replacement now.

        A rebalance recommendation (`hint`) is not an interruption: "a signal that notifies you when a Spot
        Instance is at elevated risk of interruption" (EC2 user guide, "EC2 instance rebalance
        recommendations"). A busy machine keeps its job; an idle one is marked for removal ("rebalance"),
        which the next reconcile carries out through the drain protocol, launching a replacement if needed.
        """
        outcome = LifecycleOutcome(instance_id)
        record = self.store.get_machine(instance_id)
        if record is None:
            outcome.notes.append("unknown machine; nothing to drain")
            return outcome
        if hint:
            if self.store.start_draining(instance_id, "rebalance", now) is None:
                outcome.notes.append("busy: the hint is ignored, the job runs on")
                return outcome
            self.dirty.mark_dirty(record.pool, f"machine {instance_id} {reason}", now)
            outcome.runner_id = record.runner_id
            return outcome
        self.store.start_draining(instance_id, "spot", now, only_if_idle=False)
        if record.runner_id is not None:
            try:
                self.gitlab.pause_runner(record.runner_id, True)
            except GitLabError as exc:
                outcome.notes.append(f"runner not paused: {exc}")
        self.dirty.mark_dirty(record.pool, f"machine {instance_id} {reason}", now)
        outcome.runner_id = record.runner_id
        return outcome

    # -- plumbing -------------------------------------------------------------------------------------
    def _complete(self, action: LifecycleAction, result: str) -> None:
        if action.token:
            self.fleet.complete_lifecycle_action(
                action.asg, action.hook, action.token, action.instance_id, result
            )

    def _runner_scope(self) -> dict[str, Any]:
        settings = self.config.gitlab
        return {
            "runner_type": settings.runner_type,
            "group_id": settings.group_id,
            "project_id": settings.project_id,
        }


# -- scale-up latency (pure) ------------------------------------------------------------------------------


def scale_up_seconds(pending: Sequence[datetime], slots_ahead: int, now: datetime) -> float | None:
    """Seconds the job a machine coming into service will take had been pending; None if no job waits for it.

    GitLab hands a pool's pending jobs out oldest first, so the free slots already in service (`slots_ahead`)
    take the oldest ones and this machine's first slot takes the next: pairing a burst of new machines with
    a backlog one to one, instead of charging each the oldest job's wait.
    """
    waiting = sorted(pending)
    if slots_ahead >= len(waiting):
        return None
    return max(0.0, (now - waiting[slots_ahead]).total_seconds())


def pending_since(job: JobRecord) -> datetime | None:
    """When a pending job became pending, as the scaler saw it; None for a job in any other status.

    The store's `updated_at` is set when the status rises (GitLab's pending webhook, or the heal);
    `created_at` is only the fallback, since for a later stage it is when the pipeline was created.
    """
    if job.status != "pending":
        return None
    return job.updated_at or job.created_at


# -- entry point for the EventBridge handler (the only code here that touches the ports) ----------------


def handle_machine_event(ports: Ports, raw: dict[str, Any]) -> dict[str, Any]:
    """Parse an EventBridge event and run its use case; malformed or foreign events are logged and dropped."""
    from chalicelib.alarms import record_launch_failure
    from chalicelib.events.aws import (
        InstanceStateChangeEvent,
        LaunchUnsuccessfulEvent,
        LifecycleActionEvent,
        RebalanceRecommendationEvent,
        SpotInterruptionEvent,
        parse_cloudwatch_event,
    )

    try:
        event = parse_cloudwatch_event(raw)
    except MalformedEventError as exc:
        logger.error("dropping malformed machine event", extra={"reason": exc.reason})
        return {"action": "dropped", "reason": exc.reason}
    if isinstance(event, LaunchUnsuccessfulEvent):
        fault = record_launch_failure(ports.config, ports.store, ports.metrics, event, ports.now())
        return {"action": "LaunchUnsuccessfulEvent", "fault": fault.kind if fault else None}
    use_case = machine_lifecycle(ports)
    now = ports.now()
    if isinstance(event, LifecycleActionEvent):
        detail = event.detail
        action = LifecycleAction(
            asg=detail.auto_scaling_group_name,
            hook=detail.lifecycle_hook_name,
            token=detail.lifecycle_action_token,
            instance_id=event.instance_id,
            transition=str(detail.lifecycle_transition),
            region=event.region,
            account=event.account,
        )
        outcome = _lifecycle_action(use_case, event, action, now)
    elif isinstance(event, SpotInterruptionEvent):
        outcome = use_case.interrupted(event.instance_id, "spot interruption warning", now)
    elif isinstance(event, RebalanceRecommendationEvent):
        outcome = use_case.interrupted(event.instance_id, "rebalance recommendation", now, hint=True)
    elif isinstance(event, InstanceStateChangeEvent) and event.detail.state in {
        "shutting-down",
        "terminated",
    }:
        outcome = ended_without_hook(use_case, ports, event.instance_id, event.detail.state, now)
    else:
        return {"action": "ignored"}
    _emit(ports, outcome)
    return {"action": type(event).__name__, **_summary(outcome)}


def machine_lifecycle(ports: Ports) -> Lifecycle:
    """The lifecycle use case on the ports: the machine-event handler's, and a reconcile's for a reused Mac's
    new runner and secret (one code path for both)."""
    from chalicelib.rotation import ServerCertIssuer

    secrets = ports.secrets
    return Lifecycle(
        config=ports.config,
        names=ports.names,
        store=ports.store,
        fleet=ports.fleet,
        gitlab=ports.gitlab,
        secrets=secrets,
        tls=ServerCertIssuer(secrets, ports.names.base_certs_secret),
        dirty=ports.queue,
        gitlab_ca_bundle=ports.secret_text(ports.config.gitlab.ca_bundle_secret)
        if ports.config.gitlab.ca_bundle_secret
        else "",
    )


def _lifecycle_action(
    use_case: Lifecycle, event: LifecycleActionEvent, action: LifecycleAction, now: datetime
) -> LifecycleOutcome:
    """Route a lifecycle action by its warm-pool move (chalicelib.events.aws.WarmPoolMove): entering the pool
    or a warm machine ending needs nothing; leaving it is a launch; going back to it ends the runner."""
    from chalicelib.events.aws import WarmPoolMove

    move = event.warm_pool_move
    if move is WarmPoolMove.ENTER:
        return use_case.pass_warm(action, "entered the warm pool: no runner until it leaves")
    if move is WarmPoolMove.END:
        return use_case.pass_warm(action, "a warm machine ended: it never had a runner")
    if move is WarmPoolMove.RETURN:
        # Only with ReuseOnScaleIn, which the scaler never sets: its runner and secret go as at a termination,
        # and its record is retired, so that leaving the pool again abandons it.
        return use_case.terminate(action, now)
    if event.is_launch:
        return use_case.launch(action, now, from_warm_pool=move is WarmPoolMove.LEAVE)
    return use_case.terminate(action, now)


def _emit(ports: Ports, outcome: LifecycleOutcome) -> None:
    """Scale-up latency of a machine that came into service; jobs retried after a Spot interruption."""
    metrics = ports.metrics
    if outcome.pool_fault and outcome.pool:
        pool = ports.config.pool(outcome.pool)
        metrics.emit({"PoolFaults": 1}, {"pool": pool.name, "platform": pool.platform.value})
    if outcome.scale_up_seconds is not None:
        pool = ports.config.pool(outcome.pool)
        metrics.emit_scale_up(pool.name, pool.platform.value, outcome.scale_up_seconds)
    if outcome.retried_jobs and outcome.pool:
        pool = ports.config.pool(outcome.pool)
        dimensions = {"pool": pool.name, "platform": pool.platform.value}
        metrics.emit({"JobsRetried": len(outcome.retried_jobs)}, dimensions)


def ended_without_hook(
    use_case: Lifecycle, ports: Ports, instance_id: str, state: str, now: datetime
) -> LifecycleOutcome:
    """An instance ends without our terminate hook (it shut itself down, the hook timed out, someone
    terminated it): a machine shutting down leaves its group with a decrement; then everything is cleaned
    up. The machine-event handler's use case for EC2's state changes, which the simulator calls too."""
    record = ports.store.get_machine(instance_id)
    if record is None:
        return LifecycleOutcome(instance_id, notes=["unknown machine"])
    if record.retired_at is not None:
        return LifecycleOutcome(instance_id, notes=["already cleaned up"])
    pool = ports.config.pool(record.pool)
    notes = use_case.shut_down(pool, instance_id) if state == "shutting-down" else []
    action = LifecycleAction(pool.asg, "", "", instance_id, "ec2:terminated")
    outcome = use_case.terminate(action, now, record=record)
    outcome.notes[:0] = notes
    return outcome


def _summary(outcome: LifecycleOutcome) -> dict[str, Any]:
    return {
        "instance_id": outcome.instance_id,
        "result": outcome.result,
        "runner_id": outcome.runner_id,
        "retried_jobs": outcome.retried_jobs,
        "notes": outcome.notes,
    }
