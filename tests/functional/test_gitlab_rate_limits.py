"""The adapter obeys GitLab's 429s: it waits what `Retry-After` asks (sleeping only short waits inside a
call), and until then does not call the throttled endpoint again, in this call or the next ones."""

from __future__ import annotations

import pytest

from chalicelib.errors import GitLabError
from chalicelib.gitlab import DEFAULT_RATE_LIMIT_WAIT, GitLabClient
from tests.gitlab_fixtures import Clock
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec


def client_on(fake: FakeGitLab, clock: Clock, *, obey: bool, max_retries: int = 2) -> GitLabClient:
    """A client whose clocks are the fake's, and whose sleeps advance it (no wall time spent)."""
    gl = GitLabClient(fake.url, fake.token, obey_rate_limit=obey, max_retries=max_retries)
    gl.clock = gl.wall_clock = lambda: clock().timestamp()
    gl.slept = []  # type: ignore[attr-defined]

    def sleep(seconds: float) -> None:
        gl.slept.append(seconds)  # type: ignore[attr-defined]
        clock.advance(seconds)

    gl.sleep = sleep
    return gl


def jobs_calls(fake: FakeGitLab) -> int:
    return fake.request_count("GET", "/projects/:project/jobs")


def test_a_throttled_endpoint_is_not_called_again_before_its_retry_after(
    fake: FakeGitLab, clock: Clock
) -> None:
    # GIVEN GitLab.com's limit on a project's jobs list, nearly used up, and a latency-bound client
    project = fake.create_project("acme/app")
    fake.create_pipeline(project, [JobSpec("test", tags=("linux",))])
    fake.rate_limit("/projects/*/jobs", 2)
    gl = client_on(fake, clock, obey=False)
    gl.list_jobs(project)
    clock.advance(15)
    gl.list_jobs(project)
    # WHEN the limit is passed
    with pytest.raises(GitLabError) as throttled:
        gl.list_jobs(project)
    # THEN the call fails retryable, and names the wait GitLab asked for (the window's remaining 45 s)
    assert throttled.value.status == 429 and throttled.value.retryable
    assert "45 s" in str(throttled.value)
    # AND further calls within the wait fail without reaching GitLab
    before = jobs_calls(fake)
    clock.advance(30)
    for _ in range(5):
        with pytest.raises(GitLabError, match="not called"):
            gl.list_jobs(project)
    assert jobs_calls(fake) == before
    # AND once the wait is over GitLab is asked again, and answers
    clock.advance(15)
    assert [j.name for j in gl.list_jobs(project)] == ["test"]
    assert jobs_calls(fake) == before + 1


def test_a_short_retry_after_is_slept_through_once_inside_the_call(fake: FakeGitLab, clock: Clock) -> None:
    runner, _ = fake.register_runner()
    fake.inject_failure(f"/runners/{runner}", status=429, retry_after=3)
    gl = client_on(fake, clock, obey=True)
    assert gl.get_runner(runner).id == runner
    assert gl.slept == [3.0]  # type: ignore[attr-defined]


def test_a_long_retry_after_is_never_slept_in_a_lambda(fake: FakeGitLab, clock: Clock) -> None:
    # python-gitlab alone would time.sleep(600) here (gitlab/utils.py Retry.handle_retry_on_status)
    runner, _ = fake.register_runner()
    fake.inject_failure(f"/runners/{runner}", status=429, retry_after=600)
    gl = client_on(fake, clock, obey=True)
    with pytest.raises(GitLabError, match="retry after 600 s"):
        gl.get_runner(runner)
    assert gl.slept == []  # type: ignore[attr-defined]
    assert gl.held_until["runners.get"] == clock().timestamp() + 600


def test_a_429_without_headers_holds_off_for_gitlabs_one_minute_window(
    fake: FakeGitLab, clock: Clock
) -> None:
    """Endpoint limits (Gitlab::ApplicationRateLimiter) may answer 429 without Retry-After or RateLimit-*
    (gitlab-org/gitlab#365728); their windows are a minute (docs "Rate limits on Projects API")."""
    runner, _ = fake.register_runner()
    fake.inject_failure(f"/runners/{runner}", status=429)
    gl = client_on(fake, clock, obey=False)
    with pytest.raises(GitLabError):
        gl.get_runner(runner)
    assert gl.held_until["runners.get"] == clock().timestamp() + DEFAULT_RATE_LIMIT_WAIT
    # other endpoints are not held: GitLab's limits are per endpoint
    assert gl.list_runners("") != []
