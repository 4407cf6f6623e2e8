"""The OpenAPI 3 description of the API, served at /api/schema and browsable at /api/docs.

drf-spectacular walks the routed DRF views; the bodies come from here, written
as JSON Schema straight from PROTOCOL.md rather than inferred from code, so
the description says what the protocol promises (and the schema-driven fuzz
tests hold the server to it). Views name their bodies with ``extend_schema``
and the helpers below; ``components`` adds the named schemas and the
protocol's response headers once the generator is done.

The schema and docs views answer errors as JSON like every other /api/ URL:
their own renderers (YAML, HTML templates) would otherwise turn a 405 into a
page of HTML.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any, cast

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.renderers import OpenApiJsonRenderer2
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import USERNAME_KEY_MAX_LENGTH, USERNAME_MAX_LENGTH, USERNAME_REFUSED_CATEGORIES
from pzls_site.json import ORJSONRenderer
from sync.merge import RECORD_ID_MAX, STORE_NAME_MAX

BEARER = "bearerAuth"
_INT64_MAX = 2**63 - 1
_TIMESTAMP = {"type": "string", "format": "date-time", "example": "2026-05-17T10:04:05.123Z"}


def _username_pattern() -> str:
    """No character of the categories a username may not hold (``accounts.models``).

    Written as ``\\uXXXX`` ranges of the Basic Multilingual Plane, which an
    ECMA regex without the ``u`` flag and Python's both read; the few such
    characters beyond it are refused all the same (the description says so).
    """
    ranges: list[tuple[int, int]] = []
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) not in USERNAME_REFUSED_CATEGORIES:
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    refused = "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)
    return f"^[^{refused}]*$"


def ref(name: str) -> dict[str, str]:
    """A reference to one of ``SCHEMAS``."""
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], *, required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    schema["required"] = list(properties) if required is None else required
    if not schema["required"]:
        del schema["required"]
    return schema


_RECORD = {"type": "object", "additionalProperties": True, "description": "A record: any JSON object."}
_STORES = {
    "type": "object",
    "description": (
        f"Store name (1 to {STORE_NAME_MAX} characters, no control characters) → record id "
        f"(1 to {RECORD_ID_MAX} characters, no control characters) → record."
    ),
    "additionalProperties": {"type": "object", "additionalProperties": _RECORD},
}
_STORE_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": STORE_NAME_MAX,
    "pattern": "^[^\\u0000-\\u001f]*$",
    "description": "No control characters (U+0000 to U+001F).",
}
_RECORD_ID = {**_STORE_NAME, "maxLength": RECORD_ID_MAX}
_STORE_AND_ID = _object({"store": {"type": "string"}, "id": {"type": "string"}})

# Named bodies, as PROTOCOL.md gives them.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _object(
        {"error": {"type": "string", "description": "A human-readable sentence."}},
        additionalProperties=False,
        description="Every non-2xx answer (PROTOCOL.md §1).",
    ),
    "Success": _object({"success": {"type": "boolean", "enum": [True]}}, additionalProperties=False),
    "User": _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "username": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "analyst"]},
            "createdAt": _TIMESTAMP,
        },
        additionalProperties=False,
        description="Never holds a password hash or a token.",
    ),
    "Credentials": _object(
        {"username": {"type": "string"}, "password": {"type": "string"}},
        description="Login credentials; a wrong pair is 401 whether or not the user exists.",
    ),
    "Registration": _object(
        {
            "username": {
                "type": "string",
                "minLength": 1,
                "maxLength": USERNAME_MAX_LENGTH,
                "pattern": _username_pattern(),
                "description": (
                    "Unique case-insensitively (after NFKC and case folding), stored as typed; not only spaces; "
                    "no control, line or paragraph separator or invisible formatting character (Unicode "
                    f"categories Cc, Zl, Zp, Cf); at most {USERNAME_KEY_MAX_LENGTH} characters once normalised "
                    "and folded."
                ),
            },
            "password": {"type": "string", "minLength": 6, "maxLength": 4096},
        }
    ),
    "TokenAndUser": _object(
        {
            "token": {"type": "string", "format": "uuid", "description": "A random UUID4; shown once."},
            "user": ref("User"),
        },
        additionalProperties=False,
    ),
    "Me": _object({"user": ref("User")}, additionalProperties=False),
    "PasswordChange": _object(
        {"currentPassword": {"type": "string"}, "newPassword": {"type": "string", "minLength": 6, "maxLength": 4096}}
    ),
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["ok"]},
            "server": {"type": "string", "enum": ["PZLS"]},
            "version": {"type": "string"},
        },
        additionalProperties=False,
    ),
    "HealthUnavailable": _object(
        {"status": {"type": "string", "enum": ["unavailable"]}, "error": {"type": "string"}}, additionalProperties=False
    ),
    "AdminUser": _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "username": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "analyst"]},
            "createdAt": _TIMESTAMP,
            "disabled": {"type": "boolean"},
            "lastLogin": {**_TIMESTAMP, "nullable": True},
            "version": {"type": "integer", "minimum": 0},
            "records": {"type": "integer", "minimum": 0},
            "lastSync": {**_TIMESTAMP, "nullable": True},
        },
        additionalProperties=False,
    ),
    "AdminUsers": _object({"users": {"type": "array", "items": ref("AdminUser")}}, additionalProperties=False),
    "Push": {
        **_object(
            {
                "clientVersion": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": _INT64_MAX,
                    "nullable": True,
                    "description": "Recorded in the changelog; does not gate the push.",
                },
                "stores": _STORES,
                "data": {**_STORES, "description": "The older name of stores."},
            },
            required=[],
        ),
        "oneOf": [{"required": ["stores"]}, {"required": ["data"]}],
        "description": "Exactly one of stores and data. A push never deletes and is all or nothing.",
    },
    "PushResult": _object(
        {
            "version": {"type": "integer", "minimum": 0},
            "added": {"type": "integer", "minimum": 0},
            "modified": {"type": "integer", "minimum": 0},
            "message": {"type": "string", "example": "Sync successful. 1 added, 0 modified."},
            "skipped": {
                "type": "integer",
                "minimum": 1,
                "description": "Pushed ids that are tombstones, not brought back (PROTOCOL.md §7.1); only when not 0.",
            },
        },
        required=["version", "added", "modified", "message"],
        additionalProperties=False,
    ),
    "Pull": _object({"version": {"type": "integer", "minimum": 0}, "data": _STORES}, additionalProperties=False),
    "ChangelogEntry": _object(
        {
            "version": {"type": "integer", "minimum": 1},
            "timestamp": _TIMESTAMP,
            "clientVersion": {"type": "integer", "nullable": True},
            "added": {"type": "array", "items": _STORE_AND_ID},
            "modified": {"type": "array", "items": _STORE_AND_ID},
            "action": {"type": "string", "example": "push"},
        },
        required=["version"],
        description="Entries migrated from a legacy changelog.json keep whatever else they held.",
    ),
    "Changes": _object(
        {
            "currentVersion": {"type": "integer", "minimum": 0},
            "clientVersion": {"type": "integer", "minimum": 0},
            "pendingChanges": {"type": "integer", "minimum": 0},
            "changes": {"type": "array", "maxItems": 50, "items": ref("ChangelogEntry")},
        },
        additionalProperties=False,
    ),
    "Account": _object(
        {
            "username": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "analyst"]},
            "version": {"type": "integer", "minimum": 0},
            "stores": {"type": "integer", "minimum": 0},
            "records": {"type": "integer", "minimum": 0},
            "dataSizeBytes": {"type": "integer", "minimum": 0},
            "totalSyncs": {"type": "integer", "minimum": 0},
            "lastSync": {**_TIMESTAMP, "nullable": True},
        },
        additionalProperties=False,
    ),
    "Status": _object(
        {
            "server": {"type": "string", "enum": ["PZLS"]},
            "serverVersion": {"type": "string"},
            "uptime": {"type": "number", "minimum": 0},
            "registeredUsers": {"type": "integer", "minimum": 0},
            "account": {
                "allOf": [ref("Account")],
                "nullable": True,
                "description": "null without a valid token (an invalid one is not an error here).",
            },
        },
        additionalProperties=False,
    ),
    "Entity": _object(
        {
            "id": {"description": "The record's id field (any JSON value), or its key when it has none."},
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["human", "other"]},
        },
        additionalProperties=False,
    ),
    "Match": _object(
        {
            "entity1": ref("Entity"),
            "entity2": ref("Entity"),
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "reasons": {"type": "array", "items": {"type": "string"}},
        },
        additionalProperties=False,
    ),
    "Resolution": _object(
        {
            "count": {"type": "integer", "minimum": 0},
            "threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "results": {"type": "array", "maxItems": 200, "items": ref("Match")},
        },
        additionalProperties=False,
    ),
    "Query": _object(
        {
            "connectionString": {
                "type": "string",
                "example": "postgres://reader:secret@db.example:5432/warehouse?sslmode=require",
                "description": "postgres://, postgresql://, mysql:// or mariadb://; the password percent-encoded.",
            },
            "query": {"type": "string", "example": "SELECT id, name FROM people"},
        }
    ),
    "QueryResult": _object(
        {
            "success": {"type": "boolean", "enum": [True]},
            "rows": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
            "rowCount": {"type": "integer", "minimum": 0},
            "fields": {"type": "array", "items": {"type": "string"}},
            "truncated": {"type": "boolean"},
            "elapsedMs": {"type": "number", "minimum": 0},
        },
        additionalProperties=False,
    ),
    "QueryFailure": _object(
        {"success": {"type": "boolean", "enum": [False]}, "error": {"type": "string"}},
        additionalProperties=False,
        description="A refused (403) or failed (400) query; the text never holds the password.",
    ),
    # --- record-level sync (PROTOCOL.md §7) ---
    "Op": {
        **_object(
            {
                "action": {"type": "string", "enum": ["create", "update", "delete"]},
                "store": _STORE_NAME,
                "entity_id": _RECORD_ID,
                "id": {**_RECORD_ID, "description": "The older name of entity_id (entity_id wins when both are sent)."},
                "data": {**_RECORD, "description": "The record; required for create and update, ignored for delete."},
                "expectedVersion": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": _INT64_MAX,
                    "nullable": True,
                    "description": "Apply only if the record's version (its tombstone's, 0 for an id never seen) is this.",
                },
            },
            required=["action", "store"],
        ),
        "allOf": [
            {"anyOf": [{"required": ["entity_id"]}, {"required": ["id"]}]},
            {"anyOf": [{"properties": {"action": {"enum": ["delete"]}}}, {"required": ["data"]}]},
        ],
        "description": "Other fields are ignored.",
    },
    "Ops": _object(
        {"operations": {"type": "array", "minItems": 1, "maxItems": 1000, "items": ref("Op")}},
        description="Validated whole (400 naming operations[i], nothing applied), then applied in order as one commit.",
    ),
    "OpApplied": _object(
        {
            "ok": {"type": "boolean", "enum": [True]},
            "entity_id": {"type": "string"},
            "id": {"type": "string"},
            "store": {"type": "string"},
            "action": {
                "type": "string",
                "enum": ["create", "update", "delete"],
                "description": "An update applied to an absent id is a create.",
            },
            "version": {"type": "integer", "minimum": 0, "description": "The record's version after the op."},
        },
        additionalProperties=False,
    ),
    "OpConflict": _object(
        {
            "ok": {"type": "boolean", "enum": [False]},
            "conflict": {"type": "boolean", "enum": [True]},
            "entity_id": {"type": "string"},
            "id": {"type": "string"},
            "store": {"type": "string"},
            "action": {"type": "string", "enum": ["create", "update", "delete"]},
            "serverVersion": {"type": "integer", "minimum": 0, "description": "0 for an id never seen."},
            "serverData": {
                **_RECORD,
                "nullable": True,
                "description": "The record now; null for a tombstone or an id never seen.",
            },
        },
        additionalProperties=False,
    ),
    "OpsResult": _object(
        {
            "version": {"type": "integer", "minimum": 0},
            "applied": {"type": "integer", "minimum": 0},
            "conflicts": {"type": "integer", "minimum": 0},
            "results": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                "items": {"oneOf": [ref("OpApplied"), ref("OpConflict")]},
                "description": "One per op, at the op's index.",
            },
        },
        additionalProperties=False,
    ),
    "AuditEntry": _object(
        {
            "seq": {"type": "integer", "minimum": 1},
            "timestamp": _TIMESTAMP,
            "username": {"type": "string"},
            "userId": {"type": "string"},
            "targetUsername": {"type": "string", "nullable": True},
            "targetUserId": {"type": "string", "nullable": True},
            "ip": {"type": "string", "nullable": True},
            "action": {"type": "string", "example": "update"},
            "store": {"type": "string", "nullable": True},
            "entity_id": {"type": "string", "nullable": True},
            "version": {"type": "integer", "minimum": 1, "nullable": True},
        },
        additionalProperties=False,
    ),
    "AuditPage": _object(
        {
            "ops": {"type": "array", "maxItems": 1000, "items": ref("AuditEntry")},
            "count": {"type": "integer", "minimum": 0, "description": "Entries in this page."},
            "latestSeq": {"type": "integer", "minimum": 0, "description": "The server's last seq."},
        },
        additionalProperties=False,
    ),
    "Record": _object(
        {
            "store": {"type": "string"},
            "id": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "data": _RECORD,
        },
        additionalProperties=False,
    ),
    "RecordBody": {**_RECORD, "description": "The record itself: a JSON object, by a push's rules."},
    "RecordWritten": _object(
        {
            "store": {"type": "string"},
            "id": {"type": "string"},
            "version": {"type": "integer", "minimum": 0, "description": "0 for a delete of an id never seen."},
        },
        additionalProperties=False,
    ),
    "PreconditionFailed": _object(
        {
            "error": {"type": "string", "enum": ["Precondition failed"]},
            "serverVersion": {"type": "integer", "minimum": 0},
            "serverData": {**_RECORD, "nullable": True},
        },
        additionalProperties=False,
        description="412: the record now (serverData null for a tombstone or an id never seen).",
    ),
    "CursorEntity": _object(
        {
            "store": {"type": "string"},
            "id": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "seq": {"type": "integer", "minimum": 1},
            "data": _RECORD,
        },
        additionalProperties=False,
    ),
    "CursorTombstone": _object(
        {
            "store": {"type": "string"},
            "id": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "seq": {"type": "integer", "minimum": 1},
            "deleted": {"type": "boolean", "enum": [True]},
            "data": {"nullable": True, "enum": [None], "description": "Always null."},
        },
        additionalProperties=False,
    ),
    "CursorPage": _object(
        {
            "entities": {
                "type": "array",
                "maxItems": 5000,
                "items": {"oneOf": [ref("CursorEntity"), ref("CursorTombstone")]},
            },
            "nextCursor": {"type": "string", "description": "Where the next call goes on from; always present."},
            "hasMore": {"type": "boolean"},
            "latestSeq": {"type": "integer", "minimum": 0, "description": "The repository version."},
        },
        additionalProperties=False,
    ),
    "Stores": _object(
        {
            "stores": {
                "type": "array",
                "items": _object(
                    {"store": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
                    additionalProperties=False,
                ),
                "description": "In pull order; a store whose records are all deleted has count 0.",
            },
            "total": {"type": "integer", "minimum": 0},
            "latestSeq": {"type": "integer", "minimum": 0},
        },
        additionalProperties=False,
    ),
}

_ERRORS = {
    400: "Bad request: malformed JSON, a body that is not an object, a missing or invalid field.",
    401: "The token is missing, unknown, revoked or expired: log in again.",
    403: "The token is good but the action is not allowed (account disabled, not an admin, ...).",
    404: "No such thing.",
    409: "Conflict with the current state.",
    413: "Request body over PZLS_MAX_BODY_MB.",
    415: "The body is not sent as application/json.",
    412: "If-Match or If-None-Match not met; serverVersion and serverData say what the record is now.",
    429: "Too many login attempts; Retry-After says when to try again.",
    500: "Internal server error; details go to the server's log only.",
}
#: Every URL that needs a token can answer these.
PROTECTED = (401, 403)
#: Every URL that reads a JSON body can answer these.
WITH_BODY = (400, 413, 415)


def errors(*codes: int, body: str = "Error", **descriptions: str) -> dict[int, OpenApiResponse]:
    """Error responses for ``extend_schema(responses=...)``; ``descriptions`` as ``e403="..."``."""
    return {
        code: OpenApiResponse(response=ref(body), description=descriptions.get(f"e{code}", _ERRORS[code]))
        for code in codes
    }


def body(name: str) -> dict[str, dict[str, str]]:
    """A JSON request body that is one of ``SCHEMAS``, for ``extend_schema(request=...)``."""
    return {"application/json": ref(name)}


def ok(name: str, description: str = "Success.") -> OpenApiResponse:
    """A success response whose body is one of ``SCHEMAS``."""
    return OpenApiResponse(response=ref(name), description=description)


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """``Authorization: Bearer <token>``, the only way the API authenticates."""

    target_class = "accounts.authentication.BearerTokenAuthentication"
    name = BEARER

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The token from register or login (a UUID). Any failure is 401 with WWW-Authenticate: Bearer.",
        }


class AnonymousAccountScheme(OpenApiAuthenticationExtension):
    """``PZLS_ANONYMOUS_USER``: while it is set, the URLs that accept it need no token (requirement ``{}``)."""

    target_class = "accounts.authentication.AnonymousAccountAuthentication"
    name: list[str] = []  # no security scheme of its own

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        return [{}] if settings.PZLS_ANONYMOUS_USER else []

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return []


def _security(*requirements: dict[str, list[str]]) -> Sequence[str]:
    """An ``auth=`` for extend_schema: the operation's OpenAPI security requirements.

    drf-spectacular writes the list as given into the operation's ``security``
    (requirement objects), though it annotates the parameter as names.
    """
    return cast(Sequence[str], list(requirements))


#: For URLs that need no token (any sent is not looked at).
NO_AUTH = _security({})
#: For URLs where a token is optional (an invalid one is simply ignored).
OPTIONAL_BEARER = _security({BEARER: []}, {})

THRESHOLD = OpenApiParameter(
    "threshold",
    {"type": "number", "minimum": 0, "maximum": 1, "default": 0.6},
    OpenApiParameter.QUERY,
    description="Pairs scoring at least this match; anything but a number in [0, 1] is 400.",
)
SINCE = OpenApiParameter(
    "since",
    OpenApiTypes.STR,
    OpenApiParameter.QUERY,
    description=(
        "Entries with a version above this: an unsigned ASCII decimal, cut to its whole part; a value above "
        "the current version, however written (1e400, Infinity), means none; anything else means 0."
    ),
)
AUDIT_SINCE = OpenApiParameter(
    "since", {"type": "string", "pattern": "^[0-9]*$"}, OpenApiParameter.QUERY,
    description="Entries with a seq above this (ASCII digits; default 0).",
)  # fmt: skip
AUDIT_LIMIT = OpenApiParameter(
    "limit", {"type": "string", "pattern": "^0*[1-9][0-9]*$"}, OpenApiParameter.QUERY,
    description="Entries per page: default 200, at most 1000 (a larger value is read as 1000); 0 is 400.",
)  # fmt: skip
CURSOR = OpenApiParameter(
    "cursor", OpenApiTypes.STR, OpenApiParameter.QUERY,
    description="A nextCursor this server issued; absent or empty: from the beginning. Any other string is 400.",
)  # fmt: skip
CURSOR_LIMIT = OpenApiParameter(
    "limit", {"type": "string", "pattern": "^0*[1-9][0-9]*$"}, OpenApiParameter.QUERY,
    description="Entities per page: default 500, at most 5000 (a larger value is read as 5000); 0 is 400.",
)  # fmt: skip
CURSOR_STORE = OpenApiParameter(
    "store", {"type": "string", "maxLength": STORE_NAME_MAX, "pattern": "^[^\\u0000-\\u001f]*$"},
    OpenApiParameter.QUERY,
    description="Only this store's records (an unknown store: an empty page; empty: every store).",
)  # fmt: skip
CURSOR_DELETED = OpenApiParameter(
    "deleted", {"type": "string", "enum": ["0", "1", "true", "false", ""]}, OpenApiParameter.QUERY,
    description=(
        "1 or true: tombstones too, as {store, id, version, seq, deleted: true, data: null}; 0, false or empty: "
        "without them. Anything else is 400."
    ),
)  # fmt: skip
RECORD_STORE = OpenApiParameter(
    "store", {**_STORE_NAME, "pattern": "^[^/\\u0000-\\u001f]*$"}, OpenApiParameter.PATH,
    description="The store (percent-encoded); a store name with / cannot be named in this URL.",
)  # fmt: skip
RECORD_ID = OpenApiParameter(
    "record_id", _RECORD_ID, OpenApiParameter.PATH,
    description="The record id, percent-encoded; it may hold /.",
)  # fmt: skip
_TAG = '[ \\t]*(W/)?[ \\t]*("[0-9]{1,18}"|[0-9]{1,18})[ \\t]*'
_IF_MATCH = f"^([ \\t]*\\*[ \\t]*|{_TAG}(,{_TAG})*)$"
IF_MATCH = OpenApiParameter(
    "If-Match", {"type": "string", "pattern": _IF_MATCH},
    OpenApiParameter.HEADER,
    description=(
        'Only if the record has one of these versions ("3", W/"3", 3, or a comma-separated list of them); '
        "* : only if it exists. Else 412; anything that names no version is 400."
    ),
)  # fmt: skip
RECORD_IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER,
    description='On GET: a version this client has ("3"), 304 if it is still current. On PUT: * creates only (412 on a live record).',
)  # fmt: skip
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="An ETag of an earlier pull (or *): 304 with no body when the repository has not changed since.",
)


def api_paths_only(endpoints: list[tuple], **kwargs: Any) -> list[tuple]:
    """PREPROCESSING_HOOKS: /api/ URLs only, written without the optional trailing slash.

    Every API route accepts a trailing slash (the original's router did);
    the description names each URL once, as clients write it.
    """
    result = []
    for path, path_regex, method, callback in endpoints:
        if not path.startswith("/api/"):
            continue
        result.append((path.rstrip("/") or "/", path_regex, method, callback))
    return result


_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string", "enum": ["Bearer"]}, "required": True}},
    "429": {
        "Retry-After": {
            "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
            "required": True,
            "description": "Seconds.",
        }
    },
}


def complete(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS: add the named bodies, 500 on every operation and the protocol's headers.

    Request bodies are required: an empty one is read as ``{}``, which no URL that reads a body accepts.
    """
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            responses = operation.setdefault("responses", {})
            responses.setdefault(
                "500", {"description": _ERRORS[500], "content": {"application/json": {"schema": ref("Error")}}}
            )
            for code, headers in _HEADERS.items():
                if code in responses:
                    responses[code]["headers"] = headers
            if path == "/api/sync" and method == "get":
                responses["200"]["headers"] = {
                    "ETag": {"schema": {"type": "string"}, "required": True, "description": "For If-None-Match."}
                }
                responses["304"]["headers"] = {"ETag": {"schema": {"type": "string"}, "required": True}}
            if path == "/api/sync/records/{store}/{record_id}" and method in ("get", "put"):
                version_tag = {
                    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
                    "required": True,
                    "description": 'The record\'s version, quoted: "3".',
                }
                for code in ("200", "304"):
                    if code in responses:
                        responses[code]["headers"] = {"ETag": version_tag}
    return result


class _JSONErrors(APIView):
    """Errors of these views answer ``{"error": ...}`` as JSON, whatever renders their success."""

    def handle_exception(self, exc: Exception) -> Response:
        self.request.accepted_renderer = ORJSONRenderer()
        self.request.accepted_media_type = ORJSONRenderer.media_type
        return super().handle_exception(exc)


class SchemaView(_JSONErrors, SpectacularAPIView):
    """``GET /api/schema``: this description as JSON, public, whatever token is sent."""

    authentication_classes: list = []
    renderer_classes = [OpenApiJsonRenderer2]

    @extend_schema(
        summary="This OpenAPI 3 description",
        auth=NO_AUTH,
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="The OpenAPI 3 document.")},
    )
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class DocsView(_JSONErrors, SpectacularSwaggerSplitView):
    """``GET /api/docs``: Swagger UI over /api/schema, its files served by this server (a CSP of self holds)."""

    authentication_classes: list = []
    url_name = "api-schema"

    @extend_schema(
        summary="Browse this description (Swagger UI)",
        auth=NO_AUTH,
        responses={(200, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="An HTML page.")},
    )
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)
