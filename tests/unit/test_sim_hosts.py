"""Paid-idle host hours (issue #8): billed time of a dedicated host with no instance on it, the rest of its
minimum allocation included, exact on hand-computed timelines; ours pays fewer of them than the naive host
baseline (a new host for every machine, released as soon as EC2 allows)."""

from __future__ import annotations

from typing import Any

from chalicelib.config import Config, HostsConfig
from sim.baselines import NaiveHosts
from sim.bench import SCENARIOS, paid_idle_vs_naive
from sim.hosts import SimHost
from sim.ours import Ours
from sim.world import World
from tests.unit.test_sim import EXACT, job, make_config

DAY_S = 24 * 3600.0
MAC_HOSTS: dict[str, Any] = {
    "instance_type": "mac2.metal",
    "host_resource_group": "hrg",
    "max_hosts": 2,
    "scrub_time": "50m",
    "min_allocation": "24h",
    "availability_zones": ["eu-west-1a"],
}


def mac_config() -> Config:
    return make_config(
        {"platform": "macos", "tags": ["macos"], "max_instances": 2, "hosts": MAC_HOSTS},
        prices={"hosts": {"mac2.metal": 1.0}},
    )


#: Two Mac jobs, the second after the first one's host has scrubbed (EXACT: 60 s boots, hosts up in 120 s).
TRACE = [job(1, 100.0, 0, 600.0, "macos"), job(2, 4000.0, 0, 60.0, "macos")]


def host(**cfg: Any) -> SimHost:
    return SimHost("h-1", "mac", HostsConfig(**(MAC_HOSTS | cfg)), allocated_at=0.0, available_at=120.0)


class TestPaidIdleSeconds:
    def test_a_host_held_past_its_minimum_is_idle_for_its_life_less_its_uses(self) -> None:
        # GIVEN a host allocated at 0, used 1,000-2,000 s and 90,000-91,000 s, released at 100,000 s
        h = host()
        for since, until in ((1000.0, 2000.0), (90_000.0, 91_000.0)):
            h.occupy("i-1", since)
            h.vacate("i-1", until)
        h.released_at = 100_000.0
        # THEN it was paid 100,000 s and idle for all but 2,000 of them, whatever the run's end
        assert h.paid_idle_seconds(end=5000.0) == 98_000.0

    def test_a_host_used_once_pays_the_rest_of_its_minimum_allocation_idle(self) -> None:
        # GIVEN a host used 200-800 s by one instance and, from 1,000 s, by two (a Windows-like host)
        h = host(slots_per_host=2)
        h.occupy("i-1", 200.0)
        h.vacate("i-1", 800.0)
        h.occupy("i-2", 1000.0)
        h.occupy("i-3", 1500.0)
        h.vacate("i-2", 2000.0)
        # WHEN the run ends at 3,000 s with i-3 still on it
        # THEN it is paid 24 h and used 600 + 2,000 s: the minimum-allocation tail counts as idle
        assert h.paid_idle_seconds(end=3000.0) == DAY_S - 600.0 - 2000.0


class TestNaiveHosts:
    def test_paid_idle_host_hours_of_the_naive_baseline_on_a_hand_computed_timeline(self) -> None:
        # GIVEN two Mac jobs pending at 100 s (600 s long) and 4,000 s (60 s long)
        world = World(mac_config(), TRACE, seed=0, options=EXACT)
        # WHEN the naive host baseline scales them
        result = world.run(NaiveHosts())
        # THEN at its 102 s check it allocates host A (up at 222 s) and a machine that lands on it, boots
        # until 282 s, runs the job until 882 s and is terminated; A scrubs until 3,882 s. At 4,002 s it
        # allocates host B, but the machine lands on A at once (scrubbed, usable) and runs until 4,122 s.
        a, b = world.hosts.hosts
        assert (a.allocated_at, b.allocated_at) == (102.0, 4002.0)
        assert a.occupied == [(222.0, 882.0), (4002.0, 4122.0)] and b.occupied == []
        # AND neither reaches its 24 h minimum before the run ends: each is paid 24 h, less A's scrubs
        # (3,000 s, then 538 s until the run's end at 4,660 s: a scrub is not billed), and A used 780 s
        assert all(h.live for h in (a, b)) and result.run_end_s == 4660.0
        scrubbed = 3000.0 + (4660.0 - 4122.0)
        assert result.metrics["paid_idle_host_hours"] == round((2 * DAY_S - 780.0 - scrubbed) / 3600, 2)
        assert result.metrics["cost_usd"] == round((2 * DAY_S - scrubbed) / 3600, 2)
        assert result.metrics["busy_killed"] == 0
        assert all(j.status == "success" for j in world.jobs)

    def test_the_naive_baseline_releases_a_host_as_soon_as_its_minimum_is_met(self) -> None:
        # GIVEN the same first job, and a run kept going past a day by a last job at 25 h
        trace = [TRACE[0], job(3, 25 * 3600.0, 0, 60.0, "macos")]
        world = World(mac_config(), trace, seed=0, options=EXACT)
        world.run(NaiveHosts())
        first = world.hosts.hosts[0]
        # THEN host A goes at the first release check (every 60 s) once 24 h have passed since 102 s
        assert first.released_at == 86_520.0

    def test_ours_pays_fewer_paid_idle_host_hours_than_the_naive_baseline(self) -> None:
        # GIVEN the same two jobs, on the same world
        ours = World(mac_config(), TRACE, seed=0, options=EXACT).run(Ours()).metrics
        naive = World(mac_config(), TRACE, seed=0, options=EXACT).run(NaiveHosts()).metrics
        # THEN ours keeps the host it has for the second job instead of paying a second day
        assert ours["paid_idle_host_hours"] < naive["paid_idle_host_hours"]
        comparison = paid_idle_vs_naive({"ours": ours, "naive-hosts": naive})
        assert comparison["ratio"] == round(ours["paid_idle_host_hours"] / naive["paid_idle_host_hours"], 3)
        assert ours["busy_killed"] == 0


def test_the_bench_runs_the_naive_host_baseline_only_where_pools_are_on_hosts() -> None:
    on_hosts = {s.name for s in SCENARIOS if s.on_hosts}
    assert on_hosts == {"macos-hosts"}
