"""Resolve benchmark: ``GET /api/resolve?threshold=0.6`` over HTTP on seeded realistic repositories.

The repositories are ``bench.datasets.people``: seeded imitations of
``tests/fixtures/resolve/input_5000.json`` with realistic near-duplicates.

Each size is pushed into a fresh account of one live server (in batches, to
stay under the body limit), then resolved several times; the table gives the
median wall time of the request and the peak resident memory of the gunicorn
workers while resolving (Linux ``VmHWM``, reset before the requests).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import PeakSampler, Table, fmt_mb, fmt_s, median_seconds, peak_rss, reset_peaks
from bench.datasets import people
from testkit.client import Client, ok
from testkit.server import LiveServer, ServerFactory

THRESHOLD = 0.6
ORIGINAL_SECONDS = {1000: 0.8, 5000: 30.8, 20000: 526.0}  # the original Node.js server, per the issue
TARGET_SECONDS = {5000: 0.5, 20000: 5.0, 100000: 60.0}
PUSH_BATCH = 10000


def _batches(stores: dict[str, dict[str, Any]], size: int):
    items = [(store, key, record) for store, records in stores.items() for key, record in records.items()]
    for start in range(0, len(items), size):
        batch: dict[str, dict[str, Any]] = {}
        for store, key, record in items[start : start + size]:
            batch.setdefault(store, {})[key] = record
        yield batch


def _measure(server: LiveServer, client: Client, threshold: float, runs: int):
    """(answer, median seconds, peak worker RSS) of ``GET /api/resolve?threshold=...``."""
    path = f"/api/resolve?threshold={threshold}"
    # One untimed request per worker so that every worker has parsed the repository once.
    answers = [ok(client.get(path)) for _ in range(server.workers)]
    pids = server.worker_pids()
    reset_peaks(pids)
    with PeakSampler(pids) as sampler:
        seconds = median_seconds(lambda: client.get(path).raise_for_status(), runs)
    return answers[-1], seconds, max(peak_rss(pids), sampler.peak)


def run(args: Any) -> list[Table]:
    sizes = [1000, 5000] if args.quick else [5000, 20000, 100000]
    # Below about 0.5 the exact fields no longer narrow the pairs down and the engine scans all
    # pairs in native code; one row shows what that costs.
    low = [] if args.quick else [(5000, 0.3)]
    table = Table(
        title=f"Entity resolution: GET /api/resolve through HTTP ({args.storage} storage)",
        columns=[
            "entities",
            "threshold",
            "matches",
            "median time",
            "runs",
            "target",
            "original (Node.js)",
            "worker peak RSS",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="pzls-bench-resolve-") as tmp, ServerFactory(Path(tmp)) as servers:
        server = servers.start(storage=args.storage)
        for number, n in enumerate(sizes):
            client = Client(server.url, timeout=600)
            client.register(f"bench{number}", "benchpass")
            for batch in _batches(people(n, seed=n), PUSH_BATCH):
                client.push(batch)
            measurements = [(THRESHOLD, 1 if args.quick else (5 if n <= 20000 else 3))]
            measurements += [(threshold, 3) for size, threshold in low if size == n]
            for threshold, runs in measurements:
                answer, seconds, peak = _measure(server, client, threshold, runs)
                target = TARGET_SECONDS.get(n) if threshold == THRESHOLD else None
                original = ORIGINAL_SECONDS.get(n)
                table.add(
                    f"{n:,}",
                    threshold,
                    f"{answer['count']:,}",
                    fmt_s(seconds),
                    runs,
                    f"< {fmt_s(target)}" if target else "-",
                    fmt_s(original) if original else "-",
                    fmt_mb(peak),
                )
    table.notes.append("median of the runs after one warm-up request per worker; seeded data, same every time")
    table.notes.append("peak RSS: the largest VmHWM of the gunicorn workers during the timed requests")
    table.notes.append(
        "original: the Node.js server's times from the issue (it compares all pairs whatever the threshold)"
    )
    return [table]
