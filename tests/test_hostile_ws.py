"""Hostile and broken WebSocket clients: bounded replies, bad input answered frame by
frame, control frames read while a batch is stored (real server, real sockets)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time

from sqlalchemy import text

from tests.conftest import make_settings, start_server, stop_server, wait_for
from webmacs.app import shutdown
from webmacs.handlers import ws as ws_handlers

TELEMETRY = "/ws/controller/telemetry"
STREAM = "/ws/datapoints/stream"


def masked_frame(payload: bytes) -> bytes:
    """One client text frame (clients must mask), payload < 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def raw_upgrade(server, path: str) -> socket.socket:
    """A socket that completes the upgrade and then reads nothing (a tiny receive buffer)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(raw, ("127.0.0.1", server.port))
    await loop.sock_sendall(raw, (
        f"GET {path}?token={server.admin_token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return raw


async def test_a_client_that_never_reads_its_replies_is_closed_and_bounded(server, monkeypatch):
    """A subscriber sends tiny frames that each earn an error reply and never reads:
    its unsent replies stop at the bound, it is closed with 1013, and an honest client's
    pings are answered at once meanwhile (the message rate limit is lifted here, so the
    reply bound is what stops it)."""
    monkeypatch.setattr(ws_handlers, "MESSAGE_RATE", 10**9)
    monkeypatch.setattr(ws_handlers, "MESSAGE_BURST", 10**9)
    monkeypatch.setattr(ws_handlers._Socket, "_allowance", float(10**9))
    hub = server.services.hub
    hub.max_pending_bytes = 16 * 1024
    raw = await raw_upgrade(server, STREAM)
    try:
        await wait_for(lambda: hub.count("frontend") == 1, message="the flooding client joined")
        [flooder] = hub.groups["frontend"]
        honest = await server.ws(TELEMETRY)
        loop = asyncio.get_running_loop()
        burst = masked_frame(b'{"a":1}') * 2000
        sent, worst_pong = 0, 0.0
        while flooder in hub.groups["frontend"] and sent < 400_000:
            await loop.sock_sendall(raw, burst)
            sent += 2000
            t0 = time.monotonic()
            await honest.send({"type": "ping"})
            assert await honest.recv() == {"type": "pong"}
            worst_pong = max(worst_pong, time.monotonic() - t0)
        assert flooder not in hub.groups["frontend"], f"still a member after {sent} frames"
        assert flooder.closed
        # bounded: twice the broadcast bound plus the one reply that crossed it
        assert flooder.pending_bytes <= 2 * hub.max_pending_bytes + 200
        assert worst_pong < 1.0, worst_pong
    finally:
        raw.close()


async def test_a_flood_of_tiny_frames_is_cut_off(server):
    """More messages than any controller or dashboard sends: 1008 "Too many messages",
    and the server goes on serving others."""
    flooder = await server.ws(STREAM)
    for _ in range(3000):
        await flooder.send({"type": "ping"})
    assert await flooder.closed(timeout=5) == (1008, "Too many messages")
    other = await server.ws(TELEMETRY)
    await other.send({"type": "ping"})
    assert await other.recv() == {"type": "pong"}


async def test_deep_json_is_an_error_frame_and_the_socket_lives(server):
    tel = await server.ws(TELEMETRY)
    await tel.send("[" * 100_000)
    assert await tel.recv() == {"type": "error", "message": "Invalid JSON: nested too deeply"}
    await tel.send('{"datapoints": ' + "[" * 50_000 + "]" * 50_000 + "}")
    assert (await tel.recv())["type"] == "error"
    await tel.send({"type": "ping"})
    assert await tel.recv() == {"type": "pong"}


async def test_absurd_values_reject_only_their_datapoint(server):
    """A 400-digit integer, NUL and a lone surrogate in an event id: each rejects its
    own datapoint; the valid one of the same batch is stored."""
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    frame = ('{"batch_id": "odd-1", "datapoints": ['
             f'{{"value": 1.5, "event_public_id": "{event}"}}, '
             f'{{"value": {"9" * 400}, "event_public_id": "{event}"}}, '
             '{"value": 1.0, "event_public_id": "a\\u0000b"}, '
             '{"value": 1.0, "event_public_id": "\\ud800"}]}')
    await tel.send(frame)
    ack = await tel.recv_type("ack")
    assert (ack["accepted"], ack["rejected"]) == (1, 3)
    assert "datapoints[1]: value: must be a finite number" in ack["errors"]
    json.dumps(ack)  # what it says back about the surrogate is still valid JSON


async def test_unstorable_batch_id_is_refused_not_retried(server):
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    for bad in ("\\ud800", "a\\u0000b"):
        await tel.send('{"batch_id": "' + bad + '", "datapoints": [{"value": 1, "event_public_id": "' + event + '"}]}')
        msg = await tel.recv()
        assert msg["type"] == "error" and msg["message"].startswith("Invalid batch_id") and "retry" not in msg
    await tel.send({"type": "ping"})
    assert await tel.recv() == {"type": "pong"}


async def test_pings_and_acks_do_not_wait_for_a_slow_database(server):
    """The database is slow: the controller's ping is still answered at once, and (with
    the durable ingest queue) the batches are acknowledged while the writer is stuck,
    in order; they are stored once it is released."""
    [event] = await server.linked_events(1)
    writer = server.services.pipeline.writer
    original, release, entered = writer.write_group, threading.Event(), threading.Event()

    def slow(*args, **kwargs):
        entered.set()
        release.wait(10)
        return original(*args, **kwargs)

    writer.write_group = slow
    tel = await server.ws(TELEMETRY)
    try:
        await tel.send({"batch_id": "slow-0", "datapoints": [{"value": 0.0, "event_public_id": event}]})
        await wait_for(entered.is_set, message="the first batch is being written")
        for k in range(1, 3):
            await tel.send({"batch_id": f"slow-{k}", "datapoints": [{"value": float(k), "event_public_id": event}]})
        t0 = time.monotonic()
        await tel.send({"type": "ping"})
        acks = [await tel.recv_type("ack") for _ in range(3)]
        assert time.monotonic() - t0 < 2.0
        assert [a["batch_id"] for a in acks] == ["slow-0", "slow-1", "slow-2"]
        assert all(a["durable"] == "queue" for a in acks)
        assert server.services.pipeline.queue_depth()["records"] == 3
    finally:
        release.set()
    await server.settled()
    writer.write_group = original


async def test_shutdown_with_a_hung_database_keeps_acked_batches_for_the_next_start(database_url):
    """SIGTERM's path with the database hanging: the whole shutdown takes no longer than
    WEBMACS_SHUTDOWN_TIMEOUT; the acknowledged batches stay in the ingest queue and the
    next start stores each exactly once (also when the hung transaction commits late)."""
    settings = make_settings(database_url, WEBMACS_SHUTDOWN_TIMEOUT=2)
    srv, http = await start_server(settings)
    writer = srv.services.pipeline.writer
    release, entered = threading.Event(), threading.Event()
    original = writer.write_group

    def hung(*args, **kwargs):
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    try:
        [event] = await srv.linked_events(1)
        tel = await srv.ws(TELEMETRY)
        writer.write_group = hung
        for k in range(3):
            await tel.send({"batch_id": f"h-{k}", "datapoints": [{"value": float(k), "event_public_id": event}]})
            assert (await tel.recv_type("ack"))["durable"] == "queue"
        await wait_for(entered.is_set, message="the first batch is with the database")
        t0 = time.monotonic()
        await shutdown(http, srv.services)
        took = time.monotonic() - t0
        assert took < 2.5, took
        assert await tel.recv() is None and tel.conn.close_code == 1001
    finally:
        release.set()  # the hung transaction may now commit: the replay must not double it
        writer.write_group = original
        await srv.close()
        srv.services.db.close()
    srv, http = await start_server(settings)
    try:
        await srv.settled()
        rows = await srv.services.db.run(_values, srv)
        assert rows == [0.0, 1.0, 2.0]
    finally:
        await stop_server(srv, http)


def _values(srv) -> list[float]:
    with srv.services.db.engine.connect() as conn:
        return [v for (v,) in conn.execute(text("SELECT value FROM datapoints ORDER BY value"))]


async def test_batches_as_fast_as_they_are_answered_are_not_cut_off(server):
    """The message rate limit counts pings and bad frames, not batches: a controller
    sending small batches back to back (each waiting for its ack) keeps its socket."""
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    n, acks, pong = ws_handlers.MESSAGE_BURST + 200, 0, False
    for i in range(n):
        await tel.send({"batch_id": f"fast-{i}", "datapoints": [{"value": float(i), "event_public_id": event}]})
        if i % 100 == 99:  # ten in flight at a time keeps this quick
            await tel.recv_type("ack")
            acks += 1
    await tel.send({"type": "ping"})
    while acks < n or not pong:  # every batch answered (none left unread when the socket closes)
        msg = await tel.recv(10)
        if msg["type"] == "ack":
            acks += 1
        else:
            assert msg == {"type": "pong"}
            pong = True
