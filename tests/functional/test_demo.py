"""`runner-scaler demo` end to end, tiny and fast: every job runs, no invariant breaks, every handler of
app.py is invoked (discovered from the app object, so a new handler is covered without touching this file),
the summary adds up, and no server, thread or port outlives the run."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chalicelib.config import parse_config
from chalicelib.errors import ConfigError
from sim.traces import TraceError, parse_trace, read_trace
from toolkit.devtools.demo import (
    DEMO_CONFIG,
    AcceleratedClock,
    Demo,
    DemoOptions,
    DemoResult,
    check_routable,
    load_demo_config,
)
from toolkit.devtools.demo_report import SUMMARY_KEYS
from toolkit.devtools.local_app import discover, load_app

# Three pools, two stages, an untagged job, a Windows machine that boots for five minutes.
TINY_TRACE = """pipeline_id,created_s,stage,name,tags,duration_s
1,0,0,build,linux docker,60
1,0,1,test 1/2,linux docker,90
1,0,1,test 2/2,linux docker,75
1,0,2,package,linux docker xl,60
2,30,0,lint,,30
3,60,0,build,windows,120
"""


@dataclass
class Run:
    result: DemoResult
    trace: Path
    threads_before: set[threading.Thread]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One short demo for the whole module: simulated steps of 20 s, as fast as the host goes."""
    directory = tmp_path_factory.mktemp("demo")
    trace = directory / "tiny.csv"
    trace.write_text(TINY_TRACE, encoding="utf-8")
    threads_before = set(threading.enumerate())
    options = DemoOptions(
        trace=trace,
        speed=10_000.0,
        max_step=20.0,
        step_wall=0.0,
        duration=timedelta(minutes=45),
        out=directory / "out",
        live=False,
        settle=timedelta(minutes=5),
        spot_interruptions=1,
    )
    result = Demo(options).run()
    yield Run(result, trace, threads_before)


def test_every_job_of_the_trace_ran_and_no_invariant_broke(run: Run) -> None:
    summary = run.result.summary
    assert summary["invariants"] == {
        "no_busy_machine_killed": True,
        "every_job_ran": True,
        "within_max_instances": True,
    }
    assert summary["ok"] is True and summary["interrupted"] is False
    assert run.result.exit_code == 0
    assert summary["busy_killed"] == []
    assert summary["jobs"]["never_ran"] == []
    assert summary["jobs"]["succeeded"] == len(read_trace(run.trace))


def test_every_handler_in_app_py_was_invoked_without_failing(run: Run) -> None:
    handlers = discover(load_app())
    assert {h.name for h in handlers} >= {"gitlab_webhook", "tick", "pool_dirty"}
    reported = run.result.summary["handlers"]
    for handler in handlers:
        assert reported[handler.name]["invocations"] >= 1, f"{handler.kind} handler {handler.name} never ran"
        unexpected = reported[handler.name]["failures"] - reported[handler.name]["failures_during_drill"]
        assert unexpected == 0, reported[handler.name]
    assert run.result.summary["handlers_not_invoked"] == []


def test_summary_json_has_the_documented_keys_and_adds_up(run: Run) -> None:
    summary = json.loads(run.result.summary_path.read_text(encoding="utf-8"))
    assert set(SUMMARY_KEYS) <= set(summary)
    jobs = summary["jobs"]
    parts = ("succeeded", "failed", "skipped", "canceled", "unfinished")
    assert jobs["total"] == len(read_trace(run.trace)) == sum(jobs[p] for p in parts)
    assert sum(p["total"] for p in jobs["by_pool"].values()) == jobs["total"]
    assert sum(p["succeeded"] for p in jobs["by_pool"].values()) == jobs["succeeded"]

    waits = summary["wait_seconds"]
    assert waits["count"] == jobs["total"]
    assert 0 <= waits["p50"] <= waits["p95"] <= waits["max"]
    assert sum(p["count"] for p in waits["by_pool"].values()) == waits["count"]
    assert max(p["max"] for p in waits["by_pool"].values()) == waits["max"]

    machine_seconds = summary["machine_seconds"]
    assert machine_seconds["total"] == pytest.approx(sum(machine_seconds["by_pool"].values()), abs=0.5)
    assert 0 < machine_seconds["total"] <= summary["max_machines"]["total"] * summary["simulated_seconds"] + 1

    config = parse_config(DEMO_CONFIG, "demo")
    for pool in config.pools:
        assert summary["max_machines"]["by_pool"][pool.name] <= pool.max_instances
        assert summary["machines_launched"][pool.name] >= 1  # every pool had a job, so a machine
    assert summary["max_machines"]["total"] <= sum(summary["max_machines"]["by_pool"].values())


