"""OTA updates over real HTTP (REST §OTA Updates), on both backends: records, the
streamed firmware upload and its SHA-256, download, transitions, check."""

from __future__ import annotations

import hashlib
import os

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.conftest import make_settings
from webmacs.handlers.ota import MultipartFile
from webmacs.semver import is_semver, semver_key

API = "/api/v1/ota"
MB = 1024 * 1024


@pytest.fixture
def server_settings(database_url, tmp_path):
    return make_settings(database_url, WEBMACS_OTA_STORAGE_DIR=str(tmp_path / "ota"), WEBMACS_OTA_MAX_FILE_MB=1)


def storage(server) -> str:
    return server.services.config.ota_storage_dir


async def create(server, version="2.1.0", **extra) -> dict:
    resp = await server.request("POST", API, {"version": version, **extra})
    assert resp.code == 201, resp
    assert resp.json["status"] == "success" and resp.json["message"] == "Firmware update successfully registered."
    return resp.json["data"]


async def upload(server, update: dict, data: bytes, content_type="application/octet-stream", token="admin"):
    return await server.request("POST", f"{API}/{update['public_id']}/firmware", raw=data,
                                headers={"Content-Type": content_type}, token=token)


def multipart(data: bytes, boundary="----webmacsBoundary7MA4YWxkTrZu0gW") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"fw.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_semver():
    for good in ("0.0.1", "2.1.0", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.7", "1.0.0-rc.1+b"):
        assert is_semver(good), good
    for bad in ("2.1", "v2.1.0", "2.1.0.4", "01.1.0", "2.1.x", "", " 2.1.0", "1.0.0-", "1.0.0-01"):
        assert not is_semver(bad), bad
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
               "1.0.0-rc.1", "1.0.0", "1.0.1", "1.2.0", "1.10.0", "2.0.0"]
    assert sorted(reversed(ordered), key=semver_key) == ordered
    assert semver_key("1.0.0+a") == semver_key("1.0.0+b")


def test_multipart_reader_any_chunking():
    payload = os.urandom(5000) + b"\r\n--not-the-boundary\r\n" + os.urandom(100)
    body, ctype = multipart(payload)
    boundary = ctype.split("boundary=")[1].encode()
    for size in (1, 7, 64, 4096, len(body)):
        reader = MultipartFile(boundary)
        got = b"".join(reader.feed(body[i:i + size]) for i in range(0, len(body), size))
        assert got == payload and reader.complete, size


async def test_records_crud_and_validation(server):
    fw = await create(server, "2.1.0", changelog="Performance improvements and bug fixes")
    assert fw["version"] == "2.1.0" and fw["changelog"] == "Performance improvements and bug fixes"
    assert fw["status"] == "pending" and fw["has_firmware_file"] is False and fw["file_hash_sha256"] is None
    assert fw["file_size_bytes"] is None and fw["started_on"] is None and fw["completed_on"] is None
    me = (await server.request("GET", "/api/v1/auth/me")).json
    assert fw["user_public_id"] == me["public_id"] and fw["created_on"]
    assert (await server.request("POST", API, {"version": "2.1.0"})).code == 409
    for body, field in (({}, "version"), ({"version": "2.1"}, "version"), ({"version": "v2.1.0"}, "version"),
                        ({"version": 2}, "version"), ({"version": "2.2.0", "changelog": 5}, "changelog")):
        resp = await server.request("POST", API, body)
        assert resp.code == 422 and resp.json["detail"].startswith(field + ":"), (body, resp)
    await create(server, "2.2.0-rc.1")
    listing = await server.request("GET", API)
    assert listing.code == 200 and listing.json["total"] == 2
    assert [u["version"] for u in listing.json["data"]] == ["2.2.0-rc.1", "2.1.0"]  # newest first
    got = await server.request("GET", f"{API}/{fw['public_id']}")
    assert got.code == 200 and got.json == fw
    deleted = await server.request("DELETE", f"{API}/{fw['public_id']}")
    assert deleted.code == 200 and deleted.json == {"status": "success",
                                                    "message": "Firmware update successfully deleted."}
    for method in ("GET", "DELETE"):
        assert (await server.request(method, f"{API}/{fw['public_id']}")).code == 404
    for path in ("apply", "deploy", "rollback"):
        assert (await server.request("POST", f"{API}/{fw['public_id']}/{path}")).code == 404


