"""PROTOCOL.md §1 "numeric query parameters": ``since`` (§3) and ``threshold`` (§4), read strictly.

A number is written in ASCII decimal notation only; white space, other
scripts' digits, ``_``, hex, ``nan`` and a parameter given twice are not
numbers. Any number is read exactly, however long: a ``since`` above the
current version, however written, is "no changes", never "everything", and
never a 500 (Python's ``int()`` refuses more than 4300 digits).
"""

from __future__ import annotations

import time
from urllib.parse import quote

import orjson
import pytest

from pzls_site import params
from tests.helpers import assert_error

pytestmark = pytest.mark.storage

MAX_SAFE = 2**53 - 1
THRESHOLD_ERROR = "threshold must be a number between 0 and 1"


@pytest.fixture
def three_pushes(admin_api):
    for i in range(3):
        response = admin_api.post("/api/sync", {"clientVersion": i, "stores": {"humans": {f"h{i}": {"n": i}}}})
        assert response.status_code == 200, response.content
    return admin_api


def changes(api, query: str) -> dict:
    response = api.get("/api/sync/changes" + query)
    assert response.status_code == 200, (query[:80], response.content[:200])
    assert response["Content-Type"] == "application/json"
    return orjson.loads(response.content)


def since(value: str) -> str:
    """``?since=<value>`` with the value percent-encoded as a browser would send it."""
    return "?since=" + quote(value, safe="")


def assert_since(api, query: str, used: int) -> None:
    """The answer is the one for ``since=used`` on a repository at version 3."""
    pending = max(0, 3 - used)
    body = changes(api, query)
    assert body["clientVersion"] == used, query[:80]
    assert body["currentVersion"] == 3
    assert body["pendingChanges"] == pending, query[:80]
    assert [e["version"] for e in body["changes"]] == list(range(4 - pending, 4)), query[:80]


# --- since: what is a number ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value, used",
    [
        ("0", 0),
        ("1", 1),
        ("2", 2),
        ("3", 3),
        ("0002", 2),
        ("9007199254740990", 9007199254740990),
    ],
)
def test_since_in_plain_digits_is_that_version(three_pushes, value, used):
    assert_since(three_pushes, since(value), used)


@pytest.mark.parametrize(
    "value",
    ["2.0", "2.999", "1.7", "2.", ".5", "0.2e1", "20e-1", "2E0", "5e-1", "0e999", "3.0", "3e0", "30e-1"],
)
def test_since_written_otherwise_at_or_below_the_version_is_zero(three_pushes, value):
    """Only plain digits name a version; another notation counts only above the current version."""
    assert_since(three_pushes, since(value), 0)


@pytest.mark.parametrize("value, used", [("3.5", 3), ("3.0001", 3), ("35e-1", 3), ("4e0", 4), ("0.4e1", 4)])
def test_since_written_otherwise_above_the_version_is_no_changes(three_pushes, value, used):
    body = changes(three_pushes, since(value))
    assert body == {"currentVersion": 3, "clientVersion": used, "pendingChanges": 0, "changes": []}


