"""The fast resolution engine: the reference scorer's answer without comparing every pair.

``resolve_fast(data, threshold)`` returns exactly what
``reference.resolve_reference`` returns, for every input. It gets there in
three steps:

1. **Candidates.** A pair's score is its name part (0, or ``nameSim * 40``
   which lies in (32, 40]) plus its *exact part* ``E``: 20 for the birth date,
   10 each for nationality and workplace, 5 per shared tag occurrence. A pair
   can only reach the threshold ``T`` if ``E >= 100*T - 40`` (less a margin).
   When that bound is positive, every candidate shares a set of exact
   features worth at least the bound, so each record emits the *minimal*
   feature sets of that weight as keys, and candidates are the pairs that
   share a key (an inverted index over feature combinations). Records with
   too many such sets, and thresholds so low that the keys would pair up a
   large part of all pairs anyway, go to a dense block-wise scan of all pairs
   in native code instead.
2. **Exact part, vectorised.** ``E`` is computed for each candidate with numpy:
   integer codes for the ``===`` keys of the three fields, bitsets for tags
   that many records carry, an explicit pair list for rare tags, and a
   correction for records that repeat a tag (the original counts the first
   record's repeats). The dense scan does the same on (rows x columns)
   matrices.
3. **Names.** Rapidfuzz's plain Jaro (native code) bounds the original's
   Jaro from above: it uses the same matching window and greedy matching but
   halves the transposition count with integer division, so its value is
   never smaller. Names are handed to it as UTF-16 code units (see
   ``reference.utf16_units``), so positions and lengths agree with
   JavaScript's even outside the BMP. The original's Jaro-Winkler is increasing
   in Jaro for a fixed common prefix ``p``, so
   ``rf_jaro + p * 0.1 * (1 - rf_jaro) > 0.8`` (with a margin) is a necessary
   condition for ``nameSim > 0.8``. Only pairs that pass it get their exact
   ``nameSim``: in bulk with numpy, step for step and operation for operation
   the reference's ``jaro_winkler`` (so the same doubles), or through the
   reference function itself for names longer than VECTOR_NAME_UNITS.

The scores are then summed with numpy in the original's order on doubles
(adding a 0 for a missing rule changes no bit), compared with the threshold,
counted, and the best 200 are rebuilt by ``reference.score_pair``, which also
checks the engine's score for each of them.

Pure Python plus numpy and rapidfuzz: nothing here imports Django.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Jaro
from rapidfuzz.process import cdist, cpdist

from resolve import reference as ref

# rapidfuzz's Jaro is discarded below this. nameSim > 0.8 needs the original's
# Jaro above 2/3, and rapidfuzz's is at least that, so any cut-off under 2/3 is
# exact; the margin keeps floating-point rounding out of the argument.
JARO_CUTOFF = 0.66
# Margin for the prefix-aware bound (rounding errors are around 1e-16).
BOUND_MARGIN = 1e-9
# Margin, in score points, when deriving which exact parts can still reach the
# threshold. Exact parts are multiples of 5, so this costs no extra candidates.
POINTS_MARGIN = 1.0

# A tag carried by more records than this gets a bit in the tag bitsets; rarer
# tags are handled as an explicit list of the pairs that share them.
RARE_TAG_POSTINGS = 32
# A record with more minimal key sets than this is compared with every record.
MAX_KEYS_PER_RECORD = 64
# Keys are used while the pairs they generate stay below this share of all pairs
# (and below SPARSE_MAX_PAIRS); beyond that the dense scan is cheaper.
SPARSE_MAX_SHARE = 0.25
SPARSE_MAX_PAIRS = 40_000_000
# Pairs evaluated at a time (bounds memory).
CHUNK_PAIRS = 1_000_000
# Names up to this many UTF-16 units are scored in bulk with numpy; longer ones one by one.
VECTOR_NAME_UNITS = 64
# Pairs scored together by the bulk Jaro-Winkler (bounds its (pairs x units) temporaries).
NAME_CHUNK = 20_000
# rapidfuzz threads (-1: all cores).
WORKERS = -1

_KIND_BIRTH, _KIND_NATIONALITY, _KIND_WORKPLACE, _KIND_TAG = range(4)


class EngineMismatch(RuntimeError):
    """The engine's score for a pair differs from the reference scorer's (a bug, never expected)."""


@dataclass
class _Index:
    """The named entities and everything the engine derives from them, by entity position."""

    entities: list[ref.Entity]
    names: list[str]  # UTF-16 code units
    names_array: np.ndarray  # the same, as an object array for fancy indexing
    units: np.ndarray  # (n, width) UTF-16 code units of the names, padded with -1
    lengths: np.ndarray  # name lengths in UTF-16 code units
    prefix_a: np.ndarray  # (n, 4) first four code units, padded with -1
    prefix_b: np.ndarray  # the same, padded with -2 so padding never matches padding
    birth: np.ndarray  # ``===`` key codes, -1 when the rule cannot apply
    nationality: np.ndarray
    workplace: np.ndarray
    tag_sets: list[frozenset[int]]  # distinct matchable tag ids per record (empty unless tags is a list)
    tag_bits: np.ndarray  # (n, words) uint64, frequent tags only
    rare_codes: np.ndarray  # sorted pair codes i*n+j (i<j) sharing rare tags
    rare_counts: np.ndarray  # how many distinct rare tags each of those pairs shares
    repeats: dict[int, dict[int, int]]  # record -> {tag id: multiplicity - 1} for repeated tags
    is_repeat: np.ndarray  # bool per record: a key of ``repeats``
    tag_postings: dict[int, np.ndarray]  # repeated tag id -> the records (ascending) that carry it
    tag_weight: dict[int, int]  # tag id -> largest multiplicity in any record
    tag_ptr: (
        np.ndarray
    )  # (n + 1,) offsets into tag_flat: record p's distinct tag ids are tag_flat[tag_ptr[p]:tag_ptr[p+1]]
    tag_flat: np.ndarray
    irregular: np.ndarray  # bool per record: carries a tag that some record repeats (so it weighs more than 5)

    @property
    def n(self) -> int:
        return len(self.entities)


def _codes(values: list[Any]) -> np.ndarray:
    """A small integer per distinct ``===`` key (see ``reference.truthy_key``), -1 where the rule cannot apply."""
    table: dict[Any, int] = {}
    out = []
    for value in values:
        # Non-empty strings, by far the usual case, are their own key: no tuple key equals a str.
        key = value if type(value) is str and value else ref.truthy_key(value)
        out.append(-1 if key is None else table.setdefault(key, len(table)))
    return np.array(out, dtype=np.int64)


def _build_index(entities: list[ref.Entity]) -> _Index:
    n = len(entities)
    names = [ref.utf16_units(e.name) for e in entities]
    # Names as a matrix of UTF-16 code units, padded with -1 (names longer than the matrix are
    # scored one by one). The prefix copies pad differently so that padding never matches padding.
    lengths = np.fromiter(map(len, names), dtype=np.int64, count=n)
    width = max(4, min(VECTOR_NAME_UNITS, int(lengths.max()) if n else 0))
    units = (
        np.frombuffer(
            "".join([name[:width].ljust(width, "\0") for name in names]).encode("utf-32-le", "surrogatepass"),
            dtype=np.uint32,
        )
        .reshape(n, width)
        .astype(np.int32)
    )
    units[np.arange(width) >= lengths[:, None]] = -1
    prefix_a = units[:, :4].copy()
    prefix_b = np.where(prefix_a < 0, -2, prefix_a)
    records = [e.record for e in entities]

    tag_table: dict[Any, int] = {}
    tag_sets: list[frozenset[int]] = []
    repeats: dict[int, dict[int, int]] = {}
    tag_weight: dict[int, int] = {}
    postings: list[list[int]] = []
    for pos, record in enumerate(records):
        tags = record.get("tags")
        if not isinstance(tags, list) or not tags:
            tag_sets.append(frozenset())
            continue
        counts: dict[int, int] = {}
        for item in tags:
            # Strings, the usual tags, are their own key: no tuple key equals a str.
            key = item if type(item) is str else ref.strict_key(item)
            if key is None:
                continue
            tag_id = tag_table.get(key)
            if tag_id is None:
                tag_id = tag_table[key] = len(postings)
                postings.append([])
            counts[tag_id] = counts.get(tag_id, 0) + 1
        for tag_id, count in counts.items():
            postings[tag_id].append(pos)
            if count > tag_weight.get(tag_id, 0):
                tag_weight[tag_id] = count
        extra = {tag_id: count - 1 for tag_id, count in counts.items() if count > 1}
        if extra:
            repeats[pos] = extra
        tag_sets.append(frozenset(counts))

    frequent = [tag_id for tag_id, members in enumerate(postings) if len(members) > RARE_TAG_POSTINGS]
    words = (len(frequent) + 63) // 64
    tag_bits = np.zeros((n, words), dtype=np.uint64)
    for bit, tag_id in enumerate(frequent):
        holders = np.asarray(postings[tag_id], dtype=np.int64)
        tag_bits[holders, bit // 64] |= np.uint64(1 << (bit % 64))
    rare_parts = []
    for members in postings:
        if 2 <= len(members) <= RARE_TAG_POSTINGS:
            m = np.asarray(members, dtype=np.int64)  # ascending, so first < second
            first, second = np.triu_indices(len(m), 1)
            rare_parts.append(m[first] * n + m[second])
    if rare_parts:
        rare_codes, rare_counts = np.unique(np.concatenate(rare_parts), return_counts=True)
    else:
        rare_codes, rare_counts = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    tag_counts = np.fromiter(map(len, tag_sets), dtype=np.int64, count=n)
    tag_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(tag_counts, out=tag_ptr[1:])
    tag_flat = np.fromiter((t for tags in tag_sets for t in tags), dtype=np.int64, count=int(tag_ptr[-1]))
    irregular = np.zeros(n, dtype=bool)
    repeated_tags = [tag_id for tag_id, weight in tag_weight.items() if weight > 1]
    if repeated_tags:
        owner = np.repeat(np.arange(n), tag_counts)
        irregular[owner[np.isin(tag_flat, repeated_tags)]] = True
    names_array = np.empty(n, dtype=object)
    names_array[:] = names
    is_repeat = np.zeros(n, dtype=bool)
    is_repeat[list(repeats)] = True
    return _Index(
        entities=entities,
        names=names,
        names_array=names_array,
        units=units,
        lengths=lengths,
        prefix_a=prefix_a,
        prefix_b=prefix_b,
        birth=_codes([r.get("birthDate") for r in records]),
        nationality=_codes([r.get("nationality") for r in records]),
        workplace=_codes([r.get("workplace") for r in records]),
        tag_sets=tag_sets,
        tag_bits=tag_bits,
        rare_codes=rare_codes,
        rare_counts=rare_counts,
        repeats=repeats,
        is_repeat=is_repeat,
        tag_postings={tag_id: np.asarray(postings[tag_id], dtype=np.int64) for tag_id in repeated_tags},
        tag_weight=tag_weight,
        tag_ptr=tag_ptr,
        tag_flat=tag_flat,
        irregular=irregular,
    )


# --- candidate pairs -------------------------------------------------------------


def _minimal_sets(weights: tuple[int, ...], need: float) -> list[tuple[int, ...]] | None:
    """Positions of every minimal subset of ``weights`` (heaviest first) whose sum reaches ``need``.

    A set is minimal when dropping its lightest member falls below ``need``.
    Two records whose shared features weigh at least ``need`` share at least
    one such set, since every heavy enough set contains a minimal one. None
    when there are more than MAX_KEYS_PER_RECORD of them.
    """
    out: list[tuple[int, ...]] = []
    suffix = [0] * (len(weights) + 1)
    for k in range(len(weights) - 1, -1, -1):
        suffix[k] = suffix[k + 1] + weights[k]
    chosen: list[int] = []

    def extend(start: int, total: int) -> bool:
        for k in range(start, len(weights)):
            if total + suffix[k] < need:
                return True
            chosen.append(k)
            if total + weights[k] >= need:
                out.append(tuple(chosen))
                if len(out) > MAX_KEYS_PER_RECORD:
                    return False
            elif not extend(k + 1, total + weights[k]):
                return False
            chosen.pop()
        return True

    return out if extend(0, 0) else None


def _record_features(
    index: _Index, pos: int, birth: list[int], nationality: list[int], workplace: list[int]
) -> list[tuple[int, int]]:
    """(weight, feature id) of a record's exact features, heaviest first; tag weights are upper bounds."""
    features = []
    for codes, kind, points in (
        (birth, _KIND_BIRTH, ref.BIRTH_DATE_POINTS),
        (nationality, _KIND_NATIONALITY, ref.NATIONALITY_POINTS),
        (workplace, _KIND_WORKPLACE, ref.WORKPLACE_POINTS),
    ):
        code = codes[pos]
        if code >= 0:
            features.append((points, code * 4 + kind))
    weight = index.tag_weight
    for tag_id in index.tag_sets[pos]:
        # The first record's repeats count, so a tag may weigh more than 5.
        features.append((ref.TAG_POINTS * weight[tag_id], tag_id * 4 + _KIND_TAG))
    features.sort(key=lambda wf: (-wf[0], wf[1]))
    return features


