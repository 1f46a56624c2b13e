"""The plumbing every DynamoDB adapter of the scaler's one table shares: (de)serialising items, a consistent
read by key, and a conditional write whose failed condition is an answer, not an error.

Every call goes through `AwsClients` (counted, retried, faultable). `chalicelib.store` (jobs, machines,
leases) and `chalicelib.pipelines` (prewarm state) build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalicelib.aws import DYNAMODB_CONTEXT, AwsClients, TypeDeserializer, TypeSerializer
from chalicelib.errors import AwsCallError
from chalicelib.resources import TABLE_PK, TABLE_SK

# TypeDeserializer's own conversion of a DynamoDB number (38 digits, inexact values refused).
_decimal = DYNAMODB_CONTEXT.create_decimal

CONDITION_FAILED = "ConditionalCheckFailedException"


class DynamoTable:
    """One DynamoDB table behind `AwsClients`; subclasses add the item shapes and their use cases."""

    def __init__(self, aws: AwsClients, table: str) -> None:
        self._aws = aws
        self._table = table
        self._ser = TypeSerializer()
        self._de = TypeDeserializer()

    def _dump(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(v) for k, v in values.items()}

    def _load(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Plain values of an item. Strings, numbers and number sets (nearly every attribute a tick reads,
        thousands of items per pool) skip TypeDeserializer's dispatch; the values are the ones it returns."""
        out: dict[str, Any] = {}
        for name, value in item.items():
            if "S" in value:
                out[name] = value["S"]
            elif "N" in value:
                out[name] = _decimal(value["N"])
            elif "NS" in value:
                out[name] = {_decimal(n) for n in value["NS"]}
            elif "L" in value and all("S" in v for v in value["L"]):  # a job's tags
                out[name] = [v["S"] for v in value["L"]]
            else:
                out[name] = self._de.deserialize(value)
        return out

    def _get(self, pk: str, sk: str, *, consistent: bool = True) -> dict[str, Any] | None:
        result = self._aws.call(
            "dynamodb",
            "get_item",
            TableName=self._table,
            Key=self._dump({TABLE_PK: pk, TABLE_SK: sk}),
            ConsistentRead=consistent,
        )
        item = result.get("Item")
        return self._load(item) if item else None

    def _query(
        self, key: str, *, index: str | None = None, key_attribute: str = TABLE_PK, consistent: bool = False
    ) -> list[dict[str, Any]]:
        """Every item (plain values) whose partition key `key_attribute` is `key`, in the table or `index`."""
        params: dict[str, Any] = {"IndexName": index} if index else {}
        if consistent:
            params["ConsistentRead"] = True
        items = self._aws.paginate(
            "dynamodb",
            "query",
            "Items",
            TableName=self._table,
            KeyConditionExpression="#pk = :pk",
            ExpressionAttributeNames={"#pk": key_attribute},
            ExpressionAttributeValues=self._dump({":pk": key}),
            **params,
        )
        return [self._load(item) for item in items]

    def _conditional(self, operation: str, **params: Any) -> bool:
        """A put, update or delete with a ConditionExpression: False when the condition did not hold."""
        try:
            self._aws.call("dynamodb", operation, TableName=self._table, **params)
        except AwsCallError as exc:
            if exc.code == CONDITION_FAILED:
                return False
            raise
        return True
