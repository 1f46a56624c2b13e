"""The simulator runs the code that ships: ours' hooks go through the route's use case (`webhooks.receive`),
its minute through `triggers.run_tick`, its queue through `triggers.process_dirty_batch`, given `Ports` built
from simulated adapters. Held two ways: sim/ours.py may not import what a copy of the route or the tick would
need, and a run shows what only the production route does (the token check, the event identity)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

from sim.ours import Ours
from sim.traces import TraceJob
from sim.world import World
from tests.unit.test_import_rules import layer_of
from tests.unit.test_sim import EXACT, job, make_config

OURS = Path(__file__).resolve().parents[2] / "sim" / "ours.py"

#: The only names sim/ours.py may take from chalicelib's use cases: the entry use cases of the handlers it
#: stands in for (the route, the tick, the queue's consumer, the machine lifecycle), the ports it builds for
#: them, and the reconciler the wiring hands out through `Ports.reconciler`, as chalicelib.runtime does.
ENTRY_POINTS = frozenset(
    {
        ("webhooks", "receive"),
        ("triggers", "run_tick"),
        ("triggers", "process_dirty_batch"),
        ("lifecycle", "Lifecycle"),
        ("lifecycle", "LifecycleAction"),
        ("lifecycle", "ended_without_hook"),
        ("reconcile", "Reconciler"),
        ("ports", "Ports"),
        ("ports", "CertPorts"),
    }
)
#: What a copy of the route would parse and de-duplicate with (models, so the layer rule alone allows them).
ROUTE_INTERNALS = frozenset({("events.gitlab", "parse_gitlab_event"), ("events.gitlab", "event_identity")})


def chalicelib_names(path: Path) -> list[tuple[str, str, int]]:
    """(module inside chalicelib, name, line) of every `from chalicelib.x import name` in a file; a plain
    `import chalicelib.x` is recorded with the name `*` (everything in it is then reachable)."""
    found: list[tuple[str, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chalicelib."):
            module = (node.module or "").removeprefix("chalicelib.")
            found.extend((module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(
                (alias.name.removeprefix("chalicelib."), "*", node.lineno)
                for alias in node.names
                if alias.name.startswith("chalicelib.")
            )
    return found


def test_the_simulated_scaler_reaches_use_cases_only_through_their_entry_points() -> None:
    # GIVEN every name sim/ours.py imports from chalicelib
    names = chalicelib_names(OURS)
    # THEN from a use case it takes only an entry point (no ingest_job, heal, sweep, tick_windows...: a copy
    # of the route or the tick would need them), and it does not parse or de-duplicate hooks itself
    off_path = [
        f"sim/ours.py:{line} imports {module}.{name}"
        for module, name, line in names
        if (layer_of(module) == "use case" and (module, name) not in ENTRY_POINTS)
        or (module, name) in ROUTE_INTERNALS
    ]
    assert off_path == []
    # AND the entry points are indeed used (the rule above is not met by importing nothing)
    assert {("webhooks", "receive"), ("triggers", "run_tick"), ("triggers", "process_dirty_batch")} <= {
        (module, name) for module, name, _ in names
    }


def test_the_rule_catches_an_import_a_copy_of_the_tick_would_make(tmp_path: Path) -> None:
    # GIVEN a simulator module that re-enacts the tick with its inner steps
    copy = tmp_path / "ours.py"
    copy.write_text(
        "from chalicelib.heal import heal\nfrom chalicelib.triggers import tick_windows, run_tick\n",
        encoding="utf-8",
    )
    # THEN the names it takes from use cases are off the entry points
    taken = [(m, n) for m, n, _ in chalicelib_names(copy) if layer_of(m) == "use case"]
    assert [pair for pair in taken if pair not in ENTRY_POINTS] == [
        ("heal", "heal"),
        ("triggers", "tick_windows"),
    ]


def trace() -> list[TraceJob]:
    return [job(1, 100.0, 0, 300.0), job(1, 100.0, 1, 120.0), job(2, 900.0, 0, 60.0)]


def test_hooks_with_a_wrong_token_are_refused_by_the_route_and_the_tick_still_runs_every_job() -> None:
    # GIVEN our scaler whose hooks carry a token its tokens secret does not hold, scaling for a group's
    # projects (the tick lists their pending jobs: it knows no project from a hook here)
    ours = Ours()
    ours.hook_token = "not-the-deployments-token"
    config = make_config(gitlab={"url": "https://gitlab.example.com", "groups": [7]})
    world = World(config, trace(), seed=0, options=EXACT)
    # WHEN the trace runs
    result = world.run(ours)
    # THEN the route answered every delivery 401 (chalicelib.webhooks.token_ok) and counted each one
    assert set(ours.webhook_outcomes) == {"bad_token"}
    assert ours.metrics.totals["WebhookRejected"] == ours.webhook_outcomes["bad_token"] > 0
    # AND no job was learned from a hook: the tick's heal found them in GitLab's job lists, and ran them all
    assert ours.metrics.totals["LostJobsFound"] >= 1
    assert all(j.finished_at is not None for j in world.jobs)
    assert result.metrics["failed_jobs"] == 0


def test_every_hook_delivered_twice_is_recorded_once_by_its_production_identity() -> None:
    # GIVEN GitLab delivering every hook twice, none lost
    ours = Ours()
    world = World(make_config(), trace(), seed=0, options=replace(EXACT, webhook_duplication=1.0))
    # WHEN the trace runs
    world.run(ours)
    # THEN the route took one copy of each and answered the other as a duplicate (event_identity's key)
    assert ours.webhook_outcomes["accepted"] == ours.webhook_outcomes["duplicate"] > 0
    assert set(ours.webhook_outcomes) == {"accepted", "duplicate"}
