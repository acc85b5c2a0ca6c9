"""POST /api/v1/ota/upload: .tar.gz update bundles, as in WebMACS, over real HTTP on
both backends: streamed to WEBMACS_OTA_STORAGE_DIR, 400 / 409 / 413, nothing left
behind by a refused or interrupted upload, memory flat while a large one streams."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.conftest import make_settings, wait_for
from webmacs.memory import rss_bytes

URL = "/api/v1/ota/upload"
MB = 1024 * 1024
LIMIT_MB = 48
BOUNDARY = "----webmacsBundle1b9e2c"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture
def server_settings(database_url, tmp_path):
    return make_settings(database_url, WEBMACS_OTA_STORAGE_DIR=str(tmp_path / "ota"),
                         WEBMACS_OTA_MAX_BUNDLE_MB=LIMIT_MB)


def folder(server) -> str:
    return server.services.config.ota_storage_dir


def listing(server) -> list[str]:
    return sorted(os.listdir(folder(server))) if os.path.isdir(folder(server)) else []


def head(filename: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/gzip\r\n\r\n").encode()


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


async def send(server, filename: str, data: bytes, token: str | None = "admin"):
    return await server.request("POST", URL, raw=head(filename) + data + TAIL, headers={"Content-Type": CTYPE},
                                token=token)


def _length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def stream(server, filename: str, chunk: bytes, count: int) -> tuple[int, bytes]:
    """A chunked multipart upload of ``count`` x ``chunk``, made as it is sent, over a
    raw socket that stops sending as soon as an answer arrives (as curl does; tornado's
    client would report a closed stream instead): (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    async def read_answer() -> bytes:  # as soon as it arrives: once the server has closed, a reset follows
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
            block = await reader.read(65536)
            if not block:
                break
            raw += block
        return raw

    answer = asyncio.ensure_future(read_answer())
    try:
        writer.write((f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                      f"Content-Type: {CTYPE}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode())
        parts = [head(filename), *([chunk] * count), TAIL]
        try:
            for part in parts:
                if answer.done():
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            else:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused mid-body: the answer is already on its way
        raw = await asyncio.wait_for(answer, 60)
    finally:
        answer.cancel()
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), raw[:200]
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_a_bundle_is_stored_under_its_name(server):
    data = os.urandom(300 * 1024)
    resp = await send(server, "webmacs-update-2.1.0.tar.gz", data)
    assert resp.code == 201, resp
    assert resp.json == {"status": "success", "message": f"Bundle 'webmacs-update-2.1.0.tar.gz' uploaded "
                                                         f"({len(data):,} bytes)."}
    assert listing(server) == ["webmacs-update-2.1.0.tar.gz"]
    with open(os.path.join(folder(server), "webmacs-update-2.1.0.tar.gz"), "rb") as fh:
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()
    # the same name again: 409, and the stored bundle is left as it was
    again = await send(server, "webmacs-update-2.1.0.tar.gz", b"other bytes")
    assert again.code == 409 and again.json == {"detail": "Bundle 'webmacs-update-2.1.0.tar.gz' already exists."}
    assert os.path.getsize(os.path.join(folder(server), "webmacs-update-2.1.0.tar.gz")) == len(data)
    # a client path in the file name is dropped
    resp = await send(server, "C:\\Users\\lab\\webmacs-update-2.2.0.tar.gz", b"\x1f\x8b bundle")
    assert resp.code == 201, resp
    assert listing(server) == ["webmacs-update-2.1.0.tar.gz", "webmacs-update-2.2.0.tar.gz"]


async def test_refusals_change_nothing(server):
    for name in ("webmacs-update-2.1.0.zip", "bundle.tar", "bundle.tgz", ".tar.gz", "bundle.TAR.GZ", ""):
        resp = await send(server, name, b"data")
        assert resp.code == 400 and resp.json["detail"].startswith("File"), (name, resp)
    for name in ("bad name.tar.gz", ".hidden.tar.gz", "..tar.gz", "x" * 230 + ".tar.gz"):
        resp = await send(server, name, b"data")
        assert resp.code == 400 and "bundle" in resp.json["detail"], (name, resp)
    no_file = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhello" ).encode() + TAIL
    resp = await server.request("POST", URL, raw=no_file, headers={"Content-Type": CTYPE})
    assert resp.code == 422 and resp.json["detail"].startswith("file:"), resp
    resp = await server.request("POST", URL, raw=b"\x1f\x8b", headers={"Content-Type": "application/gzip"})
    assert resp.code == 422 and resp.json["detail"].startswith("file:"), resp
    cut = head("cut.tar.gz") + b"data without the final boundary"
    resp = await server.request("POST", URL, raw=cut, headers={"Content-Type": CTYPE})
    assert resp.code == 422, resp
    for role in ("viewer", "operator"):
        resp = await send(server, "x.tar.gz", b"data", token=await server.create_user(role))
        assert resp.code == 403 and resp.json == {"detail": "Admin access required."}
    assert (await send(server, "x.tar.gz", b"data", token=None)).code == 401
    assert listing(server) == []


@pytest.mark.timeout(120)
async def test_past_the_limit_413_streamed_with_flat_memory(server):
    # declared too large: refused before a byte of the body is read
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write((f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                      f"Content-Type: {CTYPE}\r\nContent-Length: {(LIMIT_MB + 1) * MB}\r\n\r\n").encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 30)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert f'{{"detail":"Bundle exceeds maximum allowed size ({LIMIT_MB} MB)."}}'.encode() in answer, answer
    # chunked, no Content-Length: counted while it streams to disk, refused past the limit
    before = rss_bytes()
    code, body = await stream(server, "big.tar.gz", os.urandom(MB), LIMIT_MB + 8)
    grown = rss_bytes() - before
    assert code == 413 and body == f'{{"detail":"Bundle exceeds maximum allowed size ({LIMIT_MB} MB)."}}'.encode()
    assert grown < 24 * MB, f"RSS grew {grown / MB:.1f} MB while a {LIMIT_MB + 8} MB upload streamed"
    await wait_for(lambda: listing(server) == [], message="the refused upload's bytes removed")
    # just under the limit is taken, still streamed
    before = rss_bytes()
    code, body = await stream(server, "large.tar.gz", b"L" * MB, LIMIT_MB - 1)
    assert code == 201, body
    assert rss_bytes() - before < 24 * MB
    assert listing(server) == ["large.tar.gz"]
    assert os.path.getsize(os.path.join(folder(server), "large.tar.gz")) == (LIMIT_MB - 1) * MB


async def test_a_bundle_cut_off_midway_leaves_nothing(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        body = head("cut.tar.gz") + b"z" * 300_000
        writer.write((f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                      f"Content-Type: {CTYPE}\r\nContent-Length: 2000000\r\n\r\n").encode() + body)
        await writer.drain()
        await wait_for(lambda: listing(server) != [], message="the partial upload on disk")
        assert all(name.startswith(".upload-") for name in listing(server))
    finally:
        writer.close()
    await wait_for(lambda: listing(server) == [], message="the partial upload removed")
    # and the name is free for a complete upload
    assert (await send(server, "cut.tar.gz", b"complete")).code == 201


async def test_a_client_still_sending_after_its_413_reads_it_then_a_clean_end(server):
    """Refused mid-body: the answer, then FIN while the server goes on reading and dropping
    what still comes (webmacs.serving.linger_on_close); closing at once with unread input
    would reset the connection, and a client still sending could lose the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write((f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                      f"Content-Type: {CTYPE}\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        chunk = os.urandom(MB)
        for part in [head("over.tar.gz"), *([chunk] * (LIMIT_MB + 2))]:
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
            block = await asyncio.wait_for(reader.read(65536), 30)
            assert block, raw
            raw += block
        assert raw.startswith(b"HTTP/1.1 413"), raw
        for _ in range(4):  # the client has not noticed yet: more of the body, all taken
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        assert await asyncio.wait_for(reader.read(65536), 30) == b""  # a FIN, not a reset
    finally:
        writer.close()
