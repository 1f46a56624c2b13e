"""Benchmark of the one-minute reconcile tick at fleet scale (100 pools x 1,000 machines): CPU and AWS calls.

The REAL `AsgFleet` and `DynamoStore` run through the real `AwsClients` and real botocore clients; no moto
and no network. `FakeAws` answers each request in process from a `before-call` hook registered on those
clients, the same short-circuit `AwsClients`' fault injector uses. So the AWS calls per tick are the
adapters' own counts (`AwsClients.calls`, by operation), and the CPU per tick includes what a Lambda spends
in botocore per call (parameter validation, serialisation, endpoint resolution) and in our code
(deserialising DynamoDB items, the engine, the executor). Left out: request signing, the network, and
botocore's parsing of response bodies. The fake's own CPU is timed inside its hook and subtracted
(`scaler_cpu_ms`); `cpu_ms` keeps it in.

Each minute is measured twice: inline (the tick reconciles every pool, `reconcile_all`) and fanned out (the
tick's invocation queues one message per pool through `DirtyQueue`, then one invocation per pool runs
`reconcile_pool`, as `pool_dirty` does above `tick_inline_pools`). Fanned out, the figure that must stay
small is the largest single invocation; the minute's sum is the fleet's CPU bill.

Ratios are against a small baseline (1 pool x 10 machines) measured in the same run; results go to
`bench/reconcile.json`. Run: `python -m sim.bench_reconcile [--repetitions N] [--quick]`. Imports chalicelib's
adapters and use case, botocore/boto3 for the clients; nothing from the rest of sim/.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, cast

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore import xform_name

from chalicelib.aws import AwsClients, HookResponse
from chalicelib.config import Config, GitLabConfig, Policy, Pool
from chalicelib.errors import AwsCallError
from chalicelib.fleet import AsgFleet
from chalicelib.queue import DirtyQueue
from chalicelib.reconcile import Reconciler, ReconcileResult
from chalicelib.resources import GSI_POOL, GSI_POOL_PK, TABLE_PK, TABLE_SK
from chalicelib.store import DynamoStore, JobRecord, MachineRecord

OUT = Path(__file__).resolve().parents[1] / "bench" / "reconcile.json"
#: Every tick runs at this instant, so repeated ticks of one state are identical.
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TABLE = "runner-scaler-bench"
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/000000000000/runner-scaler-bench-dirty.fifo"
GITLAB = "gitlab.example.com"
MAX_USE_COUNT = 10
#: DynamoDB returns at most 1 MB of items per Query page (DynamoDB developer guide, "Paginating results").
QUERY_PAGE_BYTES = 1024 * 1024
#: DescribeAutoScalingGroups answers at most MaxRecords groups per page; 50 when not given (API reference).
ASG_PAGE = 50
_READS = frozenset({"dynamodb.Query", "dynamodb.GetItem"})
_WRITES = frozenset({"dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.DeleteItem"})
_LEASE_OPS = 2  # per pool and tick: the lease's conditional PutItem and its DeleteItem

#: A realistic pool, as fractions of its machines (the rest are busy). What each costs the tick that first
#: sees it: "starting"/"finished" credit a job to their machine, "ready_now" is marked ready, "unprotected"
#: is protected, "orphan" (launch event lost) is adopted, "vanished" (record without instance) is forgotten;
#: "idle_old", "used_up", "stuck" and "draining" are removal candidates, "busy" must never be one.
MIX: tuple[tuple[str, float], ...] = (
    ("starting", 0.03),
    ("finished", 0.03),
    ("idle", 0.15),
    ("idle_old", 0.08),
    ("used_up", 0.04),
    ("booting", 0.08),
    ("ready_now", 0.02),
    ("stuck", 0.01),
    ("draining", 0.01),
    ("unprotected", 0.01),
    ("orphan", 0.01),
    ("vanished", 0.01),
)
#: Pending jobs per pool as a fraction of its machines: even pools are bursting (they scale up), odd pools
#: are quiet (their idle machines past idle_time go).
PENDING_BURST = 0.5
PENDING_QUIET = 0.02


# -- the fake at the AwsClients seam ----------------------------------------------------------------------


class FakeAwsError(Exception):
    """An AWS error response: `code` as AWS spells it, HTTP `status`."""

    def __init__(self, code: str, message: str = "", status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status


@dataclass
class FakeGroup:
    name: str
    desired: int
    max_size: int
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)  # as DescribeAutoScalingGroups says


@dataclass
class FakeState:
    """All the fake AWS holds. Items and instances are replaced, never mutated, so `copy` can be shallow."""

    groups: dict[str, FakeGroup] = field(default_factory=dict)
    group_of: dict[str, str] = field(default_factory=dict)  # instance id -> group name
    launch_times: dict[str, datetime] = field(default_factory=dict)
    items: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # DynamoDB JSON
    sizes: dict[tuple[str, str], int] = field(default_factory=dict)
    by_pk: dict[str, dict[tuple[str, str], None]] = field(default_factory=dict)
    by_gsi: dict[str, dict[tuple[str, str], None]] = field(default_factory=dict)
    launched: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # pools named on the dirty queue, in order
    next_instance: int = 1

    def copy(self) -> FakeState:
        return FakeState(
            groups={
                n: FakeGroup(g.name, g.desired, g.max_size, dict(g.instances)) for n, g in self.groups.items()
            },
            group_of=dict(self.group_of),
            launch_times=dict(self.launch_times),
            items=dict(self.items),
            sizes=dict(self.sizes),
            by_pk={k: dict(v) for k, v in self.by_pk.items()},
            by_gsi={k: dict(v) for k, v in self.by_gsi.items()},
            launched=list(self.launched),
            terminated=list(self.terminated),
            queued=list(self.queued),
            next_instance=self.next_instance,
        )


class FakeAws:
    """EC2 Auto Scaling, EC2 and one DynamoDB table in memory, answering the requests our adapters make.

    DynamoDB's expressions are evaluated by a small parser of the grammar `DynamoStore` writes (SET/ADD/
    DELETE/REMOVE, if_not_exists, comparisons, AND/OR/NOT, attribute_(not_)exists, contains, size); an
    operation or expression it does not know raises, so a new kind of request cannot be silently miscounted.
    """

    def __init__(self) -> None:
        self.state = FakeState()
        self.cpu_s = 0.0  # the fake's own CPU, subtracted from the tick's
        self.items_read = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "describe_auto_scaling_groups": self._describe_groups,
            "describe_instances": self._describe_instances,
            "set_desired_capacity": self._set_desired,
            "set_instance_protection": self._protect,
            "terminate_instance_in_auto_scaling_group": self._terminate,
            "describe_auto_scaling_instances": self._describe_asg_instances,
            "update_auto_scaling_group": lambda params: {},
            "put_item": self._put_item,
            "update_item": self._update_item,
            "delete_item": self._delete_item,
            "get_item": self._get_item,
            "query": self._query,
            "send_message_batch": self._send_batch,
        }

    # -- wiring ---------------------------------------------------------------------------------------
    def install(
        self, aws: AwsClients, services: Iterable[str] = ("autoscaling", "ec2", "dynamodb", "sqs")
    ) -> None:
        """Answer every call `aws` makes to `services`: the request is built by botocore, never sent."""
        for service in services:
            events = aws.client(service).meta.events
            events.register("before-parameter-build", _keep_params)
            events.register("before-call", self._before_call)

    def _before_call(
        self, model: Any, context: dict[str, Any], **_: Any
    ) -> tuple[HookResponse, dict[str, Any]]:
        try:
            return HookResponse(200), self.handle(xform_name(model.name), context["bench_params"])
        except FakeAwsError as exc:
            error = {"Error": {"Code": exc.code, "Message": str(exc)}}
            return HookResponse(exc.status), {**error, "ResponseMetadata": {"HTTPStatusCode": exc.status}}

    def handle(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Answer one call (`operation` in snake_case), timing the fake's own CPU."""
        started = time.process_time()
        try:
            handler = self._handlers.get(operation)
            if handler is None:
                raise NotImplementedError(f"FakeAws does not answer {operation}: add it before benchmarking")
            return handler(dict(params))
        finally:
            self.cpu_s += time.process_time() - started

    # -- Auto Scaling and EC2 ---------------------------------------------------------------------------
    def add_group(self, name: str, desired: int, max_size: int) -> None:
        self.state.groups[name] = FakeGroup(name, desired, max_size)

    def add_instance(
        self, group: str, instance_id: str, state: str, launched: datetime, *, protected: bool = True
    ) -> None:
        self.state.groups[group].instances[instance_id] = _instance(instance_id, state, protected)
        self.state.group_of[instance_id] = group
        self.state.launch_times[instance_id] = launched

    def _describe_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        names = [n for n in params["AutoScalingGroupNames"] if n in self.state.groups]
        start = int(params.get("NextToken") or 0)
        end = start + int(params.get("MaxRecords") or ASG_PAGE)
        page: dict[str, Any] = {
            "AutoScalingGroups": [self._group(self.state.groups[n]) for n in names[start:end]]
        }
        if end < len(names):
            page["NextToken"] = str(end)
        return page

    def _group(self, group: FakeGroup) -> dict[str, Any]:
        return {
            "AutoScalingGroupName": group.name,
            "DesiredCapacity": group.desired,
            "MinSize": 0,
            "MaxSize": group.max_size,
            "Instances": list(group.instances.values()),
            # A Spot group as infra/ makes one (a mixed-instances policy), so the fallback's fault read runs.
            "MixedInstancesPolicy": {
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateName": f"{group.name}-lt",
                        "Version": "$Latest",
                    },
                    "Overrides": [{"InstanceType": "m7i.large"}, {"InstanceType": "m6i.large"}],
                },
                "InstancesDistribution": {
                    "OnDemandBaseCapacity": 0,
                    "OnDemandPercentageAboveBaseCapacity": 0,
                    "OnDemandAllocationStrategy": "prioritized",
                    "SpotAllocationStrategy": "price-capacity-optimized",
                },
            },
        }

    def _describe_instances(self, params: dict[str, Any]) -> dict[str, Any]:
        times = self.state.launch_times
        missing = [i for i in params["InstanceIds"] if i not in times]
        if missing:
            raise FakeAwsError("InvalidInstanceID.NotFound", f"{missing[0]} does not exist")
        return {
            "Reservations": [
                {"Instances": [{"InstanceId": i, "LaunchTime": times[i]}]} for i in params["InstanceIds"]
            ]
        }

    def _set_desired(self, params: dict[str, Any]) -> dict[str, Any]:
        group = self.state.groups[params["AutoScalingGroupName"]]
        desired = int(params["DesiredCapacity"])
        if desired > group.max_size:
            raise FakeAwsError("ValidationError", f"desired {desired} above max size {group.max_size}")
        group.desired = desired
        while len(group.instances) < desired:  # launched protected: NewInstancesProtectedFromScaleIn
            instance_id = f"i-f{self.state.next_instance:016x}"
            self.state.next_instance += 1
            self.add_instance(group.name, instance_id, "Pending", T0)
            self.state.launched.append(instance_id)
        return {}

    def _protect(self, params: dict[str, Any]) -> dict[str, Any]:
        group = self.state.groups[params["AutoScalingGroupName"]]
        for instance_id in params["InstanceIds"]:
            old = group.instances[instance_id]
            group.instances[instance_id] = {**old, "ProtectedFromScaleIn": params["ProtectedFromScaleIn"]}
        return {}

    def _describe_asg_instances(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeAutoScalingInstances: each named instance still in a group, with its lifecycle state."""
        found = []
        for instance_id in params["InstanceIds"]:
            name = self.state.group_of.get(instance_id)
            if name is not None:
                instance = self.state.groups[name].instances[instance_id]
                found.append({**instance, "AutoScalingGroupName": name})
        return {"AutoScalingInstances": found}

    def _terminate(self, params: dict[str, Any]) -> dict[str, Any]:
        instance_id = params["InstanceId"]
        name = self.state.group_of.pop(instance_id, None)
        if name is None:
            raise FakeAwsError("ValidationError", f"instance {instance_id} is not in an Auto Scaling group")
        group = self.state.groups[name]
        del group.instances[instance_id]
        if params["ShouldDecrementDesiredCapacity"]:
            group.desired -= 1
        self.state.terminated.append(instance_id)
        return {}

    # -- SQS ------------------------------------------------------------------------------------------
    def _send_batch(self, params: dict[str, Any]) -> dict[str, Any]:
        """The dirty queue: each entry's body is kept (a pool to reconcile), every entry succeeds."""
        entries = params["Entries"]
        if len(entries) > 10:
            raise FakeAwsError(
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest", f"{len(entries)} entries"
            )
        self.state.queued.extend(json.loads(e["MessageBody"])["pool"] for e in entries)
        return {"Successful": [{"Id": e["Id"], "MessageId": e["Id"]} for e in entries], "Failed": []}

    # -- DynamoDB -------------------------------------------------------------------------------------
    def _put_item(self, params: dict[str, Any]) -> dict[str, Any]:
        item = params["Item"]
        key = (item[TABLE_PK]["S"], item[TABLE_SK]["S"])
        self._check(params, key)
        self._store(key, item)
        return {}

    def _update_item(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (params["Key"][TABLE_PK]["S"], params["Key"][TABLE_SK]["S"])
        self._check(params, key)
        old = self.state.items.get(key) or dict(params["Key"])
        update = _Update(
            params["UpdateExpression"],
            params.get("ExpressionAttributeNames", {}),
            params.get("ExpressionAttributeValues", {}),
        )
        new = update.apply(old)
        self._store(key, new)
        return {"Attributes": new} if params.get("ReturnValues") == "ALL_NEW" else {}

    def _delete_item(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (params["Key"][TABLE_PK]["S"], params["Key"][TABLE_SK]["S"])
        self._check(params, key)
        self._store(key, None)
        return {}

    def _get_item(self, params: dict[str, Any]) -> dict[str, Any]:
        item = self.state.items.get((params["Key"][TABLE_PK]["S"], params["Key"][TABLE_SK]["S"]))
        self.items_read += item is not None
        return {"Item": item} if item is not None else {}

    def _query(self, params: dict[str, Any]) -> dict[str, Any]:
        match = re.fullmatch(r"\s*(#?\w+)\s*=\s*(:\w+)\s*", params["KeyConditionExpression"])
        if match is None:
            raise NotImplementedError(f"key condition {params['KeyConditionExpression']!r}")
        attribute = params.get("ExpressionAttributeNames", {}).get(match[1], match[1])
        value = params["ExpressionAttributeValues"][match[2]]["S"]
        index = params.get("IndexName")
        if (index, attribute) not in {(None, TABLE_PK), (GSI_POOL, GSI_POOL_PK)}:
            raise NotImplementedError(f"query on {index or 'the table'} by {attribute}")
        keys = list((self.state.by_gsi if index else self.state.by_pk).get(value, {}))
        start = params.get("ExclusiveStartKey")
        position = keys.index((start[TABLE_PK]["S"], start[TABLE_SK]["S"])) + 1 if start else 0
        items: list[dict[str, Any]] = []
        size = 0
        for key in keys[position:]:
            if size >= QUERY_PAGE_BYTES:
                break
            items.append(self.state.items[key])
            size += self.state.sizes[key]
        page: dict[str, Any] = {"Items": items, "Count": len(items), "ScannedCount": len(items)}
        if position + len(items) < len(keys):
            last = items[-1]
            page["LastEvaluatedKey"] = {k: last[k] for k in (TABLE_PK, TABLE_SK, GSI_POOL_PK) if k in last}
        self.items_read += len(items)
        return page

    def _check(self, params: dict[str, Any], key: tuple[str, str]) -> None:
        condition = params.get("ConditionExpression")
        if not condition:
            return
        names = params.get("ExpressionAttributeNames", {})
        values = params.get("ExpressionAttributeValues", {})
        if not _Condition(condition, names, values).holds(self.state.items.get(key, {})):
            raise FakeAwsError("ConditionalCheckFailedException", "The conditional request failed")

    def _store(self, key: tuple[str, str], item: dict[str, Any] | None) -> None:
        state = self.state
        old = state.items.pop(key, None)
        if old is not None and GSI_POOL_PK in old:
            state.by_gsi[old[GSI_POOL_PK]["S"]].pop(key, None)
        state.sizes.pop(key, None)
        if item is None:
            state.by_pk.get(key[0], {}).pop(key, None)
            return
        state.items[key] = item
        state.sizes[key] = sum(len(k) + len(str(v)) for k, v in item.items())
        state.by_pk.setdefault(key[0], {})[key] = None
        if GSI_POOL_PK in item:
            state.by_gsi.setdefault(item[GSI_POOL_PK]["S"], {})[key] = None


def _keep_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """Keep the call's own parameters where the `before-call` hook finds them (the request context)."""
    context["bench_params"] = params


def _instance(instance_id: str, state: str, protected: bool) -> dict[str, Any]:
    return {
        "InstanceId": instance_id,
        "InstanceType": "m7i.large",
        "AvailabilityZone": "eu-west-1a",
        "LifecycleState": state,
        "HealthStatus": "Healthy",
        "LaunchTemplate": {"LaunchTemplateName": "lt", "Version": "1"},
        "ProtectedFromScaleIn": protected,
    }


# -- DynamoDB expressions: the grammar DynamoStore writes --------------------------------------------------

_TOKEN = re.compile(r"\s*(#?\w+|:\w+|<>|<=|>=|[=<>(),+\-])")
_CLAUSES = frozenset({"SET", "ADD", "DELETE", "REMOVE"})
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "<>": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}
_PLAIN = TypeDeserializer()


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise NotImplementedError(f"cannot read expression {text!r} at {position}")
        out.append(match[1])
        position = match.end()
    return out


class _Cursor:
    def __init__(self, text: str, names: Mapping[str, str], values: Mapping[str, Any]) -> None:
        self._tokens = _tokens(text)
        self._at = 0
        self._names = names
        self._values = values

    def _peek(self) -> str:
        return self._tokens[self._at] if self._at < len(self._tokens) else ""

    def _next(self) -> str:
        token = self._peek()
        if not token:
            raise NotImplementedError("expression ended early")
        self._at += 1
        return token

    def _expect(self, token: str) -> None:
        if self._next() != token:
            raise NotImplementedError(f"expected {token!r} in expression")

    def _path(self) -> str:
        token = self._next()
        return self._names.get(token, token)


class _Condition(_Cursor):
    """A ConditionExpression evaluated on one item (DynamoDB JSON); a missing attribute compares false."""

    def holds(self, item: Mapping[str, Any]) -> bool:
        self._item = item
        result = self._or()
        if self._peek():
            raise NotImplementedError(f"unread condition tail {self._peek()!r}")
        return result

    def _or(self) -> bool:
        result = self._and()
        while self._peek().upper() == "OR":
            self._at += 1
            result = self._and() or result
        return result

    def _and(self) -> bool:
        result = self._not()
        while self._peek().upper() == "AND":
            self._at += 1
            result = self._not() and result
        return result

    def _not(self) -> bool:
        if self._peek().upper() == "NOT":
            self._at += 1
            return not self._not()
        return self._primary()

    def _primary(self) -> bool:
        token = self._next()
        if token == "(":
            result = self._or()
            self._expect(")")
            return result
        if token in {"attribute_exists", "attribute_not_exists", "contains"}:
            self._expect("(")
            path = self._path()
            if token == "contains":
                self._expect(",")
                needle = self._operand()
                self._expect(")")
                haystack = self._attribute(path)
                return haystack is not None and needle in haystack
            self._expect(")")
            return (path in self._item) == (token == "attribute_exists")
        self._at -= 1
        left = self._operand()
        compare = _COMPARE[self._next()]
        right = self._operand()
        return left is not None and right is not None and compare(left, right)

    def _operand(self) -> Any:
        token = self._next()
        if token == "size":
            self._expect("(")
            value = self._attribute(self._path())
            self._expect(")")
            return None if value is None else len(value)
        if token.startswith(":"):
            return _PLAIN.deserialize(self._values[token])
        return self._attribute(self._names.get(token, token))

    def _attribute(self, path: str) -> Any:
        raw = self._item.get(path)
        return None if raw is None else _PLAIN.deserialize(raw)


class _Update(_Cursor):
    """An UpdateExpression applied to one item (DynamoDB JSON): a new item, the old one left untouched."""

    def apply(self, old: Mapping[str, Any]) -> dict[str, Any]:
        new = dict(old)
        while self._peek():
            clause = self._next().upper()
            if clause not in _CLAUSES:
                raise NotImplementedError(f"update clause {clause!r}")
            while True:
                self._action(clause, old, new)
                if self._peek() != ",":
                    break
                self._at += 1
        return new

    def _action(self, clause: str, old: Mapping[str, Any], new: dict[str, Any]) -> None:
        path = self._path()
        if clause == "REMOVE":
            new.pop(path, None)
        elif clause == "SET":
            self._expect("=")
            value = self._term(old)
            if self._peek() in {"+", "-"}:
                sign = 1 if self._next() == "+" else -1
                other = self._term(old)
                value = {"N": str(Decimal(value["N"]) + sign * Decimal(other["N"]))}
            new[path] = value
        else:
            _add_or_delete(clause, new, path, self._values[self._next()])

    def _term(self, old: Mapping[str, Any]) -> Any:
        token = self._next()
        if token == "if_not_exists":
            self._expect("(")
            path = self._path()
            self._expect(",")
            fallback = self._term(old)
            self._expect(")")
            return old.get(path, fallback)
        if token.startswith(":"):
            return self._values[token]
        return old[self._names.get(token, token)]


def _add_or_delete(clause: str, item: dict[str, Any], path: str, value: Mapping[str, Any]) -> None:
    """ADD a number or set members, or DELETE set members (an emptied set disappears, as in DynamoDB)."""
    (kind, members), existing = next(iter(value.items())), item.get(path)
    if kind == "N":
        base = Decimal(existing["N"]) if existing else Decimal(0)
        item[path] = {"N": str(base + Decimal(members))}
        return
    have: list[str] = list(existing[kind]) if existing else []
    if clause == "ADD":
        item[path] = {kind: have + [m for m in members if m not in have]}
        return
    left = [m for m in have if m not in members]
    if left:
        item[path] = {kind: left}
    else:
        item.pop(path, None)


# -- seeding, outside the clock ---------------------------------------------------------------------------


class _DirectAws:
    """Duck-typed `AwsClients` for seeding only: the adapter's calls go straight to the fake, no botocore."""

    def __init__(self, fake: FakeAws) -> None:
        self._fake = fake

    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        try:
            return self._fake.handle(operation, params)
        except FakeAwsError as exc:
            raise AwsCallError(service, operation, exc.code, str(exc), retryable=False) from exc

    def paginate(self, service: str, operation: str, result_key: str, **params: Any) -> list[Any]:
        raise NotImplementedError("seeding only writes")


@dataclass(frozen=True)
class Shape:
    """One benchmark size: `pools` pools of `machines` machines each, in the MIX of states."""

    name: str
    pools: int
    machines: int


@dataclass
class Seeded:
    """What was seeded, for the checks: the machines that hold a job, and per pool the removal candidates."""

    config: Config
    busy: set[str] = field(default_factory=set)
    must_go: set[str] = field(default_factory=set)  # used up, stuck, or already draining
    idle_old: dict[str, set[str]] = field(default_factory=dict)  # pool -> idle past idle_time
    bursting: set[str] = field(default_factory=set)  # pools with more pending jobs than free slots


def bench_config(shape: Shape) -> Config:
    """Pools with Spot-style instance types (so the fallback's fault read runs too) and an idle target."""
    pools = tuple(
        Pool(
            name=f"pool-{i:03d}",
            asg=f"asg-{i:03d}",
            tags=("bench", f"pool-{i:03d}"),
            max_instances=shape.machines * 3 // 2 + 10,
            max_use_count=MAX_USE_COUNT,
            instance_types=("m7i.large", "m6i.large"),
            spot=True,
            policy=(Policy(idle_count=max(1, shape.machines // 50), idle_time=timedelta(minutes=10)),),
        )
        for i in range(shape.pools)
    )
    return Config(gitlab=GitLabConfig(url=f"https://{GITLAB}"), pools=pools)


def layout(machines: int) -> list[str]:
    """The state of each machine of a pool: MIX's fractions, rounded, at least one busy machine."""
    kinds: list[str] = []
    for kind, fraction in MIX:
        kinds += [kind] * round(machines * fraction)
    return kinds[: max(0, machines - 1)] + ["busy"] * max(1, machines - len(kinds))


def seed(fake: FakeAws, shape: Shape) -> Seeded:
    """Fill the fake AWS with `shape`'s fleet: groups and instances directly, records through DynamoStore."""
    config = bench_config(shape)
    seeded = Seeded(config)
    store = DynamoStore(cast(AwsClients, _DirectAws(fake)), TABLE)
    jobs = iter(range(1, 10**9))
    for index, pool in enumerate(config.pools):
        kinds = layout(shape.machines)
        fake.add_group(pool.asg, sum(k != "vanished" for k in kinds), pool.max_instances)
        seeded.idle_old[pool.name] = set()
        for number, kind in enumerate(kinds):
            instance_id = f"i-{index:04x}{number:013x}"
            _seed_machine(fake, store, seeded, pool, instance_id, kind, jobs)
        pending = PENDING_BURST if index % 2 == 0 else PENDING_QUIET
        if index % 2 == 0:
            seeded.bursting.add(pool.name)
        for _ in range(round(shape.machines * pending)):
            store.record_job(_job(pool, next(jobs), "pending"), T0)
    return seeded


def _seed_machine(
    fake: FakeAws,
    store: DynamoStore,
    seeded: Seeded,
    pool: Pool,
    instance_id: str,
    kind: str,
    jobs: Iterator[int],
) -> None:
    minutes = {"stuck": 30, "booting": 2, "orphan": 3, "ready_now": 4}.get(kind, 90)
    launched = T0 - timedelta(minutes=minutes)
    if kind != "vanished":
        state = "Pending" if kind in {"booting", "stuck", "orphan"} else "InService"
        fake.add_instance(pool.asg, instance_id, state, launched, protected=kind != "unprotected")
    if kind == "orphan":
        return
    record = MachineRecord(instance_id, pool.name, launched, runner_id=_runner_id(instance_id))
    if kind not in {"booting", "stuck", "ready_now"}:
        record = _with(record, ready_at=T0 - timedelta(minutes=80), last_busy_at=T0 - timedelta(minutes=3))
    if kind in {"busy", "finished", "starting"}:
        record = _seed_job(store, seeded, pool, record, kind, next(jobs))
    elif kind == "idle_old":
        record = _with(record, last_busy_at=T0 - timedelta(minutes=40))
        seeded.idle_old[pool.name].add(instance_id)
    elif kind == "used_up":
        record = _with(record, job_ids=frozenset(next(jobs) for _ in range(MAX_USE_COUNT)))
    elif kind == "draining":
        record = _with(record, draining_since=T0 - timedelta(minutes=1), drain_reason="idle")
    if kind in {"used_up", "stuck", "draining"}:
        seeded.must_go.add(instance_id)
    store.put_machine(record)


def _seed_job(
    store: DynamoStore, seeded: Seeded, pool: Pool, record: MachineRecord, kind: str, job: int
) -> MachineRecord:
    """A job on the machine: running and credited (busy), running and not yet credited (starting), or
    finished and not yet credited (finished)."""
    status = "success" if kind == "finished" else "running"
    store.record_job(_job(pool, job, status, record.instance_id), T0)
    if kind != "finished":
        seeded.busy.add(record.instance_id)
    if kind == "starting":
        return record
    return _with(record, job_ids=frozenset({job}), running=frozenset({job}))


def _with(record: MachineRecord, **changes: Any) -> MachineRecord:
    return replace(record, **changes)


def _runner_id(instance_id: str) -> int:
    """A stable runner id per machine (the hex of its instance id), the same in every run."""
    return int(instance_id.removeprefix("i-"), 16) % 10**9


def _job(pool: Pool, job_id: int, status: str, machine: str = "") -> JobRecord:
    done = status == "success"
    return JobRecord(
        gitlab=GITLAB,
        job_id=job_id,
        status=status,
        project_id=1 + job_id % 97,
        pipeline_id=job_id // 5,
        pool=pool.name,
        tags=pool.tags,
        runner_id=_runner_id(machine) if machine else None,
        machine_id=machine,
        created_at=T0 - timedelta(minutes=5),
        started_at=T0 - timedelta(minutes=4) if machine else None,
        finished_at=T0 - timedelta(minutes=1) if done else None,
    )


# -- the GitLab side: the drain's re-check, counted -------------------------------------------------------


class CountingRunners:
    """`RunnerControl` that counts calls per method; GitLab reports no running job on a paused runner."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.paused: set[int] = set()

    def pause_runner(self, runner_id: int, paused: bool = True) -> None:
        self.calls["gitlab.pause_runner"] += 1
        (self.paused.add if paused else self.paused.discard)(runner_id)

    def runner_jobs(self, runner_id: int, status: str = "running") -> Sequence[Any]:
        self.calls["gitlab.runner_jobs"] += 1
        return []

    def list_runners(self, description_prefix: str, **scope: Any) -> Sequence[Any]:
        self.calls["gitlab.list_runners"] += 1
        return []


# -- measuring --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One shape's world: the fake AWS, the real adapters on real botocore clients, and the reconciler."""

    shape: Shape
    fake: FakeAws
    aws: AwsClients
    runners: CountingRunners
    reconciler: Reconciler
    queue: DirtyQueue
    seeded: Seeded

    @classmethod
    def build(cls, shape: Shape) -> Bench:
        fake = FakeAws()
        seeded = seed(fake, shape)
        session = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name="eu-west-1"
        )
        aws = AwsClients(session, sleep=lambda _: None)
        fake.install(aws)
        runners = CountingRunners()
        reconciler = Reconciler(seeded.config, DynamoStore(aws, TABLE), AsgFleet(aws), runners, owner="bench")
        return cls(shape, fake, aws, runners, reconciler, DirtyQueue(aws, QUEUE_URL), seeded)

    def tick(self) -> Tick:
        """One `reconcile_all` at T0 (the inline tick), with its CPU, its calls and what it decided."""
        return self._invocation(lambda: self.reconciler.reconcile_all(T0))

    def fan_out(self) -> FanOut:
        """The fanned-out minute at T0: the tick's invocation queues every pool (what `run_tick` does above
        `tick_inline_pools`), then one `pool_dirty` invocation per queued pool reconciles it alone."""
        queued = len(self.fake.state.queued)
        pools = [p.name for p in self.seeded.config.pools]
        tick = self._invocation(
            lambda: _no_results(self.queue.mark_dirty_batch(dict.fromkeys(pools, "tick"), T0))
        )
        by_name = {p.name: p for p in self.seeded.config.pools}
        invocations = [
            self._invocation(partial(self._reconcile_one, by_name[name]))
            for name in self.fake.state.queued[queued:]
        ]
        return FanOut(tick, invocations)

    def _reconcile_one(self, pool: Pool) -> list[ReconcileResult]:
        return [self.reconciler.reconcile_pool(pool, T0)]

    def _invocation(self, work: Callable[[], list[ReconcileResult]]) -> Tick:
        self.aws.calls.clear()
        self.runners.calls.clear()
        self.fake.cpu_s = 0.0
        self.fake.items_read = 0
        launched, terminated = len(self.fake.state.launched), len(self.fake.state.terminated)
        started = time.process_time()
        results = work()
        cpu_s = time.process_time() - started
        return Tick(
            cpu_s=cpu_s,
            fake_cpu_s=self.fake.cpu_s,
            aws_calls=Counter(self.aws.calls),
            gitlab_calls=Counter(self.runners.calls),
            items_read=self.fake.items_read,
            results=results,
            launched=self.fake.state.launched[launched:],
            terminated=self.fake.state.terminated[terminated:],
        )


def _no_results(unqueued: Mapping[str, str]) -> list[ReconcileResult]:
    """The tick's own invocation reconciles nothing; a pool the fake queue refused would be a bench bug."""
    if unqueued:
        raise RuntimeError(f"the fake queue refused {sorted(unqueued)}")
    return []


@dataclass
class Tick:
    """One invocation: its CPU, its AWS and GitLab calls, what it decided."""

    cpu_s: float
    fake_cpu_s: float
    aws_calls: Counter[str]
    gitlab_calls: Counter[str]
    items_read: int
    results: list[ReconcileResult]
    launched: list[str]
    terminated: list[str]

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.aws_calls.items() if op in _WRITES)

    @property
    def errors(self) -> list[str]:
        return [e for r in self.results for e in r.errors]

    @property
    def scaler_cpu_ms(self) -> float:
        return (self.cpu_s - self.fake_cpu_s) * 1000


@dataclass
class FanOut:
    """One fanned-out minute: the tick's invocation and one invocation per pool."""

    tick: Tick
    pools: list[Tick]

    def merged(self) -> Tick:
        """The whole minute as one `Tick` (CPU and calls summed), for the decision checks."""
        every = [self.tick, *self.pools]
        return Tick(
            cpu_s=sum(t.cpu_s for t in every),
            fake_cpu_s=sum(t.fake_cpu_s for t in every),
            aws_calls=sum((t.aws_calls for t in every), Counter()),
            gitlab_calls=sum((t.gitlab_calls for t in every), Counter()),
            items_read=sum(t.items_read for t in every),
            results=[r for t in every for r in t.results],
            launched=[i for t in every for i in t.launched],
            terminated=[i for t in every for i in t.terminated],
        )


def measure(shape: Shape, repetitions: int) -> dict[str, Any]:
    """The scale-event minute (the seeded fleet's first) and the steady minute (the converged fleet's), each
    run `repetitions` times from the same state, inline and fanned out; CPU is the median of the runs,
    calls are the same every run."""
    bench = Bench.build(shape)
    seeded_state = bench.fake.state.copy()
    # The fake's tables are not in a Lambda's heap: kept out of the collector, so GC pauses scale with what
    # the tick itself holds, as they would there.
    gc.collect()
    gc.freeze()
    try:
        return _measure(bench, seeded_state, repetitions)
    finally:
        gc.unfreeze()


def _measure(bench: Bench, seeded_state: FakeState, repetitions: int) -> dict[str, Any]:
    shape = bench.shape
    # Warm-up, not measured: botocore builds its operation models on first use. One pool calls them all
    # (pool 0 has an instance without a record, so DescribeInstances too), one message the queue's.
    bench.reconciler.reconcile_pool(bench.seeded.config.pools[0], T0)
    bench.queue.mark_dirty_batch({"warm-up": "tick"}, T0)
    scale: list[Tick] = []
    scale_fan: list[FanOut] = []
    for _ in range(repetitions):
        bench.fake.state = seeded_state.copy()
        scale.append(bench.tick())
        bench.fake.state = seeded_state.copy()
        scale_fan.append(bench.fan_out())
    rounds = 0
    while bench.tick().writes > _LEASE_OPS * shape.pools:  # converge: adopt the launched, forget the gone
        rounds += 1
        if rounds > 5:
            raise RuntimeError(f"{shape.name}: the fleet did not settle within 5 ticks")
    steady = [bench.tick() for _ in range(repetitions)]
    steady_fan = [bench.fan_out() for _ in range(repetitions)]
    return {
        "pools": shape.pools,
        "machines_per_pool": shape.machines,
        "machines": shape.pools * shape.machines,
        "scale_event": summarize(scale, bench.seeded),
        "steady": summarize(steady, bench.seeded),
        "fan_out": {
            "scale_event": summarize_fan_out(scale_fan, bench.seeded),
            "steady": summarize_fan_out(steady_fan, bench.seeded),
        },
    }


def summarize(ticks: Sequence[Tick], seeded: Seeded) -> dict[str, Any]:
    last = ticks[-1]
    cpu = [t.cpu_s * 1000 for t in ticks]
    calls = dict(sorted(last.aws_calls.items()))
    return {
        "cpu_ms": round(statistics.median(cpu), 2),
        "scaler_cpu_ms": round(statistics.median(t.scaler_cpu_ms for t in ticks), 2),
        "fake_cpu_ms": round(statistics.median(t.fake_cpu_s * 1000 for t in ticks), 2),
        "cpu_ms_runs": [round(c, 2) for c in cpu],
        "aws_calls": sum(calls.values()),
        "aws_calls_by_operation": calls,
        "gitlab_calls_by_operation": dict(sorted(last.gitlab_calls.items())),
        "store": {
            "reads": sum(n for op, n in calls.items() if op in _READS),
            "items_read": last.items_read,
            "writes": last.writes,
            "writes_beyond_leases": last.writes - _LEASE_OPS * len(last.results),
        },
        "decisions": {
            "launched": len(last.launched),
            "terminated": len(last.terminated),
            "busy_terminated": len(set(last.terminated) & seeded.busy),
            "drain_cancelled": sum(len(r.drain_cancelled) for r in last.results),
            "desired_after": sum(r.desired_after for r in last.results),
            "errors": len(last.errors),
        },
    }


#: pool_dirty's batch size (app.py): Lambda may hand one invocation up to this many pools' messages.
DIRTY_BATCH = 10


def summarize_fan_out(minutes: Sequence[FanOut], seeded: Seeded) -> dict[str, Any]:
    """The tick's invocation, the per-pool invocations (median and max over pools, each pool's CPU the
    median of the runs), the worst batch of `DIRTY_BATCH` pools, and the whole minute's CPU."""
    last = minutes[-1]
    per_pool = [statistics.median(m.pools[i].scaler_cpu_ms for m in minutes) for i in range(len(last.pools))]
    pool_calls = [sum(t.aws_calls.values()) for t in last.pools]
    calls = sum((t.aws_calls for t in last.pools), Counter())
    heaviest = max(range(len(per_pool)), key=per_pool.__getitem__)
    return {
        "tick": {
            "scaler_cpu_ms": round(statistics.median(m.tick.scaler_cpu_ms for m in minutes), 2),
            "aws_calls": sum(last.tick.aws_calls.values()),
            "aws_calls_by_operation": dict(sorted(last.tick.aws_calls.items())),
        },
        "pool_invocations": len(last.pools),
        "pool": {
            "scaler_cpu_ms_median": round(statistics.median(per_pool), 2),
            "scaler_cpu_ms_max": round(max(per_pool), 2),
            "aws_calls_median": statistics.median(pool_calls),
            "aws_calls_max": max(pool_calls),
            "heaviest_aws_calls_by_operation": dict(sorted(last.pools[heaviest].aws_calls.items())),
            "aws_calls_by_operation_all_pools": dict(sorted(calls.items())),
        },
        "worst_batch_of_10_cpu_ms": round(sum(sorted(per_pool, reverse=True)[:DIRTY_BATCH]), 2),
        "minute_scaler_cpu_ms": round(
            statistics.median(m.tick.scaler_cpu_ms for m in minutes) + sum(per_pool), 2
        ),
        "decisions": summarize([m.merged() for m in minutes], seeded)["decisions"],
    }


def ratios(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Each minute's figures over the baseline's inline tick: CPU, AWS calls, and the size ratios to read
    them against. Fanned out, the largest invocation (tick or pool) is what must stay under a second."""
    out: dict[str, Any] = {
        "pools": result["pools"] / baseline["pools"],
        "machines": result["machines"] / baseline["machines"],
    }
    for tick in ("scale_event", "steady"):
        ours, base, fan = result[tick], baseline[tick], result["fan_out"][tick]
        base_cpu, base_calls = max(base["scaler_cpu_ms"], 1e-3), max(base["aws_calls"], 1)
        largest = max(fan["tick"]["scaler_cpu_ms"], fan["pool"]["scaler_cpu_ms_max"])
        out[tick] = {
            "cpu": round(ours["scaler_cpu_ms"] / base_cpu, 1),
            "aws_calls": round(ours["aws_calls"] / base_calls, 1),
            "fan_out_largest_invocation_cpu": round(largest / base_cpu, 1),
            "fan_out_pool_invocation_aws_calls_max": round(fan["pool"]["aws_calls_max"] / base_calls, 1),
            "fan_out_minute_cpu": round(fan["minute_scaler_cpu_ms"] / base_cpu, 1),
        }
    return out


SHAPES = (
    Shape("baseline", 1, 10),
    Shape("10x1000", 10, 1000),
    Shape("100x100", 100, 100),
    Shape("100x1000", 100, 1000),
)
QUICK = (Shape("baseline", 1, 10), Shape("4x50", 4, 50))


def run(shapes: Sequence[Shape], repetitions: int, out: Path | None = OUT) -> dict[str, Any]:
    """Measure every shape (the first is the baseline) and write the report to `out` when given."""
    logging.getLogger("chalicelib").addHandler(logging.NullHandler())
    measured = {shape.name: measure(shape, repetitions) for shape in shapes}
    first = shapes[0].name
    baseline = measured[first]
    report = {
        "tick": (
            "inline: Reconciler.reconcile_all at one instant, every pool in one invocation (heal excluded); "
            "fan_out: the tick's invocation queues one message per pool (DirtyQueue.mark_dirty_batch), then "
            "one invocation per pool runs Reconciler.reconcile_pool (what pool_dirty calls)"
        ),
        "method": (
            "real AsgFleet + DynamoStore + DirtyQueue on real botocore clients, answered in process by a "
            "before-call hook (no moto, no network); scaler_cpu_ms = process CPU minus the fake's own; "
            "median of repetitions"
        ),
        "repetitions": repetitions,
        "mix": dict(MIX),
        "shapes": measured,
        "ratios_to_baseline": {name: ratios(r, baseline) for name, r in measured.items() if name != first},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def table(report: Mapping[str, Any]) -> str:
    """The figures as a plain table, one row per shape, minute and invocation kind."""
    columns = ("shape", "minute", "invocation", "cpu ms", "AWS calls", "by operation")
    header = "{:<10} {:<12} {:<16} {:>9} {:>9}  {}".format(*columns)
    lines = [header, "-" * len(header)]

    def row(name: str, minute: str, kind: str, cpu: float, calls: object, ops: Mapping[str, int]) -> None:
        by_op = ", ".join(f"{op.split('.')[1]} {n}" for op, n in ops.items())
        lines.append(f"{name:<10} {minute:<12} {kind:<16} {cpu:>9.1f} {calls!s:>9}  {by_op}")

    for name, result in report["shapes"].items():
        for minute in ("scale_event", "steady"):
            inline, fan = result[minute], result["fan_out"][minute]
            row(
                name,
                minute,
                "inline tick",
                inline["scaler_cpu_ms"],
                inline["aws_calls"],
                inline["aws_calls_by_operation"],
            )
            row(
                name,
                minute,
                "fan-out tick",
                fan["tick"]["scaler_cpu_ms"],
                fan["tick"]["aws_calls"],
                fan["tick"]["aws_calls_by_operation"],
            )
            pool = fan["pool"]
            row(name, minute, "pool (median)", pool["scaler_cpu_ms_median"], pool["aws_calls_median"], {})
            row(
                name,
                minute,
                "pool (max)",
                pool["scaler_cpu_ms_max"],
                pool["aws_calls_max"],
                pool["heaviest_aws_calls_by_operation"],
            )
            row(name, minute, "minute (sum)", fan["minute_scaler_cpu_ms"], "", {})
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small shapes only, results not written")
    args = parser.parse_args(argv)
    report = run(QUICK if args.quick else SHAPES, args.repetitions, None if args.quick else OUT)
    print(table(report))
    return report


if __name__ == "__main__":
    main()
