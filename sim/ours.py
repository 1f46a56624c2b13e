"""Our scaler simulated: the production entry use cases (the webhook route's `webhooks.receive`, the tick's
`triggers.run_tick`, the dirty queue's `triggers.process_dirty_batch`, the machine lifecycle) given `Ports`
built from in-memory adapters of their Protocols, each counting the calls the real adapter makes. Hooks reach
the route as GitLab's JSON bodies and headers (toolkit.samples). Imports chalicelib's entry use cases, its
adapter types and the sim (tests/unit/test_sim_production_path.py holds it to that).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlsplit

from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from chalicelib.capacity.hosts import Host, HostState, IdleMark, LicenseRoom
from chalicelib.capacity.warm import WarmPoolSettings
from chalicelib.config import Config, Pool
from chalicelib.errors import AwsCallError, GitLabNotFoundError
from chalicelib.events.aws import DIRTY_REASON_MAX_CHARS, DirtyPoolMessage, ResolveAsk, ResolveTagsMessage
from chalicelib.fleet import LIVE_STATES, GroupView, Instance
from chalicelib.forecast import DurationEstimate, PipelineState
from chalicelib.gitlab import (
    CreatedRunner,
    HookInfo,
    HookTrigger,
    JobInfo,
    ProjectRef,
    RunnerInfo,
    RunnerType,
)
from chalicelib.hosts import HostPoolView, ReleaseResult
from chalicelib.lifecycle import Lifecycle, LifecycleAction, ended_without_hook
from chalicelib.pipelines import MemoryPipelines
from chalicelib.ports import CertPorts, Ports
from chalicelib.queue import RESOLVE_GROUP_PREFIX, DeadLetterQueue
from chalicelib.reconcile import Reconciler
from chalicelib.resources import DIRTY_WINDOW_SECONDS, Names
from chalicelib.secrets import SecretCache, parse_token_list
from chalicelib.store import JobRecord, MachineRecord, MemoryStore, Store, rank
from chalicelib.triggers import process_dirty_batch, run_tick
from chalicelib.webhooks import receive
from sim.gitlab import SimGitLab, description
from sim.hosts import NoHostPlanner, SimHost
from sim.model import HookEvent, PipelineHookEvent, SimMachine
from sim.ports import SimMetrics, SimSecrets, sqs_event
from sim.warm import POOL_STATES, Readiness, WarmPoolSpec
from sim.world import World
from toolkit.samples import (
    BuildSample,
    RunnerSample,
    job_hook_payload,
    pipeline_hook_payload,
    webhook_headers,
)

#: SQS FIFO drops a message whose deduplication id was seen in the last five minutes (SQS developer guide).
SQS_DEDUP_WINDOW_S = 300.0
#: The simulated pipelines carry no branch: every one runs on this ref (a duration key part).
SIM_REF = "main"
#: The webhook token the simulated GitLab's hooks carry, and the scaler's tokens secret holds.
SIM_HOOK_TOKEN = "sim-webhook-token"
#: The simulated GitLab sends no Idempotency-Key (GitLab 17.4 added it; webhooks docs, "Delivery headers"):
#: a duplicate is told apart by its content (`chalicelib.events.gitlab.event_identity`).
SIM_GITLAB_VERSION = "17.3.0"
#: Lifecycle transitions of the Auto Scaling hooks' events ("Amazon EC2 Auto Scaling lifecycle hooks").
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
#: Seconds from the call that ends a machine to the events of its end reaching the app (modelled).
END_EVENT_DELAY_S = 1.0


class MachineIndex(dict[str, MachineRecord]):
    """`MemoryStore.machine_records` that also files each record under its pool while it is not retired: the
    pool's machine index of DynamoStore (retired records leave it). Every write MemoryStore makes goes
    through `__setitem__`, `setdefault` or `pop`, which keep the index; `by_pool[pool]` lists the pool's
    records in the dict's own order."""

    def __init__(self) -> None:
        super().__init__()
        self.by_pool: dict[str, dict[str, MachineRecord]] = {}

    def __setitem__(self, key: str, value: MachineRecord) -> None:
        old = self.get(key)
        if old is not None and old.pool != value.pool:
            self.by_pool.get(old.pool, {}).pop(key, None)
        super().__setitem__(key, value)
        if value.retired_at is None:
            self.by_pool.setdefault(value.pool, {})[key] = value
        else:
            self.by_pool.get(value.pool, {}).pop(key, None)

    def setdefault(self, key: str, default: MachineRecord) -> MachineRecord:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        old = self.get(key)
        if old is not None:
            self.by_pool.get(old.pool, {}).pop(key, None)
        return super().pop(key, *default)

    def __delitem__(self, key: str) -> None:
        self.pop(key)


