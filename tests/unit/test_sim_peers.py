"""The peers as strong as their real configuration, and no stronger: taskscaler's preemptive and
non-preemptive modes (with the acquire timeout), taskscaler on a hand-made warm pool, docker+machine's
rounding, and the GitHub runners module's defaults for ephemeral and macOS runners."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from chalicelib.config import Config, Platform, Pool, load_config_file
from sim.baselines import (
    MINIMUM_RUNNING_TIME_S,
    MachineKnobs,
    Oracle,
    Taskscaler,
    TaskscalerNonPreemptive,
    TaskscalerWarm,
    WebhookScaler,
    warm_pool_size,
)
from sim.model import SimOptions
from sim.simulate import simulate
from sim.traces import TraceJob, shipped_trace
from sim.warm import EBS_USD_PER_GIB_MONTH, HOURS_PER_MONTH, ROOT_VOLUME_GIB, stopped_usd_per_hour
from sim.world import RunResult, ScalingPolicy, World
from tests.unit.test_sim import EXACT, job, make_config, run

ROOT = Path(__file__).resolve().parent.parent.parent
SCENARIO_DIR = ROOT / "sim" / "scenarios"
ONE_IDLE = [{"idle_count": 1, "idle_time": "30m"}]


def result(
    policy: ScalingPolicy, trace: list[TraceJob], config: Config, options: SimOptions = EXACT
) -> RunResult:
    return World(config, trace, seed=0, options=options).run(policy)


class TestTaskscalerModes:
    def test_preemptive_mode_follows_idle_count_when_unset(self) -> None:
        # GIVEN gitlab-runner's PreemptiveModeEnabled: unset means idle_count > 0 (common/config.go)
        config = make_config({"policy": [{"idle_count": 0, "idle_time": "5m"}, *ONE_IDLE]})
        idle_none, one_idle = config.pools[0].policy
        # THEN the default runner is preemptive only where it keeps idle capacity; false means never
        assert Taskscaler().preemptive(one_idle) and not Taskscaler().preemptive(idle_none)
        assert not TaskscalerNonPreemptive().preemptive(one_idle)

    def test_a_preemptive_runner_does_not_scale_on_pending_jobs(self) -> None:
        # GIVEN five long jobs pending at once on a pool that keeps one idle slot
        config = make_config({"policy": ONE_IDLE, "max_instances": 10})
        trace = [job(p, 0.0, 0, 1800.0) for p in range(1, 6)]
        # WHEN the preemptive (default) and the non-preemptive taskscaler scale it
        preemptive = result(Taskscaler(), trace, config).metrics
        taken_first = result(TaskscalerNonPreemptive(), trace, config).metrics
        # THEN the preemptive one only refills its idle slot, one 60 s boot after the other: the last job
        # waits five boots; the non-preemptive one launches for every job at once
        assert preemptive["wait_max_s"] == pytest.approx(300.0, abs=15.0)
        assert taken_first["wait_max_s"] == pytest.approx(60.0, abs=5.0)

    def test_a_job_without_an_instance_for_three_acquire_timeouts_fails_and_its_pipeline_stops(self) -> None:
        # GIVEN a non-preemptive runner whose machines take 50 min to boot (3 x 15 min of attempts, 3 s
        # apart: gitlab-runner common/build.go retryCreateExecutor), a two-stage pipeline, and a job of
        # another pipeline 50 min later that a booted machine can take
        config = make_config({"policy": [{"idle_count": 0, "idle_time": "60m"}]})
        slow = replace(EXACT, boot_s=3000.0)
        trace = [job(1, 0.0, 0, 60.0), job(1, 0.0, 1, 60.0), job(2, 3000.0, 0, 60.0)]
        world = World(config, trace, seed=0, options=slow)
        metrics = world.run(TaskscalerNonPreemptive()).metrics
        # THEN the first job failed after its three attempts and never ran, its later stage was skipped, and
        # neither counts in the waits: only the job that started does
        first, later, other = world.jobs
        assert (first.status, later.status, other.status) == ("failed", "skipped", "success")
        assert first.started_at is None and first.finished_at == pytest.approx(3 * 903.0, abs=3.0)
        assert (metrics["failed_jobs"], metrics["skipped_jobs"]) == (1, 1)
        assert metrics["wait_max_s"] == other.wait_s
        # AND a 40 min boot fails nothing
        faster = result(
            TaskscalerNonPreemptive(), [job(1, 0.0, 0, 60.0)], config, replace(EXACT, boot_s=2400.0)
        )
        assert faster.metrics["failed_jobs"] == 0


class TestTaskscalerWarm:
    def test_a_launch_starts_a_stopped_instance_and_the_pool_refills_with_a_cold_boot(self) -> None:
        # GIVEN one job at 600 s on a Linux pool whose operator keeps one stopped instance
        config = make_config({"policy": [{"idle_count": 0, "idle_time": "5m"}], "instance_types": ["m"]})
        trace = [job(1, 600.0, 0, 120.0)]
        world = World(config, trace, seed=0, options=replace(EXACT, boot_s=None))
        result = world.run(TaskscalerWarm())
        # THEN the job waits for a start from stopped (about 20 s), not a cold boot
        assert 15.0 <= result.metrics["wait_max_s"] <= 25.0 + 3.0
        # AND the pool took one instance and launched one replacement, booted cold, then stopped
        (warm,) = world.fleet.warm_pools.values()
        first, refill = warm.instances
        assert first.left_at is not None and refill.left_at is None and refill.warm_at > refill.created_at
        # AND the bill has the refill's boot at the instance price and the stopped time at the EBS price
        end = result.run_end_s
        ebs = (
            (first.stopped_seconds(end) + refill.stopped_seconds(end))
            / 3600
            * stopped_usd_per_hour(Platform.LINUX)
        )
        machine = world.ledger.machines[0]
        running = (end if machine.terminated_at is None else machine.terminated_at) - machine.launched_at
        expected = (running + refill.running_seconds(end)) / 3600 * 0.36 + ebs
        assert result.metrics["cost_usd"] == pytest.approx(expected, abs=0.011)

    def test_a_stopped_instance_costs_its_root_volume(self) -> None:
        assert stopped_usd_per_hour(Platform.WINDOWS) == pytest.approx(
            ROOT_VOLUME_GIB[Platform.WINDOWS] * EBS_USD_PER_GIB_MONTH / HOURS_PER_MONTH
        )

    def test_the_operator_sizes_the_pool_for_the_busiest_period_and_never_on_hosts(self) -> None:
        policies = [
            {"idle_count": 0, "idle_time": "5m"},
            {"idle_count": 2, "idle_time": "5m", "scale_factor": 0.2, "scale_factor_limit": 6},
        ]
        assert warm_pool_size(make_config({"policy": policies}).pools[0]) == 5  # max_instances bounds it
        assert warm_pool_size(make_config({"policy": policies, "max_instances": 50}).pools[0]) == 8
        hosts = {
            "instance_type": "mac2.metal",
            "host_resource_group": "hrg",
            "max_hosts": 1,
            "availability_zones": ["eu-west-1a"],
        }
        config = make_config({"platform": "macos", "tags": ["macos"], "hosts": hosts})
        world = World(config, [job(1, 0.0, 0, 60.0, "macos")], seed=0, options=EXACT)
        world.run(TaskscalerWarm())
        assert world.fleet.warm_pools == {}


class TestDockerMachineRounding:
    def test_the_scale_factor_target_rounds_down_and_keeps_at_least_one(self) -> None:
        # GIVEN IdleScaleFactor 0.5 and no IdleCountMin (idle_limit_strategy.go: int(InUse * factor), and
        # IdleCountMin forced to 1 with a factor)
        knobs = MachineKnobs(idle_count=6, idle_count_min=0, idle_scale_factor=0.5, idle_time_s=60.0)
        # THEN 3 machines in use want 1 idle (1.5 rounded down), none in use still 1, many at most 6
        assert (knobs.target(3), knobs.target(0), knobs.target(40)) == (1, 1, 6)


class TestGitHubRunnersDefaults:
    def test_an_ephemeral_pool_launches_for_a_job_another_runner_took(self) -> None:
        # GIVEN a job taken at once by the idle runner that the pool's top-up keeps (idle_count 1)
        policy = [{"idle_count": 1, "idle_time": "30m"}]
        trace = [job(1, 400.0, 0, 60.0)]
        ephemeral = run(WebhookScaler(), trace, make_config({"policy": policy}))
        reused = run(WebhookScaler(), trace, make_config({"policy": policy, "max_use_count": 0}))
        # THEN without the job-queued check (off by default for ephemeral runners) the delayed message still
        # launches a machine; with it (reused runners) the message finds the job running and launches none
        assert ephemeral.ledger.machines[-1].launched_at == pytest.approx(430.0, abs=2.0)
        assert all(m.launched_at < 400.0 for m in reused.ledger.machines)

    def test_macos_runners_stay_at_least_20_minutes(self) -> None:
        assert MINIMUM_RUNNING_TIME_S[Platform.MACOS] == 1200.0
        assert MINIMUM_RUNNING_TIME_S[Platform.LINUX] == 300.0


class TestOracleOnHosts:
    HOSTS: ClassVar[dict[str, object]] = {
        "instance_type": "mac2.metal",
        "host_resource_group": "hrg",
        "max_hosts": 1,
        "scrub_time": "50m",
        "min_allocation": "1h",
        "availability_zones": ["eu-west-1a"],
    }

    def mac(self, **hosts: object) -> Config:
        return make_config(
            {"platform": "macos", "tags": ["macos"], "max_instances": 4, "hosts": self.HOSTS | hosts},
            prices={"hosts": {"mac2.metal": 1.0}},
        )

    def test_the_oracle_stays_within_max_hosts_and_delays_a_job_that_finds_no_host(self) -> None:
        # GIVEN two overlapping Mac jobs and at most one host (50 min scrub after each instance, no reuse)
        trace = [job(1, 300.0, 0, 600.0, "macos"), job(2, 400.0, 0, 600.0, "macos")]
        world = World(self.mac(reuse_root_volume=False), trace, seed=0, options=EXACT)
        metrics = world.run(Oracle()).metrics
        # THEN one host only, and the second job waits for the first's end, the scrub and its own boot
        # (600 + 3,000 + 60 s, less the 100 s between the two pendings)
        assert len(world.hosts.hosts) == 1
        assert metrics["wait_max_s"] == pytest.approx(600.0 + 3000.0 + 60.0 - 100.0, abs=1.0)
        assert metrics["busy_killed"] == 0

    def test_with_host_reuse_the_oracle_waits_for_a_root_volume_not_a_scrub(self) -> None:
        # GIVEN the same two jobs on one host of a pool that reuses Macs (a replacement takes mac_replace_s)
        trace = [job(1, 300.0, 0, 600.0, "macos"), job(2, 400.0, 0, 600.0, "macos")]
        world = World(self.mac(), trace, seed=0, options=EXACT)
        metrics = world.run(Oracle()).metrics
        # THEN the second job waits for the first's end, the replacement and its own boot
        assert len(world.hosts.hosts) == 1
        replace = EXACT.mac_replace_s
        assert metrics["wait_max_s"] == pytest.approx(600.0 + replace + 60.0 - 100.0, abs=1.0)
        assert metrics["busy_killed"] == 0

    def test_a_refused_release_is_tried_again_until_ec2_takes_it(self) -> None:
        # GIVEN an oracle whose only release of its host comes too early: at 600 s, while the host scrubs
        class EarlyRelease(Oracle):
            def start(self, world: World) -> None:
                super().start(world)
                world.loop.at(600.0, functools.partial(self._release_one, world.config.pools[0]))

            def _release_later(self, pool: Pool) -> None:
                """The planned releases are left out: only the early one is asked."""

        trace = [job(1, 300.0, 0, 60.0, "macos"), job(2, 9000.0, 0, 60.0, "macos")]
        world = World(self.mac(max_hosts=2), trace, seed=0, options=EXACT)
        world.run(EarlyRelease())
        # THEN EC2 refused it (scrubbing until 3,360 s, 1 h minimum from 120 s), and the retries got it
        first = world.hosts.hosts[0]
        assert first.released_at is not None and first.released_at >= first.allocated_at + 3600.0
        assert first.released_at <= first.allocated_at + 3600.0 + Oracle.release_retry_s

    def test_on_hosts_the_oracle_costs_no_more_than_ours_at_ours_wait(self) -> None:
        # GIVEN the first day of the shipped macOS trace on the bench's macOS config
        trace = [j for j in shipped_trace("macos") if j.created_s < 86_400.0]
        config = load_config_file(SCENARIO_DIR / "macos.toml")
        # WHEN ours and the oracle run (the oracle held to ours' wait p95 on the host pool)
        results = simulate(trace, config, ["ours", "oracle"], seed=0)
        ours, oracle = results["ours"].metrics, results["oracle"].metrics
        # THEN the oracle is a lower bound on both
        assert oracle["cost_usd"] <= ours["cost_usd"]
        assert oracle["wait_p95_s"] <= ours["wait_p95_s"]
        assert oracle["max_machines"] <= config.pools[0].hosts.max_hosts  # type: ignore[union-attr]


def test_the_committed_bench_holds_the_oracle_below_every_policy() -> None:
    """Without hosts the oracle is below every policy on cost and wait. On hosts it is taken at ours'
    wait, so it is below ours on both and no policy beats it on both (a policy that lets jobs wait longer
    may pay less). Not held: the 4.5 h scrub what-if, where the plan's wait drifts 1 % above ours'."""
    # GIVEN the committed bench results (python -m sim.bench)
    scenarios = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))["scenarios"]
    for name, scenario in scenarios.items():
        policies = scenario["policies"]
        oracle = policies["oracle"]
        if not name.startswith("macos"):
            # THEN without hosts the oracle costs no more and waits no longer (p95) than any policy
            for policy, m in policies.items():
                assert oracle["cost_usd"] <= m["cost_usd"], f"{name}: oracle costs more than {policy}"
                assert oracle["wait_p95_s"] <= m["wait_p95_s"], f"{name}: oracle waits longer than {policy}"
            continue
        # AND on hosts no policy beats it on both
        for policy, m in policies.items():
            both = m["cost_usd"] < oracle["cost_usd"] and m["wait_p95_s"] < oracle["wait_p95_s"]
            assert not both, f"{name}: {policy} beats the oracle on cost and wait"
        if name != "macos-hosts-scrub-4.5h":
            # AND it is below ours on both
            assert oracle["cost_usd"] <= policies["ours"]["cost_usd"], name
            assert oracle["wait_p95_s"] <= policies["ours"]["wait_p95_s"], name
