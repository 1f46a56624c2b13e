"""The tick repairs what lost webhooks left: stale jobs move forward from GitLab's answer, and pending jobs
that no webhook announced are found and get a machine."""

from __future__ import annotations

import json

import pytest
from chalice.test import Client

from app import app
from chalicelib.store import JobRecord
from tests.functional.conftest import Stack
from tests.functional.test_webhooks import post
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec
from toolkit.samples import job_hook_payload


def tick(client: Client) -> dict:  # type: ignore[type-arg]
    return client.lambda_.invoke(
        "tick", client.events.generate_cw_event("Scheduled Event", "aws.events", {}, [])
    ).payload


def test_job_whose_webhooks_were_all_lost_is_found_and_gets_a_machine(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a project the scaler saw before, and a new pending job of it no webhook announced
    project = fake_gitlab.create_project("group/app")
    gitlab_stack.runtime.store.note_projects(
        gitlab_stack.runtime.gitlab_host, [project], gitlab_stack.runtime.now()
    )
    pipeline = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))])
    (job_id,) = pipeline.job_ids
    # WHEN the tick runs
    with Client(app) as client:
        payload = tick(client)
    # THEN the job is known as pending in the linux pool and a machine is on its way
    record = gitlab_stack.runtime.store.get_job(gitlab_stack.runtime.gitlab_host, job_id)
    assert record is not None and (record.status, record.pool) == ("pending", "linux")
    assert payload["pools"]["linux"]["desired"] == 1
    assert gitlab_stack.desired("test-linux") == 1


def test_fanning_out_a_found_job_rides_in_its_pools_one_tick_message(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a pending job no webhook announced, and a deployment whose tick queues every pool's reconcile
    project = fake_gitlab.create_project("group/app")
    gitlab_stack.runtime.store.note_projects(
        gitlab_stack.runtime.gitlab_host, [project], gitlab_stack.runtime.now()
    )
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    gitlab_stack.fan_out()
    # WHEN the tick runs
    with Client(app) as client:
        tick(client)
    # THEN each pool has one message, and the linux pool's says why heal asked for it
    reasons = {m["pool"]: m["reason"] for m in map(json.loads, gitlab_stack.queued_messages())}
    assert reasons == {"linux": f"job {job_id} found pending by the tick", "gpu": "tick"}


def test_stale_running_job_is_closed_from_gitlabs_answer(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    project = fake_gitlab.create_project("group/app")
    pipeline = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))])
    (job_id,) = pipeline.job_ids
    runner_id, _ = fake_gitlab.register_runner(tag_list=("linux",))
    assert fake_gitlab.request_job(runner_id) == job_id
    fake_gitlab.finish_job(job_id, "success")
    rt = gitlab_stack.runtime
    # The store only heard "running" (the success webhook was lost) 20 minutes ago.
    rt.store.record_job(
        JobRecord(rt.gitlab_host, job_id, "running", project_id=project, pool="linux"), rt.now()
    )
    gitlab_stack.advance(minutes=20)
    with Client(app) as client:
        tick(client)
    assert rt.store.get_job(rt.gitlab_host, job_id).status == "success"  # type: ignore[union-attr]


def test_a_job_whose_tags_gitlab_could_not_tell_is_routed_by_the_next_scan(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    # GIVEN a new project whose first pending hook arrives while GitLab's jobs API answers 503
    project = fake_gitlab.create_project("group/new-app")
    pipeline = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))])
    (job_id,) = pipeline.job_ids
    fake_gitlab.inject_failure("/projects/*/pipelines/*/jobs", status=503, times=10)
    body = job_hook_payload(
        job_id,
        "pending",
        project_id=project,
        pipeline_id=pipeline.id,
        stage="test",
        name="build",
        now=gitlab_stack.runtime.now(),
    )
    with Client(app) as client:
        response = post(client, body)
        # THEN the webhook keeps the job, without a pool, and answers 202 (a 4xx/5xx would pause the hook)
        assert response.status_code == 202 and json.loads(response.body)["pool"] is None
        rt = gitlab_stack.runtime
        assert rt.store.get_job(rt.gitlab_host, job_id).pool == ""  # type: ignore[union-attr]
        assert gitlab_stack.desired("test-linux") == 0
        # WHEN GitLab answers again and the tick's lost-job scan runs
        fake_gitlab.clear_failures()
        payload = tick(client)
    # THEN the job is routed to its pool and a machine is on its way
    record = rt.store.get_job(rt.gitlab_host, job_id)
    assert record is not None and (record.status, record.pool) == ("pending", "linux")
    assert payload["pools"]["linux"]["desired"] == 1
    assert gitlab_stack.desired("test-linux") == 1


