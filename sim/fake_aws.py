"""In-process fake AWS for the reconcile benchmark: EC2 Auto Scaling, EC2, SQS and one DynamoDB table.

`FakeAws` answers the requests the REAL adapters (`AsgFleet`, `DynamoStore`, `DirtyQueue`) make, from a
`before-call` hook on real botocore clients (the short-circuit `AwsClients`' fault injector uses), so the
adapters' own call counts and botocore's per-call CPU are what the benchmark measures. DynamoDB expressions
are evaluated by a small parser of the grammar `DynamoStore` writes. Moved out of `sim/bench_reconcile.py`,
which seeds and measures with it. Imports chalicelib's seam types and table schema, botocore/boto3.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from botocore import xform_name

from chalicelib.aws import AwsClients, HookResponse
from chalicelib.errors import AwsCallError
from chalicelib.resources import GSI_POOL, GSI_POOL_PK, TABLE_PK, TABLE_SK

#: The bench's minute 0: every tick runs at this instant (so repeated ticks of one state are identical),
#: and instances the fake launches carry it as their launch time.
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
#: DynamoDB returns at most 1 MB of items per Query page (DynamoDB developer guide, "Paginating results").
QUERY_PAGE_BYTES = 1024 * 1024
#: DescribeAutoScalingGroups answers at most MaxRecords groups per page; 50 when not given (API reference).
ASG_PAGE = 50


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


class DirectAws:
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
