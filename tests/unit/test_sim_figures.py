"""The simulator's figures for a fixed seed, held against the ones it gave before: a speed-up must change no
figure. `tests/fixtures/sim_figures.json` holds every policy's metrics and per-service calls on two small
worlds (a bursty Linux pool with lagging hooks; the macOS dedicated-host trace). When a model changes on
purpose, regenerate it with `python -m tests.unit.test_sim_figures` and say why in the commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from chalicelib.config import load_config_file
from sim.bursty import LAGGY, bursty, reuse_config
from sim.model import SimOptions
from sim.simulate import ALL_POLICIES, simulate
from sim.traces import shipped_trace

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "sim_figures.json"
SCENARIOS = Path(__file__).resolve().parent.parent.parent / "sim" / "scenarios"
#: The macOS world: the shipped three-day trace, its first day only, with hooks as the bench has them.
MAC_DAY_S = 86_400.0


def figures() -> dict[str, Any]:
    """{world: {policy: {"metrics", "calls"}}} for every policy `simulate` knows, on both worlds: the first
    in one process, the second in two (`workers`), so both ways are held to the same figures."""
    mac_trace = [j for j in shipped_trace("macos") if j.created_s < MAC_DAY_S]
    worlds = {
        "bursty": (bursty(7), reuse_config(), LAGGY, 11, 1),
        "macos": (mac_trace, load_config_file(SCENARIOS / "macos.toml"), SimOptions(), 3, 2),
    }
    out: dict[str, Any] = {}
    for name, (trace, config, options, seed, workers) in worlds.items():
        runs = simulate(trace, config, list(ALL_POLICIES), seed=seed, options=options, workers=workers)
        out[name] = {p: {"metrics": r.metrics, "calls": r.calls_by_service} for p, r in runs.items()}
    return out


def test_every_policy_gives_the_figures_it_gave_before() -> None:
    # GIVEN the figures the simulator gave for these worlds and seeds
    expected = json.loads(FIXTURE.read_text(encoding="utf-8"))
    # WHEN every policy runs again on them
    actual = json.loads(json.dumps(figures()))
    # THEN every figure is the same, policy by policy (a difference names the policy)
    for world, policies in expected.items():
        assert set(actual[world]) == set(policies), world
        for policy, figures_before in policies.items():
            assert actual[world][policy] == figures_before, f"{world}/{policy}"


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(figures(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {FIXTURE}\n")