async def test_admin_only(server):
    fw = await create(server)
    one = f"{API}/{fw['public_id']}"
    calls = [("GET", API, None), ("POST", API, {"version": "3.0.0"}), ("GET", one, None), ("DELETE", one, None),
             ("POST", f"{one}/apply", None), ("POST", f"{one}/deploy", None), ("POST", f"{one}/rollback", None),
             ("GET", f"{API}/check", None),
             ("PUT", f"{one}/status", {"status": "verifying"}), ("GET", f"{one}/firmware", None)]
    for role in ("viewer", "operator"):
        token = await server.create_user(role)
        for method, path, body in calls:
            resp = await server.request(method, path, body, token=token)
            assert resp.code == 403 and resp.json == {"detail": "Admin access required."}, (role, method, path)
        resp = await upload(server, fw, b"firmware", token=token)
        assert resp.code == 403 and resp.json == {"detail": "Admin access required."}
    for method, path, body in calls:
        assert (await server.request(method, path, body, token=None)).code == 401
    assert (await upload(server, fw, b"firmware", token=None)).code == 401
    assert (await server.request("GET", one)).json["has_firmware_file"] is False  # nothing changed


async def test_upload_records_hash_and_size_and_download_streams_it(server):
    fw = await create(server)
    data = os.urandom(700 * 1024)
    resp = await upload(server, fw, data)
    assert resp.code == 201, resp
    rec = resp.json["data"]
    assert rec["file_hash_sha256"] == hashlib.sha256(data).hexdigest() and rec["file_size_bytes"] == len(data)
    assert rec["has_firmware_file"] is True and rec["download_url"] == f"{API}/{fw['public_id']}/firmware"
    assert resp.json["message"] == f"Firmware file uploaded ({len(data):,} bytes)."
    # on disk, complete, and nothing else left behind
    assert os.listdir(storage(server)) == [f"{fw['public_id']}.bin"]
    with open(os.path.join(storage(server), f"{fw['public_id']}.bin"), "rb") as fh:
        assert fh.read() == data
    got = await server.request("GET", f"{API}/{fw['public_id']}/firmware")
    assert got.code == 200 and got.body == data
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["X-Firmware-SHA256"] == rec["file_hash_sha256"]
    # a new upload replaces the file while the update is pending
    again = await upload(server, fw, b"second build")
    assert again.code == 201 and again.json["data"]["file_hash_sha256"] == hashlib.sha256(b"second build").hexdigest()
    assert os.listdir(storage(server)) == [f"{fw['public_id']}.bin"]
    # deleting the record deletes its file
    assert (await server.request("DELETE", f"{API}/{fw['public_id']}")).code == 200
    assert os.listdir(storage(server)) == []


async def test_multipart_upload(server):
    fw = await create(server)
    data = os.urandom(300 * 1024)
    body, ctype = multipart(data)
    resp = await upload(server, fw, body, ctype)
    assert resp.code == 201, resp
    assert resp.json["data"]["file_hash_sha256"] == hashlib.sha256(data).hexdigest()
    assert resp.json["data"]["file_size_bytes"] == len(data)
    no_file, ctype = multipart(b"")
    no_file = no_file.replace(b'name="file"', b'name="other"')
    resp = await upload(server, fw, no_file, ctype)
    assert resp.code == 422 and resp.json["detail"].startswith("file:")


async def test_upload_limits_and_errors(server):
    fw = await create(server)
    too_big = await upload(server, fw, b"x" * (MB + 100 * 1024))
    assert too_big.code == 413 and "1 MB" in too_big.json["detail"], too_big
    # streamed without a Content-Length (chunked): counted as it arrives
    chunks = [b"y" * (64 * 1024)] * 20

    async def producer(write):
        for c in chunks:
            await write(c)

    client = AsyncHTTPClient(force_instance=True)
    try:
        resp = await client.fetch(HTTPRequest(
            f"{server.base_url}{API}/{fw['public_id']}/firmware", method="POST", body_producer=producer,
            headers={"Authorization": f"Bearer {server.admin_token}", "Content-Type": "application/octet-stream"},
            request_timeout=30), raise_error=False)
    finally:
        client.close()
    assert resp.code == 413, resp
    assert (await upload(server, fw, b"")).code == 422
    assert (await upload(server, fw, b"abc", content_type="text/plain")).code == 415
    missing = await server.request("POST", f"{API}/nope/firmware", raw=b"abc",
                                   headers={"Content-Type": "application/octet-stream"})
    assert missing.code == 404
    assert (await server.request("GET", f"{API}/{fw['public_id']}/firmware")).code == 404  # no file yet
    assert (await server.request("GET", f"{API}/{fw['public_id']}")).json["has_firmware_file"] is False
    assert [n for n in os.listdir(storage(server))] == [] if os.path.isdir(storage(server)) else True


