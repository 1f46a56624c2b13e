"""PURE capacity engine: which policy applies, how many machines a pool needs, which machines may go.

Data in, decision out; `now` is a parameter. Imports only config models and the standard library (no boto3).
"""

from chalicelib.capacity.engine import free_slots, idle_target, machine_free_slots, plan_pool
from chalicelib.capacity.model import Demand, Machine, MachineState, PoolPlan, Removal, RemovalReason
from chalicelib.capacity.routing import pool_for_tags, runner_takes

__all__ = [
    "Demand",
    "Machine",
    "MachineState",
    "PoolPlan",
    "Removal",
    "RemovalReason",
    "free_slots",
    "idle_target",
    "machine_free_slots",
    "plan_pool",
    "pool_for_tags",
    "runner_takes",
]
