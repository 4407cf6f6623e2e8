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
        (b'{"h":{"x":{"s":"\xff"}}}', "invalid UTF-8"),
        (b'{"h":{"x":{"s":"\xed\xa0\x80"}}}', "invalid UTF-8"),
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
        (b'{"h":{"x":{"a":1e400}}}', "Record 'x' in store 'h' is not valid JSON"),
        (b'{"h":{"x":{"a":' + b"9" * 400 + b"}}}", "Record 'x' in store 'h' is not valid JSON"),
        (b'{"h":{"x":[1]}}', "Record 'x' in store 'h' must be a JSON object"),
        (b'{"h":{"x":"text"}}', "Record 'x' in store 'h' must be a JSON object"),
        (b'{"h":[]}', "Store 'h' must be an object"),
        (b"[]", "stores must be an object"),
        (b'{"":{}}', "Store name '' must be 1 to 64 characters"),
        (b'{"h":{"a\\u0001":{}}}', "contains control characters"),
    ],
)
def test_invalid_shapes_are_refused_naming_the_offender(stores_text: bytes, message: str) -> None:
    with pytest.raises(InvalidStores, match=message):
        decode_push(body(stores_text))


def test_big_numbers_inside_strings_are_not_mistaken_for_numbers() -> None:
    push = decode_push(body(b'{"h":{"x":{"note":"1e400 and ' + b"9" * 400 + b'"}}}'))
    assert orjson.loads(bytes(push.stores["h"]["x"]))["note"].startswith("1e400")


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
