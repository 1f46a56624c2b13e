"""Which instance types a pool should launch now, given recent capacity faults (pure).

A type that just failed to launch (InsufficientInstanceCapacity) goes last for a while; a Spot capacity
fault moves the pool to on-demand for a while. Imports config only.
"""

from __future__ import annotations

from collections.abc import Iterable

from chalicelib.config import Pool


def preferred_types(pool: Pool, faults: Iterable[tuple[str, str]]) -> tuple[tuple[str, ...], int]:
    """(instance types, best first; on-demand percentage) for `pool` under `faults` of (kind, detail).

    Kinds: "instance_type" (detail: the type), "spot", "launch" (cause unknown: rotate to the next type).
    """
    faulted: set[str] = set()
    spot_fault = False
    rotate = False
    for kind, detail in faults:
        if kind == "instance_type" and detail:
            faulted.add(detail)
        elif kind == "spot":
            spot_fault = True
        elif kind == "launch":
            rotate = True
    types = list(pool.instance_types)
    if rotate and len(types) > 1 and not faulted:
        faulted.add(types[0])
    ordered = tuple([t for t in types if t not in faulted] + [t for t in types if t in faulted])
    on_demand = 100 if (spot_fault or not pool.spot) else 0
    return ordered, on_demand
