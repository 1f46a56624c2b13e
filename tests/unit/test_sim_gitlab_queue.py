"""The simulated GitLab's pending queue, kept per tag set: a runner is offered the oldest job whose tags it
takes, in queue order across tag sets, and a runner manager counts and lists the jobs it takes in order."""

from __future__ import annotations

from chalicelib.capacity import runner_takes
from sim.model import SimJob, SimMachine
from sim.traces import TraceJob
from sim.world import World
from tests.unit.test_sim import EXACT, job, make_config


def _world() -> World:
    """A GitLab with five pending jobs of four tag sets, queued in this order: windows, linux, untagged,
    linux+docker, linux (one pipeline each, all created at 0 s)."""
    trace = [
        job(1, 0.0, 0, 60.0, "windows"),
        job(2, 0.0, 0, 60.0, "linux"),
        TraceJob(3, 0.0, 0, "untagged", (), 60.0),
        job(4, 0.0, 0, 60.0, "linux", "docker"),
        job(5, 0.0, 0, 60.0, "linux"),
    ]
    config = make_config({"tags": ["linux", "docker"], "run_untagged": True})
    world = World(config, trace, seed=0, options=EXACT)
    for sim_job in world.jobs:
        world.gitlab.add_pipeline([sim_job])
    return world


def _pipelines(jobs: list[SimJob]) -> list[int]:
    return [j.trace.pipeline_id for j in jobs]


def test_the_queue_is_read_in_order_whatever_tag_sets_are_asked_for() -> None:
    # GIVEN five pending jobs of four tag sets
    gitlab = _world().gitlab
    # WHEN runner managers ask for the jobs they take
    linux_docker = gitlab.pending_for(lambda tags: runner_takes(tags, ("linux", "docker"), True))
    windows = gitlab.pending_for(lambda tags: runner_takes(tags, ("windows",), False))
    everything = gitlab.pending_for(lambda tags: True)
    nothing = gitlab.pending_for(lambda tags: runner_takes(tags, ("macos",), False))
    # THEN each gets its jobs in queue order, and the counts agree with the lists
    assert _pipelines(linux_docker) == [2, 3, 4, 5]
    assert _pipelines(windows) == [1]
    assert _pipelines(everything) == [1, 2, 3, 4, 5]
    assert nothing == []
    assert gitlab.pending_count(lambda tags: runner_takes(tags, ("linux", "docker"), True)) == 4


def test_a_runner_takes_the_oldest_job_it_matches() -> None:
    # GIVEN the queue, and a booted runner of the linux+docker pool (one slot, as run-single has)
    world = _world()
    pool = world.config.pools[0]
    machine = SimMachine("i-1", pool, 1, launched_at=0.0, boot_s=0.0, ready_at=0.0)
    # WHEN it starts polling
    world.gitlab.register(machine)
    # THEN it runs the oldest job it takes (the windows one ahead of it is not for it), and the rest wait
    assert _pipelines(machine.running) == [2]
    left = world.gitlab.pending_jobs()
    assert _pipelines(left) == [1, 3, 4, 5]
    assert all(j.status == "pending" for j in left)
