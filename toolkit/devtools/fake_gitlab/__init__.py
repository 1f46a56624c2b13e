"""A local fake GitLab: the REST endpoints the adapter calls, GitLab's side of CI jobs, and webhook delivery.

For tests, the simulator and the demo. Standard library only (http.server, urllib, threading), so any
process can run it; faithful to GitLab's documented JSON shapes, pagination headers and hook payloads.

    with FakeGitLab() as fake:
        project = fake.create_project("acme/app")
        fake.add_hook(project, "http://127.0.0.1:8000/webhooks/gitlab", token="s3cret")
        pipeline = fake.create_pipeline(project, [JobSpec("build", "build", ("linux",))])
        runner_id, _token = fake.register_runner(tag_list=("linux",))
        job_id = fake.request_job(runner_id)          # GitLab assigns the oldest matching pending job
        fake.finish_job(job_id, "success")           # Job Hook + Pipeline Hook go to the receiver

The package: `model` (constants and records), `world` (GitLab's world and rules), `hooks` (hook delivery),
`rest` (the REST API), `server` (the HTTP server); `FakeGitLab` joins them.
"""

from __future__ import annotations

from toolkit.devtools.fake_gitlab.hooks import HookDelivery
from toolkit.devtools.fake_gitlab.model import (
    ADMIN_USER,
    BACKOFF_GROWTH_FACTOR,
    DEFAULT_ASSIGNMENT_WINDOW,
    DEFAULT_PER_PAGE,
    FINISHED_BY_RUNNER,
    HOOK_STATUSES,
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    MAX_PER_PAGE,
    ONLINE_CONTACT_TIMEOUT,
    PERMANENTLY_DISABLED_FAILURE_THRESHOLD,
    RUNNER_TYPES,
    STALE_TIMEOUT,
    TEMPORARILY_DISABLED_FAILURE_THRESHOLD,
    TERMINAL,
    Delivery,
    FakeGroup,
    FakeHook,
    FakeJob,
    FakePipeline,
    FakeProject,
    FakeRunner,
    JobRequest,
    JobSpec,
    JobStatus,
    PipelineRef,
    RequestRecord,
    Route,
    iso_ms,
)
from toolkit.devtools.fake_gitlab.rest import RestApi
from toolkit.devtools.fake_gitlab.world import GitLabWorld

__all__ = [
    "ADMIN_USER",
    "BACKOFF_GROWTH_FACTOR",
    "DEFAULT_ASSIGNMENT_WINDOW",
    "DEFAULT_PER_PAGE",
    "FINISHED_BY_RUNNER",
    "HOOK_STATUSES",
    "INITIAL_BACKOFF",
    "MAX_BACKOFF",
    "MAX_PER_PAGE",
    "ONLINE_CONTACT_TIMEOUT",
    "PERMANENTLY_DISABLED_FAILURE_THRESHOLD",
    "RUNNER_TYPES",
    "STALE_TIMEOUT",
    "TEMPORARILY_DISABLED_FAILURE_THRESHOLD",
    "TERMINAL",
    "Delivery",
    "FakeGitLab",
    "FakeGroup",
    "FakeHook",
    "FakeJob",
    "FakePipeline",
    "FakeProject",
    "FakeRunner",
    "GitLabWorld",
    "HookDelivery",
    "JobRequest",
    "JobSpec",
    "JobStatus",
    "PipelineRef",
    "RequestRecord",
    "RestApi",
    "Route",
    "iso_ms",
]


class FakeGitLab(RestApi, HookDelivery, GitLabWorld):
    """An in-memory GitLab behind a real HTTP server (see `world.GitLabWorld` for its options): the world,
    its hook delivery and its REST API in one object, as tests, the simulator and the demo use it."""
