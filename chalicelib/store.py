"""State in one DynamoDB table (single-table design): jobs, machines, seen events, pool leases.

`DynamoStore` is the adapter (every call through `AwsClients`); `MemoryStore` is its in-memory twin for the
simulator and unit tests. Both satisfy `Store` and pass the same contract tests. No policy lives here.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from chalicelib.dynamo import CONDITION_FAILED, DynamoTable
from chalicelib.errors import AwsCallError
from chalicelib.events.gitlab import status_rank
from chalicelib.events.timestamps import epoch_seconds as _epoch
from chalicelib.events.timestamps import format_iso as _iso
from chalicelib.events.timestamps import parse_iso
from chalicelib.resources import GSI_POOL, GSI_POOL_PK, GSI_POOL_SK, TABLE_PK, TABLE_SK, TABLE_TTL_ATTRIBUTE

#: TransactWriteItems refused as a whole (DynamoDB API reference, TransactWriteItems: Errors).
TRANSACTION_CANCELED = "TransactionCanceledException"
#: CancellationReasons codes that a later attempt may not meet again: no cause ("None"), a concurrent
#: transaction or write, a throttle (TransactWriteItems API reference, TransactionCanceledException).
TRANSIENT_CANCELLATIONS = frozenset(
    {"None", "TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)

# A job only moves forward (events.status_rank), so a late or duplicate event never undoes a newer one.
ACTIVE = frozenset({"pending", "running", "canceling"})
HOLDS_SLOT = frozenset({"running", "canceling"})
TERMINAL = frozenset({"success", "failed", "canceled", "skipped"})

JOB_TTL = timedelta(days=7)
#: How long a retired machine's record outlives it: well past the last event of its end (the terminate
#: hook's heartbeat timeout, EventBridge's retries of an event for up to 24 hours).
MACHINE_TOMBSTONE_TTL = timedelta(days=2)
EVENT_TTL = timedelta(days=2)
PROJECT_MEMORY = timedelta(days=14)
#: How long a runner id stays mapped to its machine: longer than any machine lives (a runner id is never
#: reused by GitLab, so a mapping outliving its machine is harmless).
RUNNER_MEMORY = timedelta(days=90)

#: Index key of jobs waiting for their pool (`chalicelib.jobs.resolve_unrouted` reads it): a job stored
#: without a pool is pending or running but its tags were not known when its hook came.
UNROUTED_INDEX = "JOBS#UNROUTED"


def rank(status: str) -> int:
    """Rank of a GitLab job status; an unknown status ranks with `created` (it never blocks a real one)."""
    try:
        return status_rank(status)
    except ValueError:
        return 0


def _unrouted(job: JobRecord) -> bool:
    """A job without a pool that still wants or holds a slot: `chalicelib.jobs.resolve_unrouted` routes it."""
    return not job.pool and rank("pending") <= rank(job.status) and job.status not in TERMINAL


@dataclass(frozen=True)
class JobRecord:
    """One GitLab job as the scaler knows it. `gitlab` is the GitLab host, so two GitLabs never collide.

    `machine_id` is the instance that runs it, from its runner's description (`runner-scaler/<pool>/<id>`).
    """

    gitlab: str
    job_id: int
    status: str
    project_id: int = 0
    pipeline_id: int = 0
    pool: str = ""
    tags: tuple[str, ...] = ()
    runner_id: int | None = None
    machine_id: str = ""
    name: str = ""
    stage: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"JOB#{self.gitlab}#{self.job_id}"


@dataclass(frozen=True)
class JobWrite:
    """What one job write did: `applied`, or else the job as it was stored (`stored`, None when there was
    none), read with the refused write itself, so that the caller needs no second read to tell a duplicate
    from an older event or a skipped job to reopen."""

    applied: bool
    stored: JobRecord | None = None
    #: Refused because the delivery carrying this very event (its `event_key`) was applied to the job before.
    duplicate: bool = False
    #: Applied with `same_runner`: the job as it was stored just before this write (read by the write itself).
    before: JobRecord | None = None


def event_mark(event_key: str) -> str:
    """What a job item keeps of each delivery applied to it: 16 hex digits of the key's SHA-256 (a job hears
    of a handful of deliveries, so a collision within one job is negligible), not the key itself."""
    return hashlib.sha256(event_key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fault:
    """Something a pool should avoid for a while: `kind` "instance_type" (detail: the type), "spot",
    "zone" (detail: the zone), or "launch" (unknown cause); it expires at `until`."""

    pool: str
    kind: str
    detail: str
    until: datetime
    reason: str = ""


@dataclass(frozen=True)
class PoolLease:
    """A pool's lease as taken, with what lives on the lease item and so costs no read of its own: the pool's
    unexpired faults, and the boot-contact window last checked (`Reconciler._learn_contact`; None: never)."""

    faults: tuple[Fault, ...] = ()
    contact_window: int | None = None


@dataclass(frozen=True)
class MachineRecord:
    """What the scaler remembers of one instance beyond what the ASG says: its runner and its jobs."""

    instance_id: str
    pool: str
    launched_at: datetime
    runner_id: int | None = None
    job_ids: frozenset[int] = field(default_factory=frozenset)  # every job it started
    running: frozenset[int] = field(default_factory=frozenset)  # jobs running now
    ready_at: datetime | None = None
    last_busy_at: datetime | None = None
    draining_since: datetime | None = None
    drain_reason: str = ""
    host_id: str | None = None
    #: When its secret (runner token, TLS) was stored: from then on the machine may have read it, deleted it,
    #: and be running jobs with that runner, so a late duplicate launch event must leave it alone.
    prepared_at: datetime | None = None
    #: When the drain paused its runner in GitLab: the job check waits out GitLab's assignment window.
    paused_at: datetime | None = None
    #: When the lifecycle cleaned up after it (runner and secret deleted): a later event for the same
    #: instance (the terminate hook after EC2's shutting-down event, or the reverse) has nothing left to do.
    retired_at: datetime | None = None
    #: The ARN IAM sees as `ec2:SourceInstanceARN` on the machine's requests, kept from its launch: a reused
    #: Mac's new secret is tagged with it again (the secret policy reads only the secret so tagged).
    instance_arn: str = ""
    #: The root-volume replacement under way (a reused Mac, chalicelib.reconcile): its task id until the new
    #: runner and secret are delivered, after the task succeeded.
    replace_task: str | None = None
    #: Jobs started on earlier root volumes: `job_ids` keeps every job the instance ever started (so a late
    #: hook is never credited twice); only the jobs since the last replacement count towards max_use_count.
    reused_jobs: int = 0

    @property
    def jobs_started(self) -> int:
        """Jobs started on the current root volume (towards `max_use_count`)."""
        return len(self.job_ids) - self.reused_jobs


class Store(Protocol):
    """What use cases need from state; implemented by DynamoStore and MemoryStore."""

    def record_job(self, job: JobRecord, now: datetime) -> bool:
        """Write the job if its status ranks above the stored one; True when it changed anything.

        A job written without a pool keeps the pool it was stored with; one that has none is put on the
        unrouted index while pending or running."""
        ...

    def write_job(
        self, job: JobRecord, now: datetime, *, event_key: str = "", same_runner: bool = False
    ) -> JobWrite:
        """`record_job` for the delivery `event_key` (a webhook's `event_identity`), in the same one write:
        refused as a duplicate when that delivery was applied to the job before, and telling what was stored
        when refused. The job item keeps a mark of each delivery applied (`event_mark`), so a Job Hook needs
        no de-duplication item of its own, even where its rank alone could not tell (a skipped job reopened,
        then the old `skipped` hook resent).

        `same_runner`: written only if the stored job already names `job.runner_id` (an earlier hook of the
        same runner stored it), else refused like any refused write; applied, the answer holds the job as
        it was before (`JobWrite.before`), its pool and machine included, so the caller need not route it."""
        ...

    def reopen_skipped(self, job: JobRecord, now: datetime, *, event_key: str = "") -> bool:
        """GitLab moves a `skipped` job back to created/pending (same id) when an earlier job is retried:
        the one backward move allowed, and only from `skipped`; never by a delivery applied before
        (`event_key`: a resent hook from before the skip)."""
        ...

    def fill_tags(self, job: JobRecord) -> bool:
        """Give a stored job the tags it was stored without (first seen running on our runner, routed by
        the runner's description); a late, stale event may bring them. Nothing else of the job changes."""
        ...

    def get_job(self, gitlab: str, job_id: int) -> JobRecord | None: ...

    def unrouted_jobs(self) -> list[JobRecord]:
        """Jobs stored without a pool while pending or running (their tags unknown when their hook came),
        until routed (`record_job` with a pool) or found to match no pool (`no_pool`). An index read."""
        ...

    def no_pool(self, job: JobRecord) -> bool:
        """The job's tags are known and match no pool: keep them, and take it off the unrouted index (only
        if it is still there, so a route written meanwhile stands)."""
        ...

    def map_runner(self, runner_id: int, instance_id: str, pool: str, now: datetime) -> None:
        """Remember which machine a runner of ours runs on, so a job is attributed by its runner's id (the
        description is editable by anyone in GitLab's UI)."""
        ...

    def runner_machine(self, runner_id: int) -> tuple[str, str] | None:
        """(instance id, pool) of one of our runners, or None when this runner is not known as ours."""
        ...

    def pool_jobs(self, pool: str) -> list[JobRecord]:
        """The pool's pending and running jobs, plus finished ones the reconciler has not settled yet."""
        ...

    def settle_job(self, job: JobRecord) -> None:
        """Take a finished job off the pool index once its machine has been credited with it."""
        ...

    def first_seen(self, key: str, now: datetime) -> bool:
        """Record an event key; True the first time, False for a duplicate (within EVENT_TTL)."""
        ...

    def forget_event(self, key: str) -> None:
        """Undo `first_seen` when the event could not be applied, so a resend is not taken for a duplicate."""
        ...

    def claim_windows(self, windows: Mapping[str, int], now: datetime) -> set[str]:
        """Claim periodic steps for their current window (step name -> window number): the names this caller
        is the first to claim in that window, across all containers. One write for every step of a tick."""
        ...

    def put_fault(self, fault: Fault) -> None: ...

    def faults(self, pool: str, now: datetime) -> list[Fault]:
        """The pool's faults that have not expired."""
        ...

    def clear_faults(self, pool: str, kinds: Iterable[str] | None = None) -> None:
        """Delete the pool's faults (only those of `kinds` when given)."""
        ...

    def suspect(self, key: str, now: datetime) -> datetime:
        """Note a suspicion (an orphan seen); returns when it was FIRST noted, so two observations a set
        time apart can be required before acting on it."""
        ...

    def clear_suspect(self, key: str) -> None: ...

    def note_projects(self, gitlab: str, project_ids: Iterable[int], now: datetime) -> None:
        """Remember projects that had jobs, so the tick can look there for jobs no webhook announced."""
        ...

    def recent_projects(self, gitlab: str, now: datetime, within: timedelta) -> list[int]: ...

    def put_facts(self, key: str, facts: dict[str, Any], expires: datetime) -> None:
        """Cache what GitLab said about something (a project's CI settings) until `expires`."""
        ...

    def get_facts(self, key: str, now: datetime) -> dict[str, Any] | None:
        """The cached facts under `key`, or None when absent or expired."""
        ...

    def put_machine(self, machine: MachineRecord) -> None:
        """Write the whole record, replacing any stored one: for tests and tools only. A use case never
        replaces a record it read from the pool index (that read may be stale): it adopts, or records a
        runner."""
        ...

    def adopt_machine(self, machine: MachineRecord) -> MachineRecord:
        """Create the record of a live instance the index did not show; never overwrite one that exists.

        The pool index is eventually consistent (DynamoDB developer guide, "DynamoDB read consistency": all
        reads from a global secondary index are eventually consistent), so an instance missing from it may
        have a fresh record. Returns the stored record: `machine` if it was created, else the existing one
        (read consistently).
        """
        ...

    def record_runner(self, machine: MachineRecord) -> None:
        """Set the machine's runner (and host), keeping whatever else is stored: a reconcile may have adopted
        the instance and credited jobs to it before its launch handler got here."""
        ...

    def register_runner(self, machine: MachineRecord, now: datetime) -> None:
        """`record_runner` and `map_runner` of `machine.runner_id` at once, all or nothing: the runner is
        never on the record without its mapping, nor mapped to a machine whose record does not name it."""
        ...

    def get_machine(self, instance_id: str) -> MachineRecord | None: ...

    def machines(self, pool: str) -> list[MachineRecord]: ...

    def delete_machine(self, instance_id: str) -> None: ...

    def retire_machine(self, machine: MachineRecord, now: datetime) -> None:
        """Mark the machine cleaned up, off the pool index, kept until MACHINE_TOMBSTONE_TTL so that the other
        events of its end (each instance has two or three) find it done instead of cleaning up again."""
        ...

    def machine_job_started(self, instance_id: str, job_id: int, now: datetime) -> bool:
        """Count a job on its machine once (idempotent); False when the machine is unknown."""
        ...

    def machine_job_finished(self, instance_id: str, job_id: int, now: datetime) -> bool: ...

    def start_draining(
        self, instance_id: str, reason: str, now: datetime, *, only_if_idle: bool = True
    ) -> MachineRecord | None:
        """Mark a machine draining, by default only if it runs no job (conditional); the record as it now is
        (read with the write, so never stale), or None when it runs a job or has no record.

        `only_if_idle=False` is for machines that leave anyway (a Spot interruption): busy or not.
        """
        ...

    def mark_paused(self, instance_id: str, now: datetime) -> None:
        """Note when the drain paused the machine's runner (first pause only)."""
        ...

    def stop_draining(self, instance_id: str) -> None: ...

    def mark_ready(self, instance_id: str, now: datetime) -> None: ...

    def start_reuse(self, machine: MachineRecord, task_id: str, now: datetime) -> bool:
        """A used Mac's root volume is being replaced (task `task_id`): the record becomes a booting machine
        again (no runner, not ready, not draining, its jobs so far counted as `reused_jobs`, `launched_at` now
        so boot_timeout counts from here). Only if it still shows no running job and the jobs `machine` read;
        False otherwise (nothing written)."""
        ...

    def end_reuse(self, instance_id: str) -> None:
        """The reused Mac's new runner and secret are delivered: the replacement is over."""
        ...

    def mark_prepared(self, instance_id: str, now: datetime) -> None:
        """Its secret is stored (a targeted update: job counts written meanwhile are kept)."""
        ...

    def acquire_lease(self, pool: str, owner: str, now: datetime, duration: timedelta) -> bool:
        """Take the pool's lease unless another owner holds an unexpired one."""
        ...

    def take_lease(self, pool: str, owner: str, now: datetime, duration: timedelta) -> PoolLease | None:
        """`acquire_lease`, answering with the pool's faults and last contact window read by the same write
        (they live on the lease item); None when another owner holds an unexpired lease."""
        ...

    def release_lease(self, pool: str, owner: str, *, contact_window: int | None = None) -> None:
        """Give the lease back (only if still ours), recording `contact_window` when given."""
        ...


#: The pool's lease item: its lease (owner, lease_until), its faults and its last boot-contact window.
LEASE_SK = "LEASE"
#: A fault is an attribute of the lease item named `fault|<kind>#<detail>`, a map of `until` and `reason`.
FAULT_PREFIX = "fault|"
#: Free when nobody holds it (never taken, or given back: no owner), it expired, or it is ours already.
_LEASE_FREE = "attribute_not_exists(#owner) OR lease_until < :now OR #owner = :owner"


def _lease_key(pool: str) -> dict[str, str]:
    return {TABLE_PK: f"POOL#{pool}", TABLE_SK: LEASE_SK}


def _fault_attribute(fault: Fault) -> str:
    return f"{FAULT_PREFIX}{fault.kind}#{fault.detail}"


def _faults_of(pool: str, item: Mapping[str, Any]) -> list[Fault]:
    """The faults kept on a pool's lease item (plain values), expired ones too."""
    out = []
    for name, value in item.items():
        if not name.startswith(FAULT_PREFIX) or not isinstance(value, Mapping):
            continue
        kind, _, detail = name.removeprefix(FAULT_PREFIX).partition("#")
        until = _dt(value.get("until"))
        if until is not None:
            out.append(Fault(pool, kind, detail, until, str(value.get("reason", ""))))
    return sorted(out, key=lambda f: (f.kind, f.detail))


#: The job item's string set of `event_mark`s: the deliveries applied to it.
EVENT_MARKS = "event_marks"


def _marked(expression: str, condition: str, values: dict[str, Any], mark: str) -> tuple[str, str]:
    """A job write made by one delivery: refused if that delivery was applied before (its mark is in the
    set; `contains` on a missing set is false), else adding the mark with the write."""
    values[":mark"] = mark
    values[":marks"] = {mark}
    return f"{expression} ADD {EVENT_MARKS} :marks", f"({condition}) AND NOT contains({EVENT_MARKS}, :mark)"


def _dt(value: Any) -> datetime | None:
    return parse_iso(str(value)) if value else None


def _runner_item(runner_id: int, instance_id: str, pool: str, now: datetime) -> dict[str, Any]:
    """The item mapping one of our runners to its machine (`Store.map_runner`)."""
    return {
        TABLE_PK: f"RUNNER#{int(runner_id)}",
        TABLE_SK: "RUNNER",
        "instance_id": instance_id,
        "pool": pool,
        TABLE_TTL_ATTRIBUTE: _epoch(now + RUNNER_MEMORY),
    }


def _job_update(job: JobRecord, now: datetime) -> tuple[str, str, dict[str, Any]]:
    """The job write's update expression, condition and values: forward-only by status rank, a pool given to
    a job stored without one at the same rank, and the pool index entry its status calls for."""
    values: dict[str, Any] = {
        ":status": job.status,
        ":rank": rank(job.status),
        ":updated": _iso(now),
        ":ttl": _epoch(now + JOB_TTL),
        ":project": job.project_id,
        ":pipeline": job.pipeline_id,
        ":pool": job.pool,
        ":tags": list(job.tags),
        ":name": job.name,
        ":stage": job.stage,
    }
    sets = [
        "#status = :status",
        "#rank = :rank",
        "updated_at = :updated",
        f"{TABLE_TTL_ATTRIBUTE} = :ttl",
        "project_id = :project",
        "pipeline_id = :pipeline",
        "#pool = :pool" if job.pool else "#pool = if_not_exists(#pool, :pool)",
        "tags = :tags" if job.tags else "tags = if_not_exists(tags, :tags)",
        "#name = :name",
        "stage = :stage",
    ]
    for attr in ("runner_id", "machine_id", "created_at", "started_at", "finished_at"):
        value = getattr(job, attr)
        if value:
            values[f":{attr}"] = _iso(value) if isinstance(value, datetime) else value
            sets.append(f"{attr} = :{attr}")
    if job.pool and rank(job.status) >= rank("pending"):
        values[":gpk"] = f"POOL#{job.pool}#JOBS"
        values[":gsk"] = job.key
        sets += [f"{GSI_POOL_PK} = :gpk", f"{GSI_POOL_SK} = :gsk"]
    elif _unrouted(job):  # a pool index entry stored before stands (its pool is kept too)
        values[":gpk"] = UNROUTED_INDEX
        values[":gsk"] = job.key
        sets += [
            f"{GSI_POOL_PK} = if_not_exists({GSI_POOL_PK}, :gpk)",
            f"{GSI_POOL_SK} = if_not_exists({GSI_POOL_SK}, :gsk)",
        ]
    expression = "SET " + ", ".join(sets)
    condition = f"attribute_not_exists({TABLE_PK}) OR #rank < :rank"
    if job.pool:  # a job first recorded without a pool (GitLab unreachable) gets one at the same rank
        condition += " OR (#rank = :rank AND #pool = :nopool)"
        values[":nopool"] = ""
    return expression, condition, values


class DynamoStore(DynamoTable):
    """The Store on DynamoDB: one conditional write per state change, sparse GSI for per-pool reads."""

    # -- jobs -----------------------------------------------------------------------------------------
    def record_job(self, job: JobRecord, now: datetime) -> bool:
        return self.write_job(job, now).applied

    def write_job(
        self, job: JobRecord, now: datetime, *, event_key: str = "", same_runner: bool = False
    ) -> JobWrite:
        expression, condition, values = _job_update(job, now)
        extra: dict[str, Any] = {}
        if same_runner and job.runner_id is not None:
            # Applied, the write answers with the item as it was ("ReturnValues" ALL_OLD: "all of the
            # attributes of the item, as they appeared before the UpdateItem operation", DynamoDB API
            # reference, UpdateItem): the pool and machine an earlier hook of this runner stored.
            condition = f"({condition}) AND runner_id = :runner_id"
            extra["ReturnValues"] = "ALL_OLD"
        mark = event_mark(event_key) if event_key else ""
        if mark:
            expression, condition = _marked(expression, condition, values, mark)
        try:
            result = self._aws.call(
                "dynamodb",
                "update_item",
                TableName=self._table,
                Key=self._dump({TABLE_PK: job.key, TABLE_SK: "JOB"}),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeValues=self._dump(values),
                ExpressionAttributeNames={
                    "#status": "status",
                    "#rank": "rank",
                    "#pool": "pool",
                    "#name": "name",
                },
                # The refused write returns the item it found ("ReturnValuesOnConditionCheckFailure": DynamoDB
                # API reference, UpdateItem): a duplicate is told from a skipped job without another read.
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **extra,
            )
        except AwsCallError as exc:
            if exc.code != CONDITION_FAILED:
                raise
            if not exc.item:
                return JobWrite(False)
            stored = self._load(exc.item)
            return JobWrite(False, self._job(stored), bool(mark) and mark in stored.get(EVENT_MARKS, ()))
        old = result.get("Attributes")
        return JobWrite(True, before=self._job(self._load(old)) if old else None)

    def reopen_skipped(self, job: JobRecord, now: datetime, *, event_key: str = "") -> bool:
        values: dict[str, Any] = {
            ":status": job.status,
            ":rank": rank(job.status),
            ":skipped": "skipped",
            ":updated": _iso(now),
        }
        sets = ["#status = :status", "#rank = :rank", "updated_at = :updated"]
        if job.pool:
            values.update({":gpk": f"POOL#{job.pool}#JOBS", ":gsk": job.key, ":pool": job.pool})
            sets += [f"{GSI_POOL_PK} = :gpk", f"{GSI_POOL_SK} = :gsk", "#pool = :pool"]
        expression, condition = "SET " + ", ".join(sets) + " REMOVE finished_at", "#status = :skipped"
        if event_key:
            expression, condition = _marked(expression, condition, values, event_mark(event_key))
        return self._conditional_update(
            {TABLE_PK: job.key, TABLE_SK: "JOB"},
            expression,
            condition,
            values,
            {"#status": "status", "#rank": "rank", **({"#pool": "pool"} if job.pool else {})},
        )

    def fill_tags(self, job: JobRecord) -> bool:
        return self._conditional_update(
            {TABLE_PK: job.key, TABLE_SK: "JOB"},
            "SET tags = :tags",
            f"attribute_exists({TABLE_PK}) AND (attribute_not_exists(tags) OR size(tags) = :none)",
            {":tags": list(job.tags), ":none": 0},
        )

    def get_job(self, gitlab: str, job_id: int) -> JobRecord | None:
        item = self._get(f"JOB#{gitlab}#{job_id}", "JOB")
        return self._job(item) if item else None

    def pool_jobs(self, pool: str) -> list[JobRecord]:
        return [self._job(item) for item in self._query_pool(f"POOL#{pool}#JOBS")]

    def unrouted_jobs(self) -> list[JobRecord]:
        return [self._job(item) for item in self._query_pool(UNROUTED_INDEX)]

    def no_pool(self, job: JobRecord) -> bool:
        return self._conditional_update(
            {TABLE_PK: job.key, TABLE_SK: "JOB"},
            f"SET tags = :tags REMOVE {GSI_POOL_PK}, {GSI_POOL_SK}",
            f"{GSI_POOL_PK} = :unrouted",
            {":tags": list(job.tags), ":unrouted": UNROUTED_INDEX},
        )

    def map_runner(self, runner_id: int, instance_id: str, pool: str, now: datetime) -> None:
        item = _runner_item(runner_id, instance_id, pool, now)
        self._aws.call("dynamodb", "put_item", TableName=self._table, Item=self._dump(item))

    def runner_machine(self, runner_id: int) -> tuple[str, str] | None:
        # Eventually consistent is enough: the mapping is written at launch, minutes before a job can run.
        item = self._get(f"RUNNER#{int(runner_id)}", "RUNNER", consistent=False)
        return (str(item["instance_id"]), str(item["pool"])) if item else None

    def settle_job(self, job: JobRecord) -> None:
        self._aws.call(
            "dynamodb",
            "update_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: job.key, TABLE_SK: "JOB"}),
            UpdateExpression=f"REMOVE {GSI_POOL_PK}, {GSI_POOL_SK}",
        )

    def _job(self, item: dict[str, Any]) -> JobRecord:
        _, gitlab, job_id = str(item[TABLE_PK]).split("#", 2)
        runner = item.get("runner_id")
        return JobRecord(
            gitlab=gitlab,
            job_id=int(job_id),
            status=str(item["status"]),
            project_id=int(item.get("project_id", 0)),
            pipeline_id=int(item.get("pipeline_id", 0)),
            pool=str(item.get("pool", "")),
            tags=tuple(item.get("tags", ())),
            runner_id=int(runner) if runner is not None else None,
            machine_id=str(item.get("machine_id", "")),
            name=str(item.get("name", "")),
            stage=str(item.get("stage", "")),
            created_at=_dt(item.get("created_at")),
            started_at=_dt(item.get("started_at")),
            finished_at=_dt(item.get("finished_at")),
            updated_at=_dt(item.get("updated_at")),
        )

    # -- events ---------------------------------------------------------------------------------------
    def first_seen(self, key: str, now: datetime) -> bool:
        return self._conditional(
            "put_item",
            Item=self._dump(
                {TABLE_PK: f"EVENT#{key}", TABLE_SK: "EVENT", TABLE_TTL_ATTRIBUTE: _epoch(now + EVENT_TTL)}
            ),
            ConditionExpression=f"attribute_not_exists({TABLE_PK})",
        )

    def forget_event(self, key: str) -> None:
        self._aws.call(
            "dynamodb",
            "delete_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: f"EVENT#{key}", TABLE_SK: "EVENT"}),
        )

    def claim_windows(self, windows: Mapping[str, int], now: datetime) -> set[str]:
        # One UpdateItem sets every step's window and returns the item as it was before (ReturnValues
        # ALL_OLD: "all of the attributes of the item, as they appeared before the UpdateItem operation",
        # DynamoDB API reference, UpdateItem). Writes to one item are serialised, so of two ticks in the same
        # window only the first sees an older window: the step is its.
        if not windows:
            return set()
        steps = list(windows)
        result = self._aws.call(
            "dynamodb",
            "update_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: "TICK", TABLE_SK: "WINDOWS"}),
            UpdateExpression="SET " + ", ".join(f"#s{i} = :w{i}" for i in range(len(steps))),
            ExpressionAttributeNames={f"#s{i}": step for i, step in enumerate(steps)},
            ExpressionAttributeValues=self._dump({f":w{i}": windows[step] for i, step in enumerate(steps)}),
            ReturnValues="ALL_OLD",
        )
        before = self._load(result.get("Attributes", {}))
        return {step for step in steps if before.get(step) != windows[step]}

    # -- faults: attributes of the pool's lease item, which every reconcile takes (and so reads) anyway ---
    def put_fault(self, fault: Fault) -> None:
        self._aws.call(
            "dynamodb",
            "update_item",
            TableName=self._table,
            Key=self._dump(_lease_key(fault.pool)),
            UpdateExpression="SET #fault = :fault",
            ExpressionAttributeNames={"#fault": f"{FAULT_PREFIX}{fault.kind}#{fault.detail}"},
            ExpressionAttributeValues=self._dump(
                {":fault": {"until": _iso(fault.until), "reason": fault.reason[:500]}}
            ),
        )

    def faults(self, pool: str, now: datetime) -> list[Fault]:
        item = self._get(f"POOL#{pool}", LEASE_SK) or {}
        return [f for f in _faults_of(pool, item) if f.until > now]

    def clear_faults(self, pool: str, kinds: Iterable[str] | None = None) -> None:
        wanted = None if kinds is None else set(kinds)
        item = self._get(f"POOL#{pool}", LEASE_SK) or {}
        names = [_fault_attribute(f) for f in _faults_of(pool, item) if wanted is None or f.kind in wanted]
        if not names:
            return
        self._aws.call(
            "dynamodb",
            "update_item",
            TableName=self._table,
            Key=self._dump(_lease_key(pool)),
            UpdateExpression="REMOVE " + ", ".join(f"#f{i}" for i in range(len(names))),
            ExpressionAttributeNames={f"#f{i}": name for i, name in enumerate(names)},
        )

    # -- suspicions -----------------------------------------------------------------------------------
    def suspect(self, key: str, now: datetime) -> datetime:
        result = self._aws.call(
            "dynamodb",
            "update_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: f"SUSPECT#{key}", TABLE_SK: "SUSPECT"}),
            UpdateExpression=f"SET first_seen = if_not_exists(first_seen, :now), {TABLE_TTL_ATTRIBUTE} = :t",
            ExpressionAttributeValues=self._dump({":now": _iso(now), ":t": _epoch(now + EVENT_TTL)}),
            ReturnValues="ALL_NEW",
        )
        first = _dt(self._load(result["Attributes"]).get("first_seen"))
        return first or now

    def clear_suspect(self, key: str) -> None:
        self._aws.call(
            "dynamodb",
            "delete_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: f"SUSPECT#{key}", TABLE_SK: "SUSPECT"}),
        )

    # -- projects -------------------------------------------------------------------------------------
    def note_projects(self, gitlab: str, project_ids: Iterable[int], now: datetime) -> None:
        requests = [
            {
                "PutRequest": {
                    "Item": self._dump(
                        {
                            TABLE_PK: f"PROJECTS#{gitlab}",
                            TABLE_SK: str(project_id),
                            "seen_at": _epoch(now),
                            TABLE_TTL_ATTRIBUTE: _epoch(now + PROJECT_MEMORY),
                        }
                    )
                }
            }
            for project_id in sorted(set(project_ids))
        ]
        for start in range(0, len(requests), 25):  # BatchWriteItem takes 25 items at most
            self._aws.call(
                "dynamodb", "batch_write_item", RequestItems={self._table: requests[start : start + 25]}
            )

    def recent_projects(self, gitlab: str, now: datetime, within: timedelta) -> list[int]:
        since = _epoch(now - within)
        items = self._query(f"PROJECTS#{gitlab}")
        return sorted(int(i[TABLE_SK]) for i in items if int(i["seen_at"]) >= since)

    # -- facts learned from GitLab --------------------------------------------------------------------
    def put_facts(self, key: str, facts: dict[str, Any], expires: datetime) -> None:
        item = {TABLE_PK: f"FACTS#{key}", TABLE_SK: "FACTS", **facts, TABLE_TTL_ATTRIBUTE: _epoch(expires)}
        self._aws.call("dynamodb", "put_item", TableName=self._table, Item=self._dump(item))

    def get_facts(self, key: str, now: datetime) -> dict[str, Any] | None:
        # DynamoDB's TTL deletes expired items only eventually: an expired one is treated as absent.
        item = self._get(f"FACTS#{key}", "FACTS", consistent=False)
        if item is None or int(item.get(TABLE_TTL_ATTRIBUTE, 0)) <= _epoch(now):
            return None
        return {k: v for k, v in item.items() if k not in (TABLE_PK, TABLE_SK, TABLE_TTL_ATTRIBUTE)}

    # -- machines -------------------------------------------------------------------------------------
    def _machine_item(self, machine: MachineRecord) -> dict[str, Any]:
        item: dict[str, Any] = {
            TABLE_PK: f"MACHINE#{machine.instance_id}",
            TABLE_SK: "MACHINE",
            GSI_POOL_PK: f"POOL#{machine.pool}#MACHINES",
            GSI_POOL_SK: machine.instance_id,
            "pool": machine.pool,
            "launched_at": _iso(machine.launched_at),
            "drain_reason": machine.drain_reason,
        }
        optional = {
            "runner_id": machine.runner_id,
            "ready_at": _iso(machine.ready_at),
            "prepared_at": _iso(machine.prepared_at),
            "last_busy_at": _iso(machine.last_busy_at),
            "draining_since": _iso(machine.draining_since),
            "host_id": machine.host_id,
            "job_ids": set(machine.job_ids) or None,
            "running": set(machine.running) or None,
            "paused_at": _iso(machine.paused_at),
            "retired_at": _iso(machine.retired_at),
            "instance_arn": machine.instance_arn or None,
            "replace_task": machine.replace_task,
            "reused_jobs": machine.reused_jobs or None,
        }
        item.update({k: v for k, v in optional.items() if v is not None})
        return item

    def put_machine(self, machine: MachineRecord) -> None:
        self._aws.call(
            "dynamodb", "put_item", TableName=self._table, Item=self._dump(self._machine_item(machine))
        )

    def adopt_machine(self, machine: MachineRecord) -> MachineRecord:
        created = self._conditional(
            "put_item",
            Item=self._dump(self._machine_item(machine)),
            ConditionExpression=f"attribute_not_exists({TABLE_PK})",
        )
        if created:
            return machine
        return self.get_machine(machine.instance_id) or machine

    def record_runner(self, machine: MachineRecord) -> None:
        self._aws.call("dynamodb", "update_item", TableName=self._table, **self._runner_update(machine))

    def register_runner(self, machine: MachineRecord, now: datetime) -> None:
        # One TransactWriteItems: "either all of them succeed or none of them succeeds", up to 100 actions
        # on distinct items (DynamoDB developer guide, "Amazon DynamoDB Transactions: How it works"). One call
        # instead of two; each item costs twice the write units of a plain write (same page, "Capacity
        # management for transactions": one write to prepare, one to commit), which for two small items
        # per launch is still a fraction of a cent per thousand launches.
        assert machine.runner_id is not None
        item = _runner_item(machine.runner_id, machine.instance_id, machine.pool, now)
        try:
            self._aws.call(
                "dynamodb",
                "transact_write_items",
                TransactItems=[
                    {"Update": {"TableName": self._table, **self._runner_update(machine)}},
                    {"Put": {"TableName": self._table, "Item": self._dump(item)}},
                ],
            )
        except AwsCallError as exc:
            if exc.code != TRANSACTION_CANCELED:
                raise
            # Neither action has a condition, so a cancellation is mostly a conflict with another write to
            # one of the items or a throttle: written again later. A reason that no retry mends (a
            # ValidationError such as an item too large: CancellationReasons, TransactWriteItems API
            # reference) fails the launch as any other refusal does.
            lasting = [r for r in exc.reasons if r not in TRANSIENT_CANCELLATIONS]
            why = f"cancelled: {', '.join(lasting) if lasting else 'a conflicting write or a throttle'}"
            raise AwsCallError(
                exc.service, exc.operation, exc.code, why, retryable=not lasting, reasons=exc.reasons
            ) from exc

    def _runner_update(self, machine: MachineRecord) -> dict[str, Any]:
        """The machine record's update that sets its runner (and host, ARN), keeping what else is stored."""
        values: dict[str, Any] = {
            ":runner": machine.runner_id,
            ":gpk": f"POOL#{machine.pool}#MACHINES",
            ":gsk": machine.instance_id,
            ":pool": machine.pool,
            ":launched": _iso(machine.launched_at),
            ":reason": "",
        }
        sets = [
            "runner_id = :runner",
            f"{GSI_POOL_PK} = :gpk",
            f"{GSI_POOL_SK} = :gsk",
            "#pool = :pool",
            "launched_at = if_not_exists(launched_at, :launched)",
            "drain_reason = if_not_exists(drain_reason, :reason)",
        ]
        if machine.host_id is not None:
            values[":host"] = machine.host_id
            sets.append("host_id = :host")
        if machine.instance_arn:
            values[":arn"] = machine.instance_arn
            sets.append("instance_arn = :arn")
        return {
            "Key": self._dump({TABLE_PK: f"MACHINE#{machine.instance_id}", TABLE_SK: "MACHINE"}),
            "UpdateExpression": "SET " + ", ".join(sets),
            "ExpressionAttributeValues": self._dump(values),
            "ExpressionAttributeNames": {"#pool": "pool"},
        }

    def get_machine(self, instance_id: str) -> MachineRecord | None:
        item = self._get(f"MACHINE#{instance_id}", "MACHINE")
        return self._machine(item) if item else None

    def machines(self, pool: str) -> list[MachineRecord]:
        return [self._machine(item) for item in self._query_pool(f"POOL#{pool}#MACHINES")]

    def delete_machine(self, instance_id: str) -> None:
        self._aws.call(
            "dynamodb",
            "delete_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"}),
        )

    def retire_machine(self, machine: MachineRecord, now: datetime) -> None:
        # One UpdateItem: a record that was never written (a lost launch event) becomes a tombstone too.
        self._aws.call(
            "dynamodb",
            "update_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: f"MACHINE#{machine.instance_id}", TABLE_SK: "MACHINE"}),
            UpdateExpression=(
                f"SET retired_at = :now, {TABLE_TTL_ATTRIBUTE} = :ttl, #pool = if_not_exists(#pool, :pool), "
                f"launched_at = if_not_exists(launched_at, :launched) REMOVE {GSI_POOL_PK}, {GSI_POOL_SK}"
            ),
            ExpressionAttributeValues=self._dump(
                {
                    ":now": _iso(now),
                    ":ttl": _epoch(now + MACHINE_TOMBSTONE_TTL),
                    ":pool": machine.pool,
                    ":launched": _iso(machine.launched_at),
                }
            ),
            ExpressionAttributeNames={"#pool": "pool"},
        )

    def machine_job_started(self, instance_id: str, job_id: int, now: datetime) -> bool:
        return self._conditional_update(
            {TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"},
            "ADD job_ids :job, running :job SET ready_at = if_not_exists(ready_at, :now)",
            f"attribute_exists({TABLE_PK}) AND (attribute_not_exists(job_ids) OR NOT contains(job_ids, :id))",
            {":job": {job_id}, ":id": job_id, ":now": _iso(now)},
        )

    def machine_job_finished(self, instance_id: str, job_id: int, now: datetime) -> bool:
        return self._conditional_update(
            {TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"},
            "DELETE running :job ADD job_ids :job SET last_busy_at = :now",
            f"attribute_exists({TABLE_PK})",
            {":job": {job_id}, ":now": _iso(now)},
        )

    def start_draining(
        self, instance_id: str, reason: str, now: datetime, *, only_if_idle: bool = True
    ) -> MachineRecord | None:
        condition = f"attribute_exists({TABLE_PK})"
        values: dict[str, Any] = {":now": _iso(now), ":reason": reason}
        if only_if_idle:
            condition += " AND (attribute_not_exists(running) OR size(running) = :zero)"
            values[":zero"] = 0
        try:
            result = self._aws.call(
                "dynamodb",
                "update_item",
                TableName=self._table,
                Key=self._dump({TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"}),
                UpdateExpression=(
                    "SET draining_since = if_not_exists(draining_since, :now), drain_reason = :reason"
                ),
                ConditionExpression=condition,
                ExpressionAttributeValues=self._dump(values),
                ReturnValues="ALL_NEW",  # the record as this write left it: never an index's stale copy
            )
        except AwsCallError as exc:
            if exc.code == CONDITION_FAILED:
                return None
            raise
        return self._machine(self._load(result["Attributes"]))

    def mark_paused(self, instance_id: str, now: datetime) -> None:
        self._conditional_update(
            {TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"},
            "SET paused_at = if_not_exists(paused_at, :now)",
            f"attribute_exists({TABLE_PK})",
            {":now": _iso(now)},
        )

    def stop_draining(self, instance_id: str) -> None:
        self._conditional_update(
            {TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"},
            "REMOVE draining_since, paused_at SET drain_reason = :empty",
            f"attribute_exists({TABLE_PK})",
            {":empty": ""},
        )

    def mark_ready(self, instance_id: str, now: datetime) -> None:
        self._conditional_update(
            {TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"},
            "SET ready_at = if_not_exists(ready_at, :now)",
            f"attribute_exists({TABLE_PK})",
            {":now": _iso(now)},
        )

    def start_reuse(self, machine: MachineRecord, task_id: str, now: datetime) -> bool:
        return self._conditional_update(
            {TABLE_PK: f"MACHINE#{machine.instance_id}", TABLE_SK: "MACHINE"},
            "SET replace_task = :task, reused_jobs = :jobs, launched_at = :now, drain_reason = :empty "
            "REMOVE runner_id, ready_at, prepared_at, draining_since, paused_at, last_busy_at",
            f"attribute_exists({TABLE_PK}) AND (attribute_not_exists(running) OR size(running) = :zero) AND "
            "(attribute_not_exists(job_ids) OR size(job_ids) = :jobs)",
            {":task": task_id, ":jobs": len(machine.job_ids), ":now": _iso(now), ":empty": "", ":zero": 0},
        )

    def end_reuse(self, instance_id: str) -> None:
        self._conditional(
            "update_item",
            Key=self._dump({TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"}),
            UpdateExpression="REMOVE replace_task",
            ConditionExpression=f"attribute_exists({TABLE_PK})",
        )

    def mark_prepared(self, instance_id: str, now: datetime) -> None:
        self._conditional_update(
            {TABLE_PK: f"MACHINE#{instance_id}", TABLE_SK: "MACHINE"},
            "SET prepared_at = :now",
            f"attribute_exists({TABLE_PK})",
            {":now": _iso(now)},
        )

    def _machine(self, item: dict[str, Any]) -> MachineRecord:
        runner = item.get("runner_id")
        launched = _dt(item.get("launched_at"))
        assert launched is not None
        return MachineRecord(
            instance_id=str(item[TABLE_PK]).removeprefix("MACHINE#"),
            pool=str(item.get("pool", "")),
            launched_at=launched,
            runner_id=int(runner) if runner is not None else None,
            job_ids=frozenset(int(j) for j in item.get("job_ids", ())),
            running=frozenset(int(j) for j in item.get("running", ())),
            ready_at=_dt(item.get("ready_at")),
            prepared_at=_dt(item.get("prepared_at")),
            last_busy_at=_dt(item.get("last_busy_at")),
            draining_since=_dt(item.get("draining_since")),
            drain_reason=str(item.get("drain_reason", "")),
            host_id=item.get("host_id"),
            paused_at=_dt(item.get("paused_at")),
            retired_at=_dt(item.get("retired_at")),
            instance_arn=str(item.get("instance_arn", "")),
            replace_task=item.get("replace_task"),
            reused_jobs=int(item.get("reused_jobs", 0)),
        )

    # -- leases ---------------------------------------------------------------------------------------
    def acquire_lease(self, pool: str, owner: str, now: datetime, duration: timedelta) -> bool:
        return self.take_lease(pool, owner, now, duration) is not None

    def take_lease(self, pool: str, owner: str, now: datetime, duration: timedelta) -> PoolLease | None:
        # An UpdateItem, never a PutItem: the item keeps the pool's faults. ReturnValues ALL_NEW answers
        # with "all of the attributes of the item, as they appear after the UpdateItem operation" (DynamoDB
        # API reference, UpdateItem), read strongly with the write: the faults cost no read of their own.
        # The item lives as long as the pool (one per pool): a TTL left by an older version is removed.
        try:
            result = self._aws.call(
                "dynamodb",
                "update_item",
                TableName=self._table,
                Key=self._dump(_lease_key(pool)),
                UpdateExpression="SET #owner = :owner, lease_until = :until REMOVE #ttl",
                ConditionExpression=_LEASE_FREE,
                ExpressionAttributeNames={"#owner": "owner", "#ttl": TABLE_TTL_ATTRIBUTE},
                ExpressionAttributeValues=self._dump(
                    {":owner": owner, ":until": _epoch(now + duration), ":now": _epoch(now)}
                ),
                ReturnValues="ALL_NEW",
            )
        except AwsCallError as exc:
            if exc.code == CONDITION_FAILED:
                return None
            raise
        item = self._load(result.get("Attributes", {}))
        window = item.get("contact_window")
        return PoolLease(
            tuple(f for f in _faults_of(pool, item) if f.until > now),
            int(window) if window is not None else None,
        )

    def release_lease(self, pool: str, owner: str, *, contact_window: int | None = None) -> None:
        # Nothing happens when the lease is not ours any more (expired and taken): nothing to release then.
        values: dict[str, Any] = {":owner": owner}
        update = "REMOVE #owner, lease_until"
        if contact_window is not None:
            update += " SET contact_window = :window"
            values[":window"] = contact_window
        self._conditional(
            "update_item",
            Key=self._dump(_lease_key(pool)),
            UpdateExpression=update,
            ConditionExpression="#owner = :owner",
            ExpressionAttributeValues=self._dump(values),
            ExpressionAttributeNames={"#owner": "owner"},
        )

    # -- plumbing -------------------------------------------------------------------------------------
    def _query_pool(self, gsi_pk: str) -> list[dict[str, Any]]:
        return self._query(gsi_pk, index=GSI_POOL, key_attribute=GSI_POOL_PK)

    def _conditional_update(
        self,
        key: dict[str, str],
        update: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> bool:
        extra: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
        return self._conditional(
            "update_item",
            Key=self._dump(key),
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeValues=self._dump(values),
            **extra,
        )


class MemoryStore:
    """The Store in a dict, for the simulator and pure tests; same semantics as DynamoStore."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: dict[str, JobRecord] = {}
        self._settled: set[str] = set()
        self.machine_records: dict[str, MachineRecord] = {}
        self._events: dict[str, datetime] = {}
        self._windows: dict[str, int] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._projects: dict[tuple[str, int], datetime] = {}
        self._facts: dict[str, tuple[dict[str, Any], datetime]] = {}
        self._suspects: dict[str, datetime] = {}
        self._faults: dict[tuple[str, str, str], Fault] = {}
        self._unrouted: set[str] = set()
        self._runners: dict[int, tuple[str, str]] = {}
        self._marks: dict[str, set[str]] = {}  # job key -> event marks (DynamoStore's EVENT_MARKS)
        self._contact_windows: dict[str, int] = {}

    def record_job(self, job: JobRecord, now: datetime) -> bool:
        with self._lock:
            old = self.jobs.get(job.key)
            fills_pool = (
                old is not None and rank(old.status) == rank(job.status) and not old.pool and job.pool
            )
            if old is not None and rank(old.status) >= rank(job.status) and not fills_pool:
                return False
            merged = replace(
                job,
                pool=job.pool or (old.pool if old else ""),
                runner_id=job.runner_id if job.runner_id is not None else (old.runner_id if old else None),
                machine_id=job.machine_id or (old.machine_id if old else ""),
                tags=job.tags or (old.tags if old else ()),
                created_at=job.created_at or (old.created_at if old else None),
                started_at=job.started_at or (old.started_at if old else None),
                updated_at=now,
            )
            self.jobs[job.key] = merged
            if merged.pool:
                self._unrouted.discard(job.key)
            elif _unrouted(merged):
                self._unrouted.add(job.key)
            return True

    def write_job(
        self, job: JobRecord, now: datetime, *, event_key: str = "", same_runner: bool = False
    ) -> JobWrite:
        # Through `record_job`, so that a subclass keeping indexes (the simulator's) sees every job write.
        mark = event_mark(event_key) if event_key else ""
        old = self.jobs.get(job.key)
        if same_runner and (old is None or old.runner_id != job.runner_id):
            return JobWrite(False, old)
        if mark and mark in self._marks.get(job.key, ()):
            return JobWrite(False, old, duplicate=True)
        if self.record_job(job, now):
            if mark:
                self._marks.setdefault(job.key, set()).add(mark)
            return JobWrite(True, before=old if same_runner else None)
        return JobWrite(False, self.jobs.get(job.key))

    def reopen_skipped(self, job: JobRecord, now: datetime, *, event_key: str = "") -> bool:
        mark = event_mark(event_key) if event_key else ""
        with self._lock:
            old = self.jobs.get(job.key)
            if old is None or old.status != "skipped" or mark in self._marks.get(job.key, ()):
                return False
            if mark:
                self._marks.setdefault(job.key, set()).add(mark)
            self.jobs[job.key] = replace(
                old, status=job.status, pool=job.pool or old.pool, finished_at=None, updated_at=now
            )
            self._settled.discard(job.key)
            return True

    def fill_tags(self, job: JobRecord) -> bool:
        with self._lock:
            old = self.jobs.get(job.key)
            if old is None or old.tags or not job.tags:
                return False
            self.jobs[job.key] = replace(old, tags=job.tags)
            return True

    def get_job(self, gitlab: str, job_id: int) -> JobRecord | None:
        return self.jobs.get(f"JOB#{gitlab}#{job_id}")

    def unrouted_jobs(self) -> list[JobRecord]:
        with self._lock:
            return [self.jobs[key] for key in sorted(self._unrouted)]

    def no_pool(self, job: JobRecord) -> bool:
        with self._lock:
            old = self.jobs.get(job.key)
            if old is None or job.key not in self._unrouted:
                return False
            self._unrouted.discard(job.key)
            self.jobs[job.key] = replace(old, tags=job.tags)
            return True

    def map_runner(self, runner_id: int, instance_id: str, pool: str, now: datetime) -> None:
        with self._lock:
            self._runners[int(runner_id)] = (instance_id, pool)

    def runner_machine(self, runner_id: int) -> tuple[str, str] | None:
        with self._lock:
            return self._runners.get(int(runner_id))

    def pool_jobs(self, pool: str) -> list[JobRecord]:
        with self._lock:
            return [
                j
                for j in self.jobs.values()
                if j.pool == pool and rank(j.status) >= rank("pending") and j.key not in self._settled
            ]

    def settle_job(self, job: JobRecord) -> None:
        with self._lock:
            self._settled.add(job.key)

    def first_seen(self, key: str, now: datetime) -> bool:
        with self._lock:
            seen = self._events.get(key)
            if seen is not None and now - seen < EVENT_TTL:
                return False
            self._events[key] = now
            return True

    def forget_event(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)

    def claim_windows(self, windows: Mapping[str, int], now: datetime) -> set[str]:
        with self._lock:
            claimed = {step for step, window in windows.items() if self._windows.get(step) != window}
            self._windows.update(windows)
            return claimed

    def put_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults[(fault.pool, fault.kind, fault.detail)] = fault

    def faults(self, pool: str, now: datetime) -> list[Fault]:
        with self._lock:
            return [f for (p, _, _), f in self._faults.items() if p == pool and f.until > now]

    def clear_faults(self, pool: str, kinds: Iterable[str] | None = None) -> None:
        wanted = None if kinds is None else set(kinds)
        with self._lock:
            for key in [k for k in self._faults if k[0] == pool and (wanted is None or k[1] in wanted)]:
                del self._faults[key]

    def suspect(self, key: str, now: datetime) -> datetime:
        with self._lock:
            return self._suspects.setdefault(key, now)

    def clear_suspect(self, key: str) -> None:
        with self._lock:
            self._suspects.pop(key, None)

    def note_projects(self, gitlab: str, project_ids: Iterable[int], now: datetime) -> None:
        with self._lock:
            for project_id in project_ids:
                self._projects[(gitlab, project_id)] = now

    def recent_projects(self, gitlab: str, now: datetime, within: timedelta) -> list[int]:
        with self._lock:
            return sorted(
                p for (g, p), seen in self._projects.items() if g == gitlab and now - seen <= within
            )

    def put_facts(self, key: str, facts: dict[str, Any], expires: datetime) -> None:
        with self._lock:
            self._facts[key] = (dict(facts), expires)

    def get_facts(self, key: str, now: datetime) -> dict[str, Any] | None:
        with self._lock:
            found = self._facts.get(key)
        return dict(found[0]) if found is not None and found[1] > now else None

    def put_machine(self, machine: MachineRecord) -> None:
        with self._lock:
            self.machine_records[machine.instance_id] = machine

    def adopt_machine(self, machine: MachineRecord) -> MachineRecord:
        with self._lock:
            return self.machine_records.setdefault(machine.instance_id, machine)

    def record_runner(self, machine: MachineRecord) -> None:
        with self._lock:
            old = self.machine_records.get(machine.instance_id)
            if old is None:
                self.machine_records[machine.instance_id] = machine
                return
            host = machine.host_id if machine.host_id is not None else old.host_id
            self.machine_records[machine.instance_id] = replace(
                old,
                runner_id=machine.runner_id,
                host_id=host,
                instance_arn=machine.instance_arn or old.instance_arn,
            )

    def register_runner(self, machine: MachineRecord, now: datetime) -> None:
        assert machine.runner_id is not None
        self.record_runner(machine)
        self.map_runner(machine.runner_id, machine.instance_id, machine.pool, now)

    def get_machine(self, instance_id: str) -> MachineRecord | None:
        return self.machine_records.get(instance_id)

    def machines(self, pool: str) -> list[MachineRecord]:
        with self._lock:
            return [m for m in self.machine_records.values() if m.pool == pool and m.retired_at is None]

    def delete_machine(self, instance_id: str) -> None:
        with self._lock:
            self.machine_records.pop(instance_id, None)

    def retire_machine(self, machine: MachineRecord, now: datetime) -> None:
        with self._lock:
            stored = self.machine_records.get(machine.instance_id, machine)
            self.machine_records[machine.instance_id] = replace(stored, retired_at=now)

    def machine_job_started(self, instance_id: str, job_id: int, now: datetime) -> bool:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is None or job_id in m.job_ids:
                return False
            self.machine_records[instance_id] = replace(
                m, job_ids=m.job_ids | {job_id}, running=m.running | {job_id}, ready_at=m.ready_at or now
            )
            return True

    def machine_job_finished(self, instance_id: str, job_id: int, now: datetime) -> bool:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is None:
                return False
            self.machine_records[instance_id] = replace(
                m, running=m.running - {job_id}, job_ids=m.job_ids | {job_id}, last_busy_at=now
            )
            return True

    def start_draining(
        self, instance_id: str, reason: str, now: datetime, *, only_if_idle: bool = True
    ) -> MachineRecord | None:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is None or (only_if_idle and m.running):
                return None
            drained = replace(m, draining_since=m.draining_since or now, drain_reason=reason)
            self.machine_records[instance_id] = drained
            return drained

    def mark_paused(self, instance_id: str, now: datetime) -> None:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is not None and m.paused_at is None:
                self.machine_records[instance_id] = replace(m, paused_at=now)

    def stop_draining(self, instance_id: str) -> None:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is not None:
                self.machine_records[instance_id] = replace(
                    m, draining_since=None, drain_reason="", paused_at=None
                )

    def mark_ready(self, instance_id: str, now: datetime) -> None:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is not None and m.ready_at is None:
                self.machine_records[instance_id] = replace(m, ready_at=now)

    def start_reuse(self, machine: MachineRecord, task_id: str, now: datetime) -> bool:
        with self._lock:
            m = self.machine_records.get(machine.instance_id)
            if m is None or m.running or len(m.job_ids) != len(machine.job_ids):
                return False
            self.machine_records[machine.instance_id] = replace(
                m,
                replace_task=task_id,
                reused_jobs=len(m.job_ids),
                launched_at=now,
                runner_id=None,
                ready_at=None,
                prepared_at=None,
                draining_since=None,
                drain_reason="",
                paused_at=None,
                last_busy_at=None,
            )
            return True

    def end_reuse(self, instance_id: str) -> None:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is not None:
                self.machine_records[instance_id] = replace(m, replace_task=None)

    def mark_prepared(self, instance_id: str, now: datetime) -> None:
        with self._lock:
            m = self.machine_records.get(instance_id)
            if m is not None:
                self.machine_records[instance_id] = replace(m, prepared_at=now)

    def acquire_lease(self, pool: str, owner: str, now: datetime, duration: timedelta) -> bool:
        return self.take_lease(pool, owner, now, duration) is not None

    def take_lease(self, pool: str, owner: str, now: datetime, duration: timedelta) -> PoolLease | None:
        with self._lock:
            held = self._leases.get(pool)
            if held is not None and held[0] != owner and held[1] >= now:
                return None
            self._leases[pool] = (owner, now + duration)
            faults = [f for (p, _, _), f in self._faults.items() if p == pool and f.until > now]
            return PoolLease(
                tuple(sorted(faults, key=lambda f: (f.kind, f.detail))), self._contact_windows.get(pool)
            )

    def release_lease(self, pool: str, owner: str, *, contact_window: int | None = None) -> None:
        with self._lock:
            held = self._leases.get(pool)
            if held is not None and held[0] == owner:
                del self._leases[pool]
                if contact_window is not None:
                    self._contact_windows[pool] = contact_window
