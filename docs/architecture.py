"""Draw docs/architecture.png: what runner-scaler deploys and how events flow between GitLab and AWS.

Run from the repository root: `.venv/bin/python docs/architecture.py` (writes docs/architecture.png). The
Lambda boxes come from the Chalice app itself (app.py's handlers), so a handler added without a place in
this picture fails the script, and the docs test, instead of leaving the picture silently stale.
Imports matplotlib (Agg) and app.py; no AWS call (app.py builds no client at import).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "architecture.png"

GITLAB = "#fce5cd"
TRIGGER = "#dde8f6"
LAMBDA = "#fff2cc"
STATE = "#e2efda"
FLEET = "#ead1dc"
FRAME = "#f7f7f7"


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    def left(self, dy: float = 0.0) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2 + dy)

    def right(self, dy: float = 0.0) -> tuple[float, float]:
        return (self.x + self.w, self.y + self.h / 2 + dy)

    def top(self, dx: float = 0.0) -> tuple[float, float]:
        return (self.x + self.w / 2 + dx, self.y + self.h)

    def bottom(self, dx: float = 0.0) -> tuple[float, float]:
        return (self.x + self.w / 2 + dx, self.y)


#: Each Chalice handler: its row (y of the trigger and the function), the trigger's text, the function's text.
ROWS: dict[str, tuple[float, str, str]] = {
    "gitlab_webhook": (
        48.0,
        "API Gateway\nPOST /webhooks/gitlab",
        "gitlab_webhook\ncheck token, dedupe,\nrecord job, mark pool dirty",
    ),
    "pool_dirty": (
        39.0,
        "SQS FIFO <prefix>-dirty.fifo\n(message group = pool) + DLQ",
        "pool_dirty\nreconcile one pool now",
    ),
    "tick": (
        30.0,
        "EventBridge schedule\nevery minute",
        "tick\nheal jobs, sweep orphans,\nhook check, reconcile all",
    ),
    "machine_events": (
        21.0,
        "EventBridge rules\nthe pools' lifecycle hooks, failed\nlaunches, Spot warnings, states",
        "machine_events\nrunner + machine secret, Spot\ndrain, launch faults, decrement\non shutdown",
    ),
    "rotate_base_certs": (
        12.0,
        "Secrets Manager\nrotation schedule",
        "rotate_base_certs\nfour-step rotation\nof the fleet's TLS CA",
    ),
    "alarms": (
        3.0,
        "CloudWatch alarms\n-> SNS <prefix>-alarms",
        "alarms\nreconcile now, redrive,\nsteer launches",
    ),
}
#: Handlers that are not part of the event flow (liveness only).
NOT_DRAWN = {"health"}


def handlers() -> list[str]:
    """The handler names of app.py's Chalice app, in a stable order."""
    sys.path.insert(0, str(ROOT))
    from app import app

    names = [e.name for e in app.event_sources] + [f.name for f in app.pure_lambda_functions]
    for path, methods in app.routes.items():
        names += [m.view_name for m in methods.values() if path]
    return sorted(set(names))


def box(ax: Axes, b: Box, text: str, color: str, *, bold_first: bool = True, size: float = 8.0) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (b.x, b.y), b.w, b.h, boxstyle="round,pad=0.2,rounding_size=0.8", fc=color, ec="#555555", lw=0.8
        )
    )
    first, _, rest = text.partition("\n")
    if bold_first and rest:
        ax.text(b.x + b.w / 2, b.y + b.h - 1.0, first, ha="center", va="top", fontsize=size, weight="bold")
        ax.text(b.x + b.w / 2, b.y + b.h - 2.6, rest, ha="center", va="top", fontsize=size - 0.8)
    else:
        ax.text(b.x + b.w / 2, b.y + b.h / 2, text, ha="center", va="center", fontsize=size, weight="bold")


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    label: str = "",
    *,
    rad: float = 0.0,
    label_at: tuple[float, float] | None = None,
    color: str = "#333333",
    style: str = "-",
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=10,
            lw=0.9,
            color=color,
            linestyle=style,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=2,
            shrinkB=2,
        )
    )
    if label:
        x, y = label_at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.6)
        ax.text(x, y, label, ha="center", va="bottom", fontsize=6.8, color=color, style="italic")


