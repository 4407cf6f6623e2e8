"""Resolve benchmark: ``GET /api/resolve?threshold=0.6`` over HTTP on seeded realistic repositories.

The repositories imitate ``/work/shared/fixtures/resolve/input_5000.json``:
70 % humans (``PZI000123`` keys) and 30 % others (``OTH-<uuid>``), names from
first/middle/last name pools, birth dates from 1940 to 2005, 30
nationalities, 500 workplaces, 0 to 4 (rarely 5 or 6) of 50 tags, notes of
a few sentences, and about one record in ten a near-duplicate of an earlier
one (a doubled or dropped letter, swapped letters, an extra space, a middle
initial, a lost accent) that mostly keeps its birth date, nationality,
workplace and some tags, as the fixtures' duplicates do.

Each size is pushed into a fresh account of one live server (in batches, to
stay under the body limit), then resolved several times; the table gives the
median wall time of the request and the peak resident memory of the gunicorn
workers while resolving (Linux ``VmHWM``, reset before the requests).
"""

from __future__ import annotations

import random
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common import LiveServer, Table, fmt_mb, fmt_s, median_seconds

THRESHOLD = 0.6
ORIGINAL_SECONDS = {1000: 0.8, 5000: 30.8, 20000: 526.0}  # the original Node.js server, per the issue
TARGET_SECONDS = {5000: 0.5, 20000: 5.0, 100000: 60.0}
PUSH_BATCH = 10000

FIRST = (
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard Susan Joseph "
    "Jessica Thomas Sarah Charles Karen Christopher Nancy Daniel Lisa Matthew Betty Anthony Margaret Mark Sandra "
    "Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle Kenneth Dorothy Kevin Carol Brian "
    "Amanda Miguel José Zoë Chiara Sanjay Priya Ravi Yan Lei Sakura Daichi Thabo Folami Nia Ingrid Freya Lars "
    "Elin Manon Pierre Hans Giovanni Pablo Diego Samir Zainab Youssef Leila Ivan Olga Aiko Jun Kofi Amara Mateo"
).split()
LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis "
    "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera "
    "Campbell Mitchell Carter Roberts Howard Myers Henry Garza Castillo Eriksson Arnold Nasser Cox Rossi Patterson "
    "Sharma Becker Bryant Sun Hart Simmons Stone Gutierrez Porter Lindberg Morgan Bell Daniels Mensah Ito Khalil "
    "Kobayashi Moreau Vasquez Ortiz Bianchi Munoz Crawford Barnes Foster Murphy Stewart Ling Youssef Ahmed"
).split()
NATIONALITIES = (
    "Swedish Kenyan Ukrainian Mexican French Japanese Colombian Russian German Italian Spanish Brazilian Indian "
    "Chinese Nigerian Egyptian Turkish Polish Dutch Canadian American British Australian Korean Vietnamese "
    "Argentinian Ghanaian Moroccan Iranian Norwegian"
).split()
WORK_A = (
    "Eastfield Clearview Falcon Aurora Westbrook Horizon Pinecrest Beacon Harbor Riverside Stonebridge Northgate "
    "Silverline Summit Oakwood Redstone Bluewater Greenfield Ironside Lakeside Maple Crescent Golden Sterling Evergreen"
).split()
WORK_B = (
    "Savings Bank|Energy Ltd|Textiles|Pharmaceuticals|Construction|Shipping Co.|Logistics|Telecom|University|"
    "General Hospital|Consulting|Software House|Freight Terminal|Holdings|Media Group|Security Services|"
    "Motors|Foods|Insurance|Trading"
).split("|")
TAGS = (
    "suspect witness informant arms trafficking money-laundering journalist surveillance banker fraud hacker "
    "priority high-risk corruption watchlist landlord police verified vip drugs courier border-crossing "
    "unverified customs family smuggler analyst bribery asset pep associate cyber terrorism extremist lawyer "
    "politician diplomat military academic activist student doctor engineer pilot sailor trader broker "
    "accountant consultant contractor"
).split()
OCCUPATIONS = "pharmacist teacher programmer nurse trader security-guard lawyer driver engineer accountant".split()
LANGUAGES = "English Spanish French German Russian Arabic Japanese Hindi Italian Dutch".split()
SENTENCES = (
    "Travel records show a trip through {w}, Berlin; bank confirmed the account is still active.",
    "Open-source research links subject to {w}, Rome; documents were copied and archived.",
    "Records indicate regular visits to {w}, Tokyo; details could not be independently verified.",
    "Informant states the subject frequents {w}, Toronto; possible association with a known network.",
    "Contact reported a meeting at {w}, Sydney; no further action recommended at this stage.",
)
ACCENTS = {"é": "e", "ë": "e", "ó": "o", "á": "a", "ñ": "n"}


def _typo(rng: random.Random, name: str) -> str:
    """A near-duplicate spelling of ``name``, of the kinds seen in the fixtures."""
    kind = rng.randrange(8)
    k = rng.randrange(1, len(name) - 1) if len(name) > 2 else 0
    if kind == 0:
        return name + " "
    if kind == 1 and " " in name:
        return name.replace(" ", "  ", 1)
    if kind == 2:
        return name[:k] + name[k] + name[k:]
    if kind == 3:
        return name[:k] + name[k + 1 :]
    if kind == 4 and k + 1 < len(name):
        return name[:k] + name[k + 1] + name[k] + name[k + 2 :]
    if kind == 5:
        return name[:k] + rng.choice("abcdefghijklmnopqrstuvwxyz") + name[k + 1 :]
    if kind == 6 and " " in name:
        first, rest = name.split(" ", 1)
        return f"{first} {rng.choice('ABCDEFGHJKLMNPRST')}. {rest}"
    stripped = "".join(ACCENTS.get(ch, ch) for ch in name)
    return stripped if stripped != name else name.strip() + " "


