"""The fast engine gives exactly the reference scorer's answer, on adversarial repositories.

Hypothesis builds small repositories full of the cases that break shortcuts:
near-identical, transposed, one-character, empty and astral names, names that
are not strings, values that are equal only under JavaScript's rules (2 and
2.0, but not 1 and true), repeated and numeric tags, array-index record keys,
records without ``id``. Each example also picks engine tuning that forces a
particular path (inverted index, dense scan, heavy records, bitset or rare
tags, tiny chunks), so every path is checked against the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.datasets import people as generate
from resolve import engine
from resolve.reference import Entity, name_similarity, resolve_reference

MISSING = object()

TUNINGS: dict[str, dict[str, float]] = {
    "default": {},
    "index always": {"SPARSE_MAX_SHARE": 1.0, "SPARSE_MAX_PAIRS": 10**12},
    "every record heavy": {"SPARSE_MAX_SHARE": 1.0, "SPARSE_MAX_PAIRS": 10**12, "MAX_KEYS_PER_RECORD": 0},
    "one key at most": {"SPARSE_MAX_SHARE": 1.0, "SPARSE_MAX_PAIRS": 10**12, "MAX_KEYS_PER_RECORD": 1},
    "all tags in bitsets": {"RARE_TAG_POSTINGS": 0, "SPARSE_MAX_SHARE": 1.0, "SPARSE_MAX_PAIRS": 10**12},
    "all tags rare, tiny chunks": {"RARE_TAG_POSTINGS": 10**6, "CHUNK_PAIRS": 3},
    "dense only": {"SPARSE_MAX_PAIRS": -1},
    "long names one by one": {"VECTOR_NAME_UNITS": 5, "NAME_CHUNK": 2},
}


@contextmanager
def tuned(name: str) -> Iterator[None]:
    saved = {key: getattr(engine, key) for key in TUNINGS[name]}
    for key, value in TUNINGS[name].items():
        setattr(engine, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(engine, key, value)


BASE_NAMES = [
    "Ann Lee",
    "Anne Lee",
    "Ann  Lee",
    "Nna Lee",
    "Ann Le",
    "Ann Lee ",
    "An nLee",
    "ann lee",
    "John Smith",
    "Jon Smith",
    "Jhon Smith",
    "José Henry",
    "Jose Henry",
    "A",
    "B",
    "ab",
    "ba",
    "aa",
    "a\U0001f600",
    "a\U0001f601",
    "\U0001f600Ann",
    "Ann\U0001f600 Lee",
    "Zoë Ito",
    "Zoe Ito",
    "Maximilian Alexander Bartholomew von Hohenzollern-Sigmaringen the Third",
    "Maximilian Alexander Bartholomew von Hohenzolern-Sigmaringen the Third",
    "Maximilian Alexander Bartholomew von Hohenzollern-Sigmaringen the 3rd \U0001f600",
]
names = st.one_of(
    st.sampled_from(BASE_NAMES),
    st.text(alphabet=st.sampled_from("aAbn é\U0001f600\U0001f601"), max_size=8),
    st.sampled_from([MISSING, None, "", 5, 0, True, ["Ann Lee"], {"n": "Ann Lee"}]),
)
scalars = st.sampled_from(
    [MISSING, None, "", "1990-01-01", "1990-01-02", "1990", 1990, 1990.0, 0, -0.0, True, False, [1], {"a": 1}]
)
small = st.sampled_from(["Irish", "Greek", "", None, 1, 1.0, True])
tag_items = st.sampled_from(["a", "b", "c", "d", "e", 1, 1.0, 2, True, False, None, "", 0, -0.0, 1e21, [1], {"a": 1}])
tags = st.one_of(st.just(MISSING), st.sampled_from(["a", None, {"0": "a"}]), st.lists(tag_items, max_size=7))
ids = st.one_of(st.just(MISSING), st.just(None), st.text(alphabet="xyz", min_size=1, max_size=3), st.integers(0, 3))


@st.composite
def records(draw: Any) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for field, strategy in (
        ("id", ids),
        ("name", names),
        ("birthDate", scalars),
        ("nationality", small),
        ("workplace", small),
        ("tags", tags),
    ):
        value = draw(strategy)
        if value is not MISSING:
            record[field] = value
    return record


keys = st.one_of(
    st.sampled_from(["0", "1", "2", "10", "01", "-1", "1.0", "4294967294", "4294967295", "a", "b"]),
    st.text(alphabet="pq0123", min_size=1, max_size=3),
)
stores = st.dictionaries(keys, records(), max_size=9)
repositories = st.fixed_dictionaries({}, optional={"humans": stores, "others": stores})
thresholds = st.one_of(
    st.sampled_from([0, 0.05, 0.1, 0.3, 0.4, 0.42, 0.45, 0.5, 0.55, 0.6, 0.65, 0.8, 0.9, 1]),
    st.floats(min_value=0, max_value=1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=repositories, threshold=thresholds, tuning=st.sampled_from(sorted(TUNINGS)))
def test_engine_equals_reference(data, threshold, tuning):
    expected = resolve_reference(data, threshold)
    with tuned(tuning):
        assert engine.resolve_fast(data, threshold) == expected


@cache
def realistic_reference(threshold: float) -> tuple[Any, ...]:
    return resolve_reference(generate(150, seed=7), threshold)


@pytest.mark.parametrize("threshold", [0, 0.05, 0.3, 0.6, 1])
@pytest.mark.parametrize("tuning", ["default", "index always"])
def test_engine_equals_reference_on_realistic_data(threshold, tuning):
    data = generate(150, seed=7)
    expected = realistic_reference(threshold)
    assert expected[0] > 0 or threshold == 1
    with tuned(tuning):
        assert engine.resolve_fast(data, threshold) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(st.sampled_from("abcAB é\U0001f600\U0001f601"), min_size=1, max_size=12), min_size=2, max_size=10)
)
def test_bulk_jaro_winkler_equals_the_reference_bit_for_bit(raw_names):
    """The engine's numpy Jaro-Winkler gives the reference's double for every ordered pair, not only close ones."""
    entities = [Entity(id=k, name=name, type="human", record={}) for k, name in enumerate(raw_names)]
    index = engine._build_index(entities)
    pairs = [(i, j) for i in range(len(raw_names)) for j in range(len(raw_names)) if i != j]
    first = [i for i, _ in pairs]
    second = [j for _, j in pairs]
    bulk = engine._jaro_winkler_many(index, np.array(first), np.array(second)).tolist()
    assert bulk == [name_similarity(raw_names[i], raw_names[j]) for i, j in pairs]
