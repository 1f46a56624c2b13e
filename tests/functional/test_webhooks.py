"""`POST /webhooks/gitlab` through the Chalice app against moto and the fake GitLab: trust, size, parsing,
de-duplication, routing by tags, forward-only job state, and the dirty-pool fast path."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from chalice.test import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from app import app
from chalicelib.heal import scan_window
from chalicelib.resources import DIRTY_WINDOW_SECONDS
from chalicelib.store import JobRecord, MachineRecord
from chalicelib.triggers import LOST_JOB_SCAN
from chalicelib.webhooks import MAX_BODY_BYTES
from tests.functional.conftest import WEBHOOK_TOKENS, Stack, describe_group
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec
from toolkit.samples import BuildSample, job_hook_payload, pipeline_hook_payload, webhook_headers


def post(client: Client, body: Any, **headers: str | None) -> Any:
    hdrs = webhook_headers(
        headers.pop("event", None) or "Job Hook", token=headers.pop("token", WEBHOOK_TOKENS[0])
    )
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items() if v is not None})
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.http.post("/webhooks/gitlab", headers=hdrs, body=raw)


class Pipeline:
    """A pipeline in the fake GitLab and job hook bodies for its jobs."""

    def __init__(self, stack: Stack, fake: FakeGitLab, *tags: tuple[str, ...]) -> None:
        self.stack = stack
        self.project = fake.create_project("group/app")
        specs = [JobSpec(f"job-{n}", tags=t) for n, t in enumerate(tags or (("linux",),))]
        ref = fake.create_pipeline(self.project, specs)
        self.pipeline_id = ref.id
        self.job_ids = list(ref.job_ids)

    def hook(self, job_id: int, status: str, **kw: Any) -> dict[str, Any]:
        return job_hook_payload(
            job_id,
            status,
            project_id=self.project,
            pipeline_id=self.pipeline_id,
            stage="test",
            name=f"job-{job_id}",
            now=self.stack.runtime.now(),
            **kw,
        )


@pytest.fixture
def client() -> Any:
    with Client(app) as c:
        yield c


def job(stack: Stack, job_id: int) -> Any:
    return stack.runtime.store.get_job(stack.runtime.gitlab_host, job_id)


def our_machine(stack: Stack, instance_id: str, runner_id: int, pool: str = "linux") -> None:
    """What the launch handler stores for a machine of ours: its record with its runner, and the runner's
    id mapped to it (chalicelib.lifecycle `_prepare`)."""
    now = stack.runtime.now()
    stack.runtime.store.record_runner(MachineRecord(instance_id, pool, now, runner_id=runner_id))
    stack.runtime.store.map_runner(runner_id, instance_id, pool, now)


PIPELINE_JOBS = "/projects/:project/pipelines/:pipeline_id/jobs"


def test_pending_job_is_recorded_routed_and_its_pool_marked_dirty(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a pending job whose pipeline's tags nobody has asked GitLab for yet
    p = Pipeline(gitlab_stack, fake_gitlab, ("docker",))
    # WHEN its hook arrives
    response = post(client, p.hook(p.job_ids[0], "pending"), idempotency_key="k-1")
    # THEN the route answers without asking GitLab anything: the job is stored unrouted
    assert response.status_code == 202
    assert json.loads(response.body)["pool"] is None and json.loads(response.body)["routing"] == "deferred"
    assert fake_gitlab.request_count("GET", PIPELINE_JOBS) == 0
    stored = job(gitlab_stack, p.job_ids[0])
    assert (stored.status, stored.pool) == ("pending", "")
    assert [j.job_id for j in gitlab_stack.runtime.store.unrouted_jobs()] == [p.job_ids[0]]
    # AND WHEN the queue delivers its resolve ask to pool_dirty
    assert gitlab_stack.resolve_asks() == 1
    # THEN one pipeline-jobs call routed it to its pool, which is marked dirty, and the tags are cached
    assert fake_gitlab.request_count("GET", PIPELINE_JOBS) == 1
    stored = job(gitlab_stack, p.job_ids[0])
    assert (stored.status, stored.pool, stored.tags) == ("pending", "linux", ("docker",))
    assert gitlab_stack.runtime.store.unrouted_jobs() == []
    assert gitlab_stack.queued_pools() == ["linux"]


def test_a_job_whose_resolve_ask_was_lost_is_routed_by_the_tick_from_the_unrouted_index(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a pending job stored unrouted whose resolve ask never reached pool_dirty (lost), at a tick whose
    # lost-job scan another container already ran (chalicelib.triggers: one tick per window claims it)
    rt = gitlab_stack.runtime
    window = {LOST_JOB_SCAN: scan_window(rt.config, rt.now())}
    assert rt.store.claim_windows(window, rt.now()) == {LOST_JOB_SCAN}
    p = Pipeline(gitlab_stack, fake_gitlab, ("docker",))
    assert post(client, p.hook(p.job_ids[0], "pending")).status_code == 202
    (lost,) = [json.loads(b) for b in gitlab_stack.queued_messages()]  # drained: never delivered
    assert lost["resolve"]["job_id"] == p.job_ids[0]
    # WHEN the tick runs
    tick = client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    out = client.lambda_.invoke("tick", tick).payload
    # THEN it found the job on the unrouted index, resolved its pipeline's tags (one call, no project job
    # list) and the pool's reconcile asked for a machine
    assert fake_gitlab.request_count("GET", PIPELINE_JOBS) == 1
    assert fake_gitlab.request_count("GET", "/projects/:project/jobs") == 0
    assert job(gitlab_stack, p.job_ids[0]).pool == "linux"
    assert out["pools"]["linux"]["desired"] == 1


def test_wrong_or_missing_token_is_401_and_records_nothing(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    p = Pipeline(gitlab_stack, fake_gitlab)
    for token in ("s3cr3t-guess", ""):
        response = post(client, p.hook(p.job_ids[0], "pending"), token=token)
        assert response.status_code == 401
        assert token == "" or token not in response.body.decode()
    assert job(gitlab_stack, p.job_ids[0]) is None
    assert gitlab_stack.queued_pools() == []


def test_a_rotated_token_is_still_accepted(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    p = Pipeline(gitlab_stack, fake_gitlab)
    assert post(client, p.hook(p.job_ids[0], "pending"), token=WEBHOOK_TOKENS[1]).status_code == 202


def test_oversized_body_is_413_and_malformed_is_400_with_a_reason(
    gitlab_stack: Stack, client: Client
) -> None:
    big = post(client, "x" * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413 and "larger than" in json.loads(big.body)["error"]
    bad = post(client, "{not json")
    assert bad.status_code == 400 and json.loads(bad.body)["error"]
    anonymous = post(client, {"object_kind": "build", "build_status": "pending", "project_id": 1})
    assert anonymous.status_code == 400 and "build_id" in json.loads(anonymous.body)["error"]
    # a job with its id but nothing else we need: 202 with the reason (a 4xx counts toward disabling the hook)
    missing = post(client, {"object_kind": "build", "build_id": 1})
    reason = json.loads(missing.body)["reason"]
    assert missing.status_code == 202 and "build_status" in reason and "project_id" in reason
    assert job(gitlab_stack, 1) is None
    assert gitlab_stack.queued_pools() == []


def test_uninteresting_events_are_accepted_and_ignored(gitlab_stack: Stack, client: Client) -> None:
    # A 4xx would make GitLab disable the hook after 4 failures.
    response = post(client, {"object_kind": "push", "ref": "refs/heads/main"}, event="Push Hook")
    assert response.status_code == 202 and json.loads(response.body)["status"] == "ignored"


def test_resend_is_a_duplicate_but_events_sharing_an_event_uuid_all_count(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",), ("linux",), ("linux",))
    # Hooks of one worker share X-Gitlab-Event-UUID: all three must be applied.
    for job_id in p.job_ids:
        assert post(client, p.hook(job_id, "pending"), X_Gitlab_Event_UUID="same-uuid").status_code == 202
    assert all(job(gitlab_stack, j).status == "pending" for j in p.job_ids)
    # A pre-17.4 manual resend (no Idempotency-Key, new webhook uuid) is the same event: a duplicate.
    again = post(client, p.hook(p.job_ids[0], "pending"), X_Gitlab_Webhook_UUID="another")
    assert again.status_code == 200 and json.loads(again.body)["status"] == "duplicate"


def test_late_pending_never_overwrites_running(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    p = Pipeline(gitlab_stack, fake_gitlab)
    j = p.job_ids[0]
    assert post(client, p.hook(j, "running", runner_id=7, tags=["linux"])).status_code == 202
    assert post(client, p.hook(j, "pending")).status_code == 202
    assert job(gitlab_stack, j).status == "running"


def test_job_run_by_our_runner_is_credited_to_its_machine(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    our_machine(gitlab_stack, "i-0123456789abcdef0", 9)
    p = Pipeline(gitlab_stack, fake_gitlab)
    body = p.hook(p.job_ids[0], "running", runner_id=9, tags=["linux"])
    body["runner"]["description"] = "runner-scaler/linux/i-0123456789abcdef0"
    assert post(client, body).status_code == 202
    stored = job(gitlab_stack, p.job_ids[0])
    assert (stored.pool, stored.machine_id, stored.runner_id) == ("linux", "i-0123456789abcdef0", 9)
    assert fake_gitlab.request_count("GET", PIPELINE_JOBS) == 0


def test_a_job_on_our_runner_whose_description_was_edited_is_still_credited_to_its_machine(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN our machine's runner 9, whose description someone edited in GitLab's UI
    our_machine(gitlab_stack, "i-0123456789abcdef0", 9)
    p = Pipeline(gitlab_stack, fake_gitlab)
    body = p.hook(p.job_ids[0], "running", runner_id=9, tags=["linux"])
    body["runner"]["description"] = "build box (do not touch)"
    # WHEN a job starts on it
    assert post(client, body).status_code == 202
    # THEN the job is credited to the machine by the runner's id
    stored = job(gitlab_stack, p.job_ids[0])
    assert (stored.pool, stored.machine_id, stored.runner_id) == ("linux", "i-0123456789abcdef0", 9)


def test_a_foreign_runner_with_a_look_alike_description_is_not_taken_for_ours(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN our machine with runner 9, and someone else's runner 77 described as if it ran on that machine
    our_machine(gitlab_stack, "i-0123456789abcdef0", 9)
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",), ("linux",))
    body = p.hook(p.job_ids[0], "running", runner_id=77, tags=["linux"])
    body["runner"]["description"] = "runner-scaler/linux/i-0123456789abcdef0"
    # AND another foreign runner named after an instance we never had
    other = p.hook(p.job_ids[1], "running", runner_id=78, tags=["linux"])
    other["runner"]["description"] = "runner-scaler/linux/i-0fffffffffffffff0"
    # WHEN jobs start on them
    assert post(client, body).status_code == 202 and post(client, other).status_code == 202
    # THEN neither job is credited to a machine of ours, nor routed to a pool by the description
    for job_id in p.job_ids:
        stored = job(gitlab_stack, job_id)
        assert (stored.machine_id, stored.runner_id in (77, 78)) == ("", True)
        assert stored.pool == ""


def test_a_job_ending_on_the_runner_that_started_it_costs_one_aws_call(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a job that started on our machine's runner 9 (its running hook stored the machine)
    our_machine(gitlab_stack, "i-0123456789abcdef0", 9)
    p = Pipeline(gitlab_stack, fake_gitlab)
    j = p.job_ids[0]
    post(client, p.hook(j, "running", runner_id=9, tags=["linux"]))
    # WHEN its success hook comes
    before = dict(gitlab_stack.runtime.aws.calls)
    answer = post(client, p.hook(j, "success", runner_id=9, tags=["linux"]))
    calls = gitlab_stack.runtime.aws.calls
    made = {k: v - before.get(k, 0) for k, v in calls.items() if v != before.get(k, 0)}
    # THEN the job's one conditional write is the only AWS call (no lookup of the runner's machine), and the
    # job keeps its pool and machine, so the reconcile credits the machine with its end
    assert made == {"dynamodb.UpdateItem": 1}
    assert answer.json_body["pool"] == "linux" and answer.json_body["changed"] is True
    stored = job(gitlab_stack, j)
    assert (stored.status, stored.pool, stored.machine_id) == ("success", "linux", "i-0123456789abcdef0")
    # AND the same hook again is a duplicate, still in one call
    total = gitlab_stack.runtime.aws.total_calls
    assert post(client, p.hook(j, "success", runner_id=9, tags=["linux"])).json_body["status"] == "duplicate"
    assert gitlab_stack.runtime.aws.total_calls - total == 1


def test_a_job_ending_on_our_runner_unheard_of_before_is_credited_to_its_machine(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN our machine's runner 9, and a pending job whose running hook was lost
    our_machine(gitlab_stack, "i-0123456789abcdef0", 9)
    p = Pipeline(gitlab_stack, fake_gitlab)
    j = p.job_ids[0]
    post(client, p.hook(j, "pending"))
    # WHEN its success hook comes from runner 9
    answer = post(client, p.hook(j, "success", runner_id=9, tags=["linux"]))
    # THEN the job is routed by the runner's id as on a running hook: our machine, its pool
    assert answer.json_body["pool"] == "linux"
    stored = job(gitlab_stack, j)
    assert (stored.status, stored.pool, stored.machine_id) == ("success", "linux", "i-0123456789abcdef0")


def test_a_job_ending_on_a_foreign_runner_that_started_it_stays_off_our_machines(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a job that started on runner 77, not ours, though described like one of our machines' runners
    our_machine(gitlab_stack, "i-0123456789abcdef0", 9)
    p = Pipeline(gitlab_stack, fake_gitlab)
    j = p.job_ids[0]
    body = p.hook(j, "running", runner_id=77, tags=["linux"])
    body["runner"]["description"] = "runner-scaler/linux/i-0123456789abcdef0"
    post(client, body)
    # WHEN its failure hook comes from the same runner
    end = p.hook(j, "failed", runner_id=77, tags=["linux"])
    end["runner"]["description"] = "runner-scaler/linux/i-0123456789abcdef0"
    answer = post(client, end)
    # THEN it ends under no pool and no machine of ours
    assert answer.json_body["pool"] is None
    stored = job(gitlab_stack, j)
    assert (stored.status, stored.pool, stored.machine_id) == ("failed", "", "")


def test_job_that_matches_no_pool_is_recorded_as_unroutable(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    p = Pipeline(gitlab_stack, fake_gitlab, ("windows",))
    response = post(client, p.hook(p.job_ids[0], "pending"))
    assert response.status_code == 202 and json.loads(response.body)["pool"] is None
    assert gitlab_stack.resolve_asks() == 1
    stored = job(gitlab_stack, p.job_ids[0])
    assert (stored.pool, stored.tags) == ("", ("windows",))
    assert gitlab_stack.runtime.store.unrouted_jobs() == []  # resolved: no pool takes it, never asked again
    assert gitlab_stack.queued_pools() == []


def test_a_pipeline_of_40_jobs_costs_one_tag_lookup(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    p = Pipeline(gitlab_stack, fake_gitlab, *[("linux",)] * 40)
    builds = [BuildSample(j, "pending", "test", f"job-{j}") for j in p.job_ids]
    pipeline = pipeline_hook_payload(
        p.pipeline_id, "pending", project_id=p.project, builds=builds, now=gitlab_stack.runtime.now()
    )
    # WHEN the Pipeline hook comes (it asks for the tags, out of its request), then the 40 Job hooks
    assert post(client, pipeline, event="Pipeline Hook").status_code == 202
    assert fake_gitlab.request_count("GET", PIPELINE_JOBS) == 0
    assert gitlab_stack.resolve_asks() == 1
    answers = [json.loads(post(client, p.hook(j, "pending")).body) for j in p.job_ids]
    # THEN one pipeline-jobs call in all, and every job was routed in its own request from the cached tags
    assert fake_gitlab.request_count("GET", PIPELINE_JOBS) == 1
    assert {a["pool"] for a in answers} == {"linux"} and not any("routing" in a for a in answers)
    assert {job(gitlab_stack, j).pool for j in p.job_ids} == {"linux"}


def test_webhook_to_machine_end_to_end(gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client) -> None:
    # GIVEN two pending jobs announced by webhooks
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",), ("linux",))
    for j in p.job_ids:
        post(client, p.hook(j, "pending"))
    gitlab_stack.resolve_asks()  # their tags resolved by pool_dirty on the webhook's ask
    # WHEN the dirty-pool message reaches its handler
    bodies = [json.dumps({"pool": pool}) for pool in gitlab_stack.queued_pools()]
    event = client.events.generate_sqs_event(message_bodies=bodies, queue_name="test-dirty.fifo")
    assert client.lambda_.invoke("pool_dirty", event).payload == {"batchItemFailures": []}
    # THEN the linux group wants two machines, both protected from scale-in (only the scaler picks victims)
    assert gitlab_stack.desired("test-linux") == 2
    instances = describe_group(gitlab_stack.aws, "test-linux")["Instances"]
    assert len(instances) == 2 and all(i["ProtectedFromScaleIn"] for i in instances)


def test_hot_path_makes_at_most_three_aws_calls_and_no_gitlab_call(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a warm container (token cache, queue URL)
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",), ("linux",))
    post(client, p.hook(p.job_ids[0], "created"))
    gitlab_before = sum(fake_gitlab.requests.values())
    # WHEN a pending hook comes with its pipeline's tags not cached, then one with them cached
    calls = []
    for job_id in p.job_ids:
        before = gitlab_stack.runtime.aws.total_calls
        post(client, p.hook(job_id, "pending"))
        calls.append(gitlab_stack.runtime.aws.total_calls - before)
        gitlab_stack.resolve_asks()
    # THEN each made three AWS calls (cached tags, job write, resolve ask or dirty message): the job write is
    # the de-duplication, so no event key item is written; and the webhook asked GitLab nothing (the one
    # pipeline-jobs call was pool_dirty's)
    assert calls == [3, 3]
    assert sum(fake_gitlab.requests.values()) - gitlab_before == 1
    assert fake_gitlab.request_count("GET", PIPELINE_JOBS) == 1
    items = gitlab_stack.aws.paginate("dynamodb", "scan", "Items", TableName=gitlab_stack.runtime.names.table)
    assert not [i for i in items if str(i["pk"]["S"]).startswith("EVENT#")]


def test_a_started_job_reports_how_long_it_waited(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    our_machine(gitlab_stack, "i-0123456789abcdef0", 9)
    p = Pipeline(gitlab_stack, fake_gitlab)
    body = p.hook(p.job_ids[0], "running", runner_id=9, tags=["linux"])
    body["runner"]["description"] = "runner-scaler/linux/i-0123456789abcdef0"
    body["build_queued_duration"] = 42.5
    post(client, body)
    blobs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    wait = next(b for b in blobs if "JobQueueSeconds" in b)
    assert wait["JobQueueSeconds"] == [42.5] and (wait["pool"], wait["platform"]) == ("linux", "linux")
    assert wait["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] == "Seconds"


# -- order and duplication --------------------------------------------------------------------------

MACHINES = ("i-0aaaaaaaaaaaaaaa0", "i-0bbbbbbbbbbbbbbb1", "i-0ccccccccccccccc2")


def lifecycle_hooks(stack: Stack, fake: FakeGitLab) -> list[tuple[str, dict[str, Any]]]:
    """A fresh pipeline of three jobs, and the Job hooks of each one's life: pending, running, then
    success (jobs 0 and 2) or failed (job 1), each on its own machine of ours; with an idempotency key
    apiece."""
    for index, machine in enumerate(MACHINES):
        our_machine(stack, machine, 40 + index)
    p = Pipeline(stack, fake, ("linux",), ("linux",), ("linux",))
    created, started = stack.runtime.now(), stack.runtime.now() + timedelta(minutes=1)
    hooks = []
    for index, (job_id, machine) in enumerate(zip(p.job_ids, MACHINES, strict=True)):
        end = "failed" if index == 1 else "success"
        for status, at, runner in (
            ("pending", created, None),
            ("running", started, 40 + index),
            (end, None, 40 + index),
        ):
            body = job_hook_payload(
                job_id,
                status,
                project_id=p.project,
                pipeline_id=p.pipeline_id,
                stage="test",
                name=f"job-{index}",
                now=at or started + timedelta(minutes=2 + index),
                created_at=created,
                started_at=started if status != "pending" else None,
                runner_id=runner,
                tags=["linux"] if runner else [],
            )
            if runner:
                body["runner"]["description"] = f"runner-scaler/linux/{machine}"
            hooks.append((f"{job_id}-{status}", body))
    return hooks


def stored_by_index(stack: Stack, hooks: list[tuple[str, dict[str, Any]]]) -> list[JobRecord]:
    """The stored record of each job, with the ids GitLab gave this pipeline taken out.

    Tags are compared too: none is known to these hooks (their pipeline's tags are never resolved here).
    """
    job_ids = sorted({body["build_id"] for _key, body in hooks})
    return [replace(job(stack, j), job_id=0, pipeline_id=0, project_id=0) for j in job_ids]


def test_any_order_and_duplication_of_job_hooks_stores_the_same_jobs(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN the stored jobs after their hooks arrived once each, in order
    in_order = lifecycle_hooks(gitlab_stack, fake_gitlab)
    for key, body in in_order:
        assert post(client, body, idempotency_key=key).status_code == 202
    expected = stored_by_index(gitlab_stack, in_order)
    assert [(r.status, r.machine_id, r.runner_id) for r in expected] == [
        ("success", MACHINES[0], 40),
        ("failed", MACHINES[1], 41),
        ("success", MACHINES[2], 42),
    ]
    assert all(r.started_at and r.finished_at for r in expected)

    # Each example posts a fresh pipeline's hooks (new job ids, so nothing stored by an earlier example
    # is shared: the dedup keys, the job records and the tag cache are all keyed by job or pipeline).
    @settings(max_examples=20, deadline=None)
    @given(data=st.data())
    def arrive_shuffled(data: st.DataObject) -> None:
        hooks = lifecycle_hooks(gitlab_stack, fake_gitlab)
        # WHEN they arrive in any order, some twice: a GitLab retry (same key) or a manual resend (no key)
        again = data.draw(st.lists(st.tuples(st.integers(0, len(hooks) - 1), st.booleans()), max_size=4))
        deliveries = [(n, True) for n in range(len(hooks))] + again
        for n, same_key in data.draw(st.permutations(deliveries)):
            key, body = hooks[n]
            assert post(client, body, idempotency_key=key if same_key else None).status_code in (200, 202)
        # THEN every job is stored exactly as if its hooks had come once, in order
        assert stored_by_index(gitlab_stack, hooks) == expected

    arrive_shuffled()


@pytest.mark.parametrize("keyed", [True, False], ids=["idempotency-key", "identity-hash"])
def test_resent_hooks_around_a_skip_change_nothing(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client, keyed: bool
) -> None:
    """GitLab skips a pending job when an earlier one fails, and reopens it (same id) when that one is
    retried (`Ci::ResetSkippedJobsService`). No event key item is written for a Job Hook: the job's own write
    refuses a delivery it applied before, so neither resend here moves the job."""
    p = Pipeline(gitlab_stack, fake_gitlab)
    j = p.job_ids[0]
    key = {"pending": "k-pending", "skipped": "k-skipped", "reopened": "k-reopened"}
    pending_body = p.hook(j, "pending")
    skipped_body = p.hook(j, "skipped")

    def deliver(body: dict[str, Any], name: str) -> Any:
        return post(client, body, idempotency_key=key[name] if keyed else None)

    # GIVEN a job that went pending, then was skipped
    assert deliver(pending_body, "pending").status_code == 202
    assert deliver(skipped_body, "skipped").status_code == 202
    gitlab_stack.resolve_asks()
    gitlab_stack.queued_pools()
    # WHEN its pending hook is resent
    answer = deliver(pending_body, "pending")
    # THEN it is a duplicate: the job stays skipped and no pool is marked dirty
    assert answer.status_code == 200 and json.loads(answer.body)["status"] == "duplicate"
    assert job(gitlab_stack, j).status == "skipped"
    assert gitlab_stack.resolve_asks() == 0 and gitlab_stack.queued_pools() == []
    if not keyed:
        # Without Idempotency-Key a real reopening's pending hook hashes as the first one did: it is taken for
        # a resend, and the tick's lost-job scan reopens the job from GitLab's own list (chalicelib.heal).
        return
    # WHEN GitLab really reopens it (a new delivery), then the skip's hook is resent
    assert deliver(p.hook(j, "pending"), "reopened").status_code == 202
    assert job(gitlab_stack, j).status == "pending"
    answer = deliver(skipped_body, "skipped")
    # THEN the reopened job stays pending: `skipped` ranks higher, but that delivery was applied before
    assert answer.status_code == 200 and json.loads(answer.body)["status"] == "duplicate"
    assert job(gitlab_stack, j).status == "pending"
    items = gitlab_stack.aws.paginate("dynamodb", "scan", "Items", TableName=gitlab_stack.runtime.names.table)
    assert not [i for i in items if str(i["pk"]["S"]).startswith("EVENT#")]


def test_a_pending_hook_arriving_after_running_still_leaves_the_job_tags(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a pipeline whose tags are cached (another of its jobs was resolved)
    hooks = lifecycle_hooks(gitlab_stack, fake_gitlab)
    post(client, hooks[6][1], idempotency_key=hooks[6][0])
    assert gitlab_stack.resolve_asks() == 1
    # WHEN a job's running hook (on our runner) arrives before its pending hook
    (pending, pending_body), (running, running_body) = hooks[0], hooks[1]
    post(client, running_body, idempotency_key=running)
    post(client, pending_body, idempotency_key=pending)
    # THEN the job's tags are stored, as they are when the hooks come in order
    assert job(gitlab_stack, pending_body["build_id"]).tags == ("linux",)


def test_a_burst_of_120_job_events_marks_the_pool_dirty_a_handful_of_times(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a pipeline of 60 linux jobs (120 events keep the test quick; the window, not the count, matters)
    # whose tags are cached, and 60 machines of ours
    p = Pipeline(gitlab_stack, fake_gitlab, *[("linux",)] * 60)
    for n in range(60):
        gitlab_stack.runtime.store.map_runner(n, f"i-{n:017x}", "linux", gitlab_stack.runtime.now())
    post(client, p.hook(p.job_ids[0], "created"))
    gitlab_stack.runtime.queue.ask_resolve(p.project, p.pipeline_id, p.job_ids[0], gitlab_stack.runtime.now())
    assert gitlab_stack.resolve_asks() == 1
    # WHEN each goes pending, then running on our runner: 120 events over 6 seconds
    changed = 0
    for status in ("pending", "running"):
        for n, job_id in enumerate(p.job_ids):
            gitlab_stack.advance(seconds=0.05)
            body = p.hook(
                job_id, status, **({"runner_id": n, "tags": ["linux"]} if status == "running" else {})
            )
            if status == "running":
                body["runner"]["description"] = f"runner-scaler/linux/i-{n:017x}"
            response = post(client, body)
            assert response.status_code == 202
            changed += json.loads(response.body)["changed"]
    # THEN every event changed its job, yet the dirty queue holds one message per 2-second window, not 120
    assert changed == 120
    queued = gitlab_stack.queued_pools()
    assert set(queued) == {"linux"} and 1 <= len(queued) <= 6 // DIRTY_WINDOW_SECONDS + 1


def test_only_a_job_going_pending_marks_its_pool_dirty(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a linux job that went pending (its pool marked dirty) and whose message was handled
    our_machine(gitlab_stack, "i-00000000000000007", 7)
    p = Pipeline(gitlab_stack, fake_gitlab, ("linux",))
    job_id = p.job_ids[0]
    assert post(client, p.hook(job_id, "pending")).status_code == 202
    assert gitlab_stack.resolve_asks() == 1
    assert gitlab_stack.queued_pools() == ["linux"]
    # WHEN it runs on our runner, then succeeds, each hook in a later dirty window
    for status in ("running", "success"):
        gitlab_stack.advance(seconds=DIRTY_WINDOW_SECONDS + 1)
        body = p.hook(job_id, status, runner_id=7, tags=["linux"])
        body["runner"]["description"] = "runner-scaler/linux/i-00000000000000007"
        answer = post(client, body)
        assert answer.status_code == 202 and json.loads(answer.body)["changed"]
    # THEN both are recorded, and neither asks for a reconcile: demand did not rise (the tick takes them in)
    assert job(gitlab_stack, job_id).status == "success"
    assert gitlab_stack.queued_pools() == []


def test_a_status_new_to_us_is_recorded_not_refused(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, client: Client
) -> None:
    # GIVEN a job GitLab reports as waiting_for_callback (gitlabhq `app/models/concerns/ci/has_status.rb`),
    # then as a status no GitLab sends yet
    p = Pipeline(gitlab_stack, fake_gitlab, ("docker",), ("docker",))
    waiting = p.hook(p.job_ids[0], "created") | {"build_status": "waiting_for_callback"}
    future = p.hook(p.job_ids[1], "created") | {"build_status": "some_future_status"}
    # WHEN GitLab delivers them
    answers = [post(client, body) for body in (waiting, future)]
    # THEN both are accepted (four 4xx in a row disable the hook) and stored with their status, ranked like
    # `created`: a later `pending` still moves the job on
    assert [a.status_code for a in answers] == [202, 202]
    assert job(gitlab_stack, p.job_ids[0]).status == "waiting_for_callback"
    assert job(gitlab_stack, p.job_ids[1]).status == "some_future_status"
    assert post(client, p.hook(p.job_ids[1], "pending")).status_code == 202
    assert job(gitlab_stack, p.job_ids[1]).status == "pending"


def test_a_pipeline_hook_over_1_mib_is_accepted(gitlab_stack: Stack, client: Client) -> None:
    """A Pipeline hook lists every job (gitlabhq `lib/gitlab/data_builder/pipeline.rb`): a big pipeline's
    hook passes 1 MiB, yet stays within what API Gateway (10 MB) and a synchronous Lambda invocation (6 MB,
    the whole event) carry."""
    # GIVEN a Pipeline hook of 2,500 jobs (about 480 bytes each in our samples, more in GitLab's own)
    now = gitlab_stack.runtime.now()
    builds = [BuildSample(10_000 + n, "created", f"stage-{n % 5}", f"job {n}") for n in range(2500)]
    body = json.dumps(pipeline_hook_payload(4242, "pending", project_id=7, builds=builds, now=now))
    event_size = len(json.dumps({"body": body, "headers": webhook_headers("Pipeline Hook", token="t" * 64)}))
    assert len(body) > 1024 * 1024 and event_size < 6 * 1000 * 1000
    # WHEN GitLab delivers it
    response = post(client, body, event="Pipeline Hook")
    # THEN it is accepted, not refused as too large
    assert response.status_code == 202
    assert json.loads(response.body) == {"status": "accepted", "pipeline": 4242}