class IndexedMemoryStore(MemoryStore):
    """`MemoryStore` with per-pool indexes of active jobs and of machines not retired, as DynamoStore has
    (a sparse GSI, the pool's machine items).

    The twin scans every job and machine it ever saw on each `pool_jobs` and `machines`; a day of trace
    makes that the simulator's bottleneck. Same answers, in the same order, found through the indexes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._active: dict[str, dict[str, None]] = {}
        self.machine_records = MachineIndex()

    def machines(self, pool: str) -> list[MachineRecord]:
        with self._lock:
            records = self.machine_records
            assert isinstance(records, MachineIndex)
            return list(records.by_pool.get(pool, {}).values())

    def record_job(self, job: JobRecord, now: datetime) -> bool:
        changed = super().record_job(job, now)
        if changed:
            self._reindex(job.key)
        return changed

    def reopen_skipped(self, job: JobRecord, now: datetime, *, event_key: str = "") -> bool:
        reopened = super().reopen_skipped(job, now, event_key=event_key)
        if reopened:
            self._reindex(job.key)
        return reopened

    def settle_job(self, job: JobRecord) -> None:
        super().settle_job(job)
        for keys in self._active.values():
            keys.pop(job.key, None)

    def pool_jobs(self, pool: str) -> list[JobRecord]:
        return [self.jobs[key] for key in self._active.get(pool, {})]

    def _reindex(self, key: str) -> None:
        """Put the job under its pool when it is active (pending or later) and not settled; nowhere else."""
        stored = self.jobs[key]
        for keys in self._active.values():
            keys.pop(key, None)
        if rank(stored.status) >= rank("pending") and key not in self._settled:
            self._active.setdefault(stored.pool, {})[key] = None


class StaleIndexStore(IndexedMemoryStore):
    """`IndexedMemoryStore` whose per-pool reads lag, as DynamoDB's global secondary index may ("All reads
    from GSIs and streams are eventually consistent": DynamoDB developer guide, "DynamoDB read consistency").

    `machines(pool)` and `pool_jobs(pool)` answer with a snapshot taken at least `lag_s` simulated seconds
    ago (the latest such; none before the first read). Key reads and conditional writes stay exact, as in
    DynamoDB. tests/stale_index.py is the same mode for the moto-backed tests.
    """

    def __init__(self, clock: Callable[[], float], lag_s: float) -> None:
        super().__init__()
        self._clock = clock
        self._lag_s = lag_s
        self._machine_snaps: list[tuple[float, dict[str, MachineRecord]]] = []
        self._job_snaps: dict[str, list[tuple[float, list[JobRecord]]]] = {}

    def machines(self, pool: str) -> list[MachineRecord]:
        now = self._clock()
        self._machine_snaps.append((now, dict(self.machine_records)))
        seen = _as_of(self._machine_snaps, now - self._lag_s) or {}
        return [m for m in seen.values() if m.pool == pool and m.retired_at is None]

    def pool_jobs(self, pool: str) -> list[JobRecord]:
        now = self._clock()
        snaps = self._job_snaps.setdefault(pool, [])
        snaps.append((now, super().pool_jobs(pool)))
        return list(_as_of(snaps, now - self._lag_s) or [])

    def unrouted_jobs(self) -> list[JobRecord]:
        """The unrouted index lags as the pool index does (the same GSI in DynamoStore)."""
        now = self._clock()
        snaps = self._job_snaps.setdefault(" unrouted", [])  # no pool has this name
        snaps.append((now, super().unrouted_jobs()))
        return list(_as_of(snaps, now - self._lag_s) or [])


def _as_of(snapshots: list[tuple[float, Any]], when: float) -> Any:
    """The latest snapshot taken at or before `when`; older ones are dropped (None if there is none)."""
    latest = None
    keep = 0
    for index, (taken, value) in enumerate(snapshots):
        if taken <= when:
            latest, keep = value, index
    del snapshots[:keep]
    return latest


class CountingStore:
    """`MemoryStore` behind a counter: in production every Store call is one DynamoDB call."""

    def __init__(self, inner: MemoryStore, calls: Counter[str]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls["dynamodb"] += 1
            return attribute(*args, **kwargs)

        setattr(self, name, counted)  # found on the instance from now on: no lookup, no new wrapper per call
        return counted


class CountingPipelines:
    """`MemoryPipelines` with DynamoPipelines' call counts: a put or delete per record, one Query per read of
    the active pipelines, a GetItem per estimate key, a consistent GetItem and a PutItem per observed key."""

    def __init__(self, inner: MemoryPipelines, calls: Counter[str]) -> None:
        self._inner = inner
        self._calls = calls

    def record(self, state: PipelineState, now: datetime) -> bool:
        self._calls["dynamodb"] += 1
        return self._inner.record(state, now)

    def active(self, gitlab: str, now: datetime) -> list[PipelineState]:
        self._calls["dynamodb"] += 1
        return self._inner.active(gitlab, now)

    def get(self, gitlab: str, pipeline_id: int) -> PipelineState | None:
        self._calls["dynamodb"] += 1
        return self._inner.get(gitlab, pipeline_id)

    def rewrite(self, state: PipelineState, now: datetime) -> bool:
        self._calls["dynamodb"] += 1
        return self._inner.rewrite(state, now)

    def estimates(self, keys: Iterable[str]) -> dict[str, DurationEstimate]:
        wanted = list(dict.fromkeys(keys))
        self._calls["dynamodb"] += len(wanted)
        return self._inner.estimates(wanted)

    def observe(self, keys: Iterable[str], duration_s: float, now: datetime) -> None:
        wanted = list(dict.fromkeys(keys))
        self._calls["dynamodb"] += 2 * len(wanted)
        self._inner.observe(wanted, duration_s, now)


class SimAsg:
    """`chalicelib.fleet.Fleet` and `WarmPools` over the simulated groups, with AsgFleet's call counts."""

    def __init__(self, world: World, calls: Counter[str]) -> None:
        self._world = world
        self._calls = calls
        self._views: dict[str, Instance] = {}  # the last Instance built per machine, reused while it holds
        self._warm: dict[str, WarmPoolSettings] = {}  # each group's WarmPoolConfiguration, as put

    def read_groups(self, asgs: Sequence[str]) -> dict[str, GroupView]:
        names = list(dict.fromkeys(asgs))
        self._calls["autoscaling"] += math.ceil(len(names) / 50)  # DescribeAutoScalingGroups
        fleet = self._world.fleet
        views: dict[str, GroupView] = {}
        for asg in names:
            pool = fleet.pool_of_asg.get(asg)
            if pool is None:
                continue
            group = fleet.groups[pool]
            instances = tuple(self._instance(m) for m in group.live.values())
            warm = fleet.warm_pools.get(pool)
            views[asg] = GroupView(
                asg,
                group.desired,
                0,
                group.pool.max_instances,
                instances,
                warm_pool=self._warm.get(asg),
                warm_size=warm.waiting() if warm is not None else 0,
            )
        return views

    def put_warm_pool(self, asg: str, settings: WarmPoolSettings) -> None:
        """PutWarmPool: the group's warm pool holds max(MinSize, MaxGroupPreparedCapacity - desired)
        instances ("Warm pools for Amazon EC2 Auto Scaling", warm pool size); the scaler always puts
        MinSize = MaxGroupPreparedCapacity (chalicelib.capacity.warm), an absolute size, the only form
        simulated. Its machines become ready by our path (the secret, Docker, run-single's first poll)."""
        self._calls["autoscaling"] += 1
        if settings.max_group_prepared_capacity != settings.min_size or settings.reuse_on_scale_in:
            raise ValueError(f"only an absolute warm pool without reuse is simulated, not {settings}")
        spec = WarmPoolSpec(settings.min_size, POOL_STATES[settings.pool_state], Readiness.SECRET)
        self._world.fleet.set_warm_pool(self._world.fleet.pool_of_asg[asg], spec)
        self._warm[asg] = settings

    def delete_warm_pool(self, asg: str) -> None:
        self._calls["autoscaling"] += 1
        self._world.fleet.delete_warm_pool(self._world.fleet.pool_of_asg[asg])
        self._warm.pop(asg, None)

    def launch_times(self, instance_ids: Sequence[str]) -> dict[str, datetime]:
        ids = list(dict.fromkeys(instance_ids))
        self._calls["ec2"] += math.ceil(len(ids) / 500)  # DescribeInstances
        machines = self._world.fleet.machines
        return {i: self._world.dt(machines[i].launched_at) for i in ids if i in machines}

    def _instance(self, machine: SimMachine) -> Instance:
        """InService from its launch on: the group puts an instance in service once its launch hook completes
        ("Amazon EC2 Auto Scaling lifecycle hooks"), and the hook (re-enacted in `Ours._launched`) completes
        within seconds of the launch, long before the machine's runner first polls GitLab (its boot time).
        So InService says nothing about readiness: the reconciler learns that from GitLab.
        An Instance is frozen: the one built last is reused while the machine's state and protection hold."""
        state = "InService" if machine.alive else "Terminating"
        view = self._views.get(machine.instance_id)
        if view is None or view.lifecycle_state != state or view.protected != machine.protected:
            view = Instance(machine.instance_id, lifecycle_state=state, protected=machine.protected)
            self._views[machine.instance_id] = view
        return view

    def set_desired_capacity(self, asg: str, desired: int) -> None:
        self._calls["autoscaling"] += 1
        self._world.fleet.set_desired(self._world.fleet.pool_of_asg[asg], desired)

    def protect(self, asg: str, instance_ids: Sequence[str]) -> None:
        self._calls["autoscaling"] += math.ceil(len(instance_ids) / 50)
        for instance_id in instance_ids:
            machine = self._world.fleet.machines.get(instance_id)
            if machine is not None:
                machine.protected = True

    def terminate(self, instance_id: str, states: frozenset[str] = LIVE_STATES) -> bool:
        """AsgFleet's read of the instance, then its termination only in `states` (never twice). A simulated
        machine is InService from its launch to its end."""
        self._calls["autoscaling"] += 1  # DescribeAutoScalingInstances
        machine = self._world.fleet.machines.get(instance_id)
        if machine is None or not machine.alive or "InService" not in states:
            return False
        self._calls["autoscaling"] += 1  # TerminateInstanceInAutoScalingGroup
        return self._world.fleet.terminate(instance_id, decrement=True)

    def complete_lifecycle_action(
        self, asg: str, hook: str, token: str, instance_id: str, result: str
    ) -> None:
        """The simulated group has no lifecycle hooks to hold instances: only the call is counted."""
        self._calls["autoscaling"] += 1

    def set_instance_types(self, group: GroupView, types: Sequence[str]) -> None:
        """Launch failures are not simulated, so no fallback is ever asked for; counted if it is."""
        self._calls["autoscaling"] += 1

    def instance_addresses(self, instance_id: str) -> list[str]:
        """The lifecycle is re-enacted without certificates: a simulated machine has no addresses to sign."""
        self._calls["ec2"] += 1
        return []


