"""Full backup and restore of a PZLS server: users, repositories and changelogs.

``export_data`` and ``import_data`` are thin commands over these two services.
The backup is one JSON Lines file, written and read a line at a time, so a
large server never has to fit in memory at once:

    {"format": "pzls-backup", "formatVersion": 1, "createdAt": "..."}
    {"type": "user", "id", "username", "passwordHash", "role", "isActive", "createdAt", "lastLogin"}
    {"type": "repository", "userId": "...", "repository": {"version": N, "data": {...}}}
    {"type": "records", "userId": "...", "states": {store: [[version, seq], ...]}, "tombstones": {store: [[id, version, seq], ...]}}
    {"type": "change", "userId": "...", "entry": {...changelog entry...}}
    ...
    {"type": "end", "users": U, "repositories": R, "changes": C}

Every user line comes first; each repository line is followed by the states
of its records (each record's version and seq, in the repository line's
order, and the tombstones: PROTOCOL.md §7), then that user's changelog
entries, oldest first. A backup without the records line (an earlier
release's) restores every record at version 1, changed at the repository's
version, and no tombstones. The closing ``end`` line lets a restore tell a
complete backup from one cut short. Tokens are not exported: a restored server
asks everyone to log in again, and a backup file never carries a usable token.

Repositories are read and written through the repository store's interface
(``pull_bytes``, ``changelog``, ``replace``), so a backup taken from the file
storage restores into the database storage and back. The repository line
embeds the pull body exactly as stored, so the restored server serves the same
bytes to a pull.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
from django.db import transaction

from accounts.models import Role, User, username_key
from pzls_site.clock import iso, utcnow
from pzls_site.exceptions import BadRequest, Conflict, NotFound
from pzls_site.files import atomic_write
from sync.backends import RecordDump, Repository, get_repository_store
from sync.depth import MAX_DEPTH, too_deep
from sync.merge import (
    InvalidStores,
    MalformedBody,
    check_depths,
    check_record_id,
    check_store_name,
    nesting_error,
    validate_stores,
)
from sync.services import dump_of

FORMAT = "pzls-backup"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BackupCounts:
    """What a backup holds, or what a restore brought back."""

    users: int
    repositories: int
    changes: int


# --- export --------------------------------------------------------------------


def _user_line(user: User) -> bytes:
    return orjson.dumps(
        {
            "type": "user",
            "id": str(user.pk),
            "username": user.username,
            "passwordHash": user.password,
            "role": user.role,
            "isActive": user.is_active,
            # Full precision, not the API's milliseconds: a restore gives back the same instant.
            "createdAt": user.created_at.isoformat(),
            "lastLogin": user.last_login.isoformat() if user.last_login else None,
        }
    )


def _repository_lines(user_id: str) -> tuple[list[bytes], int] | None:
    """One user's repository, records and changelog lines, in pieces, and how many entries; None when empty."""
    store = get_repository_store()
    dump = store.dump(user_id)
    if dump.version == 0 and not dump.stores and not dump.tombstones:
        return None
    # Read after the repository: a commit in between only adds entries above
    # its version, which are left out, so repository and changelog agree.
    entries = [entry for entry in store.changelog(user_id) if int(entry["version"]) <= dump.version]
    uid = orjson.dumps(user_id)
    data = {name: {rid: text for rid, text, _, _ in rows} for name, rows in dump.stores.items()}
    repository = _encoder.encode({"version": dump.version, "data": data})
    states = {name: [(version, seq) for _, _, version, seq in rows] for name, rows in dump.stores.items()}
    records = _encoder.encode({"type": "records", "userId": user_id, "states": states, "tombstones": dump.tombstones})
    pieces = [b'{"type":"repository","userId":', uid, b',"repository":', repository, b"}\n", records, b"\n"]
    for entry in entries:
        pieces.append(b'{"type":"change","userId":' + uid + b',"entry":' + orjson.dumps(entry) + b"}\n")
    return pieces, len(entries)


_encoder = msgspec.json.Encoder()


