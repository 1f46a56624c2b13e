"""How `runner-scaler demo` ends when it does not end well: a Ctrl-C mid-run stops every server and thread
and still writes the summary of the run so far (exit 130); a broken invariant, staged through the demo's
own step hook (an operator terminating a busy machine), gives exit 1 and names the machine and the rule."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console

from toolkit.devtools.demo import Demo, DemoOptions, DemoResult, DemoWorld
from toolkit.devtools.demo_report import summary_table

# Two Linux jobs that run ten minutes each: long enough to catch a machine busy.
TRACE = """pipeline_id,created_s,stage,name,tags,duration_s
1,0,0,build,linux docker,600
2,30,0,build,linux docker,600
"""


def demo_options(directory: Path) -> DemoOptions:
    trace = directory / "trace.csv"
    trace.write_text(TRACE, encoding="utf-8")
    return DemoOptions(
        trace=trace,
        speed=10_000.0,
        max_step=20.0,
        step_wall=0.0,
        duration=timedelta(minutes=40),
        out=directory / "out",
        live=False,
        settle=timedelta(minutes=2),
        drill=False,
        spot_interruptions=0,
    )


def running_jobs(world: DemoWorld) -> int:
    return sum(1 for job in world.recorder.jobs() if job.status == "running")


def assert_released(threads_before: set[threading.Thread], result: DemoResult) -> None:
    """No thread the demo started is left, and every port it listened on can be bound again."""
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - threads_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running: {sorted(t.name for t in left)}"
    assert set(result.ports) == {"moto", "app", "gitlab"}
    for name, port in result.ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()
            assert probe.getsockname()[1] == port, name


@dataclass
class CtrlC:
    """Presses Ctrl-C (raises KeyboardInterrupt in the demo's thread) once a job is running."""

    pressed_at_s: float | None = None  # simulated seconds since the demo started

    def __call__(self, world: DemoWorld, now: datetime) -> None:
        if running_jobs(world):
            self.pressed_at_s = world.clock.elapsed()
            raise KeyboardInterrupt


@dataclass
class RogueOperator:
    """Terminates the first busy machine it sees, without decrementing its group, as a console click would:
    not the scaler's doing and not a Spot reclaim, so the demo must call it a busy machine killed."""

    victim: str | None = None
    jobs: tuple[int, ...] = field(default_factory=tuple)

    def __call__(self, world: DemoWorld, now: datetime) -> None:
        if self.victim is not None:
            return
        busy = [m for m in world.machines.live() if m.running]
        if not busy:
            return
        self.victim, self.jobs = busy[0].instance_id, tuple(busy[0].running)
        world.local_aws.clients().call(
            "autoscaling",
            "terminate_instance_in_auto_scaling_group",
            InstanceId=self.victim,
            ShouldDecrementDesiredCapacity=False,
        )


def test_ctrl_c_mid_run_stops_everything_and_writes_the_summary_so_far(tmp_path: Path) -> None:
    # GIVEN a demo whose operator presses Ctrl-C while a job runs
    threads_before = set(threading.enumerate())
    ctrl_c = CtrlC()
    # WHEN it runs
    result = Demo(demo_options(tmp_path), Console(file=None, quiet=True), on_step=ctrl_c).run()
    # THEN run() returns (the interrupt does not escape), reports the interrupt and exits 130 as a shell does
    assert ctrl_c.pressed_at_s is not None
    assert result.exit_code == 130
    assert result.summary["interrupted"] is True and result.ok is False
    # AND the summary on disk covers the run so far: the running job is unfinished, nothing invented
    summary = json.loads(result.summary_path.read_text(encoding="utf-8"))
    assert summary["interrupted"] is True
    assert summary["simulated_seconds"] == round(ctrl_c.pressed_at_s, 1)
    assert summary["jobs"]["unfinished"] >= 1 and summary["jobs"]["succeeded"] == 0
    assert result.timeline_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # AND every server and thread is down, every port free
    assert_released(threads_before, result)


def test_a_busy_machine_killed_breaks_the_invariant_and_the_demo_exits_1(tmp_path: Path) -> None:
    # GIVEN a demo in which someone terminates a machine while it runs a job
    threads_before = set(threading.enumerate())
    operator = RogueOperator()
    # WHEN it runs to the end
    result = Demo(demo_options(tmp_path), Console(file=None, quiet=True), on_step=operator).run()
    # THEN the run was not interrupted, but the invariant broke and the exit code says so
    assert operator.victim is not None
    assert result.summary["interrupted"] is False
    assert result.summary["invariants"]["no_busy_machine_killed"] is False
    assert result.summary["invariants"]["within_max_instances"] is True
    assert result.ok is False and result.exit_code == 1
    # AND the summary names the machine, its pool and the jobs it was running
    (kill,) = result.summary["busy_killed"]
    assert (kill["instance_id"], kill["pool"], tuple(kill["jobs"])) == (
        operator.victim,
        "linux",
        operator.jobs,
    )
    # AND the end-of-run table marks the broken rule for the reader
    console = Console(record=True, width=200)
    console.print(summary_table(result.summary))
    assert "✗ no busy machine killed" in console.export_text()
    assert_released(threads_before, result)


def test_stopping_at_the_duration_limit_reports_the_unfinished_jobs_and_exits_0(tmp_path: Path) -> None:
    """The user asked the demo to stop early: jobs still waiting are the run's end, not a broken promise."""
    from typer.testing import CliRunner

    from toolkit.cli.main import app

    # GIVEN a trace whose first job needs a Windows machine (5 simulated minutes to boot, BOOT_SECONDS) and
    # whose second pipeline comes at minute 20
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "pipeline_id,created_s,stage,name,tags,duration_s\n1,0,0,build,windows,600\n"
        "2,1200,0,build,linux docker,60\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    # WHEN the demo is told to stop after 3 simulated minutes, before the Windows job could start
    args = ["demo", "--trace", str(trace), "--duration", "3m", "--speed", "10000", "--no-drill"]
    # (piped, whatever the surrounding shell or CI sets: no width, no forced terminal)
    piped = {"COLUMNS": None, "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
    result = CliRunner().invoke(app, [*args, "--spot", "0", "--no-live", "--out", str(out)], env=piped)
    # THEN it exits 0 and says what was left unfinished
    assert result.exit_code == 0, result.output
    assert "stopped at the --duration limit: 1 jobs unfinished" in result.output
    assert "1 trace pipelines not created yet; no invariant broke" in result.output
    assert "an invariant broke" not in result.output
    # AND the summary table, printed to a pipe (not a terminal), keeps whole pool names and headers
    assert "linux-xl" in result.output and "machine-min" in result.output and "…" not in result.output
    # AND the summary records the early stop, with "every job ran" not checked rather than failed
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["stopped_at_duration"] is True and summary["ok"] is True
    assert summary["invariants"]["every_job_ran"] is None
    assert summary["jobs"]["unfinished"] == 1 and len(summary["jobs"]["unfinished_ids"]) == 1
    assert summary["trace_pipelines_not_created"] == 1
