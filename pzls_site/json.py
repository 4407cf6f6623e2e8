"""JSON in and out of the API through orjson.

The parser enforces the body limit (PZLS_MAX_BODY_MB) while reading, so a
chunked body without Content-Length cannot exceed it either, and turns every
decoding failure into the protocol's ``Malformed JSON: ...`` error (orjson
reads at most 1024 levels of nesting). Answers are written by
``sync.depth.dumps``: orjson's bytes, also for values nested deeper than the
254 levels orjson itself writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from django.conf import settings
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from pzls_site.exceptions import BodyTooLarge, MalformedJSON
from sync.depth import dumps

_READ_STEP = 256 * 1024


def read_body(stream: Any, limit: int, length: int = 0) -> bytes | bytearray:
    """Read a request body, failing with 413 as soon as it passes ``limit`` bytes.

    A body whose ``length`` (its Content-Length) is over 256 KiB is read
    256 KiB at a time into one buffer of that size: it then costs its size
    in memory, where one large read costs two or three times that in the
    server's buffers while they grow.
    """
    if stream is None:
        return b""
    if length > limit:
        raise BodyTooLarge()
    if length <= _READ_STEP:
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise BodyTooLarge()
        return body
    buffer = bytearray(length)
    filled = 0
    with memoryview(buffer) as view:
        while filled < length and (chunk := stream.read(min(_READ_STEP, length - filled))):
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
    del buffer[filled:]  # a body that ended early
    return buffer


def is_blank(body: bytes | bytearray) -> bool:
    """Whether a body is empty or only whitespace (without copying it, as ``strip`` would)."""
    return not body or body.isspace()


def parse_json(body: bytes | bytearray) -> Any:
    """Parse JSON bytes strictly (no NaN, no Infinity, valid UTF-8 only)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(str(exc)) from None


class ORJSONParser(BaseParser):
    """DRF parser for application/json bodies."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        body = read_body(stream, settings.PZLS_MAX_BODY_BYTES)
        if not body.strip():
            return {}
        return parse_json(body)


class ORJSONRenderer(BaseRenderer):
    """DRF renderer that writes compact UTF-8 JSON."""

    media_type = "application/json"
    format = "json"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None
    ) -> bytes:
        if data is None:
            return b""
        return dumps(data)


class JSONOnlyNegotiation(BaseContentNegotiation):
    """The API speaks JSON whatever ``Accept`` says, as the original did: no 406."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        for parser in parsers:
            if request.content_type.split(";")[0].strip().lower() == parser.media_type:
                return parser
        return None

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type