class SimGitLabApi:
    """`chalicelib.gitlab.GitLabApi` over the simulated GitLab: the calls the reconciler, `heal`, the tag
    resolver, the sweep and the lifecycle make, each counted as the one REST request GitLabClient makes.
    `calls` is the run's counter by service (GitLabClient's counts by endpoint)."""

    def __init__(
        self, gitlab: SimGitLab, calls: Counter[str], machines: Callable[[], Sequence[SimMachine]]
    ) -> None:
        self._gitlab = gitlab
        self.calls = calls
        self._machines = machines
        self._hooks: dict[tuple[int, int], HookInfo] = {}

    def list_runners(
        self,
        description_prefix: str,
        *,
        runner_type: RunnerType | None = None,
        group_id: int | None = None,
        project_id: int | None = None,
        status: str | None = None,
    ) -> list[RunnerInfo]:
        """Runners whose description starts with the prefix: each live machine's (created at its launch),
        `never_contacted` until the machine has booted and its runner polls, then `online` (gitlabhq
        `app/models/ci/runner.rb`, `Ci::Runner#status`; stale and offline never happen within a simulated
        run); GitLab's `status` filter too. The list endpoint leaves tags and contact time out."""
        self.calls["gitlab"] += 1
        listed = (self._runner(m) for m in self._machines() if description(m).startswith(description_prefix))
        return [r for r in listed if status is None or r.status == status]

    @staticmethod
    def _runner(machine: SimMachine) -> RunnerInfo:
        status = "never_contacted" if machine.ready_at is None else "online"
        return RunnerInfo(
            machine.runner_id, description(machine), machine.paused, status, None, None, status == "online"
        )

    def get_runner(self, runner_id: int) -> RunnerInfo:
        self.calls["gitlab"] += 1
        machine = next((m for m in self._machines() if m.runner_id == runner_id), None)
        if machine is None:
            raise GitLabNotFoundError("runners.get", f"runner {runner_id}", "404 Not Found")
        return self._runner(machine)

    def pause_runner(self, runner_id: int, paused: bool = True) -> None:
        self.calls["gitlab"] += 1
        self._gitlab.set_paused(runner_id, paused)

    def runner_jobs(self, runner_id: int, status: str = "running") -> list[JobInfo]:
        self.calls["gitlab"] += 1
        return [j for j in self._gitlab.runner_jobs(runner_id) if j.status == status]

    def get_job(self, project_id: int, job_id: int) -> JobInfo:
        self.calls["gitlab"] += 1
        return self._job(project_id, job_id, "jobs.get")

    def _job(self, project_id: int, job_id: int, action: str) -> JobInfo:
        info = self._gitlab.job_info(job_id)
        if info is None or info.project_id != project_id:
            raise GitLabNotFoundError(action, f"job {job_id} of project {project_id}", "404 Not Found")
        return info

    def list_jobs(self, project_id: int, scope: Sequence[str] = ("pending",)) -> list[JobInfo]:
        self.calls["gitlab"] += 1
        return self._gitlab.project_jobs(project_id, scope)

    def group_projects(self, group_id: int, *, include_subgroups: bool = True) -> list[ProjectRef]:
        self.calls["gitlab"] += 1
        return [ProjectRef(p.id, f"sim/project-{p.id}") for p in self._gitlab.projects()]

    def pipeline_jobs(
        self, project_id: int, pipeline_id: int, *, include_retried: bool = False
    ) -> list[JobInfo]:
        self.calls["gitlab"] += 1
        return self._gitlab.pipeline_jobs(pipeline_id)

    # -- the lifecycle's runner calls (chalicelib.lifecycle) ------------------------------------------------
    def create_runner(
        self,
        *,
        runner_type: RunnerType,
        description: str,
        tag_list: Sequence[str],
        run_untagged: bool,
        locked: bool,
        maintenance_note: str | None = None,
        group_id: int | None = None,
        project_id: int | None = None,
        paused: bool = False,
    ) -> CreatedRunner:
        """`POST /user/runners`: the simulated machine's runner already has its id (the world gave it one at
        launch); the call is what is counted."""
        self.calls["gitlab"] += 1
        instance_id = description.rsplit("/", 1)[-1]
        machine = next((m for m in self._machines() if m.instance_id == instance_id), None)
        return CreatedRunner(machine.runner_id if machine else 0, "sim-runner-token", None)

    def delete_runner(self, runner_id: int) -> bool:
        self.calls["gitlab"] += 1
        return True

    def retry_job(self, project_id: int, job_id: int) -> JobInfo:
        """Interrupted jobs are retried by the simulated GitLab itself (SimGitLab.unregister)."""
        self.calls["gitlab"] += 1
        return self._job(project_id, job_id, "jobs.retry")

    def cancel_job(self, project_id: int, job_id: int) -> JobInfo:
        self.calls["gitlab"] += 1
        return self._job(project_id, job_id, "jobs.cancel")

    # -- project hooks (chalicelib.hook_sync): kept as GitLab keeps them; the world delivers hooks anyway --
    def list_project_hooks(self, project_id: int) -> list[HookInfo]:
        self.calls["gitlab"] += 1
        return [h for (project, _), h in self._hooks.items() if project == project_id]

    def create_project_hook(
        self,
        project_id: int,
        *,
        url: str,
        token: str,
        job_events: bool = True,
        pipeline_events: bool = True,
        push_events: bool = False,
        enable_ssl_verification: bool = True,
    ) -> HookInfo:
        hook_id = len(self._hooks) + 1
        return self.update_project_hook(
            project_id,
            hook_id,
            url=url,
            token=token,
            job_events=job_events,
            pipeline_events=pipeline_events,
            push_events=push_events,
            enable_ssl_verification=enable_ssl_verification,
        )

    def update_project_hook(
        self,
        project_id: int,
        hook_id: int,
        *,
        url: str,
        token: str,
        job_events: bool = True,
        pipeline_events: bool = True,
        push_events: bool = False,
        enable_ssl_verification: bool = True,
    ) -> HookInfo:
        self.calls["gitlab"] += 1
        hook = HookInfo(
            hook_id,
            project_id,
            url,
            job_events,
            pipeline_events,
            push_events,
            enable_ssl_verification,
            alert_status=None,
            disabled_until=None,
        )
        self._hooks[(project_id, hook_id)] = hook
        return hook

    def test_project_hook(self, project_id: int, hook_id: int, trigger: HookTrigger = "job_events") -> None:
        self.calls["gitlab"] += 1


