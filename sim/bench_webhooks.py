"""Benchmark of the webhook hot path: handler latency p50/p99 in-process against moto, AWS calls per event.

Figures are printed as ratios to a baseline measured in the same run (the app's `/health` route through the
same Chalice test client: the framework's own cost), and written to `bench/webhooks.json`.
Run: `python -m sim.bench_webhooks [N]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from toolkit.devtools.replay import Delivery, load, replay
from toolkit.samples import job_hook_payload, webhook_headers

OUT = Path(__file__).resolve().parents[1] / "bench" / "webhooks.json"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def deliveries(count: int) -> list[Delivery]:
    """`count` job events: pipelines of 4 jobs walking created -> pending -> running -> success."""
    out: list[Delivery] = []
    job = 0
    while len(out) < count:
        job += 1
        for step, status in enumerate(("created", "pending", "running", "success")):
            runner = 7 if status in {"running", "success"} else None
            body = job_hook_payload(
                job,
                status,
                project_id=1,
                pipeline_id=job // 4 + 1,
                stage="test",
                name=f"j{job}",
                now=T0 + timedelta(seconds=job + step),
                runner_id=runner,
                tags=["linux"],
            )
            if runner:
                body["runner"]["description"] = "runner-scaler/linux/i-00000000000000007"
            headers = webhook_headers("Job Hook", token="bench-token", idempotency_key=f"{job}-{status}")
            out.append(Delivery(headers, json.dumps(body), ("linux",)))
    return out[:count]


def baseline_ms(samples: int) -> list[float]:
    from chalice.test import Client

    from toolkit.devtools.local_app import load_app

    with Client(load_app()) as client:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            client.http.get("/health")
            times.append((time.perf_counter() - started) * 1000)
    return times


def main(count: int = 400) -> dict[str, object]:
    config = load(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "scaler.toml")
    report = replay(deliveries(count), config, ("bench-token",))
    hot = report.latency()
    base = sorted(baseline_ms(count))
    base_p50 = statistics.median(base)
    base_p99 = base[min(len(base) - 1, int(len(base) * 0.99))]
    result = {
        "events": report.events,
        "webhook": hot,
        "baseline_health_route": {"p50_ms": round(base_p50, 3), "p99_ms": round(base_p99, 3)},
        "ratio_p50_to_baseline": round(hot["p50_ms"] / base_p50, 2),
        "ratio_p99_to_baseline": round(hot["p99_ms"] / base_p99, 2),
        "note": "in-process moto: AWS calls cost microseconds here, so latency ratios show our own overhead",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
