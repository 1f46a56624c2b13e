"""Simulated Auto Scaling groups: launch up to desired (on a dedicated host when the pool has hosts), boot,
terminate on request, scale in only unprotected instances. Imports the model, GitLab and hosts.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chalicelib.config import Pool
from sim.events import EventLoop
from sim.gitlab import SimGitLab
from sim.hosts import SimHosts
from sim.model import SimMachine, boot_time
from sim.warm import WarmInstance, WarmPool, WarmPoolSpec, warm_start_time

MachineListener = Callable[[SimMachine], None]
#: Hears a warm-pool move of one instance: (pool, instance id, "enter" | "end"). Entering the pool and a
#: warm instance ending fire the group's lifecycle hooks ("Use lifecycle hooks with a warm pool in Auto
#: Scaling group"); leaving it for the group is a launch (`launch_listeners`, `SimMachine.from_warm`).
WarmListener = Callable[[str, str, str], None]


@dataclass
class Ledger:
    """Every machine ever launched, the live count over time, and machines killed while running a job."""

    machines: list[SimMachine] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=lambda: [(0.0, 0)])
    alive: int = 0
    max_alive: int = 0
    busy_killed: int = 0

    def launched(self, machine: SimMachine, now: float) -> None:
        self.machines.append(machine)
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        self.timeline.append((now, self.alive))

    def ended(self, now: float) -> None:
        self.alive -= 1
        self.timeline.append((now, self.alive))


@dataclass
class SimGroup:
    pool: Pool
    desired: int = 0
    live: dict[str, SimMachine] = field(default_factory=dict)
    boot_overrides: deque[float] = field(default_factory=deque)


class SimFleet:
    """The pools' groups. Listeners hear of launches (the ASG lifecycle hook) and of terminations."""

    def __init__(
        self,
        loop: EventLoop,
        pools: Sequence[Pool],
        gitlab: SimGitLab,
        hosts: SimHosts,
        ledger: Ledger,
        boot_rng: random.Random,
        fixed_boot_s: float | None = None,
        warm_rng: random.Random | None = None,
        warm_start_scale: float = 1.0,
    ) -> None:
        self._loop = loop
        self._gitlab = gitlab
        self._hosts = hosts
        self._ledger = ledger
        self._boot_rng = boot_rng
        self._fixed_boot_s = fixed_boot_s
        self._ids = itertools.count(1)
        self.groups = {p.name: SimGroup(p) for p in pools}
        self.pool_of_asg = {p.asg: p.name for p in pools}
        self.machines: dict[str, SimMachine] = {}
        self.launch_listeners: list[MachineListener] = []
        self.end_listeners: list[MachineListener] = []
        #: Warm pools by pool name (none unless a policy sets one): instances prepared ahead, stopped.
        self.warm_pools: dict[str, WarmPool] = {}
        #: Every warm pool a group ever had, deleted ones included (the ledger of their costs).
        self.warm_history: list[WarmPool] = []
        self.warm_listeners: list[WarmListener] = []
        self._warm_rng = warm_rng or random.Random(0)
        self._warm_start_scale = warm_start_scale

    def set_warm_pool(self, pool: str, spec: WarmPoolSpec, *, prepared: bool = False) -> None:
        """PutWarmPool: the group keeps `spec.size` instances in its warm pool. Missing ones launch now and
        boot cold (the warm-pool entry hook's pre-initialization), then stop; surplus ones end, those still
        booting first. `prepared`: the instances were made before the run and are stopped already (an
        operator's pool set up by hand). Each instance a launch takes is replaced at once the same way.
        Not on a pool on dedicated hosts: a Mac stopped in a warm pool would scrub its host."""
        group = self.groups[pool]
        if group.pool.hosts is not None:
            raise ValueError(f'pool "{pool}" runs on dedicated hosts: no warm pool')
        now = self._loop.now
        warm = self.warm_pools.get(pool)
        if warm is None:
            warm = self.warm_pools[pool] = WarmPool(spec)
            self.warm_history.append(warm)
            if prepared:
                warm.instances.extend(
                    WarmInstance(pool, now, now, instance_id=self._instance_id()) for _ in range(spec.size)
                )
        warm.spec = spec
        for instance in warm.shrink(now):
            self._warm_moved(instance, "end")
        self._top_up(warm, group)

    def delete_warm_pool(self, pool: str) -> None:
        """DeleteWarmPool: every instance still in the pool ends (its costs stay in the ledger)."""
        warm = self.warm_pools.pop(pool, None)
        if warm is None:
            return
        warm.spec = WarmPoolSpec(0, warm.spec.state, warm.spec.readiness)
        for instance in warm.shrink(self._loop.now):
            self._warm_moved(instance, "end")

    def _instance_id(self) -> str:
        return f"i-{next(self._ids):017x}"

    def _warm_moved(self, instance: WarmInstance, move: str) -> None:
        for listener in self.warm_listeners:
            listener(instance.pool, instance.instance_id, move)

    def live(self, pool: str) -> list[SimMachine]:
        return list(self.groups[pool].live.values())

    def desired(self, pool: str) -> int:
        return self.groups[pool].desired

    def unplaced(self, pool: str) -> int:
        """Machines wanted but not launched: no dedicated host had room for them."""
        group = self.groups[pool]
        return max(0, group.desired - len(group.live))

    def set_desired(self, pool: str, desired: int, *, bounded: bool = True) -> None:
        """SetDesiredCapacity, bounded by the group's max size (max_instances) unless told not to."""
        group = self.groups[pool]
        group.desired = max(0, min(desired, group.pool.max_instances) if bounded else desired)
        self._converge(group)

    def launch(self, pool: str, count: int = 1, boot_s: float | None = None, *, bounded: bool = True) -> None:
        """Raise the desired capacity by `count`; `boot_s` fixes their boot time (the oracle knows it)."""
        group = self.groups[pool]
        if boot_s is not None:
            group.boot_overrides.extend([boot_s] * count)
        self.set_desired(pool, group.desired + count, bounded=bounded)

    def terminate(
        self, instance_id: str, *, decrement: bool = True, host_scrub_s: float | None = None
    ) -> bool:
        """TerminateInstanceInAutoScalingGroup. A machine running a job dies with it (counted, retried).
        `host_scrub_s`: how long its host slot stays busy instead of the pool's scrub (the oracle's reuse)."""
        machine = self.machines.get(instance_id)
        if machine is None or not machine.alive:
            return False
        group = self.groups[machine.pool.name]
        if machine.running:
            self._ledger.busy_killed += 1
        self._gitlab.unregister(machine)
        now = self._loop.now
        machine.close_busy(now)
        machine.terminated_at = now
        self._ledger.ended(now)
        del group.live[instance_id]
        del self.machines[instance_id]
        if decrement:
            group.desired = max(0, group.desired - 1)
        self._hosts.end(instance_id, host_scrub_s)
        for listener in self.end_listeners:
            listener(machine)
        self._converge(group)
        return True

    def replace_root_volume(self, instance_id: str, replace_s: float) -> bool:
        """CreateReplaceRootVolumeTask on a live machine whose runner has exited: the instance stays in its
        group and on its host (no scrub, no new host); `replace_s` later its new volume boots as a new
        machine's does (a boot drawn like a launch's) and its runner polls GitLab. False: nothing to reuse."""
        machine = self.machines.get(instance_id)
        if machine is None or not machine.alive or machine.running:
            return False
        self._gitlab.unregister(machine)
        now = self._loop.now
        machine.reuse(now)
        boot = (
            self._fixed_boot_s
            if self._fixed_boot_s is not None
            else boot_time(machine.pool.platform, self._boot_rng)
        )
        life = machine.reused
        self._loop.at(now + replace_s + boot, lambda: self._ready_again(machine, life))
        return True

    def _ready_again(self, machine: SimMachine, life: int) -> None:
        if machine.reused == life:
            self._ready(machine)

    def fill(self, pool: str) -> None:
        """Try again to reach the desired capacity (a host came free)."""
        self._converge(self.groups[pool])

    def _converge(self, group: SimGroup) -> None:
        while len(group.live) < group.desired:
            if not self._create(group):
                break
        while len(group.live) > group.desired:
            victims = sorted((m for m in group.live.values() if not m.protected), key=lambda m: m.launched_at)
            if not victims:
                break
            self.terminate(victims[0].instance_id, decrement=False)

    def _create(self, group: SimGroup) -> bool:
        pool = group.pool
        number = next(self._ids)
        instance_id = f"i-{number:017x}"
        host_id = None
        if pool.hosts is not None:
            host_id = self._hosts.place(pool.name, instance_id)
            if host_id is None:
                return False
        warm = self.warm_pools.get(pool.name)
        taken = None
        if group.boot_overrides:
            boot = group.boot_overrides.popleft()
        elif warm is not None and (taken := warm.take(self._loop.now)) is not None:
            # The same instance leaves the pool: started, then made ready by its scaler's own path.
            instance_id = taken.instance_id or instance_id
            boot = warm_start_time(
                pool.platform,
                warm.spec.state,
                warm.spec.readiness,
                self._warm_rng,
                scale=self._warm_start_scale,
            )
            self._top_up(warm, group)
        elif self._fixed_boot_s is not None:
            boot = self._fixed_boot_s
        else:
            boot = boot_time(pool.platform, self._boot_rng)
        now = self._loop.now
        machine = SimMachine(
            instance_id, pool, number, now, boot, host_id=host_id, from_warm=taken is not None
        )
        group.live[instance_id] = machine
        self.machines[instance_id] = machine
        self._ledger.launched(machine, now)
        for listener in self.launch_listeners:
            listener(machine)
        self._loop.at(now + boot, lambda: self._ready(machine))
        return True

    def _top_up(self, warm: WarmPool, group: SimGroup) -> None:
        """The group launches into its warm pool until it holds its size: each one boots cold (billed
        running) and runs the entry hook, then stops. A machine that left the pool never comes back
        (ReuseOnScaleIn false: the scaler never sets it)."""
        now = self._loop.now
        while warm.waiting() < warm.spec.size:
            boot = (
                self._fixed_boot_s
                if self._fixed_boot_s is not None
                else boot_time(group.pool.platform, self._warm_rng)
            )
            instance = WarmInstance(group.pool.name, now, now + boot, instance_id=self._instance_id())
            warm.instances.append(instance)
            self._warm_moved(instance, "enter")

    def _ready(self, machine: SimMachine) -> None:
        if not machine.alive:
            return
        machine.ready_at = self._loop.now
        self._gitlab.register(machine)
