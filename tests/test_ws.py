"""The WebSocket spec, rule by rule, over real sockets against a running server."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy import text

from tests.conftest import wait_for

TELEMETRY = "/ws/controller/telemetry"
STREAM = "/ws/datapoints/stream"


def count_rows(server) -> int:
    with server.services.db.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM datapoints")).scalar()


async def db_count(server) -> int:
    return await server.services.db.run(count_rows, server)


# --- auth and close reasons ----------------------------------------------------------

@pytest.mark.parametrize("path", [TELEMETRY, STREAM])
async def test_no_token_closes_1008_authentication_required(server, path):
    sock = await server.ws(path, token=None, expect_connected=False)
    assert await sock.closed() == (1008, "Authentication required")


@pytest.mark.parametrize("path", [TELEMETRY, STREAM])
async def test_bad_token_closes_1008_invalid(server, path):
    sock = await server.ws(path, token="not-a-jwt", expect_connected=False)
    assert await sock.closed() == (1008, "Invalid or expired token")


@pytest.mark.parametrize("path", [TELEMETRY, STREAM])
async def test_revoked_token_closes_1008_revoked(server, path):
    token = await server.login("admin@example.com", "admin-password-1")
    assert (await server.request("POST", "/api/v1/auth/logout", token=token)).code == 200
    sock = await server.ws(path, token=token, expect_connected=False)
    assert await sock.closed() == (1008, "Token has been revoked")


@pytest.mark.parametrize("path", [TELEMETRY, STREAM])
async def test_deleted_user_closes_1008_user_not_found(server, path):
    token = await server.create_user("operator", "doomed")
    users = (await server.request("GET", "/api/v1/users")).json["data"]
    doomed = next(u for u in users if u["username"] == "doomed")
    assert (await server.request("DELETE", f"/api/v1/users/{doomed['public_id']}")).code == 200
    sock = await server.ws(path, token=token, expect_connected=False)
    assert await sock.closed() == (1008, "User not found")


async def test_logout_closes_open_socket_within_seconds(server):
    token = await server.login("admin@example.com", "admin-password-1")
    stream = await server.ws(STREAM, token=token)
    telemetry = await server.ws(TELEMETRY, token=token)
    other = await server.ws(STREAM)  # the admin's other session stays open
    assert (await server.request("POST", "/api/v1/auth/logout", token=token)).code == 200
    assert await stream.closed(timeout=2) == (1008, "Token has been revoked")
    assert await telemetry.closed(timeout=2) == (1008, "Token has been revoked")
    await other.send({"type": "ping"})
    assert await other.recv() == {"type": "pong"}


async def test_user_deleted_closes_open_socket(server):
    token = await server.create_user("viewer", "leaving")
    stream = await server.ws(STREAM, token=token)
    users = (await server.request("GET", "/api/v1/users")).json["data"]
    leaving = next(u for u in users if u["username"] == "leaving")
    assert (await server.request("DELETE", f"/api/v1/users/{leaving['public_id']}")).code == 200
    assert await stream.closed(timeout=2) == (1008, "User not found")


async def test_api_token_works_and_deleting_it_closes_socket(server):
    tok = (await server.request("POST", "/api/v1/tokens", {"name": "controller"})).json
    sock = await server.ws(TELEMETRY, token=tok["token"])
    assert (await server.request("DELETE", f"/api/v1/tokens/{tok['public_id']}")).code == 200
    assert await sock.closed(timeout=2) == (1008, "Token has been revoked")


async def test_viewer_cannot_push_telemetry_but_can_stream(server):
    viewer = await server.create_user("viewer", "watcher")
    push = await server.ws(TELEMETRY, token=viewer, expect_connected=False)
    code, _reason = await push.closed()
    assert code == 1008
    await server.ws(STREAM, token=viewer)


# --- messages ---------------------------------------------------------------------------

async def test_connected_message_and_ping_pong(server):
    sock = await server.ws(STREAM, expect_connected=False)
    assert await sock.recv() == {"type": "connected", "message": "Subscribed to live datapoint stream."}
    await sock.send({"type": "ping"})
    assert await sock.recv() == {"type": "pong"}
    tel = await server.ws(TELEMETRY)
    await tel.send({"type": "ping"})
    assert await tel.recv() == {"type": "pong"}


async def test_telemetry_sends_no_greeting(server):
    """As in the spec, only stream subscribers get `connected`: a controller's first
    reply is the answer to its first message."""
    sock = await server.ws(TELEMETRY, expect_connected=False)
    await sock.send({"datapoints": []})
    assert await sock.recv() == {"type": "error", "message": "No valid datapoints in batch"}


@pytest.mark.parametrize("frame, fragment", [
    ("not json at all", "Invalid JSON"),
    ("[1, 2, 3]", "JSON object"),
    ('"text"', "JSON object"),
    ("{}", "datapoints"),
    ('{"datapoints": {"value": 1}}', "datapoints"),
    ('{"datapoints": "x"}', "datapoints"),
])
async def test_malformed_frames_get_error_and_connection_survives(server, frame, fragment):
    sock = await server.ws(TELEMETRY)
    await sock.send(frame)
    msg = await sock.recv()
    assert msg["type"] == "error" and fragment in msg["message"]
    await sock.send({"type": "ping"})
    assert await sock.recv() == {"type": "pong"}


async def test_no_valid_datapoints_error_exact(server):
    [event] = await server.linked_events(1)
    sock = await server.ws(TELEMETRY)
    bad_batches = [
        [],
        [{"value": "23.5", "event_public_id": event}],
        [{"value": True, "event_public_id": event}],
        [{"value": 1.0}],
        [{"value": 1.0, "event_public_id": 42}],
        [{"event_public_id": event}],
        [{"value": 1.0, "event_public_id": "unknown-event"}],
        ["scalar"],
    ]
    for batch in bad_batches:
        await sock.send({"datapoints": batch})
        assert await sock.recv() == {"type": "error", "message": "No valid datapoints in batch"}, batch
    # NaN and Infinity are not JSON numbers we accept
    for literal in ("NaN", "Infinity", "-Infinity"):
        await sock.send('{"datapoints": [{"value": %s, "event_public_id": "%s"}]}' % (literal, event))
        assert await sock.recv() == {"type": "error", "message": "No valid datapoints in batch"}
    assert await db_count(server) == 0


async def test_batch_limit_500(server):
    [event] = await server.linked_events(1)
    sock = await server.ws(TELEMETRY)
    await sock.send({"datapoints": [{"value": float(i), "event_public_id": event} for i in range(501)]})
    msg = await sock.recv()
    assert msg["type"] == "error" and "500" in msg["message"]
    await sock.send({"datapoints": [{"value": float(i), "event_public_id": event} for i in range(500)],
                     "batch_id": "full"})
    ack = await sock.recv_type("ack")
    await server.settled()
    assert ack["accepted"] == 500 and await db_count(server) == 500


async def test_oversized_frame_closes_without_hurting_server(server):
    sock = await server.ws(TELEMETRY)
    await sock.send("x" * (1024 * 1024))
    code, _ = await sock.closed()
    assert code == 1009  # message too big
    again = await server.ws(TELEMETRY)
    await again.send({"type": "ping"})
    assert await again.recv() == {"type": "pong"}


async def test_valid_batch_persisted_and_broadcast(server):
    events = await server.linked_events(3)
    stream = await server.ws(STREAM)
    tel = await server.ws(TELEMETRY)
    await tel.send({"datapoints": [{"value": 20.0 + i, "event_public_id": e} for i, e in enumerate(events)]})
    msg = await stream.recv_type("datapoints_batch")
    got = {p["event_public_id"]: p for p in msg["datapoints"]}
    assert set(got) == set(events)
    for i, e in enumerate(events):
        point = got[e]
        assert point["value"] == 20.0 + i and point["experiment_public_id"] is None
        assert set(point) == {"value", "event_public_id", "timestamp", "experiment_public_id"}
    await wait_for(lambda: db_count(server), message="rows persisted")
    assert await db_count(server) == 3


async def test_partially_valid_batch_keeps_valid_points(server):
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    await tel.send({"datapoints": [{"value": 1.5, "event_public_id": event}, {"value": "nope"},
                                   {"value": 2.5, "event_public_id": "not-linked"}],
                    "batch_id": "mixed"})
    ack = await tel.recv_type("ack")
    assert (ack["accepted"], ack["rejected"]) == (1, 2)
    await server.settled()
    assert await db_count(server) == 1


# --- the linkage filter ------------------------------------------------------------------

async def test_linkage_filter_follows_api_changes_immediately(server):
    [event] = await server.linked_events(1)
    plugin = (await server.request("GET", "/api/v1/plugins")).json["data"][0]
    mapping = plugin["channel_mappings"][-1]
    tel = await server.ws(TELEMETRY)

    async def push(batch_id):
        await tel.send({"datapoints": [{"value": 1.0, "event_public_id": event}], "batch_id": batch_id})
        return await tel.recv()

    assert (await push("a"))["type"] == "ack"
    # disable the instance: rejected at once
    assert (await server.request("PUT", f"/api/v1/plugins/{plugin['public_id']}", {"enabled": False})).code == 200
    assert (await push("b"))["message"] == "No valid datapoints in batch"
    assert (await server.request("PUT", f"/api/v1/plugins/{plugin['public_id']}", {"enabled": True})).code == 200
    assert (await push("c"))["type"] == "ack"
    # unlink the channel: rejected at once
    unlink = await server.request("PUT", f"/api/v1/plugins/{plugin['public_id']}/channels/{mapping['public_id']}",
                                  {"event_public_id": None})
    assert unlink.code == 200 and unlink.json["data"]["event_public_id"] is None
    assert (await push("d"))["type"] == "error"
    relink = await server.request("PUT", f"/api/v1/plugins/{plugin['public_id']}/channels/{mapping['public_id']}",
                                  {"event_public_id": event})
    assert relink.code == 200
    assert (await push("e"))["type"] == "ack"
    # delete the event: rejected
    assert (await server.request("DELETE", f"/api/v1/events/{event}")).code == 200
    assert (await push("f"))["type"] == "error"
    await server.settled()
    assert await db_count(server) == 3


async def test_unlinked_event_rejected(server):
    ev = await server.request("POST", "/api/v1/events", {"name": "Lonely", "type": "sensor", "unit": "V",
                                                         "min_value": 0, "max_value": 1})
    tel = await server.ws(TELEMETRY)
    await tel.send({"datapoints": [{"value": 1.0, "event_public_id": ev.json["data"]["public_id"]}]})
    assert await tel.recv() == {"type": "error", "message": "No valid datapoints in batch"}


# --- experiments --------------------------------------------------------------------------

async def test_experiment_stamping(server):
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    stream = await server.ws(STREAM)
    exp = (await server.request("POST", "/api/v1/experiments", {"name": "Run 1"})).json["data"]
    await tel.send({"datapoints": [{"value": 1.0, "event_public_id": event}], "batch_id": "in"})
    await tel.recv_type("ack")
    msg = await stream.recv_type("datapoints_batch")
    assert msg["datapoints"][0]["experiment_public_id"] == exp["public_id"]
    assert (await server.request("PUT", f"/api/v1/experiments/{exp['public_id']}/stop")).code == 200
    await tel.send({"datapoints": [{"value": 2.0, "event_public_id": event}], "batch_id": "out"})
    await tel.recv_type("ack")
    await server.settled()  # an ack means durable in the queue; the listing reads the table
    listing = (await server.request("GET", "/api/v1/datapoints")).json["data"]
    stamps = {p["value"]: p["experiment_public_id"] for p in listing}
    assert stamps == {1.0: exp["public_id"], 2.0: None}
    filtered = (await server.request("GET", f"/api/v1/datapoints?experiment_public_id={exp['public_id']}")).json
    assert filtered["total"] == 1


# --- coalescing broadcast -------------------------------------------------------------------

async def test_burst_within_interval_gives_one_broadcast_with_last_value(server):
    server.services.stop_callbacks()  # drive the 200 ms flush by hand for determinism
    events = await server.linked_events(2)
    stream = await server.ws(STREAM)
    tel = await server.ws(TELEMETRY)
    for i in range(20):
        await tel.send({"datapoints": [{"value": float(i), "event_public_id": events[0]}], "batch_id": f"b{i}"})
        await tel.recv_type("ack")
    await tel.send({"datapoints": [{"value": 99.0, "event_public_id": events[1]}], "batch_id": "other"})
    await tel.recv_type("ack")
    server.services.hub.flush()
    msg = await stream.recv_type("datapoints_batch")
    values = {p["event_public_id"]: p["value"] for p in msg["datapoints"]}
    assert values == {events[0]: 19.0, events[1]: 99.0}
    assert len(msg["datapoints"]) == 2
    server.services.hub.flush()  # nothing new: no frame
    with pytest.raises(asyncio.TimeoutError):
        await stream.recv(timeout=0.3)


async def test_real_periodic_flush_rate(server):
    """With the real 200 ms callback, 1.5 s of continuous data gives at most ~8 frames."""
    [event] = await server.linked_events(1)
    stream = await server.ws(STREAM)
    tel = await server.ws(TELEMETRY)
    frames = []

    async def reader():
        while True:
            msg = await stream.recv(timeout=3)
            if msg and msg["type"] == "datapoints_batch":
                frames.append((time.monotonic(), msg))

    task = asyncio.ensure_future(reader())
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 1.5:
        await tel.send({"datapoints": [{"value": float(i), "event_public_id": event}], "batch_id": f"r{i}"})
        await tel.recv_type("ack")
        i += 1
    await wait_for(lambda: frames and frames[-1][1]["datapoints"][0]["value"] == float(i - 1),
                   message="last value delivered")
    task.cancel()
    assert i > 10
    assert len(frames) <= 1.5 / 0.2 + 2
    gaps = [b[0] - a[0] for a, b in zip(frames, frames[1:])]
    assert all(g > 0.1 for g in gaps), gaps


async def test_stalled_subscriber_does_not_delay_healthy_one(server):
    server.services.hub.max_pending_bytes = 64 * 1024
    events = await server.linked_events(20)
    # a raw socket that completes the upgrade and then never reads
    token = server.admin_token
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall((f"GET {STREAM}?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        await wait_for(lambda: server.services.hub.count("frontend") == 1, message="stalled client joined")
        healthy = await server.ws(STREAM)
        tel = await server.ws(TELEMETRY)
        hub = server.services.hub
        # fill the stalled client's kernel buffers; the healthy one reads everything
        pad = {"type": "noop", "pad": "x" * 256 * 1024}
        for _ in range(40):
            if any(c.behind_since is not None or c.pending_bytes >= hub.max_pending_bytes
                   for c in hub.groups["frontend"]):
                break
            hub.broadcast("frontend", pad)
            await healthy.recv_type("noop")
        big = [{"value": float(i), "event_public_id": e} for i, e in enumerate(events)]
        latencies = []
        for round_no in range(60):
            for p in big:
                p["value"] = float(round_no)
            await tel.send({"datapoints": big, "batch_id": f"s{round_no}"})
            await tel.recv_type("ack")
            sent = time.monotonic()
            server.services.hub.flush()
            msg = await healthy.recv_type("datapoints_batch", timeout=2)
            latencies.append(time.monotonic() - sent)
            assert msg["datapoints"][0]["value"] == float(round_no)
        stalled = [c for c in server.services.hub.groups["frontend"] if c.behind_since is not None]
        assert stalled, "the stalled client should be marked behind"
        # bounded: at most max_pending_bytes plus the one frame that crossed the line
        assert stalled[0].pending_bytes < hub.max_pending_bytes + 300 * 1024
        assert max(latencies) < 0.5, latencies
    finally:
        raw.close()


async def test_slow_subscriber_catches_up_with_latest(server):
    hub = server.services.hub
    server.services.stop_callbacks()
    [event] = await server.linked_events(1)
    sub = await server.ws(STREAM)
    conn = next(iter(hub.groups["frontend"]))
    conn.pending_bytes = hub.max_pending_bytes  # pretend its socket is full
    tel = await server.ws(TELEMETRY)
    for i in range(3):
        await tel.send({"datapoints": [{"value": float(i), "event_public_id": event}], "batch_id": f"c{i}"})
        await tel.recv_type("ack")
        hub.flush()
    assert conn.missed == {event}
    # the backlog drains: the manager sends the latest value it skipped
    conn.pending_bytes = 0
    hub.broadcast("frontend", {"type": "noop"})
    await wait_for(lambda: conn.pending_bytes == 0, message="drain")
    msgs = [await sub.recv(), await sub.recv()]
    batch = next(m for m in msgs if m["type"] == "datapoints_batch")
    assert batch["datapoints"][0]["value"] == 2.0


async def test_stuck_subscriber_is_closed(server):
    hub = server.services.hub
    hub.stall_timeout = 0.2
    sub = await server.ws(STREAM)
    conn = next(iter(hub.groups["frontend"]))
    conn.behind_since = time.monotonic() - 1
    hub.flush()
    code, reason = await sub.closed()
    assert code == 1013 and hub.count("frontend") == 0


async def test_dead_socket_removed_and_flush_survives(server):
    """A socket whose stream died but whose close the loop has not processed yet is
    still a member at the flush: the failed write removes it and the flush goes on."""
    [event] = await server.linked_events(1)
    hub = server.services.hub
    server.services.stop_callbacks()  # the flush below is the first to see the point (no tick before it)
    await server.ws(STREAM)
    [dead] = hub.groups["frontend"]
    live_sub = await server.ws(STREAM)
    tel = await server.ws(TELEMETRY)
    await tel.send({"datapoints": [{"value": 1.0, "event_public_id": event}], "batch_id": "x"})
    await tel.recv_type("ack")
    dead.handler.ws_connection.stream.close()  # on_close runs on a later loop turn
    assert hub.count("frontend") == 2 and not dead.closed
    hub.flush()  # no await in between: the dead one is still a member here
    assert dead not in hub.groups["frontend"] and hub.count("frontend") == 1
    got = await live_sub.recv_type("datapoints_batch")
    assert got["datapoints"][0]["value"] == 1.0


async def test_ordering_per_connection(server):
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    for i in range(30):
        await tel.send({"datapoints": [{"value": float(i), "event_public_id": event}]})
    await tel.send({"type": "ping"})
    assert await tel.recv() == {"type": "pong"}  # answered at once, while batches are stored

    async def stored():
        rows = (await server.request("GET", "/api/v1/datapoints?page_size=100")).json["data"]
        return rows if len(rows) == 30 else None

    rows = await wait_for(stored, message="all 30 batches stored")
    rows.sort(key=lambda r: (r["timestamp"], r["public_id"]))
    assert [r["value"] for r in rows] == [float(i) for i in range(30)]


async def test_database_down_queues_batches_and_stores_them_when_back(server):
    """Changed with the durable ingest queue: while the database fails, batches are
    acknowledged once durable in the queue (spec clients get no error) and stored
    when it is back; a resend is answered as a duplicate and stored once."""
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    writer = server.services.pipeline.writer
    original = writer.write_group

    def broken(*args):
        raise OperationalError("INSERT INTO datapoints", {}, Exception("connection refused"))

    writer.write_group = broken
    try:
        await tel.send({"datapoints": [{"value": 1.0, "event_public_id": event}], "batch_id": "down"})
        msg = await tel.recv()
        assert msg == {"type": "ack", "batch_id": "down", "accepted": 1, "rejected": 0, "durable": "queue"}
        await tel.send({"datapoints": [{"value": 2.0, "event_public_id": event}]})
        await tel.send({"type": "ping"})
        assert await tel.recv() == {"type": "pong"}  # no error for the spec client's batch
        health = (await server.request("GET", "/health", token=None)).json
        assert health["ingest_queue"]["records"] == 2 and health["ingest_queue"]["bytes"] > 0
        assert await db_count(server) == 0
    finally:
        writer.write_group = original
    await server.settled()
    assert await db_count(server) == 2
    await tel.send({"datapoints": [{"value": 1.0, "event_public_id": event}], "batch_id": "down"})
    assert (await tel.recv())["duplicate"] is True
    assert await db_count(server) == 2


async def test_stream_is_read_only(server):
    sock = await server.ws(STREAM)
    await sock.send({"datapoints": [{"value": 1, "event_public_id": "x"}]})
    msg = await sock.recv()
    assert msg["type"] == "error"
    await sock.send("garbage")
    assert (await sock.recv())["type"] == "error"
    await sock.send({"type": "ping"})
    assert await sock.recv() == {"type": "pong"}


async def test_many_subscribers_get_same_frame(server):
    [event] = await server.linked_events(1)
    subs = [await server.ws(STREAM) for _ in range(25)]
    tel = await server.ws(TELEMETRY)
    await tel.send({"datapoints": [{"value": 7.0, "event_public_id": event}], "batch_id": "m"})
    await tel.recv_type("ack")
    frames = [await s.recv_type("datapoints_batch") for s in subs]
    assert all(json.dumps(f, sort_keys=True) == json.dumps(frames[0], sort_keys=True) for f in frames)


async def test_memory_bounded_with_1000_stalled_subscribers(server):
    """1,000 dashboards that never read: the server keeps at most max_pending_bytes
    (+ one frame) per client, the flush stays fast and a healthy client is served."""
    hub = server.services.hub
    server.services.stop_callbacks()
    hub.max_pending_bytes = 32 * 1024
    events = await server.linked_events(5)
    token = server.admin_token
    request = (f"GET {STREAM}?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    raws = []
    try:
        for _ in range(1000):
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            raw.setblocking(False)
            try:
                raw.connect(("127.0.0.1", server.port))
            except BlockingIOError:
                pass
            raws.append(raw)
        loop = asyncio.get_running_loop()
        for raw in raws:
            await loop.sock_sendall(raw, request)
        await wait_for(lambda: hub.count("frontend") == 1000, timeout=60, message="1000 subscribers")
        healthy = await server.ws(STREAM)
        tel = await server.ws(TELEMETRY)
        pad = "y" * 8192
        flush_times = []
        for round_no in range(40):
            await tel.send({"datapoints": [{"value": float(round_no), "event_public_id": e} for e in events],
                            "batch_id": f"k{round_no}"})
            await tel.recv_type("ack")
            hub.broadcast("frontend", {"type": "noop", "pad": pad})  # make frames heavy
            start = time.monotonic()
            hub.flush()
            flush_times.append(time.monotonic() - start)
            msg = await healthy.recv_type("datapoints_batch", timeout=5)
            assert msg["datapoints"][0]["value"] == float(round_no)
        per_client = [c.pending_bytes for c in hub.groups["frontend"]]
        assert max(per_client) <= hub.max_pending_bytes + 16 * 1024
        assert sum(per_client) <= 1001 * (hub.max_pending_bytes + 16 * 1024)
        assert sum(1 for c in hub.groups["frontend"] if c.behind_since is not None) >= 100
        assert sorted(flush_times)[len(flush_times) // 2] < 0.25, flush_times
    finally:
        for raw in raws:
            raw.close()


@pytest.mark.parametrize("batch_id", ["", "x" * 65, 42, "nul\u0000id"])
async def test_invalid_batch_id_rejected_without_storing(server, batch_id):
    [event] = await server.linked_events(1)
    tel = await server.ws(TELEMETRY)
    await tel.send({"datapoints": [{"value": 1.0, "event_public_id": event}], "batch_id": batch_id})
    msg = await tel.recv()
    assert msg["type"] == "error" and "batch_id" in msg["message"] and msg.get("retry") is not True
    assert await db_count(server) == 0
