"""One scoring rule for the simulator and the demo: the same job timeline (a retried job, a job still pending
at the end, a stage that never started) gives the same wait percentiles and machine time in both."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from sim.model import SimMachine
from sim.world import World
from tests.unit.test_sim import EXACT, job, make_config
from toolkit.devtools.accounting import job_wait_s, machine_seconds, percentile
from toolkit.devtools.demo_report import Recorder, pool_machine_seconds, wait_stats
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec
from toolkit.devtools.machines import SimMachine as DemoMachine

START = datetime(2026, 1, 5, 9, tzinfo=UTC)
END_S = 300.0
#: Linux jobs run on machines; the windows pool never gets one, so its pipeline waits to the end.
CONFIG = make_config(
    {"name": "linux", "asg": "asg-linux", "tags": ["linux"]},
    {"name": "windows", "asg": "asg-windows", "tags": ["windows"]},
)
TRACE = [
    job(1, 0.0, 0, 60.0, "linux", name="build"),  # waits 30 s
    job(2, 10.0, 0, 60.0, "linux", name="build"),  # waits 40 s, its machine is killed, waits 40 s again
    job(3, 20.0, 0, 60.0, "windows", name="build"),  # still pending at the end: 280 s (censored)
    job(3, 20.0, 1, 60.0, "windows", name="test"),  # never pending: 0 s
    job(4, 40.0, 0, 60.0, "linux", name="build"),  # waits 60 s
]
#: Machines as (launched, takes a job at, stopped or None), seconds; the second one is killed while busy.
MACHINES = [(0.0, 30.0, 100.0), (20.0, 50.0, 80.0), (70.0, 100.0, 170.0), (90.0, 120.0, None)]


def simulator_metrics() -> dict[str, float | int]:
    """The timeline through the simulator's GitLab and its `World.metrics`."""
    world = World(CONFIG, TRACE, seed=0, options=EXACT)
    linux = world.pool("linux")
    by_pipeline: dict[int, list[int]] = {}
    for index, trace_job in enumerate(TRACE):
        by_pipeline.setdefault(trace_job.pipeline_id, []).append(index)
    for indexes in by_pipeline.values():
        pipeline = [world.jobs[i] for i in indexes]
        world.loop.at(pipeline[0].trace.created_s, partial(world.gitlab.add_pipeline, pipeline))
    for number, (launched, ready, stopped) in enumerate(MACHINES, start=1):
        machine = SimMachine(f"i-{number}", linux, number, launched, ready - launched)
        world.loop.at(launched, partial(world.ledger.launched, machine, launched))
        world.loop.at(ready, _ready(world, machine))
        if stopped is not None:
            world.loop.at(stopped, _stop(world, machine))
    world.loop.run(until=END_S)
    return world.metrics(END_S, api_calls=0)


def _ready(world: World, machine: SimMachine) -> Callable[[], None]:
    def ready() -> None:
        machine.ready_at = world.loop.now
        world.gitlab.register(machine)

    return ready


def _stop(world: World, machine: SimMachine) -> Callable[[], None]:
    def stop() -> None:
        machine.terminated_at = world.loop.now
        world.ledger.ended(world.loop.now)
        world.gitlab.unregister(machine)  # a job still running fails and is retried at once

    return stop


def demo_figures() -> tuple[dict[str, float], float]:
    """The same timeline through the demo's fake GitLab and its Recorder (waits) and machine accounting."""
    elapsed = [0.0]
    gitlab = FakeGitLab(now=lambda: START + timedelta(seconds=elapsed[0]))
    project = gitlab.create_project("demo/app")
    recorder = Recorder(CONFIG, gitlab, START)
    runners = {tags: gitlab.register_runner(tag_list=[tags])[0] for tags in ("linux", "windows")}

    def at(seconds: float) -> None:
        elapsed[0] = seconds

    def pipeline(created: float, *specs: JobSpec) -> None:
        at(created)
        ref = gitlab.create_pipeline(project, list(specs))
        recorder.add_jobs(ref.job_ids, specs[0].tags[0])

    pipeline(0.0, JobSpec("build", "build", ("linux",)))
    pipeline(10.0, JobSpec("build", "build", ("linux",)))
    pipeline(20.0, JobSpec("build", "build", ("windows",)), JobSpec("test", "test", ("windows",)))
    at(30.0)
    first = gitlab.request_job(runners["linux"])
    pipeline(40.0, JobSpec("build", "build", ("linux",)))
    at(50.0)
    killed = gitlab.request_job(runners["linux"])
    at(80.0)
    assert first is not None and killed is not None
    gitlab.finish_job(killed, "failed", failure_reason="runner_system_failure")
    gitlab.retry_job(killed)
    at(90.0)
    gitlab.finish_job(first)
    at(100.0)
    gitlab.request_job(runners["linux"])  # the oldest pending: pipeline 4's build, not the retry
    at(120.0)
    gitlab.request_job(runners["linux"])  # the retry
    machines = [
        DemoMachine(
            f"i-{n}",
            "linux",
            START + timedelta(seconds=launched),
            START + timedelta(seconds=ready),
            gone_at=None if stopped is None else START + timedelta(seconds=stopped),
        )
        for n, (launched, ready, stopped) in enumerate(MACHINES, start=1)
    ]
    end = START + timedelta(seconds=END_S)
    seconds = pool_machine_seconds(machines, ["linux", "windows"], START, end)
    return wait_stats(recorder.waits(end)), sum(seconds.values())


def test_the_demo_scores_a_timeline_with_a_retry_exactly_as_the_simulator() -> None:
    # GIVEN one timeline: a job retried after its machine died, one pending at the end, one never pending
    # WHEN the simulator and the demo each score it
    sim = simulator_metrics()
    demo, demo_machine_seconds = demo_figures()
    # THEN the waits are [0, 30, 60, 80, 280]: the retried job counts both its waits (40 + 40), the pending
    # one its wait until the end, the stage that never started 0 s; percentiles interpolate linearly
    assert demo == {"count": 5, "p50": 60.0, "p95": 240.0, "max": 280.0}
    assert (sim["wait_p50_s"], sim["wait_p95_s"], sim["wait_max_s"]) == (
        demo["p50"],
        demo["p95"],
        demo["max"],
    )
    # AND machine time is launch to stop (or to the end): 100 + 60 + 100 + 210 s
    assert demo_machine_seconds == 470.0
    assert sim["machine_hours"] == round(demo_machine_seconds / 3600, 2)
    assert sim["jobs"] == demo["count"]


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 95, 0.0),
        ([7.0], 95, 7.0),
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([float(n) for n in range(1, 21)], 95, 19.05),  # nearest rank would say 19
        ([0.0, 30.0, 60.0, 80.0, 280.0], 95, 240.0),
    ],
)
def test_percentiles_interpolate_between_closest_ranks(
    values: list[float], pct: float, expected: float
) -> None:
    assert percentile(values, pct) == pytest.approx(expected)


def test_a_job_waits_every_attempt_and_a_pending_one_until_the_end() -> None:
    assert job_wait_s([40.0, 40.0], None, 300.0) == 80.0
    assert job_wait_s([], 20.0, 300.0) == 280.0
    assert job_wait_s([], None, 300.0) == 0.0  # never pending
    assert job_wait_s([10.0], 290.0, 300.0) == 20.0  # retried and pending again


def test_a_machine_is_billed_from_launch_to_stop_or_to_the_end() -> None:
    assert machine_seconds(20.0, 80.0, 300.0) == 60.0
    assert machine_seconds(90.0, None, 300.0) == 210.0