async def test_apply_as_in_webmacs(server):
    # no firmware file: a pending update is marked completed
    bare = await create(server, "2.0.0")
    applied = await server.request("POST", f"{API}/{bare['public_id']}/apply")
    assert applied.code == 200 and applied.json["status"] == "success", applied
    rec = applied.json["data"]
    assert rec["status"] == "completed" and rec["started_on"] and rec["completed_on"] and rec["error_message"] is None
    assert (await server.request("GET", f"{API}/{bare['public_id']}")).json == rec
    again = await server.request("POST", f"{API}/{bare['public_id']}/apply")
    assert again.code == 409 and "'completed'" in again.json["detail"]
    # a WebMACS client may send an empty JSON object
    empty = await create(server, "2.0.1")
    resp = await server.request("POST", f"{API}/{empty['public_id']}/apply", {})
    assert resp.code == 200 and resp.json["data"]["status"] == "completed"
    # with a file: verified first
    good = await create(server, "2.1.0")
    assert (await upload(server, good, b"build 1" * 1000)).code == 201
    resp = await server.request("POST", f"{API}/{good['public_id']}/apply")
    assert resp.code == 200 and resp.json["data"]["status"] == "completed", resp
    bad = await create(server, "2.2.0")
    assert (await upload(server, bad, b"build 2" * 1000)).code == 201
    with open(os.path.join(storage(server), f"{bad['public_id']}.bin"), "r+b") as fh:
        fh.write(b"EVIL")  # the stored file changes behind the record's back
    resp = await server.request("POST", f"{API}/{bad['public_id']}/apply")
    assert resp.code == 200 and resp.json["data"]["status"] == "failed", resp
    failed = (await server.request("GET", f"{API}/{bad['public_id']}")).json
    assert failed["status"] == "failed" and failed["error_message"] == "SHA-256 hash verification failed"
    assert failed["completed_on"]
    assert (await server.request("POST", f"{API}/{bad['public_id']}/apply")).code == 409
    # the server never fetches URLs for the client
    url = await create(server, "2.3.0")
    resp = await server.request("POST", f"{API}/{url['public_id']}/apply",
                                {"download_url": "http://127.0.0.1:1/fw.tar.gz"})
    assert resp.code == 422 and resp.json["detail"].startswith("download_url:")
    assert (await server.request("GET", f"{API}/{url['public_id']}")).json["status"] == "pending"
    # rollback only from completed
    assert (await server.request("POST", f"{API}/{url['public_id']}/rollback")).code == 409
    rolled = await server.request("POST", f"{API}/{bare['public_id']}/rollback")
    assert rolled.code == 200 and rolled.json["data"]["status"] == "rolled_back"


