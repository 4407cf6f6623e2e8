"""The push decoder and merge rules (sync.merge), on bodies a hostile or sloppy client might send."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from unittest import mock

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync import merge
from sync.merge import (
    InvalidStores,
    MalformedBody,
    PushBody,
    RecordRef,
    decode_push,
    plan_merge,
    records_equal,
)


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
    assert plan_merge({}, push.stores).added == [RecordRef("h", "x")]


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


# --- the fast paths: never a different outcome from the exact one ----------


def outcome(action: Callable[[], Any]) -> tuple:
    """What a client would see: the error (type and words) or the plan, texts as bytes."""
    try:
        plan = action()
    except (InvalidStores, MalformedBody) as exc:
        return ("error", type(exc).__name__, str(exc))
    if isinstance(plan, PushBody):
        stores = {name: {rid: bytes(raw) for rid, raw in records.items()} for name, records in plan.stores.items()}
        return ("push", plan.client_version, stores)
    return ("plan", plan.added, plan.modified)


def exact_plan(current: dict, incoming: dict) -> Any:
    """plan_merge with its batch checks refusing to vouch for anything, so every store takes the exact path."""
    with mock.patch.object(merge, "_records_valid", return_value=False):
        return plan_merge(current, incoming)


def raw_stores(stores: dict[str, dict[str, bytes]]) -> dict:
    return {name: {rid: msgspec.Raw(text) for rid, text in records.items()} for name, records in stores.items()}


# Record texts that the exact path takes or refuses for different reasons.
TRICKY_RECORDS = [
    b'{"n":123456789012345678901234567890}',  # beyond 64 bits: simdjson refuses, orjson reads a double
    b'{"n":-9223372036854775809}',
    b'{"n":18446744073709551615}',
    b'{"n":1e400}',
    b'{"n":1.7976931348623159e308}',
    b'{"n":1.7976931348623157e308}',
    b'{"n":4.9e-324,"m":1e-400}',
    b'{"s":"\xff"}',
    b'{"s":"\xed\xa0\x80"}',
    '{"s":"Zoë \\ud83d\\ude00"}'.encode(),
    b'{"s":"\\u0000"}',
    b'{"a":' + b"[" * 1020 + b"]" * 1020 + b"}",
    b"[1]",
    b'"text"',
    b"null",
    b"3",
    b"{}",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
record_texts = st.one_of(
    # The standard library writes any integer, as JavaScript clients may.
    st.dictionaries(st.text(max_size=5), json_values, max_size=5).map(
        lambda r: json.dumps(r, ensure_ascii=False).encode()
    ),
    st.sampled_from(TRICKY_RECORDS),
)
record_ids = st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["", "a\x01", "x" * 257, "ok"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stored=st.dictionaries(
        st.sampled_from(["h", "o"]),
        st.dictionaries(
            st.sampled_from(["a", "b", "c"]),
            record_texts.filter(lambda t: t.startswith(b"{") and _is_object(t)),
            max_size=3,
        ),
        max_size=2,
    ),
    pushed=st.dictionaries(
        st.sampled_from(["h", "o", "t"]), st.dictionaries(record_ids, record_texts, max_size=6), max_size=3
    ),
)
def test_plan_merge_agrees_with_the_exact_path(stored: dict, pushed: dict) -> None:
    current, incoming = raw_stores(stored), raw_stores(pushed)
    assert outcome(lambda: plan_merge(current, incoming)) == outcome(lambda: exact_plan(current, incoming))


class Pieces:
    """A stored store handed over piece by piece, as the file store reads a large one."""

    def __init__(self, records: dict, size: int) -> None:
        items = list(records.items())
        self.pieces = [dict(items[i : i + size]) for i in range(0, len(items), size)]

    def __iter__(self):
        return iter(self.pieces)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stored=st.dictionaries(
        st.sampled_from(["h", "o", "e"]),
        st.dictionaries(
            st.sampled_from(list("abcdefg")),
            st.sampled_from([b'{"v":1}', b'{"v":2}', b'{ "v" : 1 }', b'{"v":1.0}']),
            max_size=7,
        ),
        max_size=3,
    ),
    pushed=st.dictionaries(
        st.sampled_from(["h", "o", "t"]),
        st.dictionaries(
            st.sampled_from(list("abcdefgxyz")),
            st.sampled_from([b'{"v":1}', b'{"v":2}', b'{"v":3}', b'{"v": 2}']),
            max_size=8,
        ),
        max_size=3,
    ),
    size=st.integers(1, 4),
)
def test_a_store_read_piece_by_piece_merges_as_one_read_whole(stored: dict, pushed: dict, size: int) -> None:
    whole, incoming = raw_stores(stored), raw_stores(pushed)
    pieces = {name: Pieces(records, size) for name, records in whole.items()}
    plan = plan_merge(whole, incoming)
    assert outcome(lambda: plan_merge(pieces, incoming)) == outcome(lambda: plan)


def _is_object(text: bytes) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


@pytest.mark.parametrize("bad", [b"[1]", b'{"s":"\xff"}', b'{"n":1e400}', b'{"a":1}x', b" 3"])
@pytest.mark.parametrize("position", [0, 1, 511, 1999])
def test_an_offence_deep_in_a_big_push_is_found_and_named(bad: bytes, position: int) -> None:
    # 2,000 records of about 300 bytes: several batches, the offence in the first, a middle or the last one.
    records = {f"r{i}": b'{"i":%d,"pad":"%s"}' % (i, b"x" * 290) for i in range(2000)}
    records[f"r{position}"] = bad
    incoming = raw_stores({"h": records})
    got = outcome(lambda: plan_merge({}, incoming))
    assert got == outcome(lambda: exact_plan({}, incoming))
    assert got[0] == "error" and f"'r{position}' in store 'h'" in got[2]


def test_integers_beyond_64_bits_are_taken_as_orjson_takes_them() -> None:
    records = {f"r{i}": b'{"i":%d}' % i for i in range(1000)}
    records["r500"] = b'{"big":123456789012345678901234567890}'
    plan = plan_merge({}, raw_stores({"h": records}))
    assert len(plan.added) == 1000
    assert RecordRef("h", "r500") in plan.added


def test_one_record_bigger_than_a_batch_is_checked_by_itself() -> None:
    big = b'{"blob":"' + b"x" * (3 * merge._BATCH_MAX) + b'"}'
    records = {"small": b'{"a":1}', "big": big, "bad": b'{"n":1e400}'}
    assert outcome(lambda: plan_merge({}, raw_stores({"h": records})))[2].startswith("record 'bad' in store 'h'")
    del records["bad"]
    assert [item.id for item in plan_merge({}, raw_stores({"h": records})).added] == ["small", "big"]


push_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "clientVersion": st.one_of(
                st.none(), st.integers(-3, 2**64), st.floats(allow_nan=False), st.text(max_size=3)
            ),
            "stores": st.one_of(
                st.none(),
                st.dictionaries(
                    st.text(max_size=3), st.dictionaries(st.text(max_size=3), json_values, max_size=3), max_size=3
                ),
                json_values,
            ),
            "data": st.dictionaries(
                st.text(max_size=3), st.dictionaries(st.text(max_size=3), json_values, max_size=2), max_size=2
            ),
            "extra": json_values,
        },
    ).map(lambda body: json.dumps(body).encode()),
    st.sampled_from(
        [
            b"",
            b"[]",
            b"null",
            b'{"stores":{}',
            b'{"stores":{},"stores":{"h":{}}}',
            b'{"stores":{"h":{}},"clientVersion":1e400}',
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(body=push_bodies)
def test_decode_push_agrees_with_the_exact_decoder(body: bytes) -> None:
    assert outcome(lambda: decode_push(body)) == outcome(lambda: merge._decode_push_exact(body))
