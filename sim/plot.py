"""Charts of a set of policy runs: wait p95 against cost (the Pareto view) and fleet size over time.

Imports matplotlib (Agg backend, no display needed) inside the one function that draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sim.world import RunResult

_COLOURS = {
    "ours": "#d62728",
    "ours-prewarm": "#ff7f0e",
    "docker-machine": "#7f7f7f",
    "taskscaler": "#1f77b4",
    "taskscaler-nonpreemptive": "#17becf",
    "taskscaler-warm": "#bcbd22",
    "webhook-scaler": "#9467bd",
    "static": "#8c564b",
    "oracle": "#2ca02c",
}


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names whose (cost, wait) no other point beats on both, cheapest first."""
    front: list[str] = []
    best_wait = float("inf")
    for name, (_, wait) in sorted(points.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        if wait < best_wait:
            front.append(name)
            best_wait = wait
    return front


def plot_runs(results: Mapping[str, RunResult], path: Path, title: str) -> None:
    """Two panels: wait p95 vs cost with the Pareto front, and machines alive over time per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pareto, timeline) = plt.subplots(1, 2, figsize=(14, 5.5))
    points = {n: (float(r.metrics["cost_usd"]), float(r.metrics["wait_p95_s"])) for n, r in results.items()}
    for index, (name, (cost, wait)) in enumerate(points.items()):
        pareto.scatter(cost, wait, s=60, color=_COLOURS.get(name, "black"), zorder=3)
        offset = (6, 4 - 11 * (index % 3))  # staggered, so labels of near points stay readable
        pareto.annotate(name, (cost, wait), textcoords="offset points", xytext=offset, fontsize=9)
    front = pareto_front(points)
    pareto.plot([points[n][0] for n in front], [points[n][1] for n in front], "--", color="grey", zorder=2)
    pareto.set_yscale("symlog", linthresh=10.0)
    pareto.set_xlabel("cost (USD)")
    pareto.set_ylabel("wait p95 (s, symlog)")
    pareto.set_title("wait p95 vs cost (dashed: Pareto front)")
    pareto.grid(True, alpha=0.3)
    for name, result in results.items():
        hours = [t / 3600 for t, _ in result.timeline] + [result.run_end_s / 3600]
        sizes = [n for _, n in result.timeline] + [result.timeline[-1][1]]
        timeline.step(hours, sizes, where="post", label=name, color=_COLOURS.get(name), linewidth=1.1)
    timeline.set_xlabel("hours since the trace's start (Monday 00:00, Europe/Paris)")
    timeline.set_ylabel("machines alive")
    timeline.set_title("fleet size")
    timeline.legend(fontsize=8)
    timeline.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