def data_export(*, path: Path) -> BackupCounts:
    """Write a full backup to ``path``, atomically: the file appears complete or not at all.

    The file holds password hashes, so it is created readable by its owner only.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise NotFound(f"No such directory: {path.parent}")
    counts = {"users": 0, "repositories": 0, "changes": 0}

    def lines() -> Iterator[bytes | list[bytes]]:
        yield orjson.dumps({"format": FORMAT, "formatVersion": FORMAT_VERSION, "createdAt": iso(utcnow())}) + b"\n"
        user_ids = []
        for user in User.objects.order_by("created_at", "pk").iterator():
            yield _user_line(user) + b"\n"
            user_ids.append(str(user.pk))
            counts["users"] += 1
        for user_id in user_ids:
            written = _repository_lines(user_id)
            if written is not None:
                pieces, entries = written
                counts["repositories"] += 1
                counts["changes"] += entries
                yield pieces
        yield orjson.dumps({"type": "end", **counts}) + b"\n"

    atomic_write(path, lines())
    return BackupCounts(**counts)


# --- import --------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    """(line number, parsed object, the line itself) of every non-blank line."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below; opened apart so open errors get their own message
    except FileNotFoundError:
        raise NotFound(f"No such file: {path}") from None
    except OSError as exc:
        raise BadRequest(f"Cannot read {path}: {exc.strerror}") from None
    with fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                if too_deep(raw, MAX_DEPTH + 4) is not None:  # a record nests 4 levels down in its line
                    raise BadRequest(f"Line {number}: {nesting_error(raw, _STORES_PATH)}") from None
                raise BadRequest(f"Line {number} is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise BadRequest(f"Line {number} is not a JSON object")
            yield number, obj, raw


def _parse_time(value: Any, number: int, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadRequest(f"Line {number}: {name} is not a timestamp") from None
    if moment.tzinfo is None:
        raise BadRequest(f"Line {number}: {name} has no time zone")
    return moment


def _user_from(obj: dict[str, Any], number: int) -> User:
    for key, kind in (("id", str), ("username", str), ("passwordHash", str), ("role", str), ("isActive", bool)):
        if not isinstance(obj.get(key), kind):
            raise BadRequest(f"Line {number}: user {key} is missing or of the wrong type")
    if obj["role"] not in Role.values:
        raise BadRequest(f"Line {number}: unknown role {obj['role']!r}")
    user = User(
        id=obj["id"],
        username=obj["username"],
        password=obj["passwordHash"],
        role=obj["role"],
        is_active=obj["isActive"],
        created_at=_parse_time(obj.get("createdAt"), number, "createdAt"),
        last_login=None if obj.get("lastLogin") is None else _parse_time(obj["lastLogin"], number, "lastLogin"),
    )
    try:
        user.full_clean(exclude=["password", "username_key"], validate_unique=False)
    except Exception as exc:  # ValidationError: say which line, not a traceback
        raise BadRequest(f"Line {number}: invalid user: {exc}") from None
    return user


class _RawRepository(msgspec.Struct):
    version: int
    data: dict[str, dict[str, msgspec.Raw]]


class _RawRepositoryLine(msgspec.Struct):
    repository: _RawRepository


# Where a repository line holds its stores.
_STORES_PATH = ("repository", "data")


def _repository_from(obj: dict[str, Any], number: int, raw: bytes) -> Repository:
    doc = obj.get("repository")
    if not isinstance(doc, dict) or set(doc) != {"version", "data"}:
        raise BadRequest(f"Line {number}: repository must be {{version, data}}")
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise BadRequest(f"Line {number}: repository version must be a whole number >= 0")
    try:
        validate_stores(doc["data"])
        # The records as the line holds them, text for text: a record pushed
        # with its own spacing or number forms is restored as it was sent, so the
        # restored server's pulls are the same bytes (orjson writes a Fragment
        # verbatim wherever a store serialises the record).
        try:
            texts = msgspec.json.decode(raw, type=_RawRepositoryLine).repository.data
        except RecursionError:  # deeper than msgspec follows, so deeper than a record may be
            raise nesting_error(raw, _STORES_PATH) from None
        check_depths(texts)  # a push's limit: what a server holds, every server can read and write
    except (InvalidStores, MalformedBody) as exc:
        raise BadRequest(f"Line {number}: {exc}") from None
    data = {
        name: {rid: orjson.Fragment(bytes(text)) for rid, text in records.items()} for name, records in texts.items()
    }
    return Repository(version=version, data=data)


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= 2**63 - 1


def _records_from(obj: dict[str, Any], number: int, repository: Repository) -> RecordDump:
    """The repository with its record states and tombstones, as a records line gives them."""
    states, tombstones = obj.get("states"), obj.get("tombstones")
    if not isinstance(states, dict) or not isinstance(tombstones, dict):
        raise BadRequest(f"Line {number}: records must have states and tombstones objects")
    if set(states) != set(repository.data):
        raise BadRequest(f"Line {number}: records name other stores than the repository")
    base = dump_of(repository)
    stores: dict[str, list[tuple[str, msgspec.Raw, int, int]]] = {}
    for name, rows in base.stores.items():
        given = states[name]
        if not isinstance(given, list) or len(given) != len(rows):
            raise BadRequest(f"Line {number}: records of store {name!r} do not match the repository's")
        out = stores[name] = []
        for (rid, text, _, _), state in zip(rows, given, strict=True):
            if not (isinstance(state, list) and len(state) == 2 and _whole(state[0], 1) and _whole(state[1], 0)):
                raise BadRequest(f"Line {number}: the state of {rid!r} in {name!r} must be [version, seq]")
            if state[1] > repository.version:
                raise BadRequest(f"Line {number}: the seq of {rid!r} in {name!r} is above the repository's version")
            out.append((rid, text, state[0], state[1]))
    dead: dict[str, list[tuple[str, int, int]]] = {}
    for name, rows in tombstones.items():
        if not isinstance(rows, list):
            raise BadRequest(f"Line {number}: tombstones of {name!r} must be a list")
        out_dead = dead[name] = []
        for row in rows:
            if not (
                isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                and _whole(row[1], 1) and _whole(row[2], 0) and row[2] <= repository.version
            ):  # fmt: skip
                raise BadRequest(f"Line {number}: a tombstone of {name!r} must be [id, version, seq]")
            try:
                check_store_name(name)
                check_record_id(name, row[0])
            except InvalidStores as exc:
                raise BadRequest(f"Line {number}: {exc}") from None
            if row[0] in repository.data.get(name, {}):
                raise BadRequest(f"Line {number}: {row[0]!r} in {name!r} is both a record and a tombstone")
            out_dead.append((row[0], row[1], row[2]))
    return RecordDump(version=repository.version, stores=stores, tombstones=dead)


def _entry_from(obj: dict[str, Any], number: int, repository_version: int) -> dict[str, Any]:
    entry = obj.get("entry")
    if (
        not isinstance(entry, dict)
        or isinstance(entry.get("version"), bool)
        or not isinstance(entry.get("version"), int)
    ):
        raise BadRequest(f"Line {number}: changelog entry must be an object with a whole-number version")
    if not 0 < entry["version"] <= repository_version:
        raise BadRequest(
            f"Line {number}: changelog version {entry['version']} is outside the repository's 1..{repository_version}"
        )
    return entry


def _groups(path: Path, *, check: bool) -> Iterator[tuple[str, RecordDump, list[dict[str, Any]]]]:
    """Walk a backup once: validate it and yield (user id, repository, changelog) per repository.

    Raises BadRequest naming the line for anything that is not a complete
    backup of this format. With ``check`` it validates every line in full
    and yields nothing (the first pass of a restore); without it, it
    yields each repository with its changelog (the second pass).
    """
    lines = _lines(path)
    first = next(lines, None)
    if first is None or first[1].get("format") != FORMAT:
        raise BadRequest(f"{path} is not a PZLS backup")
    if first[1].get("formatVersion") != FORMAT_VERSION:
        raise BadRequest(f"Unsupported backup format version {first[1].get('formatVersion')!r}")
    user_ids: set[str] = set()
    usernames: set[str] = set()
    repo_ids: set[str] = set()
    current: tuple[str, Repository, RecordDump, list[dict[str, Any]]] | None = None
    counts = [0, 0, 0]
    ended = False
    for number, obj, raw in lines:
        kind = obj.get("type")
        if ended:
            raise BadRequest(f"Line {number}: data after the end of the backup")
        if kind == "user":
            if repo_ids:
                raise BadRequest(f"Line {number}: users must come before repositories")
            user = _user_from(obj, number) if check else None
            if obj.get("id") in user_ids:
                raise BadRequest(f"Line {number}: user id {obj.get('id')} appears twice")
            if user is not None:
                key = username_key(user.username)
                if key in usernames:
                    raise BadRequest(f"Line {number}: username {user.username!r} appears twice")
                usernames.add(key)
            user_ids.add(obj["id"])
            counts[0] += 1
        elif kind == "repository":
            user_id = obj.get("userId")
            if user_id not in user_ids or user_id in repo_ids:
                raise BadRequest(f"Line {number}: repository of an unknown user or a second one for {user_id}")
            if current is not None and not check:
                yield current[0], current[2], current[3]
            repo_ids.add(user_id)
            repository = _repository_from(obj, number, raw)
            current = (user_id, repository, dump_of(repository), [])
            counts[1] += 1
        elif kind == "records":
            if current is None or obj.get("userId") != current[0] or current[3]:
                raise BadRequest(f"Line {number}: records not right after their user's repository")
            current = (current[0], current[1], _records_from(obj, number, current[1]), current[3])
        elif kind == "change":
            if current is None or obj.get("userId") != current[0]:
                raise BadRequest(f"Line {number}: changelog entry not after its user's repository")
            entry = _entry_from(obj, number, current[1].version)
            if current[3] and entry["version"] <= current[3][-1]["version"]:
                raise BadRequest(f"Line {number}: changelog versions must rise")
            current[3].append(entry)
            counts[2] += 1
        elif kind == "end":
            if [obj.get("users"), obj.get("repositories"), obj.get("changes")] != counts:
                raise BadRequest(f"Line {number}: the backup's counts do not match its content")
            ended = True
        else:
            raise BadRequest(f"Line {number}: unknown line type {kind!r}")
    if not ended:
        raise BadRequest("The backup is incomplete (no end line): it was cut short")
    if current is not None and not check:
        yield current[0], current[2], current[3]


def _users(path: Path) -> Iterator[User]:
    for number, obj, _ in _lines(path):
        if obj.get("type") == "user":
            yield _user_from(obj, number)


def data_import(*, path: Path) -> BackupCounts:
    """Restore a backup written by ``data_export`` into an empty server.

    Refuses (Conflict) when any user exists, so a restore never mixes two
    servers' accounts. The whole file is checked before anything is written;
    users are created in one transaction, and if writing a repository fails
    the repositories already written are removed and no user is kept.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"No such file: {path}")
    if User.objects.exists():
        raise Conflict("This server already has users; import_data restores into an empty server only")
    for _ in _groups(path, check=True):
        pass
    store = get_repository_store()
    written: list[str] = []
    users = repositories = changes = 0
    try:
        with transaction.atomic():
            if User.objects.select_for_update().exists():
                raise Conflict("This server already has users; import_data restores into an empty server only")
            for user in _users(path):
                user.save(force_insert=True)
                users += 1
            for user_id, dump, entries in _groups(path, check=False):
                written.append(user_id)
                store.replace(user_id, dump, entries)
                repositories += 1
                changes += len(entries)
    except BaseException:
        for user_id in written:
            with contextlib.suppress(Exception):
                store.delete(user_id)
        raise
    return BackupCounts(users=users, repositories=repositories, changes=changes)
