"""The simulator: exact accounting on hand-checked traces, determinism, and the never-kill-a-busy-machine
invariant of our reconciler under busy lag (with the switch that proves the invariant test can fail)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chalicelib.config import Config, config_from_dict
from chalicelib.store import JobRecord, MachineRecord, MemoryStore
from sim.baselines import Oracle, StaticFleet, WebhookScaler
from sim.bench import assess, best_baseline
from sim.bursty import LAGGY, bursty, reuse_config
from sim.model import SimOptions
from sim.ours import IndexedMemoryStore, Ours
from sim.plot import pareto_front
from sim.simulate import POLICIES, metrics_json, policy_names, simulate
from sim.traces import TraceJob, write_trace
from sim.world import METRIC_KEYS, POOL_METRIC_KEYS, ScalingPolicy, World

#: A world without randomness in its plumbing: instant hooks, none lost, no busy lag, 60 s boots.
EXACT = SimOptions(
    webhook_delay_s=0.0,
    webhook_loss=0.0,
    webhook_duplication=0.0,
    busy_lag_mean_s=0.0,
    sqs_latency_s=0.0,
    boot_s=60.0,
    tail_s=600.0,
)


def make_config(*pools: dict[str, Any], **top: Any) -> Config:
    """A one-pool config (or the given pools) for hand-checked runs: warm pools off unless a test asks for
    one (`"warm_pool": "auto"`), so that every launch is the cold boot the expected figures count."""
    base: dict[str, Any] = {
        "name": "linux",
        "asg": "asg-linux",
        "tags": ["linux"],
        "max_instances": 5,
        "max_use_count": 1,
        "policy": [{"idle_count": 0, "idle_time": "5m"}],
        "warm_pool": "off",
    }
    data: dict[str, Any] = {
        "gitlab": {"url": "https://gitlab.example.com"},
        "prices": {"default_instance": 0.36},
        "pools": [base | p for p in pools] or [base],
    }
    data.update(top)
    return config_from_dict(data, "test")


def job(pipeline: int, created: float, stage: int, duration: float, *tags: str, name: str = "") -> TraceJob:
    return TraceJob(pipeline, created, stage, name or f"job-{pipeline}-{stage}", tags or ("linux",), duration)


def run(policy: ScalingPolicy, trace: list[TraceJob], config: Config, options: SimOptions = EXACT) -> World:
    world = World(config, trace, seed=0, options=options)
    world.run(policy)
    return world


class TestAccounting:
    def test_one_job_one_machine_exact_wait_and_machine_seconds(self) -> None:
        # GIVEN one job pending at 100 s that runs 300 s, machines that boot in 60 s, instant webhooks
        config = make_config()
        # WHEN our scaler runs it
        world = World(config, [job(1, 100.0, 0, 300.0)], seed=0, options=EXACT)
        result = world.run(Ours())
        # THEN the pending webhook stores the job unrouted (its tags are not cached) and asks for them; SQS
        # delivers the ask 2 s later (DelaySeconds), its consumer resolves the pipeline's tags and marks the
        # pool dirty; SQS delivers that 2 s later: one machine launches at 104 s, is ready at 164 s (the job
        # waited 64 s), the job ends at 464 s and the used-up machine terminates itself as run-single exits
        # (its user data), not at the next reconcile
        (machine,) = world.ledger.machines
        assert (machine.launched_at, machine.ready_at, machine.terminated_at) == (104.0, 164.0, 464.0)
        assert world.jobs[0].wait_s == 64.0
        assert result.metrics["wait_max_s"] == 64.0
        assert result.metrics["max_machines"] == 1
        assert result.metrics["idle_fraction"] == round(1 - 300 / 360, 3)
        assert result.metrics["cost_usd"] == round(360 / 3600 * 0.36, 2)
        assert result.metrics["busy_killed"] == 0

    def test_oracle_launches_one_boot_before_pending_and_pays_boot_plus_run(self) -> None:
        world = run(Oracle(), [job(1, 100.0, 0, 300.0), job(2, 1000.0, 0, 50.0)], make_config())
        spans = [(m.launched_at, m.ready_at, m.terminated_at) for m in world.ledger.machines]
        assert spans == [(40.0, 100.0, 400.0), (940.0, 1000.0, 1050.0)]
        assert [j.wait_s for j in world.jobs] == [0.0, 0.0]

    def test_a_stage_becomes_pending_when_every_job_of_the_earlier_stages_finished(self) -> None:
        # GIVEN a pipeline: build (200 s), then two tests (100 s and 50 s), then deploy
        trace = [
            job(1, 100.0, 0, 200.0, name="build"),
            job(1, 100.0, 1, 100.0, name="test 1/2"),
            job(1, 100.0, 1, 50.0, name="test 2/2"),
            job(1, 100.0, 2, 10.0, name="deploy"),
        ]
        world = run(Oracle(), trace, make_config())
        pending = {j.trace.name: j.pending_at for j in world.jobs}
        # THEN the tests wait for the build, the deploy for the slower test
        assert pending == {"build": 100.0, "test 1/2": 300.0, "test 2/2": 300.0, "deploy": 400.0}

    def test_job_tags_must_be_a_subset_of_the_runners_and_untagged_needs_run_untagged(self) -> None:
        config = make_config(
            {"name": "mac", "asg": "asg-mac", "tags": ["macos", "xcode"], "max_instances": 1},
            {"name": "any", "asg": "asg-any", "tags": ["linux"], "run_untagged": True, "max_instances": 1},
        )
        trace = [
            job(1, 0.0, 0, 30.0, "macos"),
            job(2, 0.0, 0, 30.0, "linux", "gpu"),
            TraceJob(3, 0, 0, "u", (), 30),
        ]
        world = run(StaticFleet(), trace, config, EXACT)
        by_pipeline = {j.trace.pipeline_id: j for j in world.jobs}
        assert by_pipeline[1].machine is not None and by_pipeline[1].machine.pool.name == "mac"
        assert by_pipeline[2].status == "pending"  # no runner has the gpu tag: it never runs
        assert by_pipeline[3].machine is not None and by_pipeline[3].machine.pool.name == "any"

    def test_a_machine_takes_max_use_count_jobs_then_leaves(self) -> None:
        config = make_config({"max_instances": 1, "max_use_count": 2})
        trace = [job(p, 100.0 * p, 0, 10.0) for p in range(1, 4)]
        world = run(StaticFleet(), trace, config)
        first, second = world.ledger.machines[:2]
        assert first.jobs_started == 2 and first.terminated_at == 210.0  # its second job ended at 210 s
        assert second.launched_at == 210.0 and second.jobs_started == 1

    def test_a_mac_host_scrubs_after_each_instance_and_bills_its_24h_minimum_but_no_scrub(self) -> None:
        """AWS, "Stop or terminate your Amazon EC2 Mac instance": metering and billing pause while the host
        scrubs (pending state), so the 24 h minimum is billed less the scrubs."""
        hosts = {
            "instance_type": "mac2.metal",
            "host_resource_group": "hrg",
            "max_hosts": 1,
            "scrub_time": "50m",
            "min_allocation": "24h",
            "availability_zones": ["eu-west-1a"],
        }
        config = make_config(
            {"platform": "macos", "tags": ["macos"], "max_instances": 1, "hosts": hosts},
            prices={"hosts": {"mac2.metal": 1.0}},
        )
        trace = [job(1, 0.0, 0, 600.0, "macos"), job(2, 700.0, 0, 60.0, "macos")]
        world = run(StaticFleet(), trace, config, EXACT)
        first, second = world.ledger.machines[:2]
        assert first.terminated_at is not None and second.launched_at >= first.terminated_at + 3000.0
        (host,) = world.hosts.hosts
        end = max(j.finished_at or 0.0 for j in world.jobs)
        assert host.scrubs[0] == (first.terminated_at, first.terminated_at + 3000.0)
        assert host.billed_seconds(end) == 24 * 3600.0 - 3000.0


class TestNeverKillBusy:
    @settings(max_examples=50, deadline=None, derandomize=True)
    @given(seed=st.integers(min_value=0, max_value=10**6))
    def test_our_reconciler_never_terminates_a_machine_running_a_job(self, seed: int) -> None:
        # GIVEN reused machines removed after 1 min idle, hooks that lag assignment by up to 60 s, 5 % lost
        world = World(reuse_config(), bursty(seed), seed=seed, options=LAGGY)
        # WHEN our reconciler scales it
        result = world.run(Ours())
        # THEN no machine ever died with a job on it, and every job ran
        assert result.metrics["busy_killed"] == 0
        assert all(j.status == "success" for j in world.jobs)

    @settings(max_examples=15, deadline=None, derandomize=True)
    @given(seed=st.integers(min_value=0, max_value=10**6))
    def test_a_machine_whose_launch_event_was_lost_is_not_killed_either(self, seed: int) -> None:
        # GIVEN half the launch lifecycle events lost: the reconciler adopts machines without their runner
        options = SimOptions(**{**LAGGY.__dict__, "lifecycle_loss": 0.5})
        result = World(reuse_config(), bursty(seed), seed=seed, options=options).run(Ours())
        # THEN the drain finds the runner in GitLab and re-checks it all the same
        assert result.metrics["busy_killed"] == 0

    @settings(max_examples=15, deadline=None, derandomize=True)
    @given(seed=st.integers(min_value=0, max_value=10**6))
    def test_a_stale_index_never_gets_a_busy_machine_killed(self, seed: int) -> None:
        # GIVEN the store's per-pool reads (DynamoDB's eventually consistent index) 30 s behind its writes
        options = SimOptions(**{**LAGGY.__dict__, "stale_index_s": 30.0})
        result = World(reuse_config(), bursty(seed), seed=seed, options=options).run(Ours())
        # THEN every removal still rests on the drain's own consistent write and GitLab's re-check
        assert result.metrics["busy_killed"] == 0

    def test_without_the_recheck_before_termination_busy_machines_die(self) -> None:
        # GIVEN the same worlds, with the test-only switch that skips the drain's re-check
        unsafe = SimOptions(**{**LAGGY.__dict__, "drain_recheck": False})
        killed = [
            World(reuse_config(), bursty(seed), seed=seed, options=unsafe).run(Ours()).metrics["busy_killed"]
            for seed in range(30)
        ]
        # THEN the invariant test above would fail: machines are killed under jobs
        assert sum(int(k) for k in killed) > 0

    def test_the_webhook_scaler_kills_runners_whose_busy_flag_lags(self) -> None:
        killed = [
            World(reuse_config(), bursty(seed), seed=seed, options=LAGGY)
            .run(WebhookScaler())
            .metrics["busy_killed"]
            for seed in range(30)
        ]
        assert sum(int(k) for k in killed) > 0


class TestHealing:
    def test_the_tick_finds_jobs_whose_webhooks_were_all_lost(self) -> None:
        # GIVEN a GitLab whose hooks never arrive
        lost = SimOptions(**{**EXACT.__dict__, "webhook_loss": 1.0})
        config = make_config(
            gitlab={"url": "https://gitlab.example.com", "projects": [1, 2, 3, 4, 5, 6, 7, 8]}
        )
        world = World(config, [job(1, 100.0, 0, 300.0), job(2, 130.0, 0, 60.0)], seed=0, options=lost)
        result = world.run(Ours())
        # THEN the tick's lost-job scan (every 5 min) finds them, and both run
        assert all(j.status == "success" for j in world.jobs)
        assert result.metrics["wait_max_s"] <= 300 + 60 + 60
        assert result.metrics["busy_killed"] == 0


STATUSES = ("created", "pending", "running", "success", "failed", "skipped")


class TestIndexedStore:
    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        ops=st.lists(
            st.tuples(
                st.sampled_from(("record", "reopen", "settle")),
                st.integers(1, 6),
                st.sampled_from(STATUSES),
                st.sampled_from(("", "linux", "mac")),
            ),
            max_size=40,
        )
    )
    def test_the_indexed_store_answers_pool_jobs_as_memory_store_does(
        self, ops: list[tuple[str, int, str, str]]
    ) -> None:
        # GIVEN the same writes applied to the twin and to the simulator's indexed twin
        plain, indexed = MemoryStore(), IndexedMemoryStore()
        now = datetime(2026, 11, 23, tzinfo=UTC)
        for op, job_id, status, pool in ops:
            record = JobRecord("g", job_id, status, pool=pool)
            for store in (plain, indexed):
                if op == "record":
                    store.record_job(record, now)
                elif op == "reopen":
                    store.reopen_skipped(record, now)
                elif store.get_job("g", job_id) is not None:
                    store.settle_job(store.get_job("g", job_id))  # type: ignore[arg-type]
        # THEN every pool's active jobs are the same set
        for pool in ("", "linux", "mac"):
            assert sorted(j.key for j in indexed.pool_jobs(pool)) == sorted(
                j.key for j in plain.pool_jobs(pool)
            )

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        ops=st.lists(
            st.tuples(
                st.sampled_from(("put", "adopt", "runner", "started", "ready", "retire", "delete")),
                st.integers(1, 6),
                st.sampled_from(("linux", "mac")),
            ),
            max_size=40,
        )
    )
    def test_the_indexed_store_answers_machines_as_memory_store_does(
        self, ops: list[tuple[str, int, str]]
    ) -> None:
        # GIVEN the same machine writes applied to the twin and to the simulator's indexed twin
        plain, indexed = MemoryStore(), IndexedMemoryStore()
        now = datetime(2026, 11, 23, tzinfo=UTC)
        for op, number, pool in ops:
            record = MachineRecord(f"i-{number}", pool, now, runner_id=number)
            for store in (plain, indexed):
                if op == "put":
                    store.put_machine(record)
                elif op == "adopt":
                    store.adopt_machine(record)
                elif op == "runner":
                    store.record_runner(record)
                elif op == "started":
                    store.machine_job_started(record.instance_id, number, now)
                elif op == "ready":
                    store.mark_ready(record.instance_id, now)
                elif op == "retire":
                    store.retire_machine(record, now)
                else:
                    store.delete_machine(record.instance_id)
        # THEN every pool's machines are the same records, in the same order
        for pool in ("linux", "mac"):
            assert indexed.machines(pool) == plain.machines(pool)


class TestDeterminism:
    def test_the_same_seed_gives_the_same_json(self) -> None:
        trace, config = bursty(7), reuse_config()
        first = json.dumps(metrics_json(simulate(trace, config, list(POLICIES), seed=11, options=LAGGY)))
        again = json.dumps(metrics_json(simulate(trace, config, list(POLICIES), seed=11, options=LAGGY)))
        other = json.dumps(metrics_json(simulate(trace, config, ["ours"], seed=12, options=LAGGY)))
        assert first == again
        assert json.loads(other)["ours"] != json.loads(first)["ours"]

    def test_metrics_have_exactly_the_documented_keys(self) -> None:
        results = simulate(bursty(1), reuse_config(), ["ours", "oracle"], seed=0, options=LAGGY)
        assert all(tuple(r.metrics) == METRIC_KEYS for r in results.values())


class TestReport:
    def test_best_baseline_is_the_lowest_wait_p95_and_a_tie_goes_to_the_cheaper(self) -> None:
        policies = {
            "docker-machine": {"wait_p95_s": 50.0, "cost_usd": 9.0},
            "taskscaler": {"wait_p95_s": 10.0, "cost_usd": 8.0},
            "static": {"wait_p95_s": 10.0, "cost_usd": 30.0},
        }
        assert best_baseline(policies) == "taskscaler"

    def test_goal_needs_wait_cost_and_oracle_bounds_and_no_kill(self) -> None:
        metrics = {"wait_p95_s": 10.0, "cost_usd": 8.0, "busy_killed": 0}
        policies = {
            "ours": metrics,
            "taskscaler": {"wait_p95_s": 10.0, "cost_usd": 10.0},
            "static": {"wait_p95_s": 12.0, "cost_usd": 40.0},
            "oracle": {"wait_p95_s": 0.0, "cost_usd": 7.0},
        }
        assert assess(policies)["goal_met"] is True
        assert assess(policies | {"ours": metrics | {"busy_killed": 1}})["goal_met"] is False
        assert assess(policies | {"ours": metrics | {"cost_usd": 8.5}})["goal_met"] is False

    def test_pareto_front_keeps_points_nothing_beats_on_both(self) -> None:
        points = {"a": (1.0, 100.0), "b": (2.0, 50.0), "c": (3.0, 60.0), "d": (4.0, 0.0)}
        assert pareto_front(points) == ["a", "b", "d"]

    def test_unknown_policy_names_are_refused_with_the_choices(self) -> None:
        assert policy_names("all") == list(POLICIES)
        with pytest.raises(ValueError, match="unknown policies: nope; choose from all, ours"):
            policy_names("ours,nope")


class TestCli:
    def test_simulate_prints_tables_and_writes_json_and_chart(self, tmp_path: Path) -> None:
        import typer

        from toolkit.cli.simulate import simulate as command

        app = typer.Typer()
        app.command("simulate")(command)
        app.command("noop")(lambda: None)
        trace = tmp_path / "trace.csv"
        write_trace(trace, bursty(3))
        config = tmp_path / "config.toml"
        config.write_text(
            '[gitlab]\nurl = "https://gitlab.example.com"\n[[pools]]\nname = "linux"\nasg = "a"\n'
            'tags = ["linux"]\nmax_instances = 10\n',
            encoding="utf-8",
        )
        out, chart = tmp_path / "out.json", tmp_path / "out.png"
        args = ["simulate", "--trace", str(trace), "--config", str(config), "--policies", "ours,oracle"]
        result = CliRunner().invoke(app, [*args, "--seed", "4", "--json", str(out), "--plot", str(chart)])
        assert result.exit_code == 0, result.output
        assert "policy: ours" in result.output and "all policies" in result.output
        assert set(json.loads(out.read_text())) == {"ours", "oracle"}
        assert chart.read_bytes()[:4] == b"\x89PNG"

    def test_simulate_json_gives_every_policy_figures_per_pool(self, tmp_path: Path) -> None:
        import typer

        from toolkit.cli.simulate import simulate as command

        app = typer.Typer()
        app.command("simulate")(command)
        app.command("noop")(lambda: None)
        # GIVEN two pools, Linux jobs and Windows jobs, each pool priced differently
        trace = [job(p, 30.0 * p, 0, 120.0, "linux") for p in range(1, 7)]
        trace += [job(p, 30.0 * p, 0, 300.0, "windows") for p in range(7, 10)]
        trace_path = tmp_path / "trace.csv"
        write_trace(trace_path, trace)
        config = tmp_path / "config.toml"
        config.write_text(
            '[gitlab]\nurl = "https://gitlab.example.com"\n[prices]\ndefault_instance = 0.1\n'
            '[prices.instances]\n"m7i.large" = 0.2\n"m6i.xlarge" = 0.5\n'
            '[[pools]]\nname = "linux"\nasg = "a"\ntags = ["linux"]\nmax_instances = 10\n'
            'instance_types = ["m7i.large"]\n'
            '[[pools]]\nname = "win"\nasg = "b"\nplatform = "windows"\ntags = ["windows"]\n'
            'max_instances = 10\ninstance_types = ["m6i.xlarge"]\n',
            encoding="utf-8",
        )
        out = tmp_path / "out.json"
        args = ["simulate", "--trace", str(trace_path), "--config", str(config), "--json", str(out)]
        # WHEN every policy is simulated, in two processes, with --json
        result = CliRunner().invoke(app, [*args, "--policies", "all", "--workers", "2"])
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        # THEN each policy has both pools' figures, and they add up to the policy's own
        assert set(data) == set(POLICIES)
        for name, figures in data.items():
            pools = figures["pools"]
            assert set(pools) == {"linux", "win"}, name
            assert all(tuple(p) == POOL_METRIC_KEYS for p in pools.values()), name
            assert (pools["linux"]["jobs"], pools["win"]["jobs"]) == (6, 3), name
            assert sum(p["cost_usd"] for p in pools.values()) == pytest.approx(figures["cost_usd"], abs=0.02)
            assert sum(p["machine_hours"] for p in pools.values()) == pytest.approx(
                figures["machine_hours"], abs=0.02
            )
            assert max(p["wait_max_s"] for p in pools.values()) == figures["wait_max_s"], name
        # AND a Windows machine (slower boot) makes the Windows jobs wait longer than the Linux ones
        assert data["ours"]["pools"]["win"]["wait_p50_s"] > data["ours"]["pools"]["linux"]["wait_p50_s"]

    def test_simulate_names_a_bad_trace_line(self, tmp_path: Path) -> None:
        import typer

        from toolkit.cli.simulate import simulate as command

        app = typer.Typer()
        app.command("simulate")(command)
        app.command("noop")(lambda: None)
        trace = tmp_path / "bad.csv"
        trace.write_text("pipeline_id,created_s,stage,name,tags,duration_s\n1,zero,0,build,linux,10\n")
        config = tmp_path / "c.toml"
        config.write_text(
            '[gitlab]\nurl = "https://g.example.com"\n[[pools]]\nname = "l"\nasg = "a"\n'
            'tags = ["linux"]\nmax_instances = 1\n'
        )
        result = CliRunner().invoke(app, ["simulate", "--trace", str(trace), "--config", str(config)])
        assert result.exit_code == 1
        assert "line 2" in result.output


class TestInServiceIsNotReady:
    """As on AWS: a machine is InService once its launch hook completes, and its runner polls GitLab only
    after the platform's boot time; the reconciler counts it booting until GitLab says the runner polled."""

    def test_a_machine_is_in_service_before_its_runner_polls(self) -> None:
        from collections import Counter

        from sim.model import SimMachine
        from sim.ours import SimAsg

        config = make_config()
        world = World(config, [], seed=0, options=EXACT)
        machine = SimMachine("i-1", config.pools[0], 1, launched_at=0.0, boot_s=300.0)
        view = SimAsg(world, Counter())._instance(machine)
        assert view.in_service and machine.ready_at is None

    def test_growth_waits_for_the_first_runner_to_poll_not_for_in_service(self) -> None:
        # GIVEN max_growth_rate 1, machines that boot in 300 s, and two jobs pending 10 s apart
        config = make_config({"max_growth_rate": 1})
        options = SimOptions(**{**EXACT.__dict__, "boot_s": 300.0})
        world = World(config, [job(1, 100.0, 0, 30.0), job(2, 110.0, 0, 30.0)], seed=0, options=options)
        world.run(Ours())
        first, second = world.ledger.machines[:2]
        # THEN the second machine launches only once the first one's runner has polled GitLab
        assert first.ready_at is not None and second.launched_at >= first.ready_at
        assert all(j.status == "success" for j in world.jobs)