def test_the_staged_throttling_incident_raises_alarms_that_clear(run: Run) -> None:
    summary = run.result.summary
    assert summary["drill"]["calls_failed"] > 0
    transitions = [[c["to"] for c in changes] for changes in summary["alarms"].values()]
    assert ["ALARM", "OK"] in transitions, summary["alarms"]


def test_the_spot_instance_was_warned_then_reclaimed_without_losing_a_job(run: Run) -> None:
    summary = run.result.summary
    assert len(summary["spot_warnings"]) == 1
    interrupted = [j for i in summary["spot_interruptions"] for j in i["jobs_interrupted"]]
    assert summary["jobs_retried"] == len(interrupted)  # each interrupted job ran again...
    assert summary["jobs"]["succeeded"] == summary["jobs"]["total"]  # ...and succeeded


def test_the_tls_material_was_rotated_on_deploy_and_on_schedule(run: Run) -> None:
    rotations = run.result.summary["tls_rotations"]
    assert [r["result"] for r in rotations] == ["rotated", "rotated"]
    assert rotations[0]["ca_sha256"] != rotations[1]["ca_sha256"]


def test_the_timeline_is_a_png_and_the_log_is_in_simulated_time(run: Run) -> None:
    assert run.result.timeline_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = run.result.log_path.read_text(encoding="utf-8")
    assert "sim 00:00:00" in log and "launch" in log


def test_no_thread_or_port_outlives_the_demo(run: Run) -> None:
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - run.threads_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running: {sorted(t.name for t in left)}"
    assert set(run.result.ports) == {"moto", "app", "gitlab"}
    for name, port in run.result.ports.items():
        with socket.socket() as probe:
            # As a server binds (connections the demo closed may linger in TIME_WAIT): fails only while the
            # demo's own listening socket is open.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()
            assert probe.getsockname()[1] == port, name


def test_a_trace_job_no_pool_can_take_is_refused_before_anything_starts() -> None:
    config = parse_config(DEMO_CONFIG, "demo")
    text = "pipeline_id,created_s,stage,name,tags,duration_s\n1,0,0,build,macos xcode,60\n"
    jobs = parse_trace(text, "t.csv")
    with pytest.raises(TraceError, match=r"t.csv: jobs tagged macos xcode match no pool"):
        check_routable(jobs, config, "t.csv")


def test_a_config_with_dedicated_host_pools_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "hosts.toml"
    config.write_text(
        DEMO_CONFIG
        + """
[[pools]]
name = "macos"
asg = "demo-macos"
platform = "macos"
tags = ["macos"]
max_instances = 1
  [pools.hosts]
  instance_type = "mac2.metal"
  host_resource_group = "demo-macos-hosts"
  availability_zones = ["us-east-1a"]
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"pools\[3\] \(macos\)\.hosts: dedicated-host pools cannot run"):
        load_demo_config(config)


def test_the_clock_slows_down_rather_than_skip_events_on_a_busy_host() -> None:
    wall = [100.0]
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    clock = AcceleratedClock(start, 60.0, max_step=10.0, monotonic=lambda: wall[0])
    clock.start()
    wall[0] += 0.1
    assert clock.advance() == datetime(2026, 1, 5, 9, 0, 6, tzinfo=UTC)  # 0.1 s x 60
    wall[0] += 5.0  # a slow step: 300 simulated seconds asked, 10 granted
    assert clock.advance() == datetime(2026, 1, 5, 9, 0, 16, tzinfo=UTC)
    assert clock.effective_speed == pytest.approx(16 / 5.1)