@pytest.mark.parametrize(
    "value, used",
    [
        ("4", 4),
        ("1000", 1000),
        ("9007199254740991", MAX_SAFE),
        ("9007199254740992", MAX_SAFE),
        ("18446744073709551616", MAX_SAFE),
        ("1e30", MAX_SAFE),
        ("1e400", MAX_SAFE),
        ("1E400", MAX_SAFE),
        ("1e+400", MAX_SAFE),
        ("9999999999999999999999.0", MAX_SAFE),
        ("1.7976931348623157e309", MAX_SAFE),
        ("1e99999999999999999999999999", MAX_SAFE),
        ("1" + "0" * 400, MAX_SAFE),
        ("9" * 4301, MAX_SAFE),
        ("9" * 10_000, MAX_SAFE),
        ("Infinity", MAX_SAFE),
        ("infinity", MAX_SAFE),
        ("inf", MAX_SAFE),
        ("INF", MAX_SAFE),
    ],
    ids=lambda v: v[:30] if isinstance(v, str) else None,
)
def test_since_above_the_version_however_written_is_no_changes(three_pushes, value, used):
    body = changes(three_pushes, since(value))
    assert body == {"currentVersion": 3, "clientVersion": used, "pendingChanges": 0, "changes": []}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-1",
        "-0",
        "-3",
        "-inf",
        "-Infinity",
        "+2",
        " 2",
        "2 ",
        "\t2",
        "2\n",
        "\u00a02",
        "\u0662",  # ARABIC-INDIC DIGIT TWO
        "\u0661\u0662",
        "\uff12",  # FULLWIDTH DIGIT TWO
        "\U0001d7ea",  # MATHEMATICAL SANS-SERIF DIGIT TWO
        "2\u0662",
        "2_0",
        "0x2",
        "0b10",
        "0o2",
        "nan",
        "NaN",
        "e1",
        "1e",
        "1e+",
        ".",
        "2..",
        "2.0.0",
        "2 0",
        "2,5",
        "2abc",
        "abc",
        "true",
        "null",
        "[2]",
        "2\x00",
        "\u221e",  # the infinity sign
        "Inf inity",
        "\u0131nf",  # dotless i: not ASCII "inf"
    ],
    ids=repr,
)
def test_since_that_is_not_an_ascii_decimal_is_zero(three_pushes, value):
    assert_since(three_pushes, since(value), 0)


@pytest.mark.parametrize(
    "query, used",
    [
        ("", 0),
        ("?since", 0),
        ("?since=", 0),
        ("?other=2", 0),
        ("?since=%32", 2),
        ("?since=%31%2E%39", 0),
        ("?since=%2B2", 0),
        ("?since=+2", 0),  # '+' in a query string is a space
        ("?since=%202", 0),
        ("?since=%D9%A2", 0),
        ("?since=%ff", 0),
        ("?since=2%00", 0),
        ("?since=2&since=2", 0),
        ("?since=2&since=", 0),
        ("?since=&since=2", 0),
        ("?since=2&other=1", 2),
        ("?SINCE=2", 0),
    ],
)
def test_since_in_the_query_string(three_pushes, query, used):
    assert_since(three_pushes, query, used)


@pytest.mark.parametrize(
    "value, used",
    [
        ("9" * 10_000, MAX_SAFE),
        ("0" * 9_999 + "2", 2),
        ("1e" + "9" * 10_000, MAX_SAFE),
        ("1e-" + "9" * 10_000, 0),
        ("1" + "0" * 10_000 + "e-9999", 10),
        ("2." + "9" * 10_000, 0),
        ("3." + "0" * 10_000 + "1", 3),
    ],
    ids=[
        "10000-nines",
        "leading-zeros",
        "huge-exponent",
        "huge-negative-exponent",
        "long-mantissa",
        "long-fraction",
        "long-fraction-above",
    ],
)
def test_huge_since_values_are_read_exactly_at_once(three_pushes, value, used):
    started = time.monotonic()
    body = changes(three_pushes, since(value))
    assert time.monotonic() - started < 1
    assert body["clientVersion"] == used
    assert body["pendingChanges"] == max(0, 3 - used)


# --- threshold ------------------------------------------------------------------------------


@pytest.fixture
def forty_points(analyst_api):
    """Two humans with unlike names who share birth date, nationality and workplace: score 40, s = 0.4."""
    pair = {"birthDate": "1990-01-01", "nationality": "FR", "workplace": "ACME"}
    humans = {"a": {"name": "Alice", **pair}, "b": {"name": "Zed", **pair}}
    response = analyst_api.post("/api/sync", {"stores": {"humans": humans}})
    assert response.status_code == 200, response.content
    return analyst_api


def resolve(api, query: str):
    return api.get("/api/resolve" + query)


