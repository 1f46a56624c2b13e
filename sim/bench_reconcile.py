"""Benchmark of the one-minute reconcile tick at fleet scale (100 pools x 1,000 machines): CPU and AWS calls.

The REAL `AsgFleet` and `DynamoStore` run through the real `AwsClients` and real botocore clients; no moto
and no network. `FakeAws` answers each request in process from a `before-call` hook registered on those
clients, the same short-circuit `AwsClients`' fault injector uses. So the AWS calls per tick are the
adapters' own counts (`AwsClients.calls`, by operation), and the CPU per tick includes what a Lambda spends
in botocore per call (parameter validation, serialisation, endpoint resolution) and in our code
(deserialising DynamoDB items, the engine, the executor). Left out: request signing, the network, and
botocore's parsing of response bodies. The fake's own CPU is timed inside its hook and subtracted
(`scaler_cpu_ms`); `cpu_ms` keeps it in.

Each minute is measured twice: inline (the tick reconciles every pool, `reconcile_all`) and fanned out (the
tick's invocation queues one message per pool through `DirtyQueue`, then one invocation per pool runs
`reconcile_pool`, as `pool_dirty` does above `tick_inline_pools`). Fanned out, the figure that must stay
small is the largest single invocation; the minute's sum is the fleet's CPU bill.

Ratios are against a small baseline (1 pool x 10 machines) measured in the same run; results go to
`bench/reconcile.json`. Run: `python -m sim.bench_reconcile [--repetitions N] [--quick]`. Imports chalicelib's
adapters and use case, botocore/boto3 for the clients, and the in-process fake AWS (`sim.fake_aws`).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

import boto3

from chalicelib.aws import AwsClients
from chalicelib.config import Config, GitLabConfig, Policy, Pool, ScalerConfig
from chalicelib.fleet import AsgFleet
from chalicelib.queue import DirtyQueue
from chalicelib.reconcile import Reconciler, ReconcileResult
from chalicelib.store import DynamoStore, JobRecord, MachineRecord
from sim.fake_aws import T0, DirectAws, FakeAws, FakeState

OUT = Path(__file__).resolve().parents[1] / "bench" / "reconcile.json"
TABLE = "runner-scaler-bench"
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/000000000000/runner-scaler-bench-dirty.fifo"
GITLAB = "gitlab.example.com"
MAX_USE_COUNT = 10
_READS = frozenset({"dynamodb.Query", "dynamodb.GetItem"})
_WRITES = frozenset({"dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.DeleteItem"})
#: Per pool and tick: the lease's two conditional UpdateItems (taken with the pool's faults, given back).
_LEASE_OPS = 2

#: A realistic pool, as fractions of its machines (the rest are busy). What each costs the tick that first
#: sees it: "starting"/"finished" credit a job to their machine, "ready_now" is marked ready, "unprotected"
#: is protected, "orphan" (launch event lost) is adopted, "vanished" (record without instance) is forgotten;
#: "idle_old", "used_up", "stuck" and "draining" are removal candidates, "busy" must never be one.
MIX: tuple[tuple[str, float], ...] = (
    ("starting", 0.03),
    ("finished", 0.03),
    ("idle", 0.15),
    ("idle_old", 0.08),
    ("used_up", 0.04),
    ("booting", 0.08),
    ("ready_now", 0.02),
    ("stuck", 0.01),
    ("draining", 0.01),
    ("unprotected", 0.01),
    ("orphan", 0.01),
    ("vanished", 0.01),
)
#: Pending jobs per pool as a fraction of its machines: even pools are bursting (they scale up), odd pools
#: are quiet (their idle machines past idle_time go).
PENDING_BURST = 0.5
PENDING_QUIET = 0.02


@dataclass(frozen=True)
class Shape:
    """One benchmark size: `pools` pools of `machines` machines each, in the MIX of states."""

    name: str
    pools: int
    machines: int


@dataclass
class Seeded:
    """What was seeded, for the checks: the machines that hold a job, and per pool the removal candidates."""

    config: Config
    busy: set[str] = field(default_factory=set)
    must_go: set[str] = field(default_factory=set)  # used up, stuck, or already draining
    idle_old: dict[str, set[str]] = field(default_factory=dict)  # pool -> idle past idle_time
    bursting: set[str] = field(default_factory=set)  # pools with more pending jobs than free slots


def bench_config(shape: Shape) -> Config:
    """Pools with Spot-style instance types (so the fallback's fault read runs too) and an idle target."""
    pools = tuple(
        Pool(
            name=f"pool-{i:03d}",
            asg=f"asg-{i:03d}",
            tags=("bench", f"pool-{i:03d}"),
            max_instances=shape.machines * 3 // 2 + 10,
            max_use_count=MAX_USE_COUNT,
            instance_types=("m7i.large", "m6i.large"),
            spot=True,
            policy=(Policy(idle_count=max(1, shape.machines // 50), idle_time=timedelta(minutes=10)),),
        )
        for i in range(shape.pools)
    )
    # The heaviest minute: every removal paused, re-checked and terminated in one tick (drain_window 0). With
    # the default window (chalicelib.config.DRAIN_WINDOW) the pause and the re-check fall in two ticks, each
    # lighter than this one; and a fixed-instant bench never sees a window pass.
    scaler = ScalerConfig(drain_window=timedelta(0))
    return Config(gitlab=GitLabConfig(url=f"https://{GITLAB}"), scaler=scaler, pools=pools)


def layout(machines: int) -> list[str]:
    """The state of each machine of a pool: MIX's fractions, rounded, at least one busy machine."""
    kinds: list[str] = []
    for kind, fraction in MIX:
        kinds += [kind] * round(machines * fraction)
    return kinds[: max(0, machines - 1)] + ["busy"] * max(1, machines - len(kinds))


def seed(fake: FakeAws, shape: Shape) -> Seeded:
    """Fill the fake AWS with `shape`'s fleet: groups and instances directly, records through DynamoStore."""
    config = bench_config(shape)
    seeded = Seeded(config)
    store = DynamoStore(cast(AwsClients, DirectAws(fake)), TABLE)
    jobs = iter(range(1, 10**9))
    for index, pool in enumerate(config.pools):
        kinds = layout(shape.machines)
        fake.add_group(pool.asg, sum(k != "vanished" for k in kinds), pool.max_instances)
        seeded.idle_old[pool.name] = set()
        for number, kind in enumerate(kinds):
            instance_id = f"i-{index:04x}{number:013x}"
            _seed_machine(fake, store, seeded, pool, instance_id, kind, jobs)
        pending = PENDING_BURST if index % 2 == 0 else PENDING_QUIET
        if index % 2 == 0:
            seeded.bursting.add(pool.name)
        for _ in range(round(shape.machines * pending)):
            store.record_job(_job(pool, next(jobs), "pending"), T0)
    return seeded


def _seed_machine(
    fake: FakeAws,
    store: DynamoStore,
    seeded: Seeded,
    pool: Pool,
    instance_id: str,
    kind: str,
    jobs: Iterator[int],
) -> None:
    minutes = {"stuck": 30, "booting": 2, "orphan": 3, "ready_now": 4}.get(kind, 90)
    launched = T0 - timedelta(minutes=minutes)
    if kind != "vanished":
        state = "Pending" if kind in {"booting", "stuck", "orphan"} else "InService"
        fake.add_instance(pool.asg, instance_id, state, launched, protected=kind != "unprotected")
    if kind == "orphan":
        return
    record = MachineRecord(instance_id, pool.name, launched, runner_id=_runner_id(instance_id))
    if kind not in {"booting", "stuck", "ready_now"}:
        record = _with(record, ready_at=T0 - timedelta(minutes=80), last_busy_at=T0 - timedelta(minutes=3))
    if kind in {"busy", "finished", "starting"}:
        record = _seed_job(store, seeded, pool, record, kind, next(jobs))
    elif kind == "idle_old":
        record = _with(record, last_busy_at=T0 - timedelta(minutes=40))
        seeded.idle_old[pool.name].add(instance_id)
    elif kind == "used_up":
        record = _with(record, job_ids=frozenset(next(jobs) for _ in range(MAX_USE_COUNT)))
    elif kind == "draining":
        record = _with(record, draining_since=T0 - timedelta(minutes=1), drain_reason="idle")
    if kind in {"used_up", "stuck", "draining"}:
        seeded.must_go.add(instance_id)
    store.put_machine(record)


def _seed_job(
    store: DynamoStore, seeded: Seeded, pool: Pool, record: MachineRecord, kind: str, job: int
) -> MachineRecord:
    """A job on the machine: running and credited (busy), running and not yet credited (starting), or
    finished and not yet credited (finished)."""
    status = "success" if kind == "finished" else "running"
    store.record_job(_job(pool, job, status, record.instance_id), T0)
    if kind != "finished":
        seeded.busy.add(record.instance_id)
    if kind == "starting":
        return record
    return _with(record, job_ids=frozenset({job}), running=frozenset({job}))


def _with(record: MachineRecord, **changes: Any) -> MachineRecord:
    return replace(record, **changes)


def _runner_id(instance_id: str) -> int:
    """A stable runner id per machine (the hex of its instance id), the same in every run."""
    return int(instance_id.removeprefix("i-"), 16) % 10**9


def _job(pool: Pool, job_id: int, status: str, machine: str = "") -> JobRecord:
    done = status == "success"
    return JobRecord(
        gitlab=GITLAB,
        job_id=job_id,
        status=status,
        project_id=1 + job_id % 97,
        pipeline_id=job_id // 5,
        pool=pool.name,
        tags=pool.tags,
        runner_id=_runner_id(machine) if machine else None,
        machine_id=machine,
        created_at=T0 - timedelta(minutes=5),
        started_at=T0 - timedelta(minutes=4) if machine else None,
        finished_at=T0 - timedelta(minutes=1) if done else None,
    )


# -- the GitLab side: the drain's re-check, counted -------------------------------------------------------


class CountingRunners:
    """`RunnerControl` that counts calls per method; GitLab reports no running job on a paused runner."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.paused: set[int] = set()

    def pause_runner(self, runner_id: int, paused: bool = True) -> None:
        self.calls["gitlab.pause_runner"] += 1
        (self.paused.add if paused else self.paused.discard)(runner_id)

    def runner_jobs(self, runner_id: int, status: str = "running") -> Sequence[Any]:
        self.calls["gitlab.runner_jobs"] += 1
        return []

    def list_runners(self, description_prefix: str, **scope: Any) -> Sequence[Any]:
        self.calls["gitlab.list_runners"] += 1
        return []


# -- measuring --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One shape's world: the fake AWS, the real adapters on real botocore clients, and the reconciler."""

    shape: Shape
    fake: FakeAws
    aws: AwsClients
    runners: CountingRunners
    reconciler: Reconciler
    queue: DirtyQueue
    seeded: Seeded

    @classmethod
    def build(cls, shape: Shape) -> Bench:
        fake = FakeAws()
        seeded = seed(fake, shape)
        session = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name="eu-west-1"
        )
        aws = AwsClients(session, sleep=lambda _: None)
        fake.install(aws)
        runners = CountingRunners()
        reconciler = Reconciler(seeded.config, DynamoStore(aws, TABLE), AsgFleet(aws), runners, owner="bench")
        return cls(shape, fake, aws, runners, reconciler, DirtyQueue(aws, QUEUE_URL), seeded)

    def tick(self) -> Tick:
        """One `reconcile_all` at T0 (the inline tick), with its CPU, its calls and what it decided."""
        return self._invocation(lambda: self.reconciler.reconcile_all(T0))

    def fan_out(self) -> FanOut:
        """The fanned-out minute at T0: the tick's invocation queues every pool (what `run_tick` does above
        `tick_inline_pools`), then one `pool_dirty` invocation per queued pool reconciles it alone."""
        queued = len(self.fake.state.queued)
        pools = [p.name for p in self.seeded.config.pools]
        tick = self._invocation(
            lambda: _no_results(self.queue.mark_dirty_batch(dict.fromkeys(pools, "tick"), T0))
        )
        by_name = {p.name: p for p in self.seeded.config.pools}
        invocations = [
            self._invocation(partial(self._reconcile_one, by_name[name]))
            for name in self.fake.state.queued[queued:]
        ]
        return FanOut(tick, invocations)

    def _reconcile_one(self, pool: Pool) -> list[ReconcileResult]:
        return [self.reconciler.reconcile_pool(pool, T0)]

    def _invocation(self, work: Callable[[], list[ReconcileResult]]) -> Tick:
        self.aws.calls.clear()
        self.runners.calls.clear()
        self.fake.cpu_s = 0.0
        self.fake.items_read = 0
        launched, terminated = len(self.fake.state.launched), len(self.fake.state.terminated)
        started = time.process_time()
        results = work()
        cpu_s = time.process_time() - started
        return Tick(
            cpu_s=cpu_s,
            fake_cpu_s=self.fake.cpu_s,
            aws_calls=Counter(self.aws.calls),
            gitlab_calls=Counter(self.runners.calls),
            items_read=self.fake.items_read,
            results=results,
            launched=self.fake.state.launched[launched:],
            terminated=self.fake.state.terminated[terminated:],
        )


def _no_results(unqueued: Mapping[str, str]) -> list[ReconcileResult]:
    """The tick's own invocation reconciles nothing; a pool the fake queue refused would be a bench bug."""
    if unqueued:
        raise RuntimeError(f"the fake queue refused {sorted(unqueued)}")
    return []


@dataclass
class Tick:
    """One invocation: its CPU, its AWS and GitLab calls, what it decided."""

    cpu_s: float
    fake_cpu_s: float
    aws_calls: Counter[str]
    gitlab_calls: Counter[str]
    items_read: int
    results: list[ReconcileResult]
    launched: list[str]
    terminated: list[str]

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.aws_calls.items() if op in _WRITES)

    @property
    def errors(self) -> list[str]:
        return [e for r in self.results for e in r.errors]

    @property
    def scaler_cpu_ms(self) -> float:
        return (self.cpu_s - self.fake_cpu_s) * 1000


@dataclass
class FanOut:
    """One fanned-out minute: the tick's invocation and one invocation per pool."""

    tick: Tick
    pools: list[Tick]

    def merged(self) -> Tick:
        """The whole minute as one `Tick` (CPU and calls summed), for the decision checks."""
        every = [self.tick, *self.pools]
        return Tick(
            cpu_s=sum(t.cpu_s for t in every),
            fake_cpu_s=sum(t.fake_cpu_s for t in every),
            aws_calls=sum((t.aws_calls for t in every), Counter()),
            gitlab_calls=sum((t.gitlab_calls for t in every), Counter()),
            items_read=sum(t.items_read for t in every),
            results=[r for t in every for r in t.results],
            launched=[i for t in every for i in t.launched],
            terminated=[i for t in every for i in t.terminated],
        )


def measure(shape: Shape, repetitions: int) -> dict[str, Any]:
    """The scale-event minute (the seeded fleet's first) and the steady minute (the converged fleet's), each
    run `repetitions` times from the same state, inline and fanned out; CPU is the median of the runs,
    calls are the same every run."""
    bench = Bench.build(shape)
    seeded_state = bench.fake.state.copy()
    # The fake's tables are not in a Lambda's heap: kept out of the collector, so GC pauses scale with what
    # the tick itself holds, as they would there.
    gc.collect()
    gc.freeze()
    try:
        return _measure(bench, seeded_state, repetitions)
    finally:
        gc.unfreeze()


def _measure(bench: Bench, seeded_state: FakeState, repetitions: int) -> dict[str, Any]:
    shape = bench.shape
    # Warm-up, not measured: botocore builds its operation models on first use. One pool calls them all
    # (pool 0 has an instance without a record, so DescribeInstances too), one message the queue's.
    bench.reconciler.reconcile_pool(bench.seeded.config.pools[0], T0)
    bench.queue.mark_dirty_batch({"warm-up": "tick"}, T0)
    scale: list[Tick] = []
    scale_fan: list[FanOut] = []
    for _ in range(repetitions):
        bench.fake.state = seeded_state.copy()
        scale.append(bench.tick())
        bench.fake.state = seeded_state.copy()
        scale_fan.append(bench.fan_out())
    rounds = 0
    while bench.tick().writes > _LEASE_OPS * shape.pools:  # converge: adopt the launched, forget the gone
        rounds += 1
        if rounds > 5:
            raise RuntimeError(f"{shape.name}: the fleet did not settle within 5 ticks")
    steady = [bench.tick() for _ in range(repetitions)]
    steady_fan = [bench.fan_out() for _ in range(repetitions)]
    return {
        "pools": shape.pools,
        "machines_per_pool": shape.machines,
        "machines": shape.pools * shape.machines,
        "scale_event": summarize(scale, bench.seeded),
        "steady": summarize(steady, bench.seeded),
        "fan_out": {
            "scale_event": summarize_fan_out(scale_fan, bench.seeded),
            "steady": summarize_fan_out(steady_fan, bench.seeded),
        },
    }


def summarize(ticks: Sequence[Tick], seeded: Seeded) -> dict[str, Any]:
    last = ticks[-1]
    cpu = [t.cpu_s * 1000 for t in ticks]
    calls = dict(sorted(last.aws_calls.items()))
    return {
        "cpu_ms": round(statistics.median(cpu), 2),
        "scaler_cpu_ms": round(statistics.median(t.scaler_cpu_ms for t in ticks), 2),
        "fake_cpu_ms": round(statistics.median(t.fake_cpu_s * 1000 for t in ticks), 2),
        "cpu_ms_runs": [round(c, 2) for c in cpu],
        "aws_calls": sum(calls.values()),
        "aws_calls_by_operation": calls,
        "gitlab_calls_by_operation": dict(sorted(last.gitlab_calls.items())),
        "store": {
            "reads": sum(n for op, n in calls.items() if op in _READS),
            "items_read": last.items_read,
            "writes": last.writes,
            "writes_beyond_leases": last.writes - _LEASE_OPS * len(last.results),
        },
        "decisions": {
            "launched": len(last.launched),
            "terminated": len(last.terminated),
            "busy_terminated": len(set(last.terminated) & seeded.busy),
            "drain_cancelled": sum(len(r.drain_cancelled) for r in last.results),
            "desired_after": sum(r.desired_after for r in last.results),
            "errors": len(last.errors),
        },
    }


#: pool_dirty's batch size (app.py): Lambda may hand one invocation up to this many pools' messages.
DIRTY_BATCH = 10


def summarize_fan_out(minutes: Sequence[FanOut], seeded: Seeded) -> dict[str, Any]:
    """The tick's invocation, the per-pool invocations (median and max over pools, each pool's CPU the
    median of the runs), the worst batch of `DIRTY_BATCH` pools, and the whole minute's CPU."""
    last = minutes[-1]
    per_pool = [statistics.median(m.pools[i].scaler_cpu_ms for m in minutes) for i in range(len(last.pools))]
    pool_calls = [sum(t.aws_calls.values()) for t in last.pools]
    calls = sum((t.aws_calls for t in last.pools), Counter())
    heaviest = max(range(len(per_pool)), key=per_pool.__getitem__)
    return {
        "tick": {
            "scaler_cpu_ms": round(statistics.median(m.tick.scaler_cpu_ms for m in minutes), 2),
            "aws_calls": sum(last.tick.aws_calls.values()),
            "aws_calls_by_operation": dict(sorted(last.tick.aws_calls.items())),
        },
        "pool_invocations": len(last.pools),
        "pool": {
            "scaler_cpu_ms_median": round(statistics.median(per_pool), 2),
            "scaler_cpu_ms_max": round(max(per_pool), 2),
            "aws_calls_median": statistics.median(pool_calls),
            "aws_calls_max": max(pool_calls),
            "heaviest_aws_calls_by_operation": dict(sorted(last.pools[heaviest].aws_calls.items())),
            "aws_calls_by_operation_all_pools": dict(sorted(calls.items())),
        },
        "worst_batch_of_10_cpu_ms": round(sum(sorted(per_pool, reverse=True)[:DIRTY_BATCH]), 2),
        "minute_scaler_cpu_ms": round(
            statistics.median(m.tick.scaler_cpu_ms for m in minutes) + sum(per_pool), 2
        ),
        "decisions": summarize([m.merged() for m in minutes], seeded)["decisions"],
    }


def ratios(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Each minute's figures over the baseline's inline tick: CPU, AWS calls, and the size ratios to read
    them against. Fanned out, the largest invocation (tick or pool) is what must stay under a second."""
    out: dict[str, Any] = {
        "pools": result["pools"] / baseline["pools"],
        "machines": result["machines"] / baseline["machines"],
    }
    for tick in ("scale_event", "steady"):
        ours, base, fan = result[tick], baseline[tick], result["fan_out"][tick]
        base_cpu, base_calls = max(base["scaler_cpu_ms"], 1e-3), max(base["aws_calls"], 1)
        largest = max(fan["tick"]["scaler_cpu_ms"], fan["pool"]["scaler_cpu_ms_max"])
        out[tick] = {
            "cpu": round(ours["scaler_cpu_ms"] / base_cpu, 1),
            "aws_calls": round(ours["aws_calls"] / base_calls, 1),
            "fan_out_largest_invocation_cpu": round(largest / base_cpu, 1),
            "fan_out_pool_invocation_aws_calls_max": round(fan["pool"]["aws_calls_max"] / base_calls, 1),
            "fan_out_minute_cpu": round(fan["minute_scaler_cpu_ms"] / base_cpu, 1),
        }
    return out


SHAPES = (
    Shape("baseline", 1, 10),
    Shape("10x1000", 10, 1000),
    Shape("100x100", 100, 100),
    Shape("100x1000", 100, 1000),
)
QUICK = (Shape("baseline", 1, 10), Shape("4x50", 4, 50))


def run(shapes: Sequence[Shape], repetitions: int, out: Path | None = OUT) -> dict[str, Any]:
    """Measure every shape (the first is the baseline) and write the report to `out` when given."""
    logging.getLogger("chalicelib").addHandler(logging.NullHandler())
    measured = {shape.name: measure(shape, repetitions) for shape in shapes}
    first = shapes[0].name
    baseline = measured[first]
    report = {
        "tick": (
            "inline: Reconciler.reconcile_all at one instant, every pool in one invocation (heal excluded); "
            "fan_out: the tick's invocation queues one message per pool (DirtyQueue.mark_dirty_batch), then "
            "one invocation per pool runs Reconciler.reconcile_pool (what pool_dirty calls)"
        ),
        "method": (
            "real AsgFleet + DynamoStore + DirtyQueue on real botocore clients, answered in process by a "
            "before-call hook (no moto, no network); scaler_cpu_ms = process CPU minus the fake's own; "
            "median of repetitions"
        ),
        "repetitions": repetitions,
        "mix": dict(MIX),
        "shapes": measured,
        "ratios_to_baseline": {name: ratios(r, baseline) for name, r in measured.items() if name != first},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def table(report: Mapping[str, Any]) -> str:
    """The figures as a plain table, one row per shape, minute and invocation kind."""
    columns = ("shape", "minute", "invocation", "cpu ms", "AWS calls", "by operation")
    header = "{:<10} {:<12} {:<16} {:>9} {:>9}  {}".format(*columns)
    lines = [header, "-" * len(header)]

    def row(name: str, minute: str, kind: str, cpu: float, calls: object, ops: Mapping[str, int]) -> None:
        by_op = ", ".join(f"{op.split('.')[1]} {n}" for op, n in ops.items())
        lines.append(f"{name:<10} {minute:<12} {kind:<16} {cpu:>9.1f} {calls!s:>9}  {by_op}")

    for name, result in report["shapes"].items():
        for minute in ("scale_event", "steady"):
            inline, fan = result[minute], result["fan_out"][minute]
            row(
                name,
                minute,
                "inline tick",
                inline["scaler_cpu_ms"],
                inline["aws_calls"],
                inline["aws_calls_by_operation"],
            )
            row(
                name,
                minute,
                "fan-out tick",
                fan["tick"]["scaler_cpu_ms"],
                fan["tick"]["aws_calls"],
                fan["tick"]["aws_calls_by_operation"],
            )
            pool = fan["pool"]
            row(name, minute, "pool (median)", pool["scaler_cpu_ms_median"], pool["aws_calls_median"], {})
            row(
                name,
                minute,
                "pool (max)",
                pool["scaler_cpu_ms_max"],
                pool["aws_calls_max"],
                pool["heaviest_aws_calls_by_operation"],
            )
            row(name, minute, "minute (sum)", fan["minute_scaler_cpu_ms"], "", {})
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small shapes only, results not written")
    args = parser.parse_args(argv)
    report = run(QUICK if args.quick else SHAPES, args.repetitions, None if args.quick else OUT)
    print(table(report))
    return report


if __name__ == "__main__":
    main()
