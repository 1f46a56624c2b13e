"""DynamoStore reads items with a fast path for the common attribute types: it must return exactly what
boto3's TypeDeserializer returns, value and type, for every item."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.aws import AwsClients
from chalicelib.store import DynamoStore

_numbers = st.integers(min_value=-(10**12), max_value=10**12) | st.decimals(
    min_value=-(10**6), max_value=10**6, places=3, allow_nan=False
)
_scalars = st.text(max_size=8) | _numbers | st.booleans() | st.none()
_values = st.recursive(
    _scalars
    | st.frozensets(st.integers(min_value=0, max_value=10**9), min_size=1).map(set)
    | st.frozensets(st.text(min_size=1, max_size=4), min_size=1).map(set),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@given(st.dictionaries(st.text(min_size=1, max_size=6), _values, max_size=6))
def test_fast_load_reads_every_item_as_type_deserializer_does(values: dict[str, Any]) -> None:
    # GIVEN an item as DynamoDB returns it
    serializer, deserializer = TypeSerializer(), TypeDeserializer()
    item = {name: serializer.serialize(value) for name, value in values.items()}
    # WHEN the store loads it
    loaded = DynamoStore(AwsClients(), "table")._load(item)
    # THEN every value and its type are TypeDeserializer's
    assert _same(loaded, {name: deserializer.deserialize(raw) for name, raw in item.items()})


def test_numbers_stay_decimals_and_number_sets_sets_of_decimals() -> None:
    item = {"n": {"N": "3"}, "ids": {"NS": ["1", "2"]}, "tags": {"L": [{"S": "linux"}]}}
    loaded = DynamoStore(AwsClients(), "table")._load(item)
    assert loaded == {"n": Decimal(3), "ids": {Decimal(1), Decimal(2)}, "tags": ["linux"]}