class CountingTls:
    """`chalicelib.lifecycle.TlsIssuer` with ServerCertIssuer's call count: one GetSecretValue of the fleet's
    base certificates per issued server certificate (chalicelib.rotation); no certificate is built."""

    def __init__(self, calls: Counter[str]) -> None:
        self._calls = calls

    def issue(self, hosts: list[str], now: datetime) -> tuple[str, str, str]:
        self._calls["secretsmanager"] += 1
        return "", "", ""


class SimDirtyQueue:
    """`chalicelib.queue.PoolQueue` as the "pool dirty" FIFO queue: `DirtyQueue`'s message bodies, group and
    deduplication ids, SQS FIFO's five-minute deduplication window and the queue's delay, then the SQS
    Lambda (`consume`, the `pool_dirty` handler's use case) with the message's event."""

    def __init__(self, world: World, calls: Counter[str], consume: Callable[[dict[str, Any]], None]) -> None:
        self._world = world
        self._calls = calls
        self._consume = consume
        self._rng = world.rng("sqs")
        self._seen: dict[str, float] = {}
        self._sent = 0

    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None:
        self._send(self._dirty(pool, reason, now))

    def mark_dirty_batch(
        self, reasons: Mapping[str, str], now: datetime, long_pending: Mapping[str, int] | None = None
    ) -> dict[str, str]:
        """`DirtyQueue.mark_dirty_batch`: ten messages per SendMessageBatch; the simulated queue takes all."""
        names = list(reasons)
        self._calls["sqs"] += math.ceil(len(names) / 10)
        for pool in names:
            message = self._dirty(pool, reasons[pool], now, (long_pending or {}).get(pool, 0))
            self._send(message, counted=False)
        return {}

    def ask_resolve(self, project_id: int, pipeline_id: int, job_id: int, now: datetime) -> None:
        """`DirtyQueue.ask_resolve`: one message per pipeline per window, after the queue's delay."""
        window = int(now.timestamp()) // DIRTY_WINDOW_SECONDS
        body = ResolveTagsMessage(
            resolve=ResolveAsk(project_id=project_id, pipeline_id=pipeline_id, job_id=job_id)
        ).to_body()
        group = f"{RESOLVE_GROUP_PREFIX}{pipeline_id}"
        self._send((body, group, f"{RESOLVE_GROUP_PREFIX}{project_id}-{pipeline_id}-{window}"))

    @staticmethod
    def _dirty(pool: str, reason: str, now: datetime, long_pending: int = 0) -> tuple[str, str, str]:
        window = int(now.timestamp()) // DIRTY_WINDOW_SECONDS
        body = DirtyPoolMessage(pool=pool, reason=reason[:DIRTY_REASON_MAX_CHARS], long_pending=long_pending)
        return body.to_body(), pool, f"{pool}-{window}"

    def _send(self, message: tuple[str, str, str], counted: bool = True) -> None:
        """One SendMessage (`counted`: not when it is an entry of a counted batch)."""
        body, group, dedup_id = message
        self._calls["sqs"] += counted
        loop_now = self._world.loop.now
        seen = self._seen.get(dedup_id)
        if seen is not None and loop_now - seen < SQS_DEDUP_WINDOW_S:
            return
        self._seen[dedup_id] = loop_now
        if len(self._seen) > 4096:
            self._seen = {k: t for k, t in self._seen.items() if loop_now - t < SQS_DEDUP_WINDOW_S}
        self._sent += 1
        event = sqs_event(f"sim-{self._sent}", body, group, dedup_id)
        delay = DIRTY_WINDOW_SECONDS + self._rng.uniform(0.0, self._world.options.sqs_latency_s)
        self._world.loop.after(delay, lambda: self._consume(event))


