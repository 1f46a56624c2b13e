"""What the demo shows and leaves behind: the live per-pool view, the summary (JSON, table), the timeline PNG.

Ground truth comes from the fake GitLab (when each job was queued and started) and the simulated machines
(when each instance lived), never from the scaler's own records, so the numbers check the scaler; they are
scored by `accounting`, the simulator's own rules, so a demo figure and a bench figure mean the same thing.
May import rich, matplotlib (Agg canvas only, no pyplot) and chalicelib; not imported by the Lambda path.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from chalicelib.config import Config
from toolkit.devtools.accounting import job_wait_s, machine_seconds, percentile
from toolkit.devtools.fake_gitlab import TERMINAL, FakeGitLab, FakeJob
from toolkit.devtools.local_app import Invocations
from toolkit.devtools.machines import BusyKill, SimMachine, SimulatedMachines

#: Summary keys a reader (and the test) can rely on.
SUMMARY_KEYS = (
    "ok",
    "interrupted",
    "stopped_at_duration",
    "jobs",
    "wait_seconds",
    "machine_seconds",
    "max_machines",
    "busy_killed",
    "invariants",
    "handlers",
)


def wait_stats(values: Sequence[float]) -> dict[str, float]:
    """Count, p50, p95 and max of waits in seconds (percentiles interpolated, as the simulator's)."""
    return {
        "count": len(values),
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "max": round(max(values, default=0.0), 1),
    }


@dataclass(frozen=True)
class PoolSample:
    desired: int
    live: int
    in_service: int
    pending: int
    running: int


@dataclass(frozen=True)
class Sample:
    t: float  # simulated seconds since the demo started
    pools: Mapping[str, PoolSample]


@dataclass
class Recorder:
    """Jobs of the trace (by GitLab job id and pool) and a timeline of every pool, in simulated time."""

    config: Config
    gitlab: FakeGitLab
    start: datetime
    job_pools: dict[int, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    notes: deque[str] = field(default_factory=lambda: deque(maxlen=4))

    def add_jobs(self, job_ids: Iterable[int], pool: str) -> None:
        for job_id in job_ids:
            self.job_pools[job_id] = pool

    def jobs(self, pool: str | None = None) -> list[FakeJob]:
        """The trace's jobs as GitLab sees them now: the latest attempt of each (a retry replaces a job with a
        new one of the same name), copied so a reader never sees one change mid-way."""
        jobs = list(self.gitlab.jobs.values())
        latest = {(j.pipeline_id, j.name): j for j in sorted(jobs, key=lambda j: j.id) if not j.retried}
        out = []
        for job_id, job_pool in list(self.job_pools.items()):
            if pool is None or job_pool == pool:
                first = self.gitlab.jobs[job_id]
                out.append(replace(latest.get((first.pipeline_id, first.name), first)))
        return out

    def retried(self) -> int:
        """Trace jobs GitLab ran again (a retry after a Spot interruption)."""
        return sum(1 for job_id in self.job_pools if self.gitlab.jobs[job_id].retried)

    def waits(self, now: datetime, pool: str | None = None) -> list[float]:
        """Seconds each trace job waited for a runner, by the simulator's rule (`accounting.job_wait_s`):
        the waits of all its attempts added up, a job still pending counted until `now`, a job never
        pending (a stage that never started) counted as 0 s."""
        tries = self._attempts()
        out: list[float] = []
        for job_id, job_pool in list(self.job_pools.items()):
            if pool is not None and job_pool != pool:
                continue
            first = self.gitlab.jobs[job_id]
            attempts = tries.get((first.pipeline_id, first.name), [first])
            waits = [
                self._seconds(a.started_at) - self._seconds(a.queued_at)
                for a in attempts
                if a.started_at is not None and a.queued_at is not None
            ]
            latest = attempts[-1]
            pending_since = (
                self._seconds(latest.queued_at)
                if latest.status == "pending" and latest.queued_at is not None
                else None
            )
            out.append(job_wait_s(waits, pending_since, self._seconds(now)))
        return out

    def _attempts(self) -> dict[tuple[int, str], list[FakeJob]]:
        """Every attempt of every job, oldest first, by (pipeline, name): a retry is a new job, same name."""
        out: dict[tuple[int, str], list[FakeJob]] = {}
        for job in sorted(list(self.gitlab.jobs.values()), key=lambda j: j.id):
            out.setdefault((job.pipeline_id, job.name), []).append(replace(job))
        return out

    def _seconds(self, at: datetime) -> float:
        return (at - self.start).total_seconds()

    def sample(self, now: datetime, machines: SimulatedMachines) -> Sample:
        pools: dict[str, PoolSample] = {}
        for pool in self.config.pools:
            statuses = Counter(job.status for job in self.jobs(pool.name))
            view = machines.pools[pool.name]
            pools[pool.name] = PoolSample(
                desired=view.desired,
                live=view.live,
                in_service=view.in_service,
                pending=statuses["pending"],
                running=statuses["running"],
            )
        sample = Sample((now - self.start).total_seconds(), pools)
        self.samples.append(sample)
        return sample


# --------------------------------------------------------------------------------------------------
# Summary


@dataclass(frozen=True)
class Invariants:
    """The promises the demo checks; any False makes `runner-scaler demo` exit 1.

    `every_job_ran` is None (not checked) when the run stopped at the `--duration` limit the user set: jobs
    still waiting then are the run's end, not a broken promise; the summary lists them as unfinished.
    """

    no_busy_machine_killed: bool
    every_job_ran: bool | None
    within_max_instances: bool

    @property
    def ok(self) -> bool:
        return self.no_busy_machine_killed and self.every_job_ran is not False and self.within_max_instances


def summarise(
    recorder: Recorder,
    machines: SimulatedMachines,
    invocations: Invocations,
    handler_kinds: Mapping[str, str],
    now: datetime,
    *,
    extra: Mapping[str, Any] | None = None,
    interrupted: bool = False,
    stopped_at_duration: bool = False,
) -> dict[str, Any]:
    """The JSON summary: jobs, waits, machine time, invariants, and how often each handler ran.

    `stopped_at_duration`: the run hit the `--duration` limit with jobs left, so "every job ran" is not
    checked (null) and `jobs.unfinished_ids` names what was left.
    """
    jobs = recorder.jobs()
    never_ran = sorted(j.id for j in jobs if j.started_at is None)
    by_status = Counter(j.status for j in jobs)
    pools = [p.name for p in recorder.config.pools]
    machine_time = pool_machine_seconds(machines.machines.values(), pools, recorder.start, now)
    invariants = Invariants(
        no_busy_machine_killed=not machines.busy_kills,
        every_job_ran=None if stopped_at_duration and never_ran else not never_ran,
        within_max_instances=not machines.over_capacity,
    )
    summary: dict[str, Any] = {
        "ok": invariants.ok and not interrupted,
        "interrupted": interrupted,
        "stopped_at_duration": stopped_at_duration,
        "simulated_seconds": round((now - recorder.start).total_seconds(), 1),
        "jobs": {
            "total": len(jobs),
            "succeeded": by_status["success"],
            "failed": by_status["failed"],
            "skipped": by_status["skipped"],  # a later stage of a failed pipeline
            "canceled": by_status["canceled"],
            "unfinished": len(jobs) - sum(by_status[s] for s in ("success", "failed", "skipped", "canceled")),
            "never_ran": never_ran,
            "unfinished_ids": sorted(j.id for j in jobs if j.status not in TERMINAL),
            "by_pool": {pool: _pool_jobs(recorder.jobs(pool)) for pool in pools},
        },
        "wait_seconds": {
            **wait_stats(recorder.waits(now)),
            "by_pool": {pool: wait_stats(recorder.waits(now, pool)) for pool in pools},
        },
        "machine_seconds": {
            "total": round(sum(machine_time.values()), 1),
            "by_pool": {pool: round(seconds, 1) for pool, seconds in machine_time.items()},
        },
        "max_machines": {
            "total": max((sum(s.pools[p].live for p in pools) for s in recorder.samples), default=0),
            "by_pool": {pool: machines.max_live[pool] for pool in pools},
        },
        "machines_launched": {
            pool: sum(1 for m in machines.machines.values() if m.pool == pool) for pool in pools
        },
        "busy_killed": [_kill(k, recorder.start) for k in machines.busy_kills],
        "over_capacity": list(machines.over_capacity),
        "invariants": {
            "no_busy_machine_killed": invariants.no_busy_machine_killed,
            "every_job_ran": invariants.every_job_ran,
            "within_max_instances": invariants.within_max_instances,
        },
        "handlers": {
            name: {
                "kind": kind,
                "invocations": invocations.calls[name],
                "failures": invocations.failures[name],
                "failures_during_drill": invocations.during_incident[name],
                **({"last_error": invocations.last_error[name]} if name in invocations.last_error else {}),
            }
            for name, kind in sorted(handler_kinds.items())
        },
    }
    summary.update(extra or {})
    return summary


def pool_machine_seconds(
    machines: Iterable[SimMachine], pools: Sequence[str], start: datetime, now: datetime
) -> dict[str, float]:
    """Billed seconds per pool by the simulator's rule (`accounting.machine_seconds`), live ones to `now`."""
    out = dict.fromkeys(pools, 0.0)
    for machine in list(machines):
        stopped = None if machine.gone_at is None else (machine.gone_at - start).total_seconds()
        out[machine.pool] += machine_seconds(
            (machine.appeared_at - start).total_seconds(), stopped, (now - start).total_seconds()
        )
    return out


def _pool_jobs(jobs: Sequence[FakeJob]) -> dict[str, int]:
    statuses = Counter(j.status for j in jobs)
    return {"total": len(jobs), "succeeded": statuses["success"], "failed": statuses["failed"]}


def _kill(kill: BusyKill, start: datetime) -> dict[str, Any]:
    return {
        "instance_id": kill.instance_id,
        "pool": kill.pool,
        "jobs": list(kill.job_ids),
        "at_seconds": round((kill.at - start).total_seconds(), 1),
    }


# --------------------------------------------------------------------------------------------------
# Rendering


def clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def live_view(
    recorder: Recorder,
    machines: SimulatedMachines,
    invocations: Invocations,
    now: datetime,
    *,
    speed: float,
    status_lines: Sequence[str] = (),
) -> RenderableType:
    """One frame: a row per pool, then the platform's counters and the latest warnings."""
    table = Table(
        title=f"runner-scaler demo · simulated {clock_text((now - recorder.start).total_seconds())}"
        f" at ×{speed:g}",
        title_justify="left",
    )
    for column in (
        "pool",
        "pending",
        "running",
        "desired",
        "in service",
        "booting",
        "idle",
        "busy",
        "used up",
        "jobs done",
        "wait p95",
    ):
        table.add_column(column, justify="left" if column == "pool" else "right")
    for pool in recorder.config.pools:
        jobs = recorder.jobs(pool.name)
        statuses = Counter(j.status for j in jobs)
        view = machines.pools[pool.name]
        done = statuses["success"] + statuses["failed"]
        table.add_row(
            pool.name,
            str(statuses["pending"]),
            str(statuses["running"]),
            str(view.desired),
            str(view.in_service),
            str(view.states["booting"]),
            str(view.states["idle"]),
            str(view.states["busy"]),
            str(view.states["used_up"]),
            f"{done}/{len(jobs)}",
            f"{percentile(recorder.waits(now, pool.name), 95):.0f}s",
        )
    counts = " · ".join(f"{name} {count}" for name, count in sorted(invocations.counts().items()))
    lines: list[RenderableType] = [table, Text(f"handler invocations: {counts or '-'}", style="dim")]
    lines.extend(Text(line, style="dim") for line in status_lines)
    if machines.busy_kills:
        lines.append(Text(f"BUSY MACHINES KILLED: {len(machines.busy_kills)}", style="bold red"))
    lines.extend(Text(note, style="yellow") for note in recorder.notes)
    return Group(*lines)


def summary_table(summary: Mapping[str, Any]) -> RenderableType:
    """The end-of-run table: per pool jobs, waits, machine time; then the invariants and handlers."""
    table = Table(title="demo summary (simulated time)", title_justify="left")
    for column in (
        "pool",
        "jobs ok/total",
        "wait p50",
        "wait p95",
        "wait max",
        "machine-min",
        "max machines",
        "launched",
    ):
        table.add_column(column, justify="left" if column == "pool" else "right")
    jobs, waits = summary["jobs"]["by_pool"], summary["wait_seconds"]["by_pool"]
    for pool in jobs:
        table.add_row(
            pool,
            f"{jobs[pool]['succeeded']}/{jobs[pool]['total']}",
            f"{waits[pool]['p50']:.0f}s",
            f"{waits[pool]['p95']:.0f}s",
            f"{waits[pool]['max']:.0f}s",
            f"{summary['machine_seconds']['by_pool'][pool] / 60:.1f}",
            str(summary["max_machines"]["by_pool"][pool]),
            str(summary["machines_launched"][pool]),
        )
    total_waits = summary["wait_seconds"]
    table.add_row(
        "all",
        f"{summary['jobs']['succeeded']}/{summary['jobs']['total']}",
        f"{total_waits['p50']:.0f}s",
        f"{total_waits['p95']:.0f}s",
        f"{total_waits['max']:.0f}s",
        f"{summary['machine_seconds']['total'] / 60:.1f}",
        str(summary["max_machines"]["total"]),
        str(sum(summary["machines_launched"].values())),
        style="bold",
    )
    checks = Text()
    for name, held in summary["invariants"].items():
        if held is None:
            unfinished = summary["jobs"]["unfinished"]
            checks.append(
                f"- {name.replace('_', ' ')}: not checked, stopped at the --duration limit "
                f"with {unfinished} jobs unfinished\n",
                style="yellow",
            )
            continue
        checks.append(
            f"{'✓' if held else '✗'} {name.replace('_', ' ')}\n", style="green" if held else "bold red"
        )
    handlers = Text("handlers: ")
    for name, info in summary["handlers"].items():
        unexpected = info["failures"] - info.get("failures_during_drill", 0)
        style = "red" if info["invocations"] == 0 or unexpected else "green"
        failures = ""
        if info["failures"]:
            failures = f", {info['failures']} failed" + (" (the drill)" if not unexpected else "")
        handlers.append(f"{name} ({info['kind']}) ×{info['invocations']}{failures}  ", style=style)
    return Group(table, checks, handlers)


@dataclass(frozen=True)
class Marker:
    """Something to mark on the timeline: a span (a drill) or, with no end, an instant (a rotation)."""

    label: str
    start_s: float
    end_s: float | None = None


def write_timeline(
    samples: Sequence[Sample], pools: Sequence[str], path: Path, title: str, markers: Sequence[Marker] = ()
) -> None:
    """A PNG with one panel per pool: jobs as stacked areas (running, pending on top) under the machines
    (desired and live) they need, so a gap between the two is a wait or an idle cost at a glance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 2.8 * max(1, len(pools))), layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(len(pools), 1, squeeze=False, sharex=True)[:, 0]
    minutes = [s.t / 60.0 for s in samples]
    for ax, pool in zip(axes, pools, strict=True):
        running = [s.pools[pool].running for s in samples]
        pending = [s.pools[pool].pending for s in samples]
        ax.stackplot(
            minutes,
            running,
            pending,
            labels=["running jobs", "pending jobs"],
            colors=["#8fbf8f", "#f2b36b"],
            step="post",
            alpha=0.8,
        )
        ax.step(
            minutes,
            [s.pools[pool].live for s in samples],
            where="post",
            color="#1f5fbf",
            linewidth=1.6,
            label="machines",
        )
        ax.step(
            minutes,
            [s.pools[pool].desired for s in samples],
            where="post",
            color="black",
            linestyle="--",
            linewidth=1.2,
            label="desired",
        )
        for marker in markers:
            if marker.end_s is None:
                ax.axvline(marker.start_s / 60.0, color="#7f3fbf", linewidth=1, linestyle=":")
            else:
                ax.axvspan(marker.start_s / 60.0, marker.end_s / 60.0, color="#d62728", alpha=0.08)
        ax.set_title(pool, loc="left")
        ax.set_ylabel("count")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for marker in markers:
        top = axes[0].get_ylim()[1]
        axes[0].annotate(
            marker.label,
            (marker.start_s / 60.0, top),
            fontsize="x-small",
            color="#555555",
            xytext=(2, -10),
            textcoords="offset points",
        )
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small")
    axes[-1].set_xlabel("simulated minutes")
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))


def write_timeline_csv(samples: Sequence[Sample], pools: Sequence[str], path: Path) -> None:
    """The timeline's numbers, one row per sample and pool, for a spreadsheet or another plot."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "pool", "desired", "machines", "in_service", "pending", "running"])
        for sample in samples:
            for pool in pools:
                p = sample.pools[pool]
                writer.writerow(
                    [round(sample.t, 1), pool, p.desired, p.live, p.in_service, p.pending, p.running]
                )