def test_the_lost_job_scan_lists_at_most_its_share_of_projects_per_scan(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab
) -> None:
    """GitLab.com allows 600 project job lists a minute per user (docs "GitLab.com settings": rate limits);
    a scan lists at most heal.MAX_SCAN_LISTS (100) projects, and the next scans take the next ones."""
    # GIVEN 250 projects the scaler has seen, the last of which has a pending job no webhook announced
    rt = gitlab_stack.runtime
    projects = [fake_gitlab.create_project(f"group/app-{n}") for n in range(250)]
    rt.store.note_projects(rt.gitlab_host, projects, rt.now())
    (job_id,) = fake_gitlab.create_pipeline(projects[-1], [JobSpec("build", tags=("linux",))]).job_ids
    listed: list[set[str]] = []
    with Client(app) as client:
        for _ in range(3):
            # WHEN the tick runs, once per scan interval
            before = len(fake_gitlab.request_log)
            tick(client)
            listed.append(
                {r.path for r in fake_gitlab.request_log[before:] if r.route == "/projects/:project/jobs"}
            )
            gitlab_stack.advance(minutes=5)
    # THEN no scan listed more than 100 projects, and within three scans every project was listed
    assert [len(s) for s in listed] == [100, 100, 100]
    assert set().union(*listed) == {f"/projects/{p}/jobs" for p in projects}
    record = rt.store.get_job(rt.gitlab_host, job_id)
    assert record is not None and record.status == "pending"


def test_a_rate_limited_scan_stops_at_gitlabs_first_429(gitlab_stack: Stack, fake_gitlab: FakeGitLab) -> None:
    # GIVEN 50 known projects and a GitLab that allows 10 job lists a minute
    rt = gitlab_stack.runtime
    projects = [fake_gitlab.create_project(f"group/app-{n}") for n in range(50)]
    rt.store.note_projects(rt.gitlab_host, projects, rt.now())
    fake_gitlab.rate_limit("/projects/*/jobs", 10)
    # WHEN the tick scans
    with Client(app) as client:
        tick(client)
    # THEN it stopped at the first 429 instead of asking 39 more times
    statuses = [r.status for r in fake_gitlab.request_log if r.route == "/projects/:project/jobs"]
    assert statuses == [200] * 10 + [429]


def pool_index_reads(stack: Stack) -> list[str]:
    """Every Query of the pool index made from now on, by the partition it reads (`POOL#<pool>#JOBS`...)."""
    seen: list[str] = []

    def note(params: dict, **_: object) -> None:  # type: ignore[type-arg]
        if params.get("IndexName"):
            seen.append(params["ExpressionAttributeValues"][":pk"]["S"])

    stack.runtime.aws.client("dynamodb").meta.events.register("provide-client-params.dynamodb.Query", note)
    return seen


def running_jobs_seen(capsys: pytest.CaptureFixture[str], pool: str) -> float:
    """RunningJobs of the pool's last reconcile, as its metrics line says."""
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    return float([b for b in lines if b.get("pool") == pool and "RunningJobs" in b][-1]["RunningJobs"][0])


def test_a_tick_whose_heal_changed_no_job_reads_each_pools_jobs_once(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a running job in the linux pool, heard of a minute ago (not stale: heal writes nothing of it),
    # and a tick that already claimed this minute's periodic steps
    project = fake_gitlab.create_project("group/app")
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    rt = gitlab_stack.runtime
    rt.store.record_job(
        JobRecord(rt.gitlab_host, job_id, "running", project_id=project, pool="linux", runner_id=7), rt.now()
    )
    with Client(app) as client:
        tick(client)
        gitlab_stack.advance(seconds=1)
        reads = pool_index_reads(gitlab_stack)
        # WHEN the next tick runs
        tick(client)
    # THEN heal's read of each pool's jobs is the reconcile's too: one read per pool, and the reconcile saw
    # the running job
    assert sorted(r for r in reads if r.endswith("#JOBS")) == ["POOL#gpu#JOBS", "POOL#linux#JOBS"]
    assert running_jobs_seen(capsys, "linux") == 1


def test_a_pool_whose_job_heal_refreshed_is_read_again_by_the_reconcile(
    gitlab_stack: Stack, fake_gitlab: FakeGitLab, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a job the store last heard of as running 20 minutes ago, which GitLab says has succeeded
    project = fake_gitlab.create_project("group/app")
    (job_id,) = fake_gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
    runner_id, _ = fake_gitlab.register_runner(tag_list=("linux",))
    assert fake_gitlab.request_job(runner_id) == job_id
    fake_gitlab.finish_job(job_id, "success")
    rt = gitlab_stack.runtime
    rt.store.record_job(
        JobRecord(rt.gitlab_host, job_id, "running", project_id=project, pool="linux"), rt.now()
    )
    gitlab_stack.advance(minutes=20)
    reads = pool_index_reads(gitlab_stack)
    # WHEN the tick runs (heal refreshes the job from GitLab's answer)
    with Client(app) as client:
        tick(client)
    # THEN the linux pool's jobs are read again after heal's write, so the reconcile sees no running job
    linux_twice = ["POOL#gpu#JOBS", "POOL#linux#JOBS", "POOL#linux#JOBS"]
    assert sorted(r for r in reads if r.endswith("#JOBS")) == linux_twice
    assert running_jobs_seen(capsys, "linux") == 0