class SimHostPort:
    """`chalicelib.hosts.HostPort` over the simulated hosts, with Ec2Hosts' call counts. The scaler's own
    marks (idle-since, unmet-since: tags in AWS) live here, as tags live on the resources."""

    def __init__(self, world: World, calls: Counter[str]) -> None:
        self._world = world
        self._calls = calls
        self._idle: dict[str, datetime] = {}
        self._unmet: dict[str, datetime] = {}
        self._tokens: dict[str, tuple[str, ...]] = {}
        self._replace_tokens: dict[str, str] = {}
        self._replace_done: dict[str, float] = {}

    def read_pools(self, pools: Sequence[Pool]) -> dict[str, HostPoolView]:
        self._calls["ec2"] += 1  # one DescribeHosts, filtered by the pool tag
        hosts = self._world.hosts
        return {
            p.name: HostPoolView(
                p.name, tuple(self._view(h) for h in hosts.of(p.name) if h.live), self._unmet.get(p.name)
            )
            for p in pools
            if p.hosts is not None
        }

    def _view(self, host: SimHost) -> Host:
        now = self._world.loop.now
        scrubbing = host.scrubbing_until is not None and now < host.scrubbing_until
        state = HostState.PENDING if scrubbing or now < host.available_at else HostState.AVAILABLE
        free = host.cfg.slots_per_host - len(host.instances) if state is HostState.AVAILABLE else 0
        return Host(
            host_id=host.host_id,
            state=state,
            allocated_at=self._world.dt(host.allocated_at),
            instance_ids=tuple(sorted(host.instances)),
            free_slots=free,
            availability_zone=host.zone,
            idle_since=self._idle.get(host.host_id),
            scrubbing_until=self._world.dt(host.scrubbing_until)
            if scrubbing and host.scrubbing_until
            else None,
        )

    def allocate(self, pool: Pool, zone: str, quantity: int, token: str) -> tuple[str, ...]:
        self._calls["ec2"] += 2  # AllocateHosts, CreateTags
        if token not in self._tokens:
            self._tokens[token] = self._world.hosts.allocate(pool, quantity, zone)
        return self._tokens[token]

    def associate(self, pool: Pool, host_ids: Sequence[str]) -> tuple[str, ...]:
        self._calls["resource-groups"] += math.ceil(len(host_ids) / 10)
        return tuple(host_ids)

    def release(self, host_ids: Sequence[str]) -> ReleaseResult:
        self._calls["ec2"] += 1
        hosts = self._world.hosts
        refusals = {h: hosts.release_refusal(h) for h in host_ids}
        released = tuple(h for h, why in refusals.items() if not why and hosts.release(h))
        return ReleaseResult(released, tuple((h, why) for h, why in refusals.items() if why))

    def mark_idle(self, marks: Sequence[IdleMark]) -> None:
        self._calls["ec2"] += 1
        for mark in marks:
            if mark.since is None:
                self._idle.pop(mark.host_id, None)
            else:
                self._idle[mark.host_id] = mark.since

    def mark_unmet(self, pool: Pool, since: datetime | None) -> None:
        self._calls["resource-groups"] += 1
        if since is None:
            self._unmet.pop(pool.name, None)
        else:
            self._unmet[pool.name] = since

    def license_room(self, license_configuration: str) -> LicenseRoom:
        self._calls["license-manager"] += 1
        return LicenseRoom("Socket", None, 0, False)

    def replace_root_volume(self, instance_id: str, token: str) -> str:
        """CreateReplaceRootVolumeTask: the simulated task succeeds `mac_replace_s` later (one id per
        ClientToken, as EC2 answers a retried token)."""
        self._calls["ec2"] += 1
        if token not in self._replace_tokens:
            now = self._world.loop.now
            if not self._world.fleet.replace_root_volume(instance_id, self._world.options.mac_replace_s):
                raise AwsCallError(
                    "ec2",
                    "CreateReplaceRootVolumeTask",
                    "IncorrectInstanceState",
                    "not running",
                    retryable=False,
                )
            task = f"replacevol-{len(self._replace_tokens) + 1:017x}"
            self._replace_tokens[token] = task
            self._replace_done[task] = now + self._world.options.mac_replace_s
        return self._replace_tokens[token]

    def replace_task_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        self._calls["ec2"] += 1  # one DescribeReplaceRootVolumeTasks
        now = self._world.loop.now
        return {
            t: "succeeded" if now >= self._replace_done[t] else "in-progress"
            for t in task_ids
            if t in self._replace_done
        }


