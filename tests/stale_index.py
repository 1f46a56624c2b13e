"""The test AWS with DynamoDB's read consistency: index Queries and Scans answer with the table as it was
`lag` ago (by the test's clock), as a real global secondary index may.

DynamoDB developer guide, "DynamoDB read consistency" (amazondynamodb/latest/developerguide/
HowItWorks.ReadConsistency.html): "All reads from GSIs and streams are eventually consistent"; an
eventually consistent read "may not reflect the results of a recently completed write operation". moto
answers every read from the latest write, so without this mode no test can see what a stale index does.
A conditional write is still evaluated against the latest item, and GetItem with ConsistentRead stays
exact, as in AWS (same page, "Strongly consistent reads").

`StaleIndexAws` is an `AwsClients` (the one seam every adapter calls through): writes pass to moto and are
recorded, with the item's new state, in a per-key history stamped with the test clock; an index Query or a
Scan is answered from that history as of `now - lag`. Only the read shapes the scaler uses are modelled
(an equality key condition, no filter or projection); any other shape fails loudly rather than answer
with fresh data.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from chalicelib.aws import AwsClients

#: DynamoDB writes whose effect the history records (the key is read back, consistently, after each).
WRITES = frozenset({"put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items"})
_EQUALS = re.compile(r"^\s*(?P<name>#?[A-Za-z0-9_]+)\s*=\s*(?P<value>:[A-Za-z0-9_]+)\s*$")
_BEGINNING = datetime.min.replace(tzinfo=UTC)

Key = tuple[tuple[str, str], ...]
Version = tuple[datetime, int, dict[str, Any] | None]


class StaleIndexAws(AwsClients):
    """AwsClients whose DynamoDB index reads and scans lag writes by `lag` (per `clock`, the test clock).

    `lag` may be changed at any time; zero makes every read exact again. The history is kept in memory for
    the test's life (tests write a few thousand items at most).
    """

    def __init__(
        self, *, clock: Callable[[], datetime], lag: timedelta, region: str = "us-east-1", **kwargs: Any
    ) -> None:
        super().__init__(region=region, **kwargs)
        self.clock = clock
        self.lag = lag
        self._raw_region = region
        self._raw: Any = None
        self._tables: dict[str, _History] = {}
        self.stale_reads = 0  # reads answered from the past (for tests that check the mode was on)

    # -- the seam ------------------------------------------------------------------------------------
    def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        if service != "dynamodb":
            return super().call(service, operation, **params)
        is_index_query = operation == "query" and "IndexName" in params
        if (is_index_query or operation == "scan") and self.lag > timedelta(0):
            # The call itself still goes through the seam (counted, faulted, retried); only its items
            # are replaced by the table's past, all in one page.
            answer = super().call(service, operation, **params)
            answer.pop("LastEvaluatedKey", None)
            return answer | self._stale_read(operation, params)
        if operation in WRITES:
            for table in self._tables_written(operation, params):
                self._history(table)  # the baseline is read before the write changes anything
        result = super().call(service, operation, **params)
        if operation in WRITES:
            for table, key in self._keys_written(operation, params):
                self._history(table).record(key, self.clock(), self._read_back(table, key))
        return result

    # -- history -------------------------------------------------------------------------------------
    def _raw_client(self) -> Any:
        """A client of our own, not counted and never faulted: the history's reads are not the app's."""
        if self._raw is None:
            self._raw = boto3.client("dynamodb", region_name=self._raw_region)
        return self._raw

    def _history(self, table: str) -> _History:
        history = self._tables.get(table)
        if history is None:
            client = self._raw_client()
            schema = client.describe_table(TableName=table)["Table"]
            history = _History(schema)
            for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
                for item in page["Items"]:
                    history.record(history.key_of(item), _BEGINNING, item)
            self._tables[table] = history
        return history

    def _catch_up(self, table: str, history: _History) -> None:
        """Writes made through another client (a test's own observer) are stamped when first noticed."""
        current: dict[Key, dict[str, Any]] = {}
        for page in self._raw_client().get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            for item in page["Items"]:
                current[history.key_of(item)] = item
        history.catch_up(current, self.clock())

    def _read_back(self, table: str, key: Key) -> dict[str, Any] | None:
        got = self._raw_client().get_item(TableName=table, Key=dict(key_values(key)), ConsistentRead=True)
        item = got.get("Item")
        return dict(item) if item else None

    @staticmethod
    def _tables_written(operation: str, params: dict[str, Any]) -> list[str]:
        if operation == "batch_write_item":
            return sorted(params["RequestItems"])
        if operation == "transact_write_items":
            return sorted({next(iter(e.values()))["TableName"] for e in params["TransactItems"]})
        return [params["TableName"]]

    def _keys_written(self, operation: str, params: dict[str, Any]) -> list[tuple[str, Key]]:
        """(table, key) of every item the write may have changed."""
        if operation == "put_item":
            table = params["TableName"]
            return [(table, self._history(table).key_of(params["Item"]))]
        if operation in {"update_item", "delete_item"}:
            return [(params["TableName"], freeze(params["Key"]))]
        out: list[tuple[str, Key]] = []
        if operation == "batch_write_item":
            for table, requests in params["RequestItems"].items():
                for request in requests:
                    if "PutRequest" in request:
                        out.append((table, self._history(table).key_of(request["PutRequest"]["Item"])))
                    else:
                        out.append((table, freeze(request["DeleteRequest"]["Key"])))
            return out
        for entry in params["TransactItems"]:  # transact_write_items
            ((kind, body),) = entry.items()
            table = body["TableName"]
            if kind == "Put":
                out.append((table, self._history(table).key_of(body["Item"])))
            elif kind != "ConditionCheck":
                out.append((table, freeze(body["Key"])))
        return out

    def _stale_read(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        unsupported = {"FilterExpression", "ProjectionExpression", "Select", "ScanFilter", "QueryFilter"}
        if unsupported & set(params) or params.get("ConsistentRead"):
            raise NotImplementedError(f"StaleIndexAws cannot model a {operation} with {sorted(params)}")
        self.stale_reads += 1
        history = self._history(params["TableName"])
        self._catch_up(params["TableName"], history)
        items = history.as_of(self.clock() - self.lag)
        if operation == "scan":
            return {"Items": items, "Count": len(items), "ScannedCount": len(items)}
        index = params["IndexName"]
        hash_key, range_key = history.index_keys(index)
        match = _EQUALS.match(params["KeyConditionExpression"])
        if match is None:
            raise NotImplementedError(f"key condition {params['KeyConditionExpression']!r} is not modelled")
        name = params.get("ExpressionAttributeNames", {}).get(match["name"], match["name"])
        if name != hash_key:
            raise NotImplementedError(f"key condition on {name}, not the index's hash key {hash_key}")
        wanted = params["ExpressionAttributeValues"][match["value"]]
        found = [i for i in items if i.get(hash_key) == wanted and (range_key is None or range_key in i)]
        if range_key is not None:
            found.sort(
                key=lambda i: _sort_value(i[range_key]), reverse=not params.get("ScanIndexForward", True)
            )
        return {"Items": found, "Count": len(found), "ScannedCount": len(found)}


class _History:
    """Every version of every item of one table, in write order, each stamped with the test clock."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._key_names = [k["AttributeName"] for k in schema["KeySchema"]]
        self._indexes = {
            i["IndexName"]: {k["KeyType"]: k["AttributeName"] for k in i["KeySchema"]}
            for i in schema.get("GlobalSecondaryIndexes", [])
        }
        self._versions: dict[Key, list[Version]] = {}
        self._serial = 0

    def key_of(self, item: dict[str, Any]) -> Key:
        return freeze({name: item[name] for name in self._key_names})

    def index_keys(self, index: str) -> tuple[str, str | None]:
        keys = self._indexes[index]
        return keys["HASH"], keys.get("RANGE")

    def record(self, key: Key, at: datetime, item: dict[str, Any] | None) -> None:
        self._serial += 1
        versions = self._versions.setdefault(key, [])
        bisect.insort(versions, (at, self._serial, item), key=lambda v: (v[0], v[1]))

    def catch_up(self, current: dict[Key, dict[str, Any]], now: datetime) -> None:
        """Record, as of `now`, every item whose stored state differs from its last recorded version."""
        for key in set(current) | set(self._versions):
            versions = self._versions.get(key)
            last = versions[-1][2] if versions else None
            if current.get(key) != last:
                self.record(key, now, current.get(key))

    def as_of(self, when: datetime) -> list[dict[str, Any]]:
        """Each item as the latest write at or before `when` left it (absent if none, or deleted)."""
        out: list[dict[str, Any]] = []
        for versions in self._versions.values():
            seen = [item for at, _, item in versions if at <= when]
            if seen and seen[-1] is not None:
                out.append(seen[-1])
        return out


def freeze(key: dict[str, Any]) -> Key:
    """A hashable form of a DynamoDB key ({"pk": {"S": "..."}} -> (("pk", "S:..."),))."""
    out = []
    for name, typed in sorted(key.items()):
        ((kind, value),) = typed.items()
        out.append((name, f"{kind}:{value}"))
    return tuple(out)


def key_values(key: Key) -> list[tuple[str, dict[str, str]]]:
    pairs = []
    for name, typed in key:
        kind, _, value = typed.partition(":")
        pairs.append((name, {kind: value}))
    return pairs


def _sort_value(typed: dict[str, Any]) -> Any:
    ((kind, value),) = typed.items()
    return float(value) if kind == "N" else value