@pytest.mark.parametrize(
    "value, echoed, count",
    [
        ("0.4", b"0.4", 1),
        ("0.40", b"0.4", 1),
        ("4e-1", b"0.4", 1),
        ("4E-1", b"0.4", 1),
        (".4", b"0.4", 1),
        ("+0.4", b"0.4", 1),
        ("0.41", b"0.41", 0),
        ("0.4000000000000000001", b"0.4", 1),  # the nearest double is 0.4's, as JavaScript reads it
        ("0", b"0", 1),
        ("-0", b"0", 1),
        ("-0.0e5", b"0", 1),
        ("0e99999999999999999999999", b"0", 1),
        ("1e-400", b"0", 1),
        ("5e-324", b"5e-324", 1),
        ("1", b"1", 0),
        ("1.0", b"1", 0),
        ("10e-1", b"1", 0),
        ("0.4" + "0" * 10_000, b"0.4", 1),
        ("0." + "0" * 10_000 + "1", b"0", 1),
    ],
    ids=lambda v: v[:30] if isinstance(v, str) else None,
)
def test_threshold_in_range_is_used(forty_points, value, echoed, count):
    response = resolve(forty_points, "?threshold=" + quote(value, safe=""))
    assert response.status_code == 200, response.content
    assert b'"threshold":' + echoed + b"," in response.content
    assert response.json()["count"] == count


@pytest.mark.parametrize(
    "value",
    [
        "",
        " 0.5",
        "0.5 ",
        "\t0.5",
        "0.5\n",
        "\u00a00.5",
        "\u0660.\u0665",  # ARABIC-INDIC 0.5
        "0.\uff15",  # FULLWIDTH 5
        "0_5",
        "0.5_0",
        "0,5",
        "0.5.5",
        "0x1",
        "0x0.8p0",
        "nan",
        "NaN",
        "inf",
        "Infinity",
        "-0.1",
        "-1e-400",
        "1.0000000000000000001",
        "1.5",
        "2",
        "1e400",
        "1" + "0" * 10_000,
        "+",
        "-",
        ".",
        "e1",
        "1e",
        "0.5e",
        "++0.5",
        "--0",
        "0.5abc",
        "0.5\x00",
    ],
    ids=repr,
)
def test_threshold_that_is_not_a_number_in_range_is_400(forty_points, value):
    started = time.monotonic()
    response = resolve(forty_points, "?threshold=" + quote(value, safe=""))
    assert time.monotonic() - started < 1
    assert_error(response, 400, THRESHOLD_ERROR)


@pytest.mark.parametrize(
    "query, status, echoed",
    [
        ("", 200, b"0.6"),
        ("?other=1", 200, b"0.6"),
        ("?threshold=%30%2E%34", 200, b"0.4"),
        ("?threshold=%2B0.4", 200, b"0.4"),
        ("?threshold=+0.4", 400, None),  # '+' in a query string is a space
        ("?threshold", 400, None),
        ("?threshold=", 400, None),
        ("?threshold=0.4&threshold=0.4", 400, None),
        ("?threshold=0.4&threshold=", 400, None),
        ("?threshold=%ff", 400, None),
        ("?THRESHOLD=0.4", 200, b"0.6"),
    ],
)
def test_threshold_in_the_query_string(forty_points, query, status, echoed):
    response = resolve(forty_points, query)
    if status == 400:
        assert_error(response, 400, THRESHOLD_ERROR)
    else:
        assert response.status_code == 200, response.content
        assert b'"threshold":' + echoed + b"," in response.content


# --- the one reader behind both ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("7", (False, "7", 0)),
        ("700", (False, "7", 2)),
        ("0.0700", (False, "7", -2)),
        ("-1.5e3", (True, "15", 2)),
        ("+.5", (False, "5", -1)),
        ("000", (False, "", 0)),
        ("1e" + "9" * 5000, (False, "1", 10**18)),
        ("1e-" + "9" * 5000, (False, "1", -(10**18))),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else None,
)
def test_parse_number_is_exact(text, expected):
    number = params.parse_number(text, signed=True)
    assert number is not None
    assert (number.negative, number.digits, number.exponent) == expected


@pytest.mark.parametrize("text", ["+1", "-1"])
def test_parse_number_refuses_a_sign_where_none_is_allowed(text):
    assert params.parse_number(text, signed=False) is None
    assert params.parse_number(text, signed=True) is not None