class Ours:
    """runner-scaler: its webhook route (`chalicelib.webhooks.receive`), the dirty queue's consumer
    (`triggers.process_dirty_batch`) and the one-minute tick (`triggers.run_tick`), given `Ports` built from
    the simulated adapters; the machine lifecycle (runner and secret at launch, clean-up at the end) through
    `chalicelib.lifecycle` itself."""

    name = "ours"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        #: The route's answers by outcome (accepted, duplicate, ignored, bad_token, ...).
        self.webhook_outcomes: Counter[str] = Counter()
        self.metrics = SimMetrics()
        #: The X-Gitlab-Token the simulated GitLab's hooks carry (the one the tokens secret holds).
        self.hook_token = SIM_HOOK_TOKEN

    def api_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def store(self) -> Store:
        """The scaler's store (jobs, machine records) as the run left it: what the lifecycle recorded."""
        return self._store

    def start(self, world: World) -> None:
        _quiet_library_logs()
        self._world = world
        self._config = self._configure(world.config)
        memory = IndexedMemoryStore()
        if world.options.stale_index_s > 0:
            memory = StaleIndexStore(lambda: world.loop.now, world.options.stale_index_s)
        self._store = cast(Store, CountingStore(memory, self.calls))
        self._api = SimGitLabApi(world.gitlab, self.calls, lambda: list(world.fleet.machines.values()))
        self._queue = SimDirtyQueue(world, self.calls, self._consume)
        self._lifecycle_rng = world.rng("lifecycle")
        pipelines = CountingPipelines(MemoryPipelines(), self.calls)
        fleet = SimAsg(world, self.calls)
        names = Names("sim")
        secrets = SimSecrets(self.calls)
        tokens_secret = self._config.gitlab.webhook_tokens_secret or names.webhook_tokens_secret
        secrets.seed(tokens_secret, json.dumps({"tokens": [SIM_HOOK_TOKEN]}))
        # A Lambda container's secret cache, on the simulated clock (one read per minute while hooks come).
        cache = SecretCache(secrets, clock=lambda: world.loop.now)
        self._lifecycle = Lifecycle(
            config=self._config,
            names=names,
            store=self._store,
            fleet=fleet,
            gitlab=self._api,
            secrets=secrets,
            tls=CountingTls(self.calls),
            dirty=self._queue,
        )
        self._exiting: set[str] = set()
        reconciler = Reconciler(
            self._config,
            self._store,
            fleet,
            self._api,
            hosts=SimHostPort(world, self.calls),
            owner="sim",
            drain_recheck=world.options.drain_recheck,
            pipelines=pipelines,
            gitlab=urlsplit(self._config.gitlab.url).netloc,
            warm_pools=fleet,
            metrics=self.metrics,
            reuse=self._reuse_lifecycle if any(p.reuses_root_volume for p in self._config.pools) else None,
        )
        self._ports = Ports(
            names=names,
            store=self._store,
            fleet=fleet,
            secrets=secrets,
            metrics=self.metrics,
            clock=world.now_dt,
            sleep=_no_sleep,
            certs=CertPorts(names=names, secrets=secrets, clock=world.now_dt, load_config=self._loaded),
            load_config=self._loaded,
            open_queue=lambda: self._queue,
            open_dead_letters=_no_dead_letters,
            open_gitlab=lambda: self._api,
            gitlab_configured=lambda: True,
            open_pipelines=lambda: pipelines,
            read_gitlab_host=lambda: urlsplit(self._config.gitlab.url).netloc,
            secret_text=cache.text,
            webhook_tokens=lambda: parse_token_list(cache.text(tokens_secret)),
            reconciler=lambda owner: reconciler,
            aws_calls=lambda: sum(n for service, n in self.calls.items() if service != "gitlab"),
        )
        for pool in self._config.pools:
            if pool.hosts is not None:
                world.hosts.planners[pool.name] = NoHostPlanner()  # the reconciler plans our hosts
        self._job_headers = webhook_headers("Job Hook", token=self.hook_token, version=SIM_GITLAB_VERSION)
        self._pipeline_headers = webhook_headers(
            "Pipeline Hook", token=self.hook_token, version=SIM_GITLAB_VERSION
        )
        world.bus.subscribe(self._on_hook)
        if any(p.prewarm for p in self._config.pools):  # the project hook sends Pipeline events only then
            world.pipeline_bus.subscribe(self._on_pipeline_hook)
        world.fleet.launch_listeners.append(self._launched)
        world.fleet.warm_listeners.append(self._warm_moved)
        world.fleet.end_listeners.append(self._ended)
        world.gitlab.exit_listeners.append(self._runner_exited)
        world.loop.every(world.options.tick_s, self._tick, start=0.0, keep_going=world.keep_going)

    def _configure(self, config: Config) -> Config:
        """The config this variant runs: the scenario's as it is."""
        return config

    def _loaded(self) -> Config:
        return self._config

    def _on_hook(self, event: HookEvent) -> None:
        """GitLab delivers a Job Hook: the body GitLab writes, to the route's use case."""
        self._deliver(self._job_headers, self._job_payload(event))

    def _on_pipeline_hook(self, event: PipelineHookEvent) -> None:
        """GitLab delivers a Pipeline Hook (prewarm on): the body GitLab writes, to the route's use case."""
        self._deliver(self._pipeline_headers, self._pipeline_payload(event))

    def _deliver(self, headers: Mapping[str, str], payload: dict[str, Any]) -> None:
        """`POST /webhooks/gitlab`: `chalicelib.webhooks.receive`, the use case behind the route."""
        answer = receive(self._ports, headers, json.dumps(payload).encode())
        self.webhook_outcomes[answer.outcome] += 1

    def _job_payload(self, event: HookEvent) -> dict[str, Any]:
        """The Job Hook's JSON body as GitLab writes it at delivery (lib/gitlab/data_builder/build.rb)."""
        dt = self._world.dt
        runner = None
        if event.runner_id is not None:
            runner = RunnerSample(event.runner_id, event.runner_description, tags=())
        return job_hook_payload(
            event.job_id,
            event.status,
            project_id=event.project_id,
            pipeline_id=event.pipeline_id,
            stage=str(event.stage),
            name=event.name,
            now=self._world.now_dt(),
            runner=runner,
            created_at=dt(event.created_s) if event.created_s is not None else None,
            started_at=dt(event.started_s) if event.started_s is not None else None,
            finished_at=dt(event.finished_s) if event.finished_s is not None else None,
            ref=SIM_REF,
            instance=self._config.gitlab.url,
        )

    def _pipeline_payload(self, event: PipelineHookEvent) -> dict[str, Any]:
        """The hook's JSON body as GitLab writes it (second-precision "... UTC" times)."""
        dt = self._world.dt
        builds = [
            BuildSample(
                build_id=b.job_id,
                status=b.status,
                stage=str(b.stage),
                name=b.name,
                runner_id=b.runner_id,
                tags=b.tags,
                created_at=dt(b.created_s),
                started_at=dt(b.started_s) if b.started_s is not None else None,
                finished_at=dt(b.finished_s) if b.finished_s is not None else None,
            )
            for b in sorted(event.builds, key=lambda b: (b.stage, b.job_id))
        ]
        return pipeline_hook_payload(
            event.pipeline_id,
            event.status,
            project_id=event.project_id,
            builds=builds,
            now=dt(event.at_s),
            created_at=dt(event.created_s),
            ref=SIM_REF,
            instance=self._config.gitlab.url,
        )

    def _consume(self, event: dict[str, Any]) -> None:
        """The `pool_dirty` Lambda on one message: `triggers.process_dirty_batch`. A failed reconcile raises
        there (the message would go back to the queue); the simulated queue does not redeliver, the next
        tick reconciles the pool."""
        try:
            process_dirty_batch(self._ports, event, owner="sim")
        except BatchProcessingError:
            self.metrics.emit_count("SimDirtyBatchFailed", 1)

    def _tick(self) -> None:
        """The `tick` schedule: `chalicelib.triggers.run_tick` (the periodic steps it claims, the unrouted
        jobs' tags, heal, the orphan sweep, the base-certificate check, then every pool, inline up to
        `tick_inline_pools`). The hook health check runs only with a `webhook_url`, which the scenarios do
        not set."""
        run_tick(self._ports, owner="sim")

    def _launched(self, machine: SimMachine) -> None:
        """The launch hook's event: `Lifecycle.launch` as `handle_machine_event` runs it.

        With `lifecycle_loss` the launch event never reaches the app: the reconciler adopts the instance
        without knowing its runner, and must ask GitLab for it before draining.
        """
        if self._lifecycle_rng.random() < self._world.options.lifecycle_loss:
            return
        action = LifecycleAction(machine.pool.asg, "launch", "sim", machine.instance_id, LAUNCHING)
        self._lifecycle.launch(action, self._world.now_dt(), from_warm_pool=machine.from_warm)

    def _warm_moved(self, pool: str, instance_id: str, move: str) -> None:
        """A warm instance entered the pool, or ended in it: `chalicelib.lifecycle._lifecycle_action`'s
        ENTER and END moves, which only let it go on (no runner, no secret: `Lifecycle.pass_warm`)."""
        transition = LAUNCHING if move == "enter" else TERMINATING
        action = LifecycleAction(self._config.pool(pool).asg, move, "sim", instance_id, transition)
        self._lifecycle.pass_warm(action, f"warm pool {move}")

    def _reuse_lifecycle(self) -> Lifecycle:
        return self._lifecycle

    def _runner_exited(self, machine: SimMachine) -> None:
        """`run-single` has exited after `max_use_count` jobs: the machine's user data (infra/templates)
        shuts it down, and EC2's shutting-down event reaches the app: `handle_machine_event`'s
        `ended_without_hook` (the record read, `Lifecycle.shut_down`'s decrement, then the clean-up). The
        decrement ends the machine in its group, which runs the terminate hook (`_ended`). A Mac of a pool
        that reuses hosts first waits `reuse_wait` for the scaler (macos.sh's tail), and shuts down only if
        it was neither reused nor terminated meanwhile."""
        hosts = machine.pool.hosts
        if machine.pool.reuses_root_volume and hosts is not None:
            life = machine.reused
            self._world.loop.after(hosts.reuse_wait.total_seconds(), lambda: self._wait_over(machine, life))
            return
        self._shut_down(machine)

    def _wait_over(self, machine: SimMachine, life: int) -> None:
        if machine.alive and machine.reused == life:
            self._shut_down(machine)

    def _shut_down(self, machine: SimMachine) -> None:
        self._exiting.add(machine.instance_id)
        self._state_event(machine, "shutting-down")

    def _ended(self, machine: SimMachine) -> None:
        """The machine left its group: the terminate hook's event (`Lifecycle.terminate` with its token),
        EC2's shutting-down event unless the machine shut itself down (that event came first), and EC2's
        terminated event. Each is a separate Lambda invocation in production, delivered after the call that
        caused it returned: modelled END_EVENT_DELAY_S later."""
        exiting = machine.instance_id in self._exiting
        self._exiting.discard(machine.instance_id)
        self._world.loop.after(END_EVENT_DELAY_S, lambda: self._end_events(machine, exiting))

    def _end_events(self, machine: SimMachine, exiting: bool) -> None:
        action = LifecycleAction(machine.pool.asg, "terminate", "sim", machine.instance_id, TERMINATING)
        self._lifecycle.terminate(action, self._world.now_dt())
        if not exiting:
            self._state_event(machine, "shutting-down")
        self._state_event(machine, "terminated")

    def _state_event(self, machine: SimMachine, state: str) -> None:
        """An EC2 state change of one of our instances, as `handle_machine_event` routes it."""
        ended_without_hook(self._lifecycle, self._ports, machine.instance_id, state, self._world.now_dt())


