"""Which instance types a pool should launch now, given recent capacity faults (pure).

A type that just failed to launch (InsufficientInstanceCapacity) goes last for a while. Only the ORDER of the
types changes: the Spot / on-demand split is the operator's (infra/ context `on_demand_base`,
`on_demand_percentage`) and is never rewritten here, because changing a group's purchasing options can make
Auto Scaling replace running instances (UpdateAutoScalingGroup API reference: "existing instances may be
replaced to match the new purchasing options ... gradually terminated and relaunched"), busy ones included.
Imports config only.
"""

from __future__ import annotations

from collections.abc import Iterable

from chalicelib.config import Pool


def can_fall_back(pool: Pool) -> bool:
    """Whether the pool's group may get its instance types reordered at all.

    Host pools never: their machines must be the host's own type (the launch template names it, and a host
    takes only its family), and they are never Spot. Nor a pool with fewer than two types: nothing to reorder.
    """
    return pool.hosts is None and len(pool.instance_types) > 1


def preferred_types(pool: Pool, faults: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The pool's instance types, best first, under `faults` of (kind, detail).

    Kinds: "instance_type" (detail: the type) goes last; "launch" (cause unknown) rotates the first type
    last. "spot" changes no order: a Spot capacity fault is the operator's to answer (raise
    `on_demand_percentage`), since the split is not ours to change (module docstring).
    """
    faulted: set[str] = set()
    rotate = False
    for kind, detail in faults:
        if kind == "instance_type" and detail:
            faulted.add(detail)
        elif kind == "launch":
            rotate = True
    types = list(pool.instance_types)
    if rotate and len(types) > 1 and not faulted:
        faulted.add(types[0])
    return tuple([t for t in types if t not in faulted] + [t for t in types if t in faulted])
