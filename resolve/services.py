"""Entity resolution rules: reading the threshold and finding a user's likely duplicates.

Views call these. The scoring itself lives in the pure modules
``resolve.reference`` (the definition) and ``resolve.engine`` (the fast
implementation the API uses); the repository is read through the sync
services, never from storage directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import QueryDict

from pzls_site import params
from pzls_site.exceptions import BadRequest
from sync.services import repository_load

DEFAULT_THRESHOLD = 0.6


@dataclass(frozen=True)
class Resolution:
    """The answer of ``GET /api/resolve``: all matches counted, the best 200 listed."""

    count: int
    threshold: float | int
    results: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "threshold": self.threshold, "results": self.results}


def threshold_parse(*, query: QueryDict) -> float | int:
    """The ``threshold`` query parameter as a number in [0, 1]; missing means 0.6.

    Read as every numeric parameter is (``pzls_site.params``), and echoed in
    the answer the way JavaScript prints the original's ``parseFloat`` result:
    a whole number without a fraction (``1``, not ``1.0``). Anything that is
    not a number in [0, 1] is a 400.
    """
    threshold = params.unit_fraction(query, "threshold", default=DEFAULT_THRESHOLD)
    if threshold is None:
        raise BadRequest("threshold must be a number between 0 and 1")
    return threshold


def matches_find(*, user_id: str, threshold: float) -> Resolution:
    """Likely duplicates among the user's ``humans`` and ``others`` at ``threshold`` (PROTOCOL.md §4)."""
    # The engine brings numpy and rapidfuzz (about 13 MB a process): imported
    # here, on a worker's first resolve, so workers that only sync never carry them.
    from resolve.engine import resolve_fast

    repository = repository_load(user_id=user_id)
    count, results = resolve_fast(repository.data, threshold)
    return Resolution(count=count, threshold=threshold, results=results)
