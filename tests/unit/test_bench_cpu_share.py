"""The CPU-share benchmark's pure parts: Lambda's share of a core as a CFS quota, and the memory rule.

The benchmark itself is not run here (it takes minutes under the quotas); these tests pin its arithmetic
and the rule that turns its figures into each function's memory."""

from __future__ import annotations

import pytest

from sim.bench_cpu_share import FULL_VCPU_MB, PERIOD_US, SIZES_MB, choose, quota_for


def test_one_full_vcpu_at_1769_mb_is_the_whole_period() -> None:
    # Lambda developer guide, "Configure Lambda function memory": 1,769 MB is one vCPU.
    assert quota_for(FULL_VCPU_MB) == quota_for(1769)
    assert quota_for(1769).quota_us == PERIOD_US
    assert quota_for(1769).share == 1.0


def test_128_mb_gets_a_fourteenth_of_a_core() -> None:
    quota = quota_for(128)
    assert quota.period_us == PERIOD_US
    assert quota.quota_us == 7236  # 100 ms * 128 / 1769, rounded
    assert 1 / 14 < quota.share < 1 / 13


def test_quota_scales_with_the_period_and_never_drops_below_the_kernel_minimum() -> None:
    assert quota_for(512, period_us=20_000).quota_us == round(20_000 * 512 / 1769)
    assert quota_for(1, period_us=10_000).quota_us == 1000  # cpu.cfs_quota_us accepts no less than 1 ms


def test_memory_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        quota_for(0)


def _figures(slowdown_at_128: float) -> dict[str, dict[str, float]]:
    """Full-core figures slowed by the CPU share at each size, as the quota would."""
    full = {
        "interpreter_start_s": 0.05,
        "import_app_s": 0.35,
        "webhook_first_ms": 30.0,
        "webhook_p50_ms": 15.0,
        "webhook_p99_ms": 60.0,
        "reconcile_first_ms": 200.0,
        "reconcile_median_ms": 150.0,
        "reconcile_max_ms": 450.0,
        "tick_first_ms": 6.0,
        "tick_median_ms": 5.0,
    }
    return {
        f"{mb}MB": {k: v * slowdown_at_128 * 128 / mb if mb < FULL_VCPU_MB else v for k, v in full.items()}
        for mb in SIZES_MB
    }


def test_each_function_gets_the_smallest_size_that_meets_its_rule() -> None:
    # GIVEN figures that grow as the share shrinks (14x at 128 MB)
    chosen = choose(_figures(14.0))
    # THEN the webhook needs its cold start (interpreter + import + first delivery) under 2 s: 512 MB
    # (0.43 s * 14 * 128/512 = 1.5 s), 256 MB would be 3 s
    assert chosen["api_handler"]["memory_mb"] == 512
    # AND the pool's cold start + reconciles (1.05 s at full core) fit 10 s at 256 MB, not at 128 MB
    assert chosen["pool_dirty"]["memory_mb"] == 256
    # AND the tick's (0.41 s) fits at 128 MB
    assert chosen["tick"]["memory_mb"] == 128
    # AND the unmeasured functions follow pool_dirty, saying so
    for function in ("alarms", "machine_events", "rotate_base_certs"):
        assert chosen[function]["memory_mb"] == chosen["pool_dirty"]["memory_mb"]
        assert "not measured" in chosen[function]["rule"]


def test_a_function_no_size_satisfies_gets_a_full_vcpu() -> None:
    figures = _figures(14.0)
    for size in figures.values():
        size["webhook_p99_ms"] = 5000.0
    assert choose(figures)["api_handler"]["memory_mb"] == FULL_VCPU_MB
