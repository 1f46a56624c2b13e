"""The demo's simulated machines ask GitLab for a job as gitlab-runner does: the `active?` check, then the
assignment a moment later (gitlabhq `lib/api/ci/runner.rb`, `app/services/ci/register_job_service.rb`), so a
pause landing in between does not stop the job, and the demo's drains meet GitLab's assignment window."""

from __future__ import annotations

from datetime import timedelta

from chalicelib.resources import Names
from tests.functional.conftest import Stack
from toolkit.devtools.fake_gitlab import FakeGitLab, JobSpec
from toolkit.devtools.machines import ASSIGN_SECONDS, MachineState, SimulatedMachines


def test_a_machine_paused_while_its_request_is_in_flight_still_gets_the_job(stack: Stack) -> None:
    # GIVEN one demo machine of the linux pool, booted and polling GitLab, on GitLab's clock
    clock = [stack.clock[0]]
    with FakeGitLab(now=lambda: clock[0]) as gitlab:
        machines = SimulatedMachines(
            stack.config, Names("test"), stack.aws, gitlab, duration_of=lambda _: 300.0
        )
        stack.runtime.fleet.set_desired_capacity("test-linux", 1)
        machines.step(clock[0])
        clock[0] += timedelta(seconds=60)
        machines.step(clock[0])  # booted: its runner registers and its first request passes `active?`
        (machine,) = machines.live("linux")
        assert machine.runner_id is not None and machine.request is not None
        # WHEN a job arrives, and the scaler's drain pauses the runner before GitLab has assigned it
        project = gitlab.create_project("group/app")
        (job_id,) = gitlab.create_pipeline(project, [JobSpec("build", tags=("linux",))]).job_ids
        gitlab.runners[machine.runner_id].paused = True  # PUT /runners/:id paused=true, as the drain does
        clock[0] += timedelta(seconds=ASSIGN_SECONDS)
        machines.step(clock[0])
        # THEN GitLab assigned the job all the same: the paused machine is busy with it
        assert machine.state(clock[0], 1) is MachineState.BUSY and job_id in machine.running
        assert gitlab.jobs[job_id].status == "running" and gitlab.jobs[job_id].runner_id == machine.runner_id
        # AND a paused runner's next request is refused at its `active?` check: no further job comes
        assert machine.request is None