def draw(names: list[str], out: Path) -> None:
    """Lay the picture out on a 100 x 62 canvas and save it."""
    unknown = [n for n in names if n not in ROWS and n not in NOT_DRAWN]
    if unknown:
        raise SystemExit(f"docs/architecture.py: app.py has handlers this picture does not place: {unknown}")
    fig, ax = plt.subplots(figsize=(15, 9.3), dpi=110)
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.5, 62)
    ax.axis("off")
    ax.text(1, 61.5, "runner-scaler: what runs where", fontsize=13, weight="bold", va="top")

    gitlab = Box(1.5, 30, 15, 22)
    box(
        ax,
        gitlab,
        "\n".join(
            (
                "GitLab",
                "project / group webhooks:",
                "Job + Pipeline events",
                "",
                "REST API:",
                "runners, jobs, hooks",
                "",
                "runners ask it for jobs",
            )
        ),
        GITLAB,
    )

    ax.add_patch(
        FancyBboxPatch((20, 1.5), 79, 55.5, boxstyle="round,pad=0.3", fc=FRAME, ec="#999999", lw=0.8)
    )
    ax.text(
        21,
        56.4,
        "AWS account, one region: infra/ (CDK) creates all of it; chalice deploy only the functions",
        fontsize=8,
        color="#555555",
        va="top",
    )

    functions: dict[str, Box] = {}
    triggers: dict[str, Box] = {}
    for name in (n for n in ROWS if n in names):
        y, trigger_text, function_text = ROWS[name]
        triggers[name] = Box(22, y, 17, 6)
        functions[name] = Box(43, y, 17, 6)
        box(ax, triggers[name], trigger_text, TRIGGER)
        box(ax, functions[name], "λ " + function_text, LAMBDA)
        arrow(ax, triggers[name].right(), functions[name].left())

    table = Box(64, 47, 14.5, 7.5)
    box(ax, table, "DynamoDB <prefix>-state\njobs, machines, events,\npool leases (TTL)", STATE)
    config = Box(64, 40, 14.5, 4.5)
    box(ax, config, "SSM /<prefix>/config\nthe TOML config", STATE)
    secrets = Box(64, 12, 14.5, 14)
    box(
        ax,
        secrets,
        "\n".join(
            (
                "Secrets Manager",
                "GitLab API token",
                "webhook tokens",
                "docker-base-certs (CA)",
                "machines/<instance-id>:",
                "runner token, server cert",
            )
        ),
        STATE,
    )

    fleet = Box(81.5, 26, 16.5, 28.5)
    box(
        ax,
        fleet,
        "EC2 Auto Scaling\none group per pool\n(min 0, scale-in protected,\nlaunch + terminate hooks)",
        FLEET,
    )
    pools = (
        ("linux", "Spot or on-demand"),
        ("windows", "dedicated hosts (BYOL)"),
        ("macos", "EC2 Mac dedicated hosts"),
    )
    for i, (pool, note) in enumerate(pools):
        sub = Box(82.5, 40 - i * 4.6, 14.5, 3.2)
        box(ax, sub, f"{pool}: {note}", "#f4e1ea", bold_first=False, size=6.2)
    machine = Box(81.5, 5, 16.5, 14)
    box(
        ax,
        machine,
        "\n".join(
            (
                "each machine",
                "reads its own secret (only),",
                "runs gitlab-runner run-single",
                "--max-builds max_use_count,",
                "then powers itself off (EC2",
                "terminates it; machine_events",
                "decrements its group)",
            )
        ),
        FLEET,
    )

    if "gitlab_webhook" in triggers:
        arrow(
            ax,
            gitlab.right(9),
            triggers["gitlab_webhook"].left(),
            "job / pipeline hook\nX-Gitlab-Token",
            label_at=(18.5, 52.2),
        )
        arrow(ax, functions["gitlab_webhook"].right(), table.left(), "job state")
    if "gitlab_webhook" in functions and "pool_dirty" in triggers:
        arrow(
            ax,
            functions["gitlab_webhook"].bottom(-5),
            triggers["pool_dirty"].top(5),
            "pool dirty",
            label_at=(44.5, 46.3),
        )
    # Every function calls GitLab through one adapter: runners, jobs, hooks.
    arrow(
        ax,
        (42.5, 46.8),
        gitlab.right(5.8),
        "GitLab API: create / pause / delete runners, jobs, hooks",
        color="#8a5a00",
        style="--",
        label_at=(29.5, 47.0),
    )
    for name, dy in (("pool_dirty", -4.0), ("tick", -7.0)):
        if name in functions:
            arrow(ax, functions[name].right(), fleet.left(dy), color="#7a3b57")
    ax.text(
        71.5,
        37.8,
        "reconcile: set desired, protect,\ndrain (pause runner, re-check),\nthen terminate",
        fontsize=6.8,
        color="#7a3b57",
        ha="center",
        va="top",
        style="italic",
    )
    if "machine_events" in functions:
        arrow(ax, functions["machine_events"].right(), secrets.left(5), "machine secret")
    if "rotate_base_certs" in functions:
        arrow(
            ax,
            functions["rotate_base_certs"].right(),
            secrets.left(-5),
            "new CA; the old one\nstays trusted",
            label_at=(62, 8.6),
        )
    arrow(ax, fleet.bottom(), machine.top())
    arrow(ax, machine.left(), secrets.right(-4))
    # The runner on each machine polls GitLab for its job: drawn under the frame, back to GitLab.
    ax.plot([machine.x + 3, machine.x + 3, 9.0], [machine.y, 0.4, 0.4], color="#7a3b57", lw=0.9)
    arrow(ax, (9.0, 0.4), gitlab.bottom(), color="#7a3b57")
    ax.text(
        50,
        0.7,
        "gitlab-runner on the machine asks GitLab for a job (no inbound connection)",
        fontsize=6.8,
        color="#7a3b57",
        style="italic",
        ha="center",
        va="bottom",
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    draw(handlers(), out)
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
