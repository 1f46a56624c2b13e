"""Hook delivery of the fake GitLab: Job and Pipeline Hook payloads, sending (sync, or async with delay,
loss and duplication), and hook auto-disabling as GitLab's WebHooks::AutoDisabling does it.

Part of the fake GitLab (`toolkit.devtools.fake_gitlab`); a mixin over `world.GitLabWorld`.
"""

from __future__ import annotations

import heapq
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from toolkit.devtools.fake_gitlab.model import (
    BACKOFF_GROWTH_FACTOR,
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    PERMANENTLY_DISABLED_FAILURE_THRESHOLD,
    TEMPORARILY_DISABLED_FAILURE_THRESHOLD,
    Delivery,
    FakeHook,
    FakeJob,
    FakePipeline,
    _Outgoing,
)
from toolkit.samples import (
    BuildSample,
    PipelineSample,
    RunnerSample,
    job_hook_payload,
    pipeline_hook_payload,
)

if TYPE_CHECKING:
    from toolkit.devtools.fake_gitlab.world import GitLabWorld as _Base
else:
    _Base = object

logger = logging.getLogger(__name__)


class HookDelivery(_Base):
    """Webhook delivery as GitLab does it: payloads built by toolkit.samples, sync or async sending with
    loss/duplication knobs, and WebHooks::AutoDisabling's backoff. Mixed into `FakeGitLab`."""

    # -- internals: hooks auto-disabling ----------------------------------------------------------

    def _executable(self, hook: FakeHook) -> bool:
        return self._alert_status(hook) == "executable"

    def _alert_status(self, hook: FakeHook) -> str:
        if not self.auto_disable_hooks:
            return "executable"
        if hook.recent_failures > PERMANENTLY_DISABLED_FAILURE_THRESHOLD:
            return "disabled"
        temporarily = (
            hook.disabled_until is not None
            and hook.disabled_until >= self.now()
            and hook.recent_failures > TEMPORARILY_DISABLED_FAILURE_THRESHOLD
        )
        return "temporarily_disabled" if temporarily else "executable"

    def _record_result(self, hook_id: int, ok: bool) -> None:
        """GitLab's `enable!` on success, `backoff!` on failure (only while the hook is executable)."""
        with self._lock:
            hook = self.hooks.get(hook_id)
            if hook is None or not self.auto_disable_hooks:
                return
            if ok:
                hook.recent_failures, hook.disabled_until = 0, None
                return
            if not self._executable(hook):
                return
            previous = hook.recent_failures
            hook.recent_failures = min(previous + 1, PERMANENTLY_DISABLED_FAILURE_THRESHOLD + 1)
            if hook.recent_failures > TEMPORARILY_DISABLED_FAILURE_THRESHOLD:
                exponent = max(previous - TEMPORARILY_DISABLED_FAILURE_THRESHOLD, 0)
                backoff = INITIAL_BACKOFF * (BACKOFF_GROWTH_FACTOR**exponent)
                hook.disabled_until = self.now() + min(max(backoff, INITIAL_BACKOFF), MAX_BACKOFF)

    # -- internals: delivery ----------------------------------------------------------------------

    def _dispatch(self, outgoing: list[_Outgoing]) -> None:
        """Apply the loss/duplication knobs, then send now (sync) or queue for the sender (async)."""
        plan: list[_Outgoing] = []
        with self._lock:
            for out in outgoing:
                if self.loss and self._rng.random() < self.loss:
                    self.delivery_stats["lost"] += 1
                    continue
                plan.append(out)
                if self.duplicate and self._rng.random() < self.duplicate:
                    self.delivery_stats["duplicated"] += 1
                    plan.append(replace(out, seq=next(self._seq), duplicate=True))
            if self.delivery_mode == "async":
                for out in plan:
                    out.due = time.monotonic() + self._rng.uniform(*self.delay)
        if self.delivery_mode == "sync":
            for out in plan:
                self._deliver(out)
            return
        with self._queue_cond:
            for out in plan:
                heapq.heappush(self._queue, out)
                self.delivery_stats["queued"] += 1
            self._queue_cond.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._queue_cond:
                out = self._next_due()
                if out is None:
                    return
                self._in_flight += 1
            try:
                self._deliver(out)
            finally:
                with self._queue_cond:
                    self._in_flight -= 1
                    self._queue_cond.notify_all()

    def _next_due(self) -> _Outgoing | None:
        """Under `_queue_cond`: wait for the earliest delivery to be due; None once closing."""
        while not self._stopping:
            if not self._queue:
                self._queue_cond.wait(0.1)
                continue
            wait = self._queue[0].due - time.monotonic()
            if wait <= 0:
                return heapq.heappop(self._queue)
            self._queue_cond.wait(min(wait, 0.1))
        return None

    def _deliver(self, out: _Outgoing) -> Delivery:
        headers = dict(out.headers)
        headers["X-Gitlab-Webhook-UUID"] = str(uuid.uuid4())
        data = json.dumps(out.body).encode()
        request = urllib.request.Request(out.url, data=data, headers=headers, method="POST")
        status: int | None = None
        error: str | None = None
        try:
            with self._opener.open(request, timeout=self.delivery_timeout, **self._tls(out)) as response:
                status = int(response.status)
                response.read()
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery = Delivery(
            out.hook_id,
            out.project_id,
            out.url,
            out.event,
            headers,
            out.body,
            status,
            error,
            out.duplicate,
            out.test,
        )
        with self._lock:
            self.deliveries.append(delivery)
            self.delivery_stats["sent"] += 1
            self.delivery_stats["succeeded" if delivery.ok else "failed"] += 1
        self._record_result(out.hook_id, delivery.ok)
        if not delivery.ok:
            logger.debug("webhook delivery failed", extra={"hook_id": out.hook_id, "status": status})
        return delivery

    def _tls(self, out: _Outgoing) -> dict[str, Any]:
        if not out.url.startswith("https:") or out.verify_tls:
            return {}
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return {"context": context}

    # -- webhook payloads: built by toolkit.samples, the one builder (data_builder shapes) -----

    def _runner_sample(self, job: FakeJob) -> RunnerSample | None:
        runner = self.runners.get(job.runner_id) if job.runner_id is not None else None
        if runner is None:
            return None
        return RunnerSample(
            runner.id, runner.description, runner.runner_type, not runner.paused, tuple(runner.tag_list)
        )

    def _job_hook_payload(self, job: FakeJob) -> dict[str, Any]:
        """A Job Hook body (`object_kind: build`) for the job as it is now."""
        pipeline = self.pipelines[job.pipeline_id]
        project = self.projects[job.project_id]
        return job_hook_payload(
            job.id,
            job.status,
            project_id=project.id,
            pipeline_id=pipeline.id,
            stage=job.stage,
            name=job.name,
            now=self.now(),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            queued_at=job.queued_at,
            retries_count=job.retries_count,
            ref=pipeline.ref,
            instance=self.instance_url,
            project_path=project.path_with_namespace,
            sha=pipeline.sha,
            runner=self._runner_sample(job),
            allow_failure=job.allow_failure,
            failure_reason=job.failure_reason,
            pipeline=PipelineSample(
                pipeline.status, pipeline.name, pipeline.started_at, pipeline.finished_at
            ),
            time_format=self.job_time_format,
        )

    def _pipeline_hook_payload(self, pipeline: FakePipeline) -> dict[str, Any]:
        """A Pipeline Hook body (`object_kind: pipeline`) with every current job under `builds`."""
        project = self.projects[pipeline.project_id]
        builds = [
            BuildSample(
                job.id,
                job.status,
                job.stage,
                job.name,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                queued_at=job.queued_at,
                when=job.when,
                allow_failure=job.allow_failure,
                failure_reason=job.failure_reason,
                runner=self._runner_sample(job),
            )
            for job in self._current(pipeline)
        ]
        return pipeline_hook_payload(
            pipeline.id,
            pipeline.status,
            project_id=project.id,
            builds=builds,
            now=self.now(),
            created_at=pipeline.created_at,
            iid=pipeline.iid,
            ref=pipeline.ref,
            instance=self.instance_url,
            project_path=project.path_with_namespace,
            sha=pipeline.sha,
            name=pipeline.name,
            stages=pipeline.stages,
            started_at=pipeline.started_at,
            finished_at=pipeline.finished_at,
            protected_ref=self._protected_ref(pipeline),
        )
