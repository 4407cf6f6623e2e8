"""Assertions the API test modules share."""

from __future__ import annotations

import orjson


def assert_error(response, status: int, message: str | None = None) -> str:
    """The answer is exactly ``{"error": <string>}`` as JSON with ``status``; returns the text."""
    assert response.status_code == status, (response.status_code, response.content)
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = orjson.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str) and body["error"], body
    if message is not None:
        assert body["error"] == message
    return body["error"]
