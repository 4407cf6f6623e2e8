"""Conditional and compressed pulls: additions to PROTOCOL.md §3 that old clients ignore."""

from __future__ import annotations

import gzip

import orjson
import pytest


def big(prefix: str = "h") -> dict:
    """A store over 256 KiB, the size from which compressed pulls are kept in files."""
    return {"humans": {f"{prefix}{n}": {"name": "Person", "notes": "x" * 300} for n in range(1000)}}


def cache_files(data_dir) -> list[str]:
    directory = data_dir / "pullcache"
    return sorted(p.name for p in directory.glob("*.json.gz")) if directory.exists() else []


def test_a_pull_carries_an_etag_that_changes_with_the_repository(admin_api) -> None:
    first = admin_api.get("/api/sync")
    assert first.status_code == 200 and first["ETag"].startswith('"')
    admin_api.push({"humans": {"h1": {"name": "A"}}})
    second = admin_api.get("/api/sync")
    assert second["ETag"] != first["ETag"]
    admin_api.push({"humans": {"h1": {"name": "A"}}})  # no change, same tag
    assert admin_api.get("/api/sync")["ETag"] == second["ETag"]
    assert "Accept-Encoding" in second["Vary"]


@pytest.mark.parametrize("form", ["{tag}", "W/{tag}", '"x", {tag}', "*"])
def test_if_none_match_with_the_current_tag_is_304_without_a_body(admin_api, form: str) -> None:
    admin_api.push({"humans": {"h1": {"name": "A"}}})
    tag = admin_api.get("/api/sync")["ETag"]
    response = admin_api.get("/api/sync", HTTP_IF_NONE_MATCH=form.format(tag=tag))
    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == tag


def test_if_none_match_with_an_old_tag_gets_the_new_body(admin_api) -> None:
    admin_api.push({"humans": {"h1": {"name": "A"}}})
    old = admin_api.get("/api/sync")["ETag"]
    admin_api.push({"humans": {"h2": {"name": "B"}}})
    response = admin_api.get("/api/sync", HTTP_IF_NONE_MATCH=old)
    assert response.status_code == 200
    assert orjson.loads(response.content)["version"] == 2


def test_a_client_that_accepts_gzip_gets_the_same_body_compressed(admin_api, data_dir) -> None:
    admin_api.push({"humans": {f"h{n}": {"name": "Person", "notes": "x" * 200} for n in range(50)}})
    plain = admin_api.get("/api/sync")
    packed = admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="deflate, gzip;q=0.8, br")
    assert packed.status_code == 200
    assert packed["Content-Encoding"] == "gzip"
    assert packed["Content-Type"] == "application/json"
    assert gzip.decompress(packed.content) == plain.content
    assert len(packed.content) < len(plain.content) / 5
    # Both encodings answer 304 to either tag.
    assert admin_api.get("/api/sync", HTTP_IF_NONE_MATCH=packed["ETag"]).status_code == 304
    assert admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip", HTTP_IF_NONE_MATCH=plain["ETag"]).status_code == 304


def test_gzip_q_zero_means_no_gzip(admin_api) -> None:
    response = admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip;q=0, identity")
    assert not response.has_header("Content-Encoding")
    assert response.content == b'{"version":0,"data":{}}'


def test_small_pulls_are_compressed_on_the_fly_without_a_file(admin_api, data_dir) -> None:
    admin_api.push({"humans": {"h1": {"name": "A"}}})
    packed = admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert orjson.loads(gzip.decompress(packed.content))["version"] == 1
    assert cache_files(data_dir) == []


def test_each_version_is_compressed_once_and_old_copies_go(admin_api, data_dir) -> None:
    admin_api.push(big())
    admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    [first] = cache_files(data_dir)
    stamp = (data_dir / "pullcache" / first).stat().st_mtime_ns
    admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert cache_files(data_dir) == [first]
    assert (data_dir / "pullcache" / first).stat().st_mtime_ns == stamp
    admin_api.push({"humans": {"h2": {"name": "B"}}})
    packed = admin_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert orjson.loads(gzip.decompress(packed.content))["version"] == 2
    assert gzip.decompress(packed.content) == admin_api.get("/api/sync").content
    [second] = cache_files(data_dir)
    assert second != first


def test_deleting_a_user_removes_their_cached_pulls(admin_api, analyst_api, data_dir) -> None:
    analyst_api.push(big())
    analyst_api.get("/api/sync", HTTP_ACCEPT_ENCODING="gzip")
    assert len(cache_files(data_dir)) == 1
    user_id = analyst_api.get("/api/auth/me").json()["user"]["id"]
    assert admin_api.delete(f"/api/admin/users/{user_id}").status_code == 200
    assert cache_files(data_dir) == []