def _iso(rng: random.Random) -> str:
    return (
        f"{rng.randint(2022, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z"
    )


def generate(n: int, seed: int = 1) -> dict[str, dict[str, dict[str, Any]]]:
    """Stores ``humans`` and ``others`` with ``n`` records in all, reproducible from ``seed``."""
    rng = random.Random(seed)
    workplaces = [f"{a} {b}" for a in WORK_A for b in WORK_B]
    rng.shuffle(workplaces)
    workplaces = workplaces[:500]
    records: list[dict[str, Any]] = []
    for _ in range(n):
        if records and rng.random() < 0.1:
            base = rng.choice(records)
            tags = [t for t in base["tags"] if rng.random() < 0.8]
            record = {
                "name": _typo(rng, base["name"]),
                "birthDate": base["birthDate"] if rng.random() < 0.95 else f"{rng.randint(1940, 2005)}-01-01",
                "nationality": base["nationality"] if rng.random() < 0.85 else rng.choice(NATIONALITIES),
                "workplace": base["workplace"] if rng.random() < 0.7 else rng.choice(workplaces),
                "tags": tags,
            }
        else:
            parts = [rng.choice(FIRST)]
            if rng.random() < 0.35:
                parts.append(rng.choice(FIRST))
            parts.append(rng.choice(LAST))
            count = rng.choice((0, 1, 2, 3, 4)) if rng.random() > 0.01 else rng.choice((5, 6))
            record = {
                "name": " ".join(parts),
                "birthDate": f"{rng.randint(1940, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "nationality": rng.choice(NATIONALITIES),
                "workplace": rng.choice(workplaces),
                "tags": rng.sample(TAGS, count),
            }
        created = _iso(rng)
        record.update(
            occupation=rng.choice(OCCUPATIONS),
            threatLevel=rng.choice(("none", "low", "medium", "high", "critical")),
            languages=rng.sample(LANGUAGES, rng.randint(1, 2)),
            notes=" ".join(
                rng.choice(SENTENCES).format(w=rng.choice(workplaces)) for _ in range(rng.randint(1, 2))
            ),
            createdAt=created,
            updatedAt=created,
        )
        records.append(record)
    humans: dict[str, dict[str, Any]] = {}
    others: dict[str, dict[str, Any]] = {}
    serial = 0
    for record in records:
        if rng.random() < 0.7:
            serial += rng.randint(1, 120)
            key = f"PZI{serial:06d}"
            humans[key] = {"id": key, **record}
        else:
            key = f"OTH-{uuid.UUID(int=rng.getrandbits(128), version=4)}"
            others[key] = {"id": key, **record}
    return {"humans": humans, "others": others}


def _batches(stores: dict[str, dict[str, Any]], size: int):
    items = [(store, key, record) for store, records in stores.items() for key, record in records.items()]
    for start in range(0, len(items), size):
        batch: dict[str, dict[str, Any]] = {}
        for store, key, record in items[start : start + size]:
            batch.setdefault(store, {})[key] = record
        yield batch


def _reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def _peak_rss(pids: list[int]) -> int:
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return peak


class _Sampler:
    """Polls the workers' RSS while requests run, for systems without VmHWM."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for process in self.processes:
                try:
                    self.peak = max(self.peak, process.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(0.02)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _measure(server: LiveServer, session: requests.Session, headers: dict[str, str], threshold: float, runs: int):
    """(answer, median seconds, peak worker RSS) of ``GET /api/resolve?threshold=...``."""
    url = f"{server.url}/api/resolve?threshold={threshold}"
    # One untimed request per worker so that every worker has parsed the repository once.
    answer = None
    for _ in range(server.workers):
        answer = session.get(url, headers=headers, timeout=600)
        answer.raise_for_status()
    pids = server.worker_pids()
    _reset_peaks(pids)
    with _Sampler(pids) as sampler:
        seconds = median_seconds(lambda: session.get(url, headers=headers, timeout=600).raise_for_status(), runs)
    return answer.json(), seconds, max(_peak_rss(pids), sampler.peak)


def run(args: Any) -> list[Table]:
    sizes = [1000, 5000] if args.quick else [5000, 20000, 100000]
    # Below about 0.5 the exact fields no longer narrow the pairs down and the engine scans all
    # pairs in native code; one row shows what that costs.
    low = [] if args.quick else [(5000, 0.3)]
    table = Table(
        title=f"Entity resolution: GET /api/resolve through HTTP ({args.storage} storage)",
        columns=[
            "entities", "threshold", "matches", "median time", "runs", "target", "original (Node.js)",
            "worker peak RSS",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="pzls-bench-resolve-") as tmp:
        server = LiveServer(Path(tmp) / "data", env={"PZLS_STORAGE": args.storage})
        with server:
            session = requests.Session()
            for number, n in enumerate(sizes):
                response = session.post(
                    server.url + "/api/auth/register", json={"username": f"bench{number}", "password": "benchpass"}
                )
                response.raise_for_status()
                headers = {"Authorization": f"Bearer {response.json()['token']}", "Content-Type": "application/json"}
                for batch in _batches(generate(n, seed=n), PUSH_BATCH):
                    session.post(server.url + "/api/sync", json={"stores": batch}, headers=headers).raise_for_status()
                measurements = [(THRESHOLD, 1 if args.quick else (5 if n <= 20000 else 3))]
                measurements += [(threshold, 3) for size, threshold in low if size == n]
                for threshold, runs in measurements:
                    answer, seconds, peak = _measure(server, session, headers, threshold, runs)
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
    table.notes.append("original: the Node.js server's times from the issue (it compares all pairs whatever the threshold)")
    return [table]
