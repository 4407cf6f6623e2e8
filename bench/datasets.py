"""Seeded, realistic Pazator repositories for the benchmark sections.

People and organisations imitate ``tests/fixtures/resolve/input_5000.json``:
70 % humans (``PZI000123`` keys) and 30 % others (``OTH-<uuid>``), names from
first/middle/last name pools, birth dates from 1940 to 2005, 30
nationalities, 500 workplaces, 0 to 4 (rarely 5 or 6) of 50 tags, notes of
a few sentences (about 500 bytes a record), and about one record in ten a
near-duplicate of an earlier one (a doubled or dropped letter, swapped
letters, an extra space, a middle initial, a lost accent) that mostly keeps
its birth date, nationality, workplace and some tags, as the fixtures'
duplicates do. ``repository`` adds Pazator's other four stores.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

Stores = dict[str, dict[str, dict[str, Any]]]

# Word lists, one a line: the formatter would put each word on a line of its own.
# fmt: off
FIRST = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Christopher", "Nancy", "Daniel", "Lisa", "Matthew", "Betty", "Anthony", "Margaret", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly", "Paul", "Emily", "Andrew", "Donna", "Joshua", "Michelle", "Kenneth", "Dorothy", "Kevin", "Carol", "Brian", "Amanda", "Miguel", "José", "Zoë", "Chiara", "Sanjay", "Priya", "Ravi", "Yan", "Lei", "Sakura", "Daichi", "Thabo", "Folami", "Nia", "Ingrid", "Freya", "Lars", "Elin", "Manon", "Pierre", "Hans", "Giovanni", "Pablo", "Diego", "Samir", "Zainab", "Youssef", "Leila", "Ivan", "Olga", "Aiko", "Jun", "Kofi", "Amara", "Mateo"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Howard", "Myers", "Henry", "Garza", "Castillo", "Eriksson", "Arnold", "Nasser", "Cox", "Rossi", "Patterson", "Sharma", "Becker", "Bryant", "Sun", "Hart", "Simmons", "Stone", "Gutierrez", "Porter", "Lindberg", "Morgan", "Bell", "Daniels", "Mensah", "Ito", "Khalil", "Kobayashi", "Moreau", "Vasquez", "Ortiz", "Bianchi", "Munoz", "Crawford", "Barnes", "Foster", "Murphy", "Stewart", "Ling", "Youssef", "Ahmed"]
NATIONALITIES = ["Swedish", "Kenyan", "Ukrainian", "Mexican", "French", "Japanese", "Colombian", "Russian", "German", "Italian", "Spanish", "Brazilian", "Indian", "Chinese", "Nigerian", "Egyptian", "Turkish", "Polish", "Dutch", "Canadian", "American", "British", "Australian", "Korean", "Vietnamese", "Argentinian", "Ghanaian", "Moroccan", "Iranian", "Norwegian"]
WORK_A = ["Eastfield", "Clearview", "Falcon", "Aurora", "Westbrook", "Horizon", "Pinecrest", "Beacon", "Harbor", "Riverside", "Stonebridge", "Northgate", "Silverline", "Summit", "Oakwood", "Redstone", "Bluewater", "Greenfield", "Ironside", "Lakeside", "Maple", "Crescent", "Golden", "Sterling", "Evergreen"]
WORK_B = ["Savings Bank", "Energy Ltd", "Textiles", "Pharmaceuticals", "Construction", "Shipping Co.", "Logistics", "Telecom", "University", "General Hospital", "Consulting", "Software House", "Freight Terminal", "Holdings", "Media Group", "Security Services", "Motors", "Foods", "Insurance", "Trading"]
TAGS = ["suspect", "witness", "informant", "arms", "trafficking", "money-laundering", "journalist", "surveillance", "banker", "fraud", "hacker", "priority", "high-risk", "corruption", "watchlist", "landlord", "police", "verified", "vip", "drugs", "courier", "border-crossing", "unverified", "customs", "family", "smuggler", "analyst", "bribery", "asset", "pep", "associate", "cyber", "terrorism", "extremist", "lawyer", "politician", "diplomat", "military", "academic", "activist", "student", "doctor", "engineer", "pilot", "sailor", "trader", "broker", "accountant", "consultant", "contractor"]
OCCUPATIONS = ["pharmacist", "teacher", "programmer", "nurse", "trader", "security-guard", "lawyer", "driver", "engineer", "accountant"]
# fmt: on
LANGUAGES = ["English", "Spanish", "French", "German", "Russian", "Arabic", "Japanese", "Hindi", "Italian", "Dutch"]
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


def people(n: int, seed: int = 1) -> dict[str, dict[str, dict[str, Any]]]:
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
            notes=" ".join(rng.choice(SENTENCES).format(w=rng.choice(workplaces)) for _ in range(rng.randint(1, 2))),
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


SMALL_STORES = {"tags": 0.01, "cases": 0.004, "chats": 0.004, "relationships": 0.006}


def repository(n: int, seed: int) -> Stores:
    """``n`` records across the six stores, reproducible from ``seed``."""
    rng = random.Random(seed)
    small = {name: max(1, int(n * share)) for name, share in SMALL_STORES.items()}
    stores = people(n - sum(small.values()), seed=seed)
    stamp = "2025-03-04T18:36:40.192Z"
    stores["tags"] = {
        f"TAG-{i:05d}": {
            "id": f"TAG-{i:05d}",
            "name": f"tag-{i}",
            "color": f"#{rng.getrandbits(24):06x}",
            "createdAt": stamp,
        }
        for i in range(small["tags"])
    }
    stores["cases"] = {
        f"CASE-{i:05d}": {
            "id": f"CASE-{i:05d}",
            "title": f"Operation {rng.choice(['Falcon', 'Harbor', 'Ledger', 'Mosaic'])} {i}",
            "status": rng.choice(["open", "closed", "archived"]),
            "members": [f"PZI{rng.randint(1, 99999):06d}" for _ in range(rng.randint(2, 12))],
            "summary": "Financial links between the subjects are being traced through shell companies. " * 3,
            "createdAt": stamp,
        }
        for i in range(small["cases"])
    }
    stores["chats"] = {
        f"CHAT-{i:05d}": {
            "id": f"CHAT-{i:05d}",
            "messages": [
                {"from": "analyst", "text": "Checked the travel records again.", "at": stamp} for _ in range(5)
            ],
            "createdAt": stamp,
        }
        for i in range(small["chats"])
    }
    stores["relationships"] = {
        f"REL-{i:06d}": {
            "id": f"REL-{i:06d}",
            "from": f"PZI{rng.randint(1, 99999):06d}",
            "to": f"PZI{rng.randint(1, 99999):06d}",
            "type": rng.choice(["family", "business", "associate", "employer"]),
            "confidence": round(rng.random(), 2),
            "notes": "Seen together at the harbour office on several occasions.",
            "createdAt": stamp,
        }
        for i in range(small["relationships"])
    }
    return stores
