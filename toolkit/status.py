"""Use case: a read-only snapshot of every pool, from the same state the Lambda uses (ASG + store).

Shared by `runner-scaler status` and the demo's live view. Imports adapters' Protocols and config only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from chalicelib.config import Config
from chalicelib.fleet import Fleet
from chalicelib.store import HOLDS_SLOT, Store


@dataclass(frozen=True)
class PoolStatus:
    pool: str
    platform: str
    asg: str
    desired: int
    max_instances: int
    in_service: int
    booting: int
    idle: int
    busy: int
    draining: int
    pending_jobs: int
    running_jobs: int
    faults: tuple[str, ...] = field(default=())
    #: Machines in the group's warm pool now (stopped or hibernated, outside desired capacity), and the size
    #: the scaler last set (None: the group has no warm pool). Both from DescribeAutoScalingGroups.
    warm: int = 0
    warm_target: int | None = None
    #: The pool's Auto Scaling group does not exist (not deployed, or `asg` misspelt).
    group_missing: bool = False

    def as_dict(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def snapshot(config: Config, store: Store, fleet: Fleet, now: datetime) -> list[PoolStatus]:
    """Per pool: capacity, machines by state and jobs by state, as the scaler sees them now."""
    groups = fleet.read_groups([p.asg for p in config.pools])
    out: list[PoolStatus] = []
    for pool in config.pools:
        group = groups.get(pool.asg)
        faults: list[str] = []
        if group is None:
            faults.append(f'Auto Scaling group "{pool.asg}" not found')
        faults += [
            f"{f.kind} until {f.until:%Y-%m-%d %H:%M}Z: {f.reason[:120]}"
            for f in store.faults(pool.name, now)
        ]
        live = group.live_instances() if group else ()
        records = {m.instance_id: m for m in store.machines(pool.name)}
        counts = {"booting": 0, "idle": 0, "busy": 0, "draining": 0}
        for instance in live:
            record = records.get(instance.instance_id)
            if record is not None and record.draining_since is not None:
                counts["draining"] += 1
            elif record is not None and record.running:
                counts["busy"] += 1
            elif not instance.in_service or record is None or record.ready_at is None:
                counts["booting"] += 1  # until its runner has contacted GitLab, as the reconciler counts it
            else:
                counts["idle"] += 1
        jobs = store.pool_jobs(pool.name)
        out.append(
            PoolStatus(
                pool=pool.name,
                platform=pool.platform.value,
                asg=pool.asg,
                desired=group.desired if group else 0,
                max_instances=pool.max_instances,
                in_service=sum(1 for i in live if i.in_service),
                pending_jobs=sum(1 for j in jobs if j.status == "pending"),
                running_jobs=sum(1 for j in jobs if j.status in HOLDS_SLOT),
                faults=tuple(faults),
                group_missing=group is None,
                warm=group.warm_size if group else 0,
                warm_target=group.warm_pool.min_size if group and group.warm_pool else None,
                **counts,
            )
        )
    return out
