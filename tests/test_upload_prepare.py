"""The two streaming upload handlers (OTA firmware, plugin wheels) run BaseHandler.prepare
like every other route: NUL in the query is a 400, the per-address rate limit counts them,
and an oversized Content-Length is refused with their own 413 wording."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings

MULTIPART = "multipart/form-data; boundary=abc"


@pytest.fixture
def server_settings(database_url, tmp_path):
    # no exempt networks: the test client on 127.0.0.1 is counted
    return make_settings(database_url, WEBMACS_RATE_LIMIT=5, WEBMACS_RATE_LIMIT_EXEMPT="",
                         WEBMACS_OTA_STORAGE_DIR=tmp_path / "ota", WEBMACS_PLUGIN_PACKAGES_DIR=tmp_path / "pkgs",
                         WEBMACS_OTA_MAX_FILE_MB=1, WEBMACS_PLUGIN_MAX_UPLOAD_MB=1)


async def test_uploads_go_through_the_base_checks(server):
    fw = await server.request("POST", "/api/v1/ota", {"version": "1.2.3"})
    assert fw.code == 201, fw
    firmware = f"/api/v1/ota/{fw.json['data']['public_id']}/firmware"
    octet = {"Content-Type": "application/octet-stream"}

    nul = await server.request("POST", firmware + "?x=%00", raw=b"abc", headers=octet)
    assert nul.code == 400 and nul.json["detail"] == "x: must not contain NUL characters", nul
    nul = await server.request("POST", "/api/v1/plugins/packages/upload?x=%00", raw=b"--abc--",
                               headers={"Content-Type": MULTIPART})
    assert nul.code == 400 and nul.json["detail"] == "x: must not contain NUL characters", nul

    big = {"Content-Length": str(3 * 1024 * 1024)}
    resp = await server.request("POST", firmware, raw=b"x" * (3 * 1024 * 1024), headers=octet | big)
    assert resp.code == 413 and resp.json["detail"] == "Firmware file exceeds the 1 MB limit.", resp
    resp = await server.request("POST", "/api/v1/plugins/packages/upload", raw=b"x" * (3 * 1024 * 1024),
                                headers={"Content-Type": MULTIPART} | big)
    assert resp.code == 413 and resp.json["detail"] == "file: larger than the 1 MB limit", resp

    # the wheel upload counts against the per-address limit (OTA paths are exempt by design)
    codes = [(await server.request("POST", "/api/v1/plugins/packages/upload", raw=b"--abc--",
                                   headers={"Content-Type": MULTIPART})).code for _ in range(8)]
    assert 429 in codes, codes
    limited = await server.request("POST", "/api/v1/plugins/packages/upload", raw=b"--abc--",
                                   headers={"Content-Type": MULTIPART})
    assert limited.code == 429 and "Retry-After" in limited.headers, limited