def _group_pairs(members: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (members[a], members[b]), a < b, within each group of consecutive ``members``."""
    ends = np.repeat(starts + sizes, sizes)
    positions = np.arange(len(members))
    partners = ends - positions - 1
    total = int(partners.sum())
    first = np.repeat(positions, partners)
    offsets = np.arange(total) - np.repeat(np.cumsum(partners) - partners, partners)
    return members[first], members[first + 1 + offsets]


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, on uint64 arrays (wrapping multiplication is intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _row_hashes(keys: np.ndarray) -> np.ndarray:
    """One 64-bit hash per row of feature ids. Equal rows hash equally; a collision only adds candidates."""
    h = np.full(len(keys), keys.shape[1], dtype=np.uint64)
    for column in keys.T:
        h = _mix(h ^ _mix(column.astype(np.uint64)))
    return h


def _feature_blocks(index: _Index) -> list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
    """Records grouped by the weights of their exact features: (records, feature ids per record, weights).

    Weights are heaviest first and the feature-id columns follow them. Within
    one weight the column order does not matter, because keys are sorted.
    """
    fields = []
    for codes, kind, points in (
        (index.birth, _KIND_BIRTH, ref.BIRTH_DATE_POINTS),
        (index.nationality, _KIND_NATIONALITY, ref.NATIONALITY_POINTS),
        (index.workplace, _KIND_WORKPLACE, ref.WORKPLACE_POINTS),
    ):
        fields.append((codes >= 0, codes * 4 + kind, points))
    counts = np.diff(index.tag_ptr)
    signature = counts.copy()
    for bit, (present, _, _) in enumerate(fields):
        signature += present.astype(np.int64) << (40 + bit)
    blocks: list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]] = []
    regular = ~index.irregular
    for value in np.unique(signature[regular]).tolist():
        rows = np.nonzero(regular & (signature == value))[0]
        k = value & ((1 << 40) - 1)
        columns, weights = [], []
        for bit, (_, ids, points) in enumerate(fields):
            if value >> (40 + bit) & 1:
                columns.append(ids[rows])
                weights.append(points)
        if k:
            tags = index.tag_flat[index.tag_ptr[rows][:, None] + np.arange(k)] * 4 + _KIND_TAG
            columns.extend(tags.T)
            weights.extend([ref.TAG_POINTS] * k)
        if columns:
            blocks.append((rows, np.column_stack(columns), tuple(weights)))
    # Records with a tag that someone repeats: weights vary, so sort their features one by one.
    irregular: dict[tuple[int, ...], tuple[list[int], list[list[int]]]] = {}
    birth, nationality, workplace = index.birth.tolist(), index.nationality.tolist(), index.workplace.tolist()
    for pos in np.nonzero(index.irregular)[0].tolist():
        features = _record_features(index, pos, birth, nationality, workplace)
        positions, feature_ids = irregular.setdefault(tuple(w for w, _ in features), ([], []))
        positions.append(pos)
        feature_ids.append([f for _, f in features])
    for feature_weights, (positions, feature_ids) in irregular.items():
        blocks.append((np.asarray(positions, dtype=np.int64), np.asarray(feature_ids, dtype=np.int64), feature_weights))
    return blocks


def _sparse_candidates(index: _Index, need: float) -> np.ndarray | None:
    """Sorted unique codes of every pair whose exact part may reach ``need``, or None when too many."""
    n = index.n
    hashes, owners, heavy = [], [], []
    for rows, ids, weights in _feature_blocks(index):
        sets = _minimal_sets(weights, need)
        if sets is None:
            heavy.append(rows)
            continue
        for positions in sets:
            keys = np.sort(ids[:, list(positions)], axis=1)
            hashes.append(_row_hashes(keys))
            owners.append(rows)
    heavy_rows = np.concatenate(heavy) if heavy else np.empty(0, dtype=np.int64)
    if hashes:
        h = np.concatenate(hashes)
        owner = np.concatenate(owners)
        order = np.lexsort((owner, h))
        h, owner = h[order], owner[order]
        starts = np.flatnonzero(np.concatenate(([True], h[1:] != h[:-1])))
        sizes = np.diff(np.append(starts, len(h)))
    else:
        owner = starts = sizes = np.empty(0, dtype=np.int64)
    estimate = int((sizes * (sizes - 1) // 2).sum()) + len(heavy_rows) * n
    if estimate > SPARSE_MAX_PAIRS or estimate > SPARSE_MAX_SHARE * (n * (n - 1) // 2):
        return None
    parts = []
    if len(owner):
        first, second = _group_pairs(owner, starts, sizes)
        distinct = first != second  # the same record under two colliding keys
        parts.append(first[distinct] * n + second[distinct])
    everyone = np.arange(n, dtype=np.int64)
    for h_pos in heavy_rows.tolist():
        others = everyone[everyone != h_pos]
        parts.append(np.minimum(others, h_pos) * n + np.maximum(others, h_pos))
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


# --- evaluation --------------------------------------------------------------------


def _exact_part(index: _Index, first: np.ndarray, second: np.ndarray, codes: np.ndarray):
    """Per pair: the three field matches (0/1 floats) and the shared tag count, as the original counts them."""
    fields = []
    for codes_of in (index.birth, index.nationality, index.workplace):
        a = codes_of[first]
        fields.append(((a >= 0) & (a == codes_of[second])).astype(np.float64))
    shared = np.zeros(len(first), dtype=np.int64)
    if index.tag_bits.shape[1]:
        both = index.tag_bits[first] & index.tag_bits[second]
        shared += np.bitwise_count(both).sum(axis=1, dtype=np.int64)
    if len(index.rare_codes) and len(codes):
        lo, hi = np.searchsorted(index.rare_codes, [codes[0], codes[-1] + 1])
        if hi > lo:
            rare = index.rare_codes[lo:hi]
            where = np.searchsorted(codes, rare)
            where_ok = where < len(codes)
            hit = np.zeros(len(rare), dtype=bool)
            hit[where_ok] = codes[where[where_ok]] == rare[where_ok]
            shared[where[hit]] += index.rare_counts[lo:hi][hit]
    if index.repeats:
        for k in np.nonzero(index.is_repeat[first])[0]:
            extra = index.repeats[int(first[k])]
            tags_of_second = index.tag_sets[int(second[k])]
            shared[k] += sum(count for tag_id, count in extra.items() if tag_id in tags_of_second)
    return fields, shared


def _jaro_winkler_many(index: _Index, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``reference.jaro_winkler`` for many pairs at once, operation for operation.

    The greedy matching runs over the positions of the first name, for all
    pairs together: at step i, each pair takes the first not yet matched
    position of the second name, inside the window, that holds the same code
    unit. Transpositions compare the matched units of both names in order.
    The floating-point expression is the reference's, evaluated in the same
    order on doubles, so the results are the same bits.
    """
    la, lb = index.lengths[first], index.lengths[second]
    width = int(max(la.max(), lb.max()))
    a = index.units[first, :width]
    b = index.units[second, :width]
    b = np.where(b < 0, -2, b)  # padding of the two sides never matches
    columns = np.arange(width)
    window = np.maximum(la, lb) // 2 - 1
    a_matched = np.zeros((len(first), width), dtype=bool)
    b_matched = np.zeros((len(first), width), dtype=bool)
    for i in range(width):
        lo = np.maximum(0, i - window)[:, None]
        hi = np.minimum(lb, i + window + 1)[:, None]
        free = (b == a[:, i : i + 1]) & ~b_matched & (columns >= lo) & (columns < hi)
        hit = np.flatnonzero(free.any(axis=1))  # a's padding (-1) never equals anything in b
        j = free[hit].argmax(axis=1)
        b_matched[hit, j] = True
        a_matched[hit, i] = True
    m = a_matched.sum(axis=1)
    # The k-th matched unit of each side: a stable sort moves matched positions to the front in order.
    a_in_order = np.take_along_axis(a, np.argsort(~a_matched, axis=1, kind="stable"), axis=1)
    b_in_order = np.take_along_axis(b, np.argsort(~b_matched, axis=1, kind="stable"), axis=1)
    t = ((a_in_order != b_in_order) & (columns < m[:, None])).sum(axis=1)
    safe_m = np.maximum(m, 1)
    jaro = np.where(m > 0, (m / la + m / lb + (m - t / 2) / safe_m) / 3, 0.0)
    prefix = np.cumprod(a[:, : min(4, width)] == b[:, : min(4, width)], axis=1).sum(axis=1)
    sim = jaro + prefix * 0.1 * (1 - jaro)
    identical = (la == lb) & ((a == b) | (columns >= la[:, None])).all(axis=1)
    sim[identical] = 1.0
    return sim


def _name_parts(index: _Index, first: np.ndarray, second: np.ndarray, rf_jaro: np.ndarray) -> np.ndarray:
    """``nameSim * 40`` where the original adds it, else 0, for each pair."""
    equal = index.prefix_a[first] == index.prefix_b[second]
    prefix = np.cumprod(equal, axis=1).sum(axis=1)
    bound = rf_jaro + prefix * 0.1 * (1 - rf_jaro)
    parts = np.zeros(len(first), dtype=np.float64)
    close = np.flatnonzero(bound > ref.NAME_MIN_SIMILARITY - BOUND_MARGIN)
    if not len(close):
        return parts
    f, s = first[close], second[close]
    long = (index.lengths[f] > VECTOR_NAME_UNITS) | (index.lengths[s] > VECTOR_NAME_UNITS)
    sim = np.empty(len(close), dtype=np.float64)
    bulk = np.flatnonzero(~long)
    for start in range(0, len(bulk), NAME_CHUNK):
        part = bulk[start : start + NAME_CHUNK]
        sim[part] = _jaro_winkler_many(index, f[part], s[part])
    names = index.names
    for k in np.flatnonzero(long).tolist():
        sim[k] = ref.jaro_winkler(names[f[k]], names[s[k]])
    over = sim > ref.NAME_MIN_SIMILARITY
    parts[close[over]] = sim[over] * ref.NAME_WEIGHT
    return parts


class _Best:
    """The running count of matches and the best MAX_RESULTS of them, ordered as the original sorts."""

    def __init__(self) -> None:
        self.count = 0
        self.s = np.empty(0, dtype=np.float64)
        self.first = np.empty(0, dtype=np.int64)
        self.second = np.empty(0, dtype=np.int64)

    def add(self, s: np.ndarray, first: np.ndarray, second: np.ndarray) -> None:
        self.count += len(s)
        s = np.concatenate([self.s, s])
        first = np.concatenate([self.first, first])
        second = np.concatenate([self.second, second])
        # Highest score first; equal scores keep pair order, as a stable sort of pairs (i, j) does.
        order = np.lexsort((second, first, -s))[: ref.MAX_RESULTS]
        self.s, self.first, self.second = s[order], first[order], second[order]


def _exact_points(birth: np.ndarray, nationality: np.ndarray, workplace: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """The exact part E of the score, which bounds what a pair can reach without its name."""
    return (
        birth * ref.BIRTH_DATE_POINTS
        + nationality * ref.NATIONALITY_POINTS
        + workplace * ref.WORKPLACE_POINTS
        + shared * ref.TAG_POINTS
    )


def _score(
    name_part: np.ndarray, birth: np.ndarray, nationality: np.ndarray, workplace: np.ndarray, shared: np.ndarray
):
    """The original's score and ``s = min(score / 100, 1)``, element-wise.

    The additions happen in the original's order on doubles; adding 0 for a
    rule that did not apply changes no bit, so every pair can take every step.
    """
    score = name_part + birth * ref.BIRTH_DATE_POINTS
    score = score + nationality * ref.NATIONALITY_POINTS
    score = score + workplace * ref.WORKPLACE_POINTS
    score = score + shared.astype(np.float64) * ref.TAG_POINTS
    return score, np.minimum(score / 100, 1.0)


def _evaluate(index: _Index, codes: np.ndarray, threshold: float, need_name: float, best: _Best) -> None:
    """Score the candidate pairs ``codes`` (sorted i*n+j) exactly and record the matches."""
    if not len(codes):
        return
    first, second = np.divmod(codes, index.n)
    (birth, nationality, workplace), shared = _exact_part(index, first, second, codes)
    name_part = np.zeros(len(codes), dtype=np.float64)
    sel = np.flatnonzero(_exact_points(birth, nationality, workplace, shared) >= need_name)
    if len(sel):
        jr = cpdist(
            index.names_array[first[sel]],
            index.names_array[second[sel]],
            scorer=Jaro.similarity,
            score_cutoff=JARO_CUTOFF,
            dtype=np.float64,
            workers=WORKERS,
        )
        close = np.flatnonzero(jr >= JARO_CUTOFF)
        if len(close):
            pick = sel[close]
            name_part[pick] = _name_parts(index, first[pick], second[pick], jr[close])
    score, s = _score(name_part, birth, nationality, workplace, shared)
    match = (score > 0) & (s >= threshold)
    if match.any():
        best.add(s[match], first[match], second[match])


def _chunks(codes: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(codes), CHUNK_PAIRS):
        yield codes[start : start + CHUNK_PAIRS]


def _dense(index: _Index, threshold: float, need_name: float, best: _Best) -> None:
    """Every pair, as (rows x columns) matrices a block of rows at a time, names through rapidfuzz's cdist."""
    n = index.n
    words = index.tag_bits.shape[1]
    rows = max(1, CHUNK_PAIRS // (max(n, 1) * max(words, 1)))
    repeat_rows = np.flatnonzero(index.is_repeat)
    for a in range(0, n - 1, rows):
        b = min(n - 1, a + rows)
        # Rows a..b-1 (first entity i) against columns a+1..n-1 (second entity j); only j > i counts.
        upper = np.arange(a + 1, n)[None, :] > np.arange(a, b)[:, None]
        # Whether i and j share a known birth date, nationality, workplace.
        birth, nationality, workplace = (
            ((codes[a:b, None] >= 0) & (codes[a:b, None] == codes[None, a + 1 :])).astype(np.float64)
            for codes in (index.birth, index.nationality, index.workplace)
        )
        shared = np.zeros(upper.shape, dtype=np.int64)
        if words:
            shared += np.bitwise_count(index.tag_bits[a:b, None, :] & index.tag_bits[None, a + 1 :, :]).sum(
                axis=2, dtype=np.int64
            )
        lo, hi = np.searchsorted(index.rare_codes, [a * n, b * n])
        if hi > lo:
            i, j = np.divmod(index.rare_codes[lo:hi], n)
            shared[i - a, j - a - 1] += index.rare_counts[lo:hi]
        for i in repeat_rows[(repeat_rows >= a) & (repeat_rows < b)].tolist():
            for tag_id, extra in index.repeats[i].items():
                holders = index.tag_postings[tag_id]
                holders = holders[holders > i]
                shared[i - a, holders - a - 1] += extra
        jr = cdist(
            index.names[a:b],
            index.names[a + 1 :],
            scorer=Jaro.similarity,
            score_cutoff=JARO_CUTOFF,
            dtype=np.float64,
            workers=WORKERS,
        )
        name_part = np.zeros(upper.shape, dtype=np.float64)
        wanted = upper & (jr >= JARO_CUTOFF)
        if need_name > 0:
            wanted &= _exact_points(birth, nationality, workplace, shared) >= need_name
        i, j = np.nonzero(wanted)
        if len(i):
            name_part[i, j] = _name_parts(index, i + a, j + a + 1, jr[i, j])
        score, s = _score(name_part, birth, nationality, workplace, shared)
        i, j = np.nonzero(upper & (score > 0) & (s >= threshold))
        if len(i):
            best.add(s[i, j], i + a, j + a + 1)


def resolve_fast(data: Mapping[str, Any], threshold: float) -> tuple[int, list[dict[str, Any]]]:
    """All matches at ``threshold``: (count, the best MAX_RESULTS entries), exactly as the reference."""
    entities = [e for e in ref.entities_of(data) if e.has_name]
    best = _Best()
    if len(entities) >= 2:
        index = _build_index(entities)
        # Exact parts below this cannot reach the threshold even with the full 40 name points.
        need_name = threshold * 100 - ref.NAME_WEIGHT - POINTS_MARGIN
        codes = _sparse_candidates(index, need_name) if need_name > 0 else None
        if codes is None:
            _dense(index, threshold, need_name, best)
        else:
            for chunk in _chunks(codes):
                _evaluate(index, chunk, threshold, need_name, best)
    results = []
    for s, i, j in zip(best.s.tolist(), best.first.tolist(), best.second.tolist(), strict=True):
        a, b = entities[i], entities[j]
        score, reasons = ref.score_pair(a, b)
        confirmed = ref.final_score(score)
        if confirmed != s:
            raise EngineMismatch(f"pair {i},{j}: engine {s!r}, reference {confirmed!r}")
        results.append(ref.match_entry(a, b, confirmed, reasons))
    return best.count, results