class OursPrewarm(Ours):
    """Ours with pipeline-aware prewarm on every pool (`prewarm = true`), the product's forecast path.

    `confidence` and `max_machines` set `prewarm_confidence` and `prewarm_max`; None keeps the product's
    defaults (chalicelib.config.Pool).
    """

    name = "ours-prewarm"

    def __init__(self, confidence: float | None = None, max_machines: int | None = None) -> None:
        super().__init__()
        self._settings: dict[str, object] = {"prewarm": True}
        if confidence is not None:
            self._settings["prewarm_confidence"] = confidence
        if max_machines is not None:
            self._settings["prewarm_max"] = max_machines

    def _configure(self, config: Config) -> Config:
        pools = tuple(type(p).model_validate(p.model_dump() | self._settings) for p in config.pools)
        return config.model_copy(update={"pools": pools})


class OursNoPrewarm(OursPrewarm):
    """Ours with prewarm off on every pool (`prewarm = false`): the baseline of the prewarm bench. Not the
    scenario's config as it is, where a macOS pool with `keep_ready` on has prewarm on by default."""

    name = "ours-no-prewarm"

    def __init__(self) -> None:
        super().__init__()
        self._settings = {"prewarm": False}


def _no_sleep(seconds: float) -> None:
    """The simulated clock moves only between events: a lease is never held while another waits."""


def _no_dead_letters() -> DeadLetterQueue:
    """No alarm is simulated, so nothing redrives the dead-letter queue."""
    raise NotImplementedError("the simulator raises no CloudWatch alarm: no dead letters are redriven")


def _quiet_library_logs() -> None:
    """chalicelib logs warnings (a job found by the tick, ...) that are expected here by design: without a
    handler Python would print each one; a NullHandler keeps them available to any handler set up above."""
    library = logging.getLogger("chalicelib")
    if not any(isinstance(h, logging.NullHandler) for h in library.handlers):
        library.addHandler(logging.NullHandler())
