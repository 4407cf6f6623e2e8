"""The push decoder and merge rules (sync.merge), on bodies a hostile or sloppy client might send."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from sync.merge import InvalidStores, MalformedBody, decode_push, plan_merge, records_equal


def body(stores_text: bytes) -> bytes:
    return b'{"clientVersion":3,"stores":' + stores_text + b"}"


def test_records_stay_the_text_the_client_sent() -> None:
    push = decode_push(body(b'{"humans":{"h1": {"name" : "Zo\\u00eb", "n": 1.50}}}'))
    assert push.client_version == 3
    assert bytes(push.stores["humans"]["h1"]) == b'{"name" : "Zo\\u00eb", "n": 1.50}'


@pytest.mark.parametrize(
    "stores_text, message",
    [
        (b'{"h":{"x":{"a":[' + b"[" * 5000 + b"]" * 5000 + b"]}}}", "nesting too deep"),
        (b'{"h":{"x":{"a":NaN}}}', "malformed"),
        (b'{"h":{"x":{"a":1}}', "truncated"),
    ],
)
def test_malformed_bodies_are_refused(stores_text: bytes, message: str) -> None:
    with pytest.raises(MalformedBody, match=message):
        decode_push(body(stores_text))


@pytest.mark.parametrize(
    "stores_text, message",
    [
        (b'{"h":{"x":{"s":"\xff"}}}', "record 'x' in store 'h': .*UTF-8"),
        (b'{"h":{"x":{"s":"\xed\xa0\x80"}}}', "record 'x' in store 'h'"),
        (b'{"h":{"x":{"a":1e400}}}', "record 'x' in store 'h': number is infinity"),
        (b'{"h":{"x":{"a":' + b"9" * 400 + b"}}}", "record 'x' in store 'h'"),
    ],
)
def test_records_that_are_not_valid_json_are_refused_when_merged(stores_text: bytes, message: str) -> None:
    push = decode_push(body(stores_text))
    with pytest.raises(MalformedBody, match=message):
        plan_merge({}, push.stores)
    stored = {"h": {"x": msgspec.Raw(b'{"a":1}')}}
    with pytest.raises(MalformedBody, match=message):
        plan_merge(stored, push.stores)


@pytest.mark.parametrize(
    "stores_text, message",
    [
        (b'{"h":[]}', "Store 'h' must be an object"),
        (b"[]", "stores must be an object"),
        (b'{"":{}}', "Store name '' must be 1 to 64 characters"),
        (b'{"h":{"a\\u0001":{}}}', "contains control characters"),
    ],
)
def test_invalid_shapes_are_refused_naming_the_offender(stores_text: bytes, message: str) -> None:
    with pytest.raises(InvalidStores, match=message):
        plan_merge({}, decode_push(body(stores_text)).stores)


@pytest.mark.parametrize("record", [b"[1]", b'"text"', b"null", b"3"])
def test_records_that_are_not_objects_are_refused_when_merged(record: bytes) -> None:
    push = decode_push(body(b'{"h":{"x":' + record + b"}}"))
    for stored in ({}, {"h": {"x": msgspec.Raw(b'{"a":1}')}}):
        with pytest.raises(InvalidStores, match="Record 'x' in store 'h' must be a JSON object"):
            plan_merge(stored, push.stores)


def test_big_numbers_inside_strings_are_not_mistaken_for_numbers() -> None:
    push = decode_push(body(b'{"h":{"x":{"note":"1e400 and ' + b"9" * 400 + b'"}}}'))
    plan = plan_merge({}, push.stores)
    assert orjson.loads(bytes(plan.new_stores["h"]["x"]))["note"].startswith("1e400")


@pytest.mark.parametrize(
    "old, new, equal",
    [
        (b'{"a":1,"b":2}', b'{"b":2,"a":1}', True),
        (b'{"a":1}', b'{"a":1.0}', True),
        (b'{"a":1}', b'{ "a" : 1 }', True),
        (b'{"a":true}', b'{"a":1}', False),
        (b'{"a":[1,2]}', b'{"a":[2,1]}', False),
        (b'{"a":"\\u00e9"}', '{"a":"é"}'.encode(), True),
    ],
)
def test_records_compare_as_json_values(old: bytes, new: bytes, equal: bool) -> None:
    assert records_equal(msgspec.Raw(old), msgspec.Raw(new)) is equal
    plan = plan_merge({"s": {"r": msgspec.Raw(old)}}, {"s": {"r": msgspec.Raw(new)}})
    assert plan.changed is not equal
