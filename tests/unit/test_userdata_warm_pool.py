"""A warm-pool machine runs its boot script at every boot and starts no runner while it is warm.

User data runs only at the first boot, and that boot happens in the warm pool ("Use lifecycle hooks with a
warm pool in Auto Scaling group"): the Linux script installs itself in cloud-init's per-boot directory
(cloud-init's scripts_per_boot module), the Windows one carries `<persist>true</persist>` ("Run commands on
your Windows instance at launch"). While `autoscaling/target-lifecycle-state` reads Warmed:* ("Retrieve the
target lifecycle state through instance metadata") the script asks for no secret and starts no runner.

The Linux script is run for real under bash, with stand-ins for curl (the metadata service), aws, install,
sleep and gitlab-runner on PATH that only record what they are asked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from infra.userdata import render
from tests.builders import pool

CURL = """#!/bin/sh
for arg in "$@"; do url="$arg"; done
case "$url" in
  *api/token) printf token ;;
  *instance-id) printf i-0123456789abcdef0 ;;
  *placement/region) printf us-east-1 ;;
  *target-lifecycle-state)
    n=$(cat "$LOG/reads" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$LOG/reads"
    echo "target-lifecycle-state" >> "$LOG/calls"
    if [ "$n" -le "$WARM_READS" ]; then printf Warmed:Stopped; else printf InService; fi ;;
esac
"""
RECORD = """#!/bin/sh
echo "{name} $*" >> "$LOG/calls"
{tail}
"""
#: `sleep` ends the script after many loops: a machine held warm is stopped by Auto Scaling, never released.
SLEEP = """#!/bin/sh
n=$(cat "$LOG/sleeps" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$LOG/sleeps"
if [ "$n" -ge 30 ]; then kill -TERM "$PPID"; fi
"""


def run_boot(tmp_path: Path, warm_reads: int, warm_pool: str = "auto") -> list[str]:
    """Run the rendered Linux boot script of an on-demand pool; its recorded calls."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    shims = {
        "curl": CURL,
        "sleep": SLEEP,
        "aws": RECORD.format(name="aws", tail="exit 1"),  # the secret is never there: the loop gives up
        "install": RECORD.format(name="install", tail=""),
        "gitlab-runner": RECORD.format(name="gitlab-runner", tail=""),
    }
    for name, text in shims.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "part-001"
    subject = pool(instance_types=["m7i.large"], warm_pool=warm_pool)
    script.write_text(render(subject, "runner-scaler", launch_hook_timeout=10))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LOG": str(log),
        "WARM_READS": str(warm_reads),
        "HOME": str(tmp_path),
    }
    subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, timeout=60, check=False)
    calls = log / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_a_machine_held_warm_asks_for_no_secret_and_starts_no_runner(tmp_path: Path) -> None:
    # GIVEN a machine that stays in the warm pool (its target state keeps reading Warmed:Stopped)
    calls = run_boot(tmp_path, warm_reads=10_000)
    # THEN it installed itself to run at the next boot, and then only read its target state
    assert calls[0].startswith("install -D -m 0700 ") and calls[0].endswith(
        "/var/lib/cloud/scripts/per-boot/runner-scaler.sh"
    )
    assert set(calls[1:]) == {"target-lifecycle-state"} and len(calls) > 5
    # AND it never asked for its secret, never started gitlab-runner
    assert not any(c.startswith(("aws", "gitlab-runner")) for c in calls)


def test_leaving_the_pool_the_machine_goes_on_to_its_secret(tmp_path: Path) -> None:
    # GIVEN a machine whose target state turns InService after two reads (it left the pool)
    calls = run_boot(tmp_path, warm_reads=2)
    # THEN it asks for its secret only after the state left Warmed:*
    reads = [i for i, c in enumerate(calls) if c == "target-lifecycle-state"]
    secret = next(i for i, c in enumerate(calls) if c.startswith("aws secretsmanager get-secret-value"))
    assert len(reads) == 3 and secret > reads[-1]
    # AND with no secret there (this stand-in never has one) it gives up without a runner
    assert not any(c.startswith("gitlab-runner") for c in calls)


@pytest.mark.parametrize("warm", [True, False])
def test_windows_user_data_persists_only_for_a_warm_pool(warm: bool) -> None:
    windows = pool(
        platform="windows",
        executor="docker-windows",
        instance_types=["m5.large"],
        warm_pool="auto" if warm else "off",
    )
    text = render(windows, "runner-scaler")
    assert text.rstrip().endswith("<persist>true</persist>") is warm
    gate = text.index("target-lifecycle-state")
    assert gate < text.index("Get-SECSecretValue") < text.index("run-single")


def test_a_pool_without_a_warm_pool_keeps_its_first_boot_only_script(tmp_path: Path) -> None:
    # GIVEN warm_pool = "off" THEN the script neither installs itself per boot nor reads its target state
    calls = run_boot(tmp_path, warm_reads=10_000, warm_pool="off")
    assert calls and calls[0].startswith("aws secretsmanager get-secret-value")
    assert not any(c.startswith("install") or c == "target-lifecycle-state" for c in calls)