async def test_deploy_and_the_controllers_progress(server):
    fw = await create(server)
    one = f"{API}/{fw['public_id']}"
    nofile = await server.request("POST", f"{one}/deploy")
    assert nofile.code == 409 and "firmware file" in nofile.json["detail"]
    assert (await upload(server, fw, b"build 1")).code == 201
    assert (await server.request("POST", f"{one}/rollback")).code == 409  # only a completed update rolls back
    assert (await server.request("PUT", f"{one}/status", {"status": "verifying"})).code == 409  # not started
    deployed = await server.request("POST", f"{one}/deploy")
    assert deployed.code == 200 and deployed.json["status"] == "success"
    assert deployed.json["data"]["status"] == "downloading" and deployed.json["data"]["started_on"]
    assert (await server.request("POST", f"{one}/deploy")).code == 409
    assert (await server.request("POST", f"{one}/apply")).code == 409
    assert (await upload(server, fw, b"build 2")).code == 409  # no new file under a running update
    assert (await server.request("DELETE", one)).code == 409
    other = await create(server, "2.2.0")
    assert (await upload(server, other, b"other")).code == 201
    busy = await server.request("POST", f"{API}/{other['public_id']}/deploy")
    assert busy.code == 409 and "2.1.0" in busy.json["detail"]
    # the controller's progress: only forward along the documented machine
    assert (await server.request("PUT", f"{one}/status", {"status": "applying"})).code == 409  # skips verifying
    assert (await server.request("PUT", f"{one}/status", {"status": "done"})).code == 422
    for status in ("verifying", "applying", "completed"):
        resp = await server.request("PUT", f"{one}/status", {"status": status})
        assert resp.code == 200 and resp.json["data"]["status"] == status, resp
    done = (await server.request("GET", one)).json
    assert done["completed_on"] and done["error_message"] is None
    assert (await server.request("PUT", f"{one}/status", {"status": "failed"})).code == 409
    rolled = await server.request("POST", f"{one}/rollback")
    assert rolled.code == 200 and rolled.json["data"]["status"] == "rolled_back"
    assert (await server.request("POST", f"{one}/rollback")).code == 409
    assert (await server.request("POST", f"{one}/deploy")).code == 409
    # a failure with its reason
    assert (await server.request("POST", f"{API}/{other['public_id']}/deploy")).code == 200
    failed = await server.request("PUT", f"{API}/{other['public_id']}/status",
                                  {"status": "failed", "error_message": "SHA-256 mismatch"})
    assert failed.code == 200 and failed.json["data"]["error_message"] == "SHA-256 mismatch"
    assert (await server.request("POST", f"{API}/{other['public_id']}/rollback")).code == 409


async def test_check(server):
    empty = await server.request("GET", f"{API}/check?current_version=1.0.0")
    assert empty.code == 200
    assert empty.json == {"current_version": "1.0.0", "latest_version": None, "update_available": False,
                          "github_latest_version": None, "github_download_url": None, "github_release_url": None,
                          "github_error": None, "active_update": None}
    await create(server, "1.2.0")
    await create(server, "1.10.0")  # semantic order, not text order
    check = (await server.request("GET", f"{API}/check?current_version=1.2.0")).json
    assert check["latest_version"] == "1.10.0" and check["update_available"] is True
    # without a reported version: the last one a controller reported
    again = (await server.request("GET", f"{API}/check")).json
    assert again["current_version"] == "1.2.0"
    ahead = (await server.request("GET", f"{API}/check?current_version=1.10.0")).json
    assert ahead["update_available"] is False
    bad = await server.request("GET", f"{API}/check?current_version=latest")
    assert bad.code == 422 and bad.json["detail"].startswith("current_version:")
    # failed and rolled-back updates are not offered
    newest = await create(server, "2.0.0")
    assert (await upload(server, newest, b"fw")).code == 201
    assert (await server.request("POST", f"{API}/{newest['public_id']}/deploy")).code == 200
    running = (await server.request("GET", f"{API}/check?current_version=1.10.0")).json
    assert running["active_update"]["public_id"] == newest["public_id"] and running["update_available"] is True
    await server.request("PUT", f"{API}/{newest['public_id']}/status", {"status": "failed"})
    after = (await server.request("GET", f"{API}/check?current_version=1.10.0")).json
    assert after["latest_version"] == "1.10.0" and after["update_available"] is False and after["active_update"] is None


async def test_interrupted_upload_leaves_nothing_behind(server):
    import asyncio

    from tests.conftest import wait_for

    fw = await create(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write((f"POST {API}/{fw['public_id']}/firmware HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {server.admin_token}\r\nContent-Type: application/octet-stream\r\n"
                      "Content-Length: 500000\r\n\r\n").encode() + b"z" * 200_000)
        await writer.drain()
        await wait_for(lambda: os.path.isdir(storage(server)) and os.listdir(storage(server)),
                       message="the partial upload on disk")
    finally:
        writer.close()
    await wait_for(lambda: os.listdir(storage(server)) == [], message="the partial file removed")
    rec = (await server.request("GET", f"{API}/{fw['public_id']}")).json
    assert rec["has_firmware_file"] is False and rec["file_hash_sha256"] is None
