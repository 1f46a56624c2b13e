"""A machine waits for its secret at least as long as the launch lifecycle hook waits for the scaler.

The hook holds the instance in Pending:Wait until the action completes or its heartbeat timeout ends
("Amazon EC2 Auto Scaling lifecycle hooks", Auto Scaling user guide, lifecycle-hooks-overview: "The instance
remains in a wait state until you either complete the lifecycle action, or the timeout period ends"). A
launch GitLab rate-limited is retried by Lambda inside that window, so a boot script that gave up sooner
would leave an InService machine without a runner until `boot_timeout`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chalicelib.config import load_config_file
from chalicelib.resources import LAUNCH_HOOK_TIMEOUT_SECONDS
from infra.userdata import SECRET_POLL_SECONDS, render

EXAMPLE = load_config_file(Path(__file__).resolve().parents[2] / "examples" / "config.toml")
#: The secret loop of each template: its number of tries, each followed by a sleep of SECRET_POLL_SECONDS.
LOOPS = {
    "linux": re.compile(r"for _ in \$\(seq 1 (\d+)\); do\n  if SECRET=.*?\n  sleep (\d+)\n", re.S),
    "macos": re.compile(r"for _ in \$\(seq 1 (\d+)\); do\n  if SECRET=.*?\n  sleep (\d+)\n", re.S),
    "windows": re.compile(r"foreach \(\$attempt in 1\.\.(\d+)\) \{.*?Start-Sleep -Seconds (\d+)", re.S),
}


@pytest.mark.parametrize("pool", ["linux", "macos", "windows"])
@pytest.mark.parametrize("hook_timeout", [LAUNCH_HOOK_TIMEOUT_SECONDS, 1800])
def test_the_boot_script_waits_for_its_secret_at_least_the_hook_timeout(pool: str, hook_timeout: int) -> None:
    # GIVEN the launch hook's heartbeat timeout; WHEN the pool's boot script is rendered for it
    text = render(EXAMPLE.pool(pool), "runner-scaler", launch_hook_timeout=hook_timeout)
    # THEN its secret loop sleeps at least that long in all before it gives up
    found = LOOPS[pool].search(text)
    assert found is not None, f"{pool}: secret loop not found"
    tries, sleep = int(found[1]), int(found[2])
    assert sleep == SECRET_POLL_SECONDS
    assert tries * sleep >= hook_timeout
