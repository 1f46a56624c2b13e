"""GitLab's picking rules as the scaler applies them to demand (gitlabhq app/services/ci/queue/
build_queue_service.rb): which projects' jobs each runner type can never take."""

from __future__ import annotations

import pytest

from chalicelib.config import GitLabConfig
from chalicelib.eligibility import ProjectFacts, unpickable_reason

SHARED_ON = ProjectFacts(7, "acme/platform/app", shared_runners_enabled=True)
SHARED_OFF = ProjectFacts(7, "acme/platform/app", shared_runners_enabled=False)


def settings(runner_type: str, **kw: int) -> GitLabConfig:
    return GitLabConfig(url="https://gitlab.example.com", runner_type=runner_type, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "facts", "group_path", "reason"),
    [
        (settings("instance_type"), SHARED_ON, None, None),
        (settings("instance_type"), SHARED_OFF, None, "shared runners disabled"),
        # group and project runners do not depend on the project's shared-runner setting
        (settings("group_type", group_id=3), SHARED_OFF, "acme", None),
        (settings("group_type", group_id=3), SHARED_ON, "acme/platform", None),
        (settings("group_type", group_id=3), SHARED_ON, "other", "outside the runners' group"),
        (settings("group_type", group_id=3), SHARED_ON, "acme/plat", "outside the runners' group"),
        (settings("group_type", group_id=3), SHARED_ON, None, None),  # group path unknown: counted
        (settings("project_type", project_id=7), SHARED_OFF, None, None),
        (settings("project_type", project_id=8), SHARED_ON, None, "another project"),
    ],
)
def test_which_projects_jobs_our_runners_can_never_take(
    config: GitLabConfig, facts: ProjectFacts, group_path: str | None, reason: str | None
) -> None:
    assert unpickable_reason(config, facts, group_path) == reason
