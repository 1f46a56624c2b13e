"""10,000 fuzzed deliveries: never a 5xx, and a rejected delivery never changes state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.config import config_from_dict
from chalicelib.runtime import Runtime
from chalicelib.store import MemoryStore
from chalicelib.webhooks import receive
from toolkit.samples import job_hook_payload

TOKEN = "fuzz-token"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CONFIG = config_from_dict(
    {
        "gitlab": {"url": "https://gitlab.example.com"},
        "pools": [{"name": "linux", "asg": "a", "tags": ["linux"], "run_untagged": True, "max_instances": 3}],
    },
    "fuzz",
)


class Recorder:
    def __init__(self) -> None:
        self.marked: list[str] = []

    def mark_dirty(self, pool: str, reason: str, now: datetime) -> None:
        self.marked.append(pool)

    def ask_resolve(self, project_id: int, pipeline_id: int, job_id: int, now: datetime) -> None:
        self.marked.append(f"resolve {pipeline_id}")


class FuzzRuntime(Runtime):
    def webhook_tokens(self) -> list[str]:
        return [TOKEN]


def runtime() -> FuzzRuntime:
    rt = FuzzRuntime({}, config=CONFIG, clock=lambda: NOW)
    rt.__dict__.update(store=MemoryStore(), queue=Recorder(), gitlab_host="gitlab.example.com")
    return rt


RT = runtime()
VALID = job_hook_payload(1, "pending", project_id=1, pipeline_id=1, stage="test", name="t", now=NOW)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    payload: dict[str, Any] = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(payload)))
        if draw(st.booleans()):
            payload[key] = draw(json_values)
        else:
            payload.pop(key, None)
    return json.dumps(payload).encode()


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_payloads(),
)
header_values = st.text(max_size=40)
headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Gitlab-Token": st.sampled_from([TOKEN, "nope", ""]) | header_values,
        "X-Gitlab-Event": st.sampled_from(["Job Hook", "Pipeline Hook", "Push Hook", "Bogus"])
        | header_values,
        "Idempotency-Key": header_values,
        "X-Gitlab-Event-UUID": header_values,
        "X-Gitlab-Instance": header_values,
    },
)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers, bodies)
def test_fuzzed_deliveries_never_5xx_and_rejections_change_nothing(hdrs: dict[str, str], body: bytes) -> None:
    store = RT.store
    assert isinstance(store, MemoryStore)
    before = (len(store.jobs), len(RT.queue.marked))  # type: ignore[attr-defined]
    answer = receive(RT.ports, hdrs, body)
    assert answer.status < 500
    if answer.status >= 400 or answer.outcome in {"ignored", "duplicate"}:
        assert (len(store.jobs), len(RT.queue.marked)) == before  # type: ignore[attr-defined]
    if hdrs.get("X-Gitlab-Token") != TOKEN:
        assert answer.status in {401, 413}
