"""Entity resolution (PROTOCOL.md §4): the API, the original's golden answers, and JavaScript semantics."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from resolve import engine
from resolve.reference import (
    jaro,
    js_key_order,
    js_number_string,
    name_similarity,
    to_fixed_0,
    utf16_units,
)

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "resolve"

THRESHOLD_ERROR = {"error": "threshold must be a number between 0 and 1"}


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def person(name: Any, **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields}


def resolve(api, query: str = "") -> dict[str, Any]:
    response = api.get("/api/resolve" + query)
    assert response.status_code == 200, response.content
    return response.json()


# --- the original's answers -----------------------------------------------------------


@pytest.mark.parametrize("threshold", ["0.3", "0.6"])
def test_golden_1000_through_the_api(analyst_api, threshold):
    response = analyst_api.post("/api/sync", orjson.loads(golden("input_1000.json")))
    assert response.status_code == 200, response.content
    response = analyst_api.get(f"/api/resolve?threshold={threshold}")
    assert response.status_code == 200
    expected = golden(f"resolve_1000_{threshold}.json")
    assert response.json() == orjson.loads(expected)
    # Same bytes too: scores, the echoed threshold and key order serialise as JavaScript's JSON.stringify.
    assert response.content == expected


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_golden_5000_through_the_engine(threshold):
    stores = orjson.loads(golden("input_5000.json"))["stores"]
    count, results = engine.resolve_fast(stores, threshold)
    expected = orjson.loads(golden(f"resolve_5000_{threshold}.json"))
    assert {"count": count, "threshold": threshold, "results": results} == expected
    assert orjson.dumps({"count": count, "threshold": threshold, "results": results}) == golden(
        f"resolve_5000_{threshold}.json"
    )


# --- the request -------------------------------------------------------------------------


def test_needs_a_token(api):
    response = api.get("/api/resolve")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert set(response.json()) == {"error"}


def test_only_get(analyst_api):
    response = analyst_api.post("/api/resolve", {})
    assert response.status_code == 405
    assert response.json() == {"error": "Method not allowed"}


@pytest.mark.parametrize("raw", ["NaN", "nan", "abc", "-0.1", "1.5", "", "Infinity", "0x1", "0.6abc", "1e400", "2"])
def test_bad_threshold_is_400(analyst_api, raw):
    response = analyst_api.get("/api/resolve", data={"threshold": raw})
    assert response.status_code == 400
    assert response.json() == THRESHOLD_ERROR


@pytest.mark.parametrize(
    "raw, echoed",
    [
        ("1", b'"threshold":1,'),
        ("0", b'"threshold":0,'),
        ("-0", b'"threshold":0,'),
        ("1.0", b'"threshold":1,'),
        ("0.60", b'"threshold":0.6,'),
        ("1e-1", b'"threshold":0.1,'),
        (".25", b'"threshold":0.25,'),
    ],
)
def test_threshold_is_echoed_as_javascript_prints_it(analyst_api, raw, echoed):
    response = analyst_api.get("/api/resolve", data={"threshold": raw})
    assert response.status_code == 200
    assert echoed in response.content


def test_missing_threshold_means_0_6(analyst_api):
    analyst_api.push(
        {
            "humans": {
                "a": person("John Smith", birthDate="1980-01-01"),
                "b": person("Jon Smith", birthDate="1980-01-01"),  # about 0.57: below 0.6
                "c": person("John Smith", birthDate="1980-01-01", nationality="Irish"),
            }
        }
    )
    body = resolve(analyst_api)
    assert body["threshold"] == 0.6
    assert [(r["entity1"]["id"], r["entity2"]["id"]) for r in body["results"]] == [("a", "c")]
    assert body["results"][0]["score"] == 0.6
    assert resolve(analyst_api, "?threshold=0.6") == body


def test_empty_repository(analyst_api):
    assert resolve(analyst_api) == {"count": 0, "threshold": 0.6, "results": []}
    analyst_api.push({"tags": {"t1": {"name": "x"}}, "cases": {"c1": {"name": "John Smith"}}})
    assert resolve(analyst_api, "?threshold=0") == {"count": 0, "threshold": 0, "results": []}


def test_other_users_data_is_not_resolved(admin_api, analyst_api):
    admin_api.push({"humans": {"a": person("John Smith"), "b": person("John Smith")}})
    assert resolve(analyst_api, "?threshold=0")["count"] == 0
    assert resolve(admin_api, "?threshold=0")["count"] == 1


# --- scoring rules as the user sees them ------------------------------------------------


def test_answer_shape_and_reasons(analyst_api):
    analyst_api.push(
        {
            "humans": {
                "h1": person("John Smith", id="h1", birthDate="1980-02-03", nationality="Irish", tags=["a", "b"])
            },
            "others": {
                "o1": person("John Smith", id="o1", birthDate="1980-02-03", nationality="Irish", tags=["b", "a", "c"])
            },
        }
    )
    assert resolve(analyst_api) == {
        "count": 1,
        "threshold": 0.6,
        "results": [
            {
                "entity1": {"id": "h1", "name": "John Smith", "type": "human"},
                "entity2": {"id": "o1", "name": "John Smith", "type": "other"},
                "score": 0.8,
                "reasons": ["Name similarity: 100%", "Same birth date", "Same nationality", "Shared tags: a, b"],
            }
        ],
    }


def test_names_that_are_missing_or_not_strings_are_skipped(analyst_api):
    same = {"birthDate": "1970-01-01", "nationality": "Irish", "workplace": "Acme", "tags": ["x", "y", "z"]}
    analyst_api.push(
        {
            "humans": {
                "n1": {**same},
                "n2": person(None, **same),
                "n3": person(5, **same),
                "n4": person(["Ann"], **same),
                "n5": person({"first": "Ann"}, **same),
                "n6": person("", **same),
                "n7": person(True, **same),
                "ok1": person("Ann Lee", **same),
                "ok2": person("Bob Stone", **same),
            }
        }
    )
    body = resolve(analyst_api, "?threshold=0")
    assert body["count"] == 1
    assert [(r["entity1"]["id"], r["entity2"]["id"]) for r in body["results"]] == [("ok1", "ok2")]
    assert body["results"][0]["score"] == 0.55


def test_id_falls_back_to_the_key(analyst_api):
    analyst_api.push({"humans": {"k1": person("Ann Lee", birthDate="1990-01-01"), "k2": person("Ann Lee", id=7)}})
    result = resolve(analyst_api, "?threshold=0")["results"][0]
    assert result["entity1"]["id"] == "k1"
    assert result["entity2"]["id"] == 7


def test_javascript_property_order_and_stable_sort(analyst_api):
    # Array-index keys come first in numeric order; "01", "-1" and "4294967295" are ordinary keys.
    keys = ["b", "10", "01", "2", "4294967295", "4294967294", "-1", "a"]
    analyst_api.push({"humans": {k: person("Ann Lee") for k in keys}})
    order = ["2", "10", "4294967294", "b", "01", "4294967295", "-1", "a"]
    body = resolve(analyst_api, "?threshold=0")
    pairs = [(r["entity1"]["id"], r["entity2"]["id"]) for r in body["results"]]
    assert pairs == [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    assert js_key_order(dict.fromkeys(keys)) == order


def test_humans_come_before_others_whatever_the_push_order(analyst_api):
    body = {"stores": {"others": {"o": person("Ann Lee")}, "humans": {"h": person("Ann Lee")}}}
    assert analyst_api.post("/api/sync", body).status_code == 200
    result = resolve(analyst_api, "?threshold=0")["results"][0]
    assert (result["entity1"]["type"], result["entity2"]["type"]) == ("human", "other")


def test_count_counts_all_results_hold_200(analyst_api):
    full = {"birthDate": "1990-01-01", "nationality": "Irish", "workplace": "Acme", "tags": ["a", "b", "c", "d"]}
    analyst_api.push({"humans": {f"p{i}": person("Ann Lee", **full) for i in range(25)}})
    body = resolve(analyst_api, "?threshold=1")
    assert body["count"] == 300
    assert len(body["results"]) == 200
    assert body["results"][-1]["entity1"]["id"] == "p10"  # pairs (0,1)...(0,24), ... in pair order
    # A full score is the number 1, as JavaScript writes Math.min(x, 1).
    assert b'"score":1,' in analyst_api.get("/api/resolve?threshold=1").content


def test_strict_equality_of_fields(analyst_api):
    analyst_api.push(
        {
            "humans": {
                "a1": person("Xq", birthDate="1990-01-01", nationality=5, workplace=True),
                "a2": person("Zw", birthDate="1990-01-01", nationality=5.0, workplace=True),
                "b1": person("Kv", birthDate=1990, nationality="5", workplace=1),
                "b2": person("Jm", birthDate="1990", nationality=[5], workplace={"x": 1}),
                "b3": person("Pt", birthDate=0, nationality="", workplace=False),
                "b4": person("Rb", birthDate=0, nationality="", workplace=False),
                "b5": person("Yc", birthDate=[1], nationality={"a": 1}, workplace=None),
                "b6": person("Gf", birthDate=[1], nationality={"a": 1}, workplace=None),
            }
        }
    )
    body = resolve(analyst_api, "?threshold=0")
    assert body["count"] == 1
    assert body["results"][0]["reasons"] == ["Same birth date", "Same nationality", "Same workplace"]
    assert body["results"][0]["score"] == 0.4


def test_tags_compare_by_type_and_value_and_join_as_javascript(analyst_api):
    first = [2.0, True, None, "x", 1e21, 0.1, -0.0, "x", [1], {"a": 1}, 1, "2", ""]
    second = [2, True, None, "x", 1e21, 0.1, 0, [1], {"a": 1}, ""]
    analyst_api.push({"humans": {"a": person("Qz", tags=first), "b": person("Wv", tags=second)}})
    result = resolve(analyst_api, "?threshold=0")["results"][0]
    # 1 does not match true, "2" does not match 2; x counts twice because the first record repeats it.
    assert result["reasons"] == ["Shared tags: 2, true, , x, 1e+21, 0.1, 0, x, "]
    assert result["score"] == 0.45


def test_tags_must_both_be_arrays(analyst_api):
    analyst_api.push(
        {"humans": {"a": person("Qz", tags=["x"]), "b": person("Wv", tags="x"), "c": person("Kp", tags={"0": "x"})}}
    )
    assert resolve(analyst_api, "?threshold=0")["count"] == 0


def test_names_are_counted_in_utf16_units(analyst_api):
    # In UTF-16 both names are 3 units sharing "a" and a high surrogate: Jaro 7/9, prefix 2.
    analyst_api.push({"humans": {"a": person("a\U0001f600"), "b": person("a\U0001f601")}})
    result = resolve(analyst_api, "?threshold=0")["results"][0]
    j = (2 / 3 + 2 / 3 + 2 / 2) / 3
    sim = j + 2 * 0.1 * (1 - j)
    assert result["reasons"] == ["Name similarity: 82%"]
    assert result["score"] == sim * 40 / 100
    # Counted in code points, as Python and rapidfuzz count, they would not match at all.
    assert name_similarity("a\U0001f600", "a\U0001f601") == sim
    assert utf16_units("a\U0001f600") == "a\ud83d\ude00"


def test_threshold_zero_and_one_and_boundaries(analyst_api):
    analyst_api.push(
        {
            "humans": {
                "a": person("Ann Lee", tags=["t"]),
                "b": person("Bob Stone", tags=["t"]),  # one shared tag: 0.05
                "c": person("Carl Wu", nationality="Irish"),
                "d": person("Dora Fox", nationality="Irish"),  # 0.1
                "e": person("Eve Ng"),
            }
        }
    )
    assert resolve(analyst_api, "?threshold=0")["count"] == 2
    assert resolve(analyst_api, "?threshold=0.05")["count"] == 2
    assert resolve(analyst_api, "?threshold=0.050001")["count"] == 1
    assert resolve(analyst_api, "?threshold=0.1")["count"] == 1
    assert resolve(analyst_api, "?threshold=1")["count"] == 0


# --- JavaScript helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (2.0, "2"),
        (1e21, "1e+21"),
        (0.1, "0.1"),
        (-0.0, "0"),
        (0, "0"),
        (1.5e-7, "1.5e-7"),
        (1e-6, "0.000001"),
        (123456789012345678901, "123456789012345680000"),
        (-3.25, "-3.25"),
        (18446744073709551615, "18446744073709552000"),
        (5e-324, "5e-324"),
        (1e20, "100000000000000000000"),
        (0.000001234, "0.000001234"),
        (2.5e-7, "2.5e-7"),
    ],
)
def test_js_number_string(value, text):
    assert js_number_string(value) == text


@pytest.mark.parametrize(
    "value, text", [(82.5, "83"), (0.5, "1"), (1.005 * 100, "100"), (99.49999999999999, "99"), (84.5, "85")]
)
def test_to_fixed_rounds_the_binary_value_half_up(value, text):
    assert to_fixed_0(value) == text


def literal_jaro(a: str, b: str) -> float:
    """PROTOCOL.md §4's Jaro, transcribed loop for loop, to check the reference's faster search."""
    if a == b:
        return 1.0
    la, lb = len(a), len(b)
    if la == 0 or lb == 0:
        return 0.0
    window = math.floor(max(la, lb) / 2) - 1
    a_m, b_m = [False] * la, [False] * lb
    m = 0
    for i in range(la):
        for j in range(max(0, i - window), min(lb, i + window + 1)):
            if not b_m[j] and b[j] == a[i]:
                a_m[i] = b_m[j] = True
                m += 1
                break
    if m == 0:
        return 0.0
    t, k = 0, 0
    for i in range(la):
        if a_m[i]:
            while not b_m[k]:
                k += 1
            if a[i] != b[k]:
                t += 1
            k += 1
    return (m / la + m / lb + (m - t / 2) / m) / 3


def all_strings(alphabet: str, up_to: int) -> list[str]:
    out = [""]
    level = [""]
    for _ in range(up_to):
        level = [s + ch for s in level for ch in alphabet]
        out += level
    return out


def test_jaro_filter_claims_hold_exhaustively_for_short_strings():
    """Every pair of strings over {a, b, c} up to length 5: the reference's Jaro is the literal one,
    rapidfuzz's Jaro is never below it, and nameSim > 0.8 always passes the engine's filters."""
    from rapidfuzz.distance import Jaro

    strings = all_strings("abc", 5)
    for a in strings:
        for b in strings:
            js = jaro(a, b)
            assert js == literal_jaro(a, b), (a, b)
            if not a or not b:
                continue
            rf = Jaro.similarity(a, b)
            assert rf >= js, (a, b)
            if name_similarity(a, b) > 0.8:
                assert rf >= engine.JARO_CUTOFF and js > 2 / 3, (a, b)


def test_workers_that_only_sync_never_load_the_engines_libraries(tmp_path: Path) -> None:
    # gunicorn's master preloads pzls_site.wsgi; numpy and rapidfuzz (about 13 MB
    # a process) must wait for a worker's first resolve.
    root = Path(__file__).resolve().parent.parent
    script = "import sys, pzls_site.wsgi; print(sorted(m for m in ('numpy', 'rapidfuzz') if m in sys.modules))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "pzls_site.settings", "PZLS_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
