"""The Store contract, run against DynamoDB (moto) and the in-memory twin: both must behave the same."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from chalicelib.aws import AwsClients, fault
from chalicelib.errors import AwsCallError
from chalicelib.store import DynamoStore, Fault, JobRecord, MachineRecord, MemoryStore, PoolLease, Store
from tests.builders import T0
from toolkit.devtools.bootstrap import ensure_table


@pytest.fixture(params=["dynamo", "memory"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStore()
    aws: AwsClients = request.getfixturevalue("aws")
    ensure_table(aws, "test-state")
    return DynamoStore(aws, "test-state")


def job(status: str, job_id: int = 1, **kw: object) -> JobRecord:
    base: dict[str, object] = {
        "gitlab": "gitlab.example.com",
        "job_id": job_id,
        "status": status,
        "pool": "linux",
    }
    base.update(kw)
    return JobRecord(**base)  # type: ignore[arg-type]


def test_job_status_only_moves_forward(store: Store) -> None:
    assert store.record_job(job("running", runner_id=7), T0)
    assert not store.record_job(job("pending"), T0)  # late pending never overwrites running
    assert not store.record_job(job("running"), T0)  # duplicate changes nothing
    stored = store.get_job("gitlab.example.com", 1)
    assert stored is not None and (stored.status, stored.runner_id) == ("running", 7)
    assert store.record_job(job("success"), T0)
    assert store.get_job("gitlab.example.com", 1).status == "success"  # type: ignore[union-attr]


@pytest.mark.parametrize("order", list(itertools.permutations(["created", "pending", "running", "success"])))
def test_any_order_of_one_jobs_events_ends_in_the_same_state(order: tuple[str, ...]) -> None:
    memory = MemoryStore()
    for status in order + order:  # every event twice
        memory.record_job(job(status), T0)
    assert memory.get_job("gitlab.example.com", 1).status == "success"  # type: ignore[union-attr]


def test_pool_jobs_hold_active_and_unsettled_finished_jobs(store: Store) -> None:
    store.record_job(job("created", 1), T0)
    store.record_job(job("pending", 2), T0)
    store.record_job(job("running", 3, machine_id="i-1"), T0)
    store.record_job(job("success", 4, machine_id="i-1"), T0)
    store.record_job(job("pending", 5, pool="other"), T0)
    store.record_job(job("pending", 6, pool=""), T0)  # unroutable: on no pool's index
    assert sorted(j.job_id for j in store.pool_jobs("linux")) == [2, 3, 4]
    finished = next(j for j in store.pool_jobs("linux") if j.job_id == 4)
    store.settle_job(finished)
    assert sorted(j.job_id for j in store.pool_jobs("linux")) == [2, 3]


def test_tags_survive_events_that_carry_none(store: Store) -> None:
    store.record_job(job("pending", tags=("linux", "docker")), T0)
    store.record_job(job("running", tags=()), T0)
    assert store.get_job("gitlab.example.com", 1).tags == ("linux", "docker")  # type: ignore[union-attr]


def test_a_job_stored_without_tags_gets_them_once_and_nothing_else_changes(store: Store) -> None:
    store.record_job(job("running", runner_id=7, machine_id="i-1"), T0)
    assert not store.fill_tags(job("pending", job_id=2, tags=("linux",)))  # unknown job: nothing written
    assert store.fill_tags(job("pending", tags=("linux",)))
    assert not store.fill_tags(job("pending", tags=("other",)))  # tags already known: kept
    stored = store.get_job("gitlab.example.com", 1)
    assert stored is not None
    assert (stored.status, stored.tags, stored.machine_id) == ("running", ("linux",), "i-1")
    assert store.get_job("gitlab.example.com", 2) is None


def test_a_write_on_the_same_runner_answers_with_the_job_as_it_was(store: Store) -> None:
    # GIVEN a job stored running on runner 7 of machine i-1, and a job stored pending (no runner yet)
    store.record_job(job("running", 1, runner_id=7, machine_id="i-1"), T0)
    store.record_job(job("pending", 2), T0)
    # WHEN their ends are written only if the stored job names the same runner, without pool or machine
    ended = store.write_job(job("success", 1, pool="", runner_id=7), T0, event_key="a", same_runner=True)
    other = store.write_job(job("success", 1, pool="", runner_id=8), T0, event_key="b", same_runner=True)
    unknown = store.write_job(job("success", 2, pool="", runner_id=7), T0, event_key="c", same_runner=True)
    absent = store.write_job(job("success", 3, pool="", runner_id=7), T0, same_runner=True)
    # THEN the first is applied and tells what was stored before (its pool and machine), which stay stored
    assert ended.applied and ended.before is not None
    assert (ended.before.status, ended.before.pool, ended.before.machine_id) == ("running", "linux", "i-1")
    stored = store.get_job("gitlab.example.com", 1)
    assert stored is not None
    assert (stored.status, stored.pool, stored.machine_id) == ("success", "linux", "i-1")
    # AND the others are refused, with the job as stored (None when there is none), and write nothing
    assert not other.applied and other.stored is not None and other.stored.runner_id == 7
    assert not unknown.applied and unknown.stored is not None and unknown.stored.status == "pending"
    assert not absent.applied and absent.stored is None and store.get_job("gitlab.example.com", 3) is None
    # AND the same delivery again is a duplicate
    again = store.write_job(job("success", 1, pool="", runner_id=7), T0, event_key="a", same_runner=True)
    assert not again.applied and again.duplicate


def test_first_seen_deduplicates(store: Store) -> None:
    assert store.first_seen("key-1", T0)
    assert not store.first_seen("key-1", T0 + timedelta(seconds=5))
    assert store.first_seen("key-2", T0)
    store.forget_event("key-1")  # the event could not be applied: a resend must count
    assert store.first_seen("key-1", T0)


def test_machine_job_accounting_is_idempotent(store: Store) -> None:
    store.put_machine(MachineRecord("i-1", "linux", T0, runner_id=42))
    assert store.machine_job_started("i-1", 100, T0)
    assert not store.machine_job_started("i-1", 100, T0)  # the same job counts once
    busy = store.get_machine("i-1")
    assert busy is not None and (busy.jobs_started, busy.running) == (1, frozenset({100}))
    assert not store.start_draining("i-1", "idle", T0)  # never drain a machine with a job...
    store.machine_job_finished("i-1", 100, T0 + timedelta(minutes=3))
    done = store.get_machine("i-1")
    assert done is not None and done.running == frozenset() and done.last_busy_at == T0 + timedelta(minutes=3)
    assert store.start_draining("i-1", "used_up", T0)
    assert store.get_machine("i-1").drain_reason == "used_up"  # type: ignore[union-attr]
    store.stop_draining("i-1")
    assert store.get_machine("i-1").draining_since is None  # type: ignore[union-attr]
    assert not store.machine_job_started("i-unknown", 1, T0)


def test_an_interrupted_machine_drains_even_with_a_job(store: Store) -> None:
    store.put_machine(MachineRecord("i-1", "linux", T0, runner_id=42))
    store.machine_job_started("i-1", 100, T0)
    assert store.start_draining("i-1", "spot", T0, only_if_idle=False)  # ...unless it leaves anyway
    assert store.get_machine("i-1").drain_reason == "spot"  # type: ignore[union-attr]


def test_a_prepared_machine_stays_prepared_and_keeps_its_job_counts(store: Store) -> None:
    # GIVEN a machine whose runner was just created, and which already started a job
    store.put_machine(MachineRecord("i-1", "linux", T0, runner_id=42))
    store.machine_job_started("i-1", 100, T0)
    assert store.get_machine("i-1").prepared_at is None  # type: ignore[union-attr]
    # WHEN its secret is stored
    store.mark_prepared("i-1", T0 + timedelta(seconds=1))
    # THEN it reads as prepared, with what it had (a targeted update, not a rewrite)
    machine = store.get_machine("i-1")
    assert machine is not None and machine.prepared_at == T0 + timedelta(seconds=1)
    assert (machine.runner_id, machine.running) == (42, frozenset({100}))
    store.mark_prepared("i-unknown", T0)  # an unknown machine is not created
    assert store.get_machine("i-unknown") is None


def test_adoption_never_overwrites_a_record_and_a_runner_never_erases_adoption(store: Store) -> None:
    # GIVEN the launch handler's record of a machine, with its runner
    store.record_runner(MachineRecord("i-1", "linux", T0, runner_id=42))
    # WHEN a reconcile that did not see it (a stale index) adopts the machine
    adopted = store.adopt_machine(MachineRecord("i-1", "linux", T0 + timedelta(minutes=1)))
    # THEN the stored record wins, runner and all
    assert adopted.runner_id == 42 and adopted.launched_at == T0
    assert store.get_machine("i-1").runner_id == 42  # type: ignore[union-attr]
    # AND a launch handler that comes after an adoption and a credited job keeps both
    store.adopt_machine(MachineRecord("i-2", "linux", T0))
    store.machine_job_started("i-2", 7, T0)
    store.record_runner(MachineRecord("i-2", "linux", T0 + timedelta(minutes=2), runner_id=43))
    late = store.get_machine("i-2")
    assert late is not None and (late.runner_id, late.running, late.launched_at) == (43, frozenset({7}), T0)
    assert [m.instance_id for m in store.machines("linux")] == ["i-1", "i-2"]


def test_draining_answers_with_the_record_as_written_and_remembers_the_pause(store: Store) -> None:
    store.put_machine(MachineRecord("i-1", "linux", T0, runner_id=42))
    drained = store.start_draining("i-1", "idle", T0)
    assert drained is not None and (drained.runner_id, drained.draining_since) == (42, T0)
    store.mark_paused("i-1", T0 + timedelta(seconds=5))
    store.mark_paused("i-1", T0 + timedelta(seconds=9))  # the first pause counts
    again = store.start_draining("i-1", "idle", T0 + timedelta(minutes=1))
    assert again is not None and again.paused_at == T0 + timedelta(seconds=5)
    assert again.draining_since == T0
    store.stop_draining("i-1")
    cancelled = store.get_machine("i-1")
    assert cancelled is not None and (cancelled.draining_since, cancelled.paused_at) == (None, None)
    assert store.start_draining("i-unknown", "idle", T0) is None


def test_machines_are_listed_per_pool(store: Store) -> None:
    store.put_machine(MachineRecord("i-1", "linux", T0))
    store.put_machine(MachineRecord("i-2", "other", T0))
    assert [m.instance_id for m in store.machines("linux")] == ["i-1"]
    store.delete_machine("i-1")
    assert store.machines("linux") == []


def test_a_retired_machine_is_kept_off_its_pool_and_marked_done(store: Store) -> None:
    store.put_machine(MachineRecord("i-1", "linux", T0, runner_id=42))
    store.retire_machine(MachineRecord("i-1", "linux", T0), T0 + timedelta(minutes=3))
    store.retire_machine(MachineRecord("i-lost", "linux", T0), T0 + timedelta(minutes=3))  # never recorded
    assert store.machines("linux") == []
    kept, lost = store.get_machine("i-1"), store.get_machine("i-lost")
    assert kept is not None and (kept.runner_id, kept.retired_at) == (42, T0 + timedelta(minutes=3))
    assert lost is not None and lost.retired_at == T0 + timedelta(minutes=3) and lost.pool == "linux"


def test_periodic_steps_are_claimed_once_per_window_in_one_write(store: Store) -> None:
    # GIVEN a tick that claims three steps for their windows
    assert store.claim_windows({"sweep": 10, "certs": 3, "scan": 40}, T0) == {"sweep", "certs", "scan"}
    # WHEN another container's tick claims the same windows, THEN it gets none of them
    assert store.claim_windows({"sweep": 10, "certs": 3, "scan": 40}, T0) == set()
    # WHEN only the scan's window has moved on, THEN only the scan is claimed
    assert store.claim_windows({"sweep": 10, "certs": 3, "scan": 41}, T0) == {"scan"}
    assert store.claim_windows({}, T0) == set()


def test_lease_excludes_a_second_owner_until_expiry(store: Store) -> None:
    assert store.acquire_lease("linux", "a", T0, timedelta(seconds=50))
    assert not store.acquire_lease("linux", "b", T0 + timedelta(seconds=10), timedelta(seconds=50))
    assert store.acquire_lease("linux", "a", T0 + timedelta(seconds=10), timedelta(seconds=50))  # re-entrant
    assert store.acquire_lease("linux", "b", T0 + timedelta(seconds=120), timedelta(seconds=50))  # expired
    store.release_lease("linux", "a")  # not the owner: no effect
    assert not store.acquire_lease("linux", "a", T0 + timedelta(seconds=121), timedelta(seconds=50))
    store.release_lease("linux", "b")
    assert store.acquire_lease("linux", "a", T0 + timedelta(seconds=122), timedelta(seconds=50))


def test_a_job_recorded_without_a_pool_gets_one_later_at_the_same_status(store: Store) -> None:
    assert store.record_job(job("pending", pool=""), T0)  # GitLab was unreachable: no tags, no pool
    assert [j.job_id for j in store.pool_jobs("linux")] == []
    assert store.record_job(job("pending", pool="linux"), T0)  # the tick resolved it
    assert [j.job_id for j in store.pool_jobs("linux")] == [1]
    assert not store.record_job(job("pending", pool="linux"), T0)  # and only once


def test_a_job_without_a_pool_is_on_the_unrouted_index_until_routed_or_found_to_match_none(
    store: Store,
) -> None:
    # GIVEN a created job (no demand: not unrouted) and two pending jobs whose tags are not known yet
    assert store.record_job(job("created", 1, pool=""), T0)
    assert store.record_job(job("pending", 2, pool=""), T0)
    assert store.record_job(job("pending", 3, pool=""), T0)
    assert sorted(j.job_id for j in store.unrouted_jobs()) == [2, 3]
    # WHEN one is routed at the same status, and the other's tags match no pool
    assert store.record_job(job("pending", 2, pool="linux", tags=("linux",)), T0)
    assert store.no_pool(job("pending", 3, pool="", tags=("windows",)))
    # THEN neither is unrouted any more; the second keeps its tags, and is taken off only once
    assert store.unrouted_jobs() == []
    assert [j.job_id for j in store.pool_jobs("linux")] == [2]
    stored = store.get_job("gitlab.example.com", 3)
    assert stored is not None and (stored.pool, stored.tags) == ("", ("windows",))
    assert not store.no_pool(job("pending", 3, pool="", tags=("windows",)))
    # AND a job routed meanwhile is not taken off its pool by a late `no_pool`
    assert not store.no_pool(job("pending", 2, pool="", tags=()))
    assert [j.job_id for j in store.pool_jobs("linux")] == [2]


def test_a_later_event_without_a_pool_keeps_the_stored_pool(store: Store) -> None:
    # GIVEN a pending job routed to linux
    assert store.record_job(job("pending", pool="linux"), T0)
    # WHEN it runs on a runner that is not ours (the webhook knows no pool for it)
    assert store.record_job(job("running", pool="", runner_id=77), T0)
    # THEN it stays in its pool, running, and is not unrouted
    assert [(j.status, j.pool) for j in store.pool_jobs("linux")] == [("running", "linux")]
    assert store.unrouted_jobs() == []
    # AND a job first seen running with no pool known is unrouted until resolved
    assert store.record_job(job("running", 9, pool=""), T0)
    assert [j.job_id for j in store.unrouted_jobs()] == [9]


def test_a_runner_id_maps_to_its_machine(store: Store) -> None:
    assert store.runner_machine(41) is None
    store.map_runner(41, "i-0aaaaaaaaaaaaaaa0", "linux", T0)
    assert store.runner_machine(41) == ("i-0aaaaaaaaaaaaaaa0", "linux")
    assert store.runner_machine(42) is None


def test_recent_projects_are_remembered_for_a_while(store: Store) -> None:
    store.note_projects("gitlab.example.com", [3, 1, 3], T0)
    store.note_projects("gitlab.example.com", [2], T0 + timedelta(days=5))
    store.note_projects("other.example.com", [9], T0)
    assert store.recent_projects("gitlab.example.com", T0 + timedelta(days=5), timedelta(days=7)) == [1, 2, 3]
    assert store.recent_projects("gitlab.example.com", T0 + timedelta(days=9), timedelta(days=7)) == [2]


def test_only_a_skipped_job_can_be_reopened(store: Store) -> None:
    store.record_job(job("skipped", 1), T0)
    store.settle_job(job("skipped", 1))
    assert not store.record_job(job("pending", 1), T0)  # rank alone would strand it...
    assert store.reopen_skipped(job("pending", 1), T0)  # ...GitLab reopened it after a retry upstream
    assert [j.job_id for j in store.pool_jobs("linux")] == [1]
    store.record_job(job("success", 2), T0)
    assert not store.reopen_skipped(job("pending", 2), T0)
    assert store.get_job("gitlab.example.com", 2).status == "success"  # type: ignore[union-attr]


def test_a_job_write_refuses_a_delivery_applied_before_and_tells_what_is_stored(store: Store) -> None:
    # GIVEN a job written pending by delivery "k1"
    assert store.write_job(job("pending", 1), T0, event_key="k1").applied
    # WHEN "k1" comes again, and a late "created" no delivery applied before
    again = store.write_job(job("pending", 1), T0, event_key="k1")
    late = store.write_job(job("created", 1), T0, event_key="k0")
    # THEN both are refused with the stored job in hand; only the first is a duplicate delivery
    assert (again.applied, again.duplicate, again.stored and again.stored.status) == (False, True, "pending")
    assert (late.applied, late.duplicate, late.stored and late.stored.status) == (False, False, "pending")
    assert store.write_job(job("running", 1), T0, event_key="k2").applied


def test_a_skipped_job_reopened_is_never_skipped_again_by_the_same_delivery(store: Store) -> None:
    # GIVEN a job that went pending ("k1"), was skipped ("k2"), then reopened by GitLab ("k3")
    store.write_job(job("pending", 1), T0, event_key="k1")
    store.write_job(job("skipped", 1), T0, event_key="k2")
    assert not store.reopen_skipped(job("pending", 1), T0, event_key="k1")  # its old hook again: no
    assert store.reopen_skipped(job("pending", 1), T0, event_key="k3")
    # WHEN the skip's delivery comes again
    resent = store.write_job(job("skipped", 1), T0, event_key="k2")
    # THEN it is refused as a duplicate, though `skipped` ranks above `pending`
    assert (resent.applied, resent.duplicate) == (False, True)
    assert store.get_job("gitlab.example.com", 1).status == "pending"  # type: ignore[union-attr]


def test_a_suspicion_remembers_when_it_was_first_seen(store: Store) -> None:
    assert store.suspect("runner#1", T0) == T0
    assert store.suspect("runner#1", T0 + timedelta(minutes=3)) == T0
    store.clear_suspect("runner#1")
    assert store.suspect("runner#1", T0 + timedelta(minutes=5)) == T0 + timedelta(minutes=5)


def test_faults_expire_and_clear(store: Store) -> None:
    store.put_fault(Fault("linux", "instance_type", "m7i.large", T0 + timedelta(minutes=30), "no capacity"))
    store.put_fault(Fault("linux", "spot", "", T0 + timedelta(minutes=5)))
    assert {f.kind for f in store.faults("linux", T0)} == {"instance_type", "spot"}
    assert [f.detail for f in store.faults("linux", T0 + timedelta(minutes=10))] == ["m7i.large"]
    assert store.faults("other", T0) == []
    store.clear_faults("linux")
    assert store.faults("linux", T0) == []


def test_a_lease_comes_with_the_pools_faults_and_last_contact_window(store: Store) -> None:
    # GIVEN a pool with a fault recorded while a reconcile holds its lease, which records a contact window
    assert store.take_lease("linux", "a", T0, timedelta(seconds=50)) == PoolLease()
    store.put_fault(Fault("linux", "spot", "", T0 + timedelta(minutes=5), "no capacity"))
    store.put_fault(Fault("linux", "zone", "eu-west-1a", T0 + timedelta(seconds=30)))
    store.release_lease("linux", "a", contact_window=7)
    # WHEN another reconcile takes the lease later
    taken = store.take_lease("linux", "b", T0 + timedelta(minutes=1), timedelta(seconds=50))
    # THEN the unexpired fault and the window come with it (both live on the lease item), and only the
    # owner's release records a window
    assert taken == PoolLease((Fault("linux", "spot", "", T0 + timedelta(minutes=5), "no capacity"),), 7)
    store.release_lease("linux", "a", contact_window=9)  # not the owner: no effect
    assert store.take_lease("linux", "a", T0 + timedelta(minutes=1), timedelta(seconds=50)) is None
    store.release_lease("linux", "b")
    store.clear_faults("linux", ["spot"])
    assert store.take_lease("linux", "a", T0 + timedelta(minutes=2), timedelta(seconds=50)) == PoolLease(
        (), 7
    )


def test_facts_learned_from_gitlab_are_kept_until_they_expire(store: Store) -> None:
    # DynamoDB's TTL deletes late: an expired item must read as absent in both stores
    store.put_facts("project#gitlab.example.com#7", {"path": "acme/app", "shared_runners": False}, T0 + HOUR)
    assert store.get_facts("project#gitlab.example.com#7", T0) == {
        "path": "acme/app",
        "shared_runners": False,
    }
    assert store.get_facts("project#gitlab.example.com#7", T0 + HOUR) is None
    assert store.get_facts("project#gitlab.example.com#8", T0) is None


HOUR = timedelta(hours=1)


def test_a_runner_is_recorded_and_mapped_together(store: Store) -> None:
    # GIVEN a machine adopted (and credited with a job) before its launch handler got to it
    store.put_machine(MachineRecord("i-1", "linux", T0))
    store.machine_job_started("i-1", 100, T0)
    # WHEN the launch registers its runner
    store.register_runner(MachineRecord("i-1", "linux", T0, runner_id=42, instance_arn="arn:i-1"), T0)
    # THEN the record names the runner and keeps its job, and the runner is mapped to the machine
    record = store.get_machine("i-1")
    assert record is not None and (record.runner_id, record.job_ids) == (42, frozenset({100}))
    assert store.runner_machine(42) == ("i-1", "linux")


TRANSACT = "TransactWriteItems"


def test_a_cancelled_runner_registration_is_retryable_and_writes_nothing(aws: AwsClients) -> None:
    # GIVEN DynamoDB cancelling the transaction (a conflicting write to one of its items)
    ensure_table(aws, "test-state")
    cancelled = AwsClients(
        region="us-east-1",
        sleep=lambda _s: None,
        fault_injector=lambda _s, op: fault("TransactionCanceledException", 400) if op == TRANSACT else None,
    )
    store = DynamoStore(cancelled, "test-state")
    # WHEN the launch registers its runner
    with pytest.raises(AwsCallError) as raised:
        store.register_runner(MachineRecord("i-1", "linux", T0, runner_id=42), T0)
    # THEN the failure is one to retry (the launch is deferred, never given up), and neither item exists
    assert raised.value.retryable and raised.value.code == "TransactionCanceledException"
    assert store.get_machine("i-1") is None and store.runner_machine(42) is None


def test_a_runner_registration_cancelled_for_a_lasting_reason_is_not_retried(aws: AwsClients) -> None:
    # GIVEN DynamoDB cancelling the transaction because one action can never succeed (a ValidationError,
    # say an item over the size limit), the other action not the cause ("None")
    ensure_table(aws, "test-state")

    def cancel(_service: str, operation: str) -> dict[str, Any] | None:
        if operation != TRANSACT:
            return None
        return fault("TransactionCanceledException", 400) | {
            "CancellationReasons": [{"Code": "ValidationError"}, {"Code": "None"}]
        }

    store = DynamoStore(
        AwsClients(region="us-east-1", sleep=lambda _s: None, fault_injector=cancel), "test-state"
    )
    # WHEN the launch registers its runner
    with pytest.raises(AwsCallError) as raised:
        store.register_runner(MachineRecord("i-1", "linux", T0, runner_id=42), T0)
    # THEN the launch is told it will not succeed later (it undoes the runner), and why
    assert not raised.value.retryable and raised.value.reasons == ("ValidationError", "None")
    assert "ValidationError" in str(raised.value)
