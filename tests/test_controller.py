"""The controller client: spool chunking and bounds, backoff, the ack/dedup path,
the ``webmacs controller`` command (config errors, plugin drivers, re-sync, SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import sqlite3
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application
from tornado.websocket import WebSocketHandler

from tests.conftest import wait_for
from webmacs.controller import Backoff, Spool, SpoolError, TelemetryClient, format_timestamp
from webmacs.controller.main import ControllerConfig



def rows(n: int, start: int = 0, event: str = "evt") -> list[tuple[str, float, str]]:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [(event, float(i), format_timestamp(base + timedelta(milliseconds=i))) for i in range(start, start + n)]


# --- timestamps and values -------------------------------------------------------------

def test_format_timestamp_forms():
    dt = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(dt) == "2026-03-01T10:00:00.123456+00:00"
    assert format_timestamp(datetime(2026, 3, 1, 10, 0)) == "2026-03-01T10:00:00.000000+00:00"  # naive = UTC
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000+00:00"
    assert format_timestamp("2026-03-01T12:00:00.5+02:00") == "2026-03-01T10:00:00.500000+00:00"
    assert format_timestamp("2026-03-01T10:00:00Z") == "2026-03-01T10:00:00.000000+00:00"
    now = datetime.fromisoformat(format_timestamp())
    assert abs((now - datetime.now(timezone.utc)).total_seconds()) < 5
    for bad in ("yesterday", True, math.nan, [1]):
        with pytest.raises(ValueError):
            format_timestamp(bad)


async def test_submit_rejects_bad_readings_without_spooling(tmp_path):
    client = TelemetryClient("http://127.0.0.1:9", token="t", spool_path=str(tmp_path / "s.db"))
    with pytest.raises(SpoolError, match="start"):
        client.submit("e", 1.0)
    await client.start()
    try:
        for event, value in (("", 1.0), (None, 1.0), ("e", True), ("e", "1.5"), ("e", math.inf), ("e", math.nan)):
            with pytest.raises(ValueError):
                client.submit(event, value)
        # a bad reading anywhere fails the whole call: nothing of it is spooled
        with pytest.raises(ValueError):
            client.submit_many([("e", 1.0, None), ("e", math.nan, None)])
        assert client.stats.pending == 0 and client.stats.submitted == 0
        client.submit("e", 2, timestamp=0)
        assert client.stats.pending == 1
    finally:
        await client.close()


# --- the spool -----------------------------------------------------------------------------

def test_spool_chunking_is_contiguous_ordered_and_stable_across_reopen(tmp_path):
    path = str(tmp_path / "spool.db")
    spool = Spool(path)
    spool.add(rows(250))
    assert (spool.pending, spool.unassigned) == (250, 250)
    cut = [spool.cut(100) for _ in range(3)]
    assert spool.cut(100) is None
    assert [b.n for b in cut] == [100, 100, 50]
    assert cut[0].first_id == 1 and cut[0].last_id == 100 and cut[1].first_id == 101 and cut[2].last_id == 250
    assert len({b.batch_id for b in cut}) == 3 and all(len(b.batch_id) <= 64 for b in cut)
    assert [p["value"] for p in spool.load(cut[1])] == [float(i) for i in range(100, 200)]
    assert spool.load(cut[0])[0] == {"event_public_id": "evt", "value": 0.0,
                                      "timestamp": "2026-01-01T00:00:00.000000+00:00"}
    # oldest first, skipping the ones in flight
    assert spool.next_batch() == cut[0]
    assert spool.next_batch([cut[0].batch_id]) == cut[1]
    spool.add(rows(30, start=250))
    spool.close()

    spool = Spool(path)  # after a restart: same batches, same ids, same contents
    assert spool.batches() == cut
    assert (spool.pending, spool.unassigned) == (280, 30)
    assert spool.remove(cut[1].batch_id) == 100  # acked out of order
    assert spool.remove(cut[1].batch_id) == 0  # a second ack of the same batch removes nothing
    new = spool.cut(100)
    assert (new.first_id, new.last_id, new.n) == (251, 280, 30)
    assert [b.batch_id for b in spool.batches()] == [cut[0].batch_id, cut[2].batch_id, new.batch_id]
    assert spool.pending == 180
    spool.close()


def test_spool_checkpoint_is_committed_with_the_readings(tmp_path):
    path = str(tmp_path / "spool.db")
    spool = Spool(path)
    assert spool.get_meta("checkpoint") is None
    spool.add(rows(10), checkpoint="10")
    with pytest.raises(sqlite3.Error):  # a failing insert rolls the checkpoint back too
        spool.add([("evt", 1.0, "x"), ("evt", object(), "y")], checkpoint="12")
    spool.close()
    spool = Spool(path)
    assert spool.get_meta("checkpoint") == "10" and spool.pending == 10
    spool.close()


def test_spool_is_locked_to_one_process(tmp_path):
    path = str(tmp_path / "spool.db")
    spool = Spool(path)
    with pytest.raises(SpoolError, match="in use"):
        Spool(path)
    spool.close()
    Spool(path).close()  # released on close (and by the kernel when a process dies)


def test_spool_unwritable_path_is_a_clear_error(tmp_path):
    with pytest.raises(SpoolError, match="cannot open"):
        Spool(str(tmp_path / "missing-dir" / "spool.db"))


def test_spool_full_drops_oldest_whole_batches_loudly(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "webmacs.controller.spool")
    max_bytes = 256 * 1024
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=max_bytes)
    event = str(uuid.uuid4())
    total = 0
    batches = []
    for chunk in range(40):
        spool.add(rows(250, start=total, event=event))
        total += 250
        if chunk % 2 == 0:
            batches.append(spool.cut(100))
        assert spool.used_bytes() <= max_bytes
    assert spool.dropped > 0
    assert spool.dropped + spool.pending == total
    # what is left is the newest, contiguous tail ...
    left = [r[0] for r in spool.db.execute("SELECT value FROM readings ORDER BY id")]
    assert left == [float(i) for i in range(spool.dropped, total)]
    # ... and every batch still holds exactly the readings it was cut with
    for b in spool.batches():
        assert len(spool.load(b)) == b.n
    assert len(spool.batches()) < len(batches)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "DROPPED" in r.getMessage()]
    assert errors, caplog.text
    spool.close()


# --- backoff ---------------------------------------------------------------------------------

def test_backoff_grows_with_jitter_and_is_capped():
    b = Backoff(base=0.5, cap=10.0, rng=random.Random(7))
    delays = [b.next() for _ in range(40)]
    for n, d in enumerate(delays):
        ceiling = min(10.0, 0.5 * 2 ** n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 10.0
    assert delays[0] <= 0.5 and max(delays[10:]) > 5.0
    assert len({round(d, 6) for d in delays[10:]}) == 30  # jittered: capped delays are not all equal
    b.reset()
    assert b.next() <= 0.5
    with pytest.raises(ValueError):
        Backoff(base=2, cap=1)


# --- the ack / dedup path against a scripted server -----------------------------------------

class FakeTelemetry(WebSocketHandler):
    """Stores batches by batch_id like the real server; misbehaves as ``script`` says."""

    def initialize(self, state):
        self.state = state

    def open(self):
        self.state["connections"] += 1  # like the real endpoint: no greeting

    def on_message(self, message):
        st = self.state
        data = json.loads(message)
        if data.get("type") == "ping":
            self.write_message(json.dumps({"type": "pong"}))
            return
        bid, points = data["batch_id"], data["datapoints"]
        st["received"].append(bid)
        if bid in st["contents"]:
            assert st["contents"][bid] == points, "a resent batch must carry the same readings"
        st["contents"].setdefault(bid, points)
        st["max_inflight"] = max(st["max_inflight"], len(st["received"]) - st["answered"])
        action = st["script"].pop(0) if st["script"] else "ack"
        if action == "silent":  # committed, but the connection dies before the ack
            st["stored"].setdefault(bid, points)
            return
        if action == "drop":
            st["stored"].setdefault(bid, points)
            self.close(1011, "boom")
            return
        if action == "hold":  # never answer
            return
        st["answered"] += 1
        if action == "retry":
            self.write_message(json.dumps({"type": "error", "batch_id": bid, "message": "Database unavailable",
                                           "retry": True}))
        elif action == "refuse":
            self.write_message(json.dumps({"type": "error", "batch_id": bid, "message": "No valid datapoints",
                                           "retry": False}))
        else:
            dup = bid in st["stored"]
            st["stored"].setdefault(bid, points)
            ack = {"type": "ack", "batch_id": bid, "accepted": len(points), "rejected": 0}
            if dup:
                ack["duplicate"] = True
            self.write_message(json.dumps(ack))


@pytest.fixture
async def fake_server():
    state = {"connections": 0, "received": [], "contents": {}, "stored": {}, "script": [], "answered": 0,
             "max_inflight": 0}
    app = Application([(r"/ws/controller/telemetry", FakeTelemetry, {"state": state})])
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    state["url"] = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)


def fast_client(url, tmp_path, **kw) -> TelemetryClient:
    kw.setdefault("max_batch_size", 10)
    return TelemetryClient(url, token="t", spool_path=str(tmp_path / "spool.db"), backoff_base=0.05,
                           backoff_cap=0.2, **kw)


async def test_resend_after_lost_acks_keeps_batch_ids_and_stores_once(fake_server, tmp_path):
    st = fake_server
    # batch 1 acked; batches 2-3 committed but their acks lost (the connection dies);
    # one 'Database unavailable' retry later on
    st["script"] = ["ack", "silent", "drop", "ack", "retry"]
    client = fast_client(st["url"], tmp_path)
    await client.start()
    try:
        client.submit_many(rows(95))
        assert await client.flush(10), client.stats
        stats = client.stats
    finally:
        await client.close()
    assert st["connections"] >= 2
    stored = [(p["value"]) for points in st["stored"].values() for p in points]
    assert sorted(stored) == [float(i) for i in range(95)]  # every reading once
    resent = [bid for bid, n in Counter(st["received"]).items() if n > 1]
    assert len(resent) >= 2  # the batches without an ack went again, under the same id
    assert stats.acked == 95 and stats.pending == 0 and stats.failed == 0
    assert stats.duplicates >= 2 and stats.retries == 1 and stats.reconnects >= 1


async def test_refused_batch_is_dropped_loudly(fake_server, tmp_path, caplog):
    st = fake_server
    st["script"] = ["refuse"]
    client = fast_client(st["url"], tmp_path)
    await client.start()
    try:
        client.submit_many(rows(25))
        assert await client.flush(10)
        stats = client.stats
    finally:
        await client.close()
    assert stats.failed == 10 and stats.acked == 15 and stats.pending == 0
    assert any(r.levelno == logging.ERROR and "DISCARDED" in r.getMessage() for r in caplog.records)


async def test_window_bounds_unacked_batches(fake_server, tmp_path):
    st = fake_server
    st["script"] = ["hold"] * 1000
    client = fast_client(st["url"], tmp_path, window=4)
    await client.start()
    try:
        client.submit_many(rows(200))
        await wait_for(lambda: len(st["received"]) >= 4, message="4 batches in flight")
        await asyncio.sleep(0.3)
        assert len(st["received"]) == 4 and client.stats.inflight == 4
        assert not await client.flush(0.2)
    finally:
        await client.close()
    spool = Spool(str(tmp_path / "spool.db"))  # closed with nothing acked: all 200 kept
    assert spool.pending == 200
    spool.close()


async def test_client_reconnects_with_backoff_when_server_is_down(tmp_path):
    sock, port = bind_unused_port()
    sock.close()  # nothing listens here
    client = fast_client(f"http://127.0.0.1:{port}", tmp_path)
    await client.start()
    try:
        client.submit("e", 1.0)
        # kept trying, spaced by the (capped) backoff
        await wait_for(lambda: client._connect_backoff.attempts >= 3, message="three connection attempts")
        assert client.stats.pending == 1 and not client.stats.connected
    finally:
        await client.close()


# --- against the real server ----------------------------------------------------------------

def spooled(path) -> int:
    """Readings in a controller's spool file, read beside the running controller."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(str(path), timeout=5)) as db:
        try:
            return db.execute("SELECT count(*) FROM readings").fetchone()[0]
        except sqlite3.OperationalError:  # schema not created yet
            return 0


def stopped_while(services, quiet: str, busy: str, readings: int):
    """A predicate: true once ``busy`` got ``readings`` more rows while ``quiet`` got none."""
    seen = {"quiet": -1, "busy": 0}

    def check() -> bool:
        q, b = count_rows(services, [quiet]), count_rows(services, [busy])
        if q != seen["quiet"]:
            seen.update(quiet=q, busy=b)
            return False
        return b >= seen["busy"] + readings

    return check


def count_rows(services, events: list[str]) -> int:
    engine = services.db.engine
    marks = ", ".join(f":e{i}" for i in range(len(events)))
    with engine.connect() as conn:
        return conn.execute(text(
            f"SELECT count(*) FROM datapoints d JOIN events e ON e.id = d.event_id WHERE e.public_id IN ({marks})"),
            {f"e{i}": e for i, e in enumerate(events)}).scalar()


@pytest.mark.parametrize("mode", ["websocket", "http"])
async def test_client_delivers_everything_once_to_the_server(server, tmp_path, mode):
    events = await server.linked_events(3)
    client = TelemetryClient(server.base_url, email="admin@example.com", password="admin-password-1",
                             spool_path=str(tmp_path / "spool.db"), mode=mode)
    await client.start()
    try:
        base = datetime.now(timezone.utc) - timedelta(minutes=1)
        n = 3000
        readings = [(events[i % 3], float(i), base + timedelta(microseconds=i)) for i in range(n)]
        t0 = time.monotonic()
        for i in range(0, n, 50):  # 60 polls of 50 readings
            client.submit_many(readings[i:i + 50])
        assert await client.flush(30), client.stats
        elapsed = time.monotonic() - t0
        stats = client.stats
    finally:
        await client.close()
    assert count_rows(server.services, events) == n
    assert stats.acked == n and stats.accepted == n and stats.rejected == 0 and stats.duplicates == 0
    assert stats.sent == n
    print(f"{mode}: {n} readings acked in {elapsed:.2f}s")
    assert elapsed < 3.0, f"{n} readings took {elapsed:.2f}s (need >= 1000/s)"
    resp = await server.request("GET", f"/api/v1/datapoints?event_public_id={events[0]}&page_size=1")
    newest = resp.json["data"][0]
    assert newest["value"] == float(2997)
    assert datetime.fromisoformat(newest["timestamp"]).replace(tzinfo=timezone.utc) == base + timedelta(
        microseconds=2997)


async def test_rest_batch_id_dedups(server):
    (event,) = await server.linked_events(1)
    body = {"batch_id": "rest-batch-1", "datapoints": [{"event_public_id": event, "value": 1.5}]}
    first = await server.request("POST", "/api/v1/datapoints/batch", body)
    again = await server.request("POST", "/api/v1/datapoints/batch", body)
    assert first.code == 201 and first.json["duplicate"] is False and first.json["batch_id"] == "rest-batch-1"
    assert again.code == 201 and again.json["duplicate"] is True and again.json["accepted"] == 1
    assert count_rows(server.services, [event]) == 1
    plain = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": body["datapoints"]})
    assert plain.code == 201 and "duplicate" not in plain.json and "batch_id" not in plain.json
    bad = await server.request("POST", "/api/v1/datapoints/batch", {**body, "batch_id": "x" * 65})
    assert bad.code == 422


# --- `webmacs controller` -----------------------------------------------------------------------

def controller_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    env.update({"PYTHONUNBUFFERED": "1", "WEBMACS_LOG_LEVEL": "INFO"})
    env.update(extra)
    return env


@pytest.mark.parametrize("variable,value,message", [
    ("WEBMACS_SERVER_URL", "", "WEBMACS_SERVER_URL is required"),
    ("WEBMACS_SERVER_URL", "ftp://host:1", "WEBMACS_SERVER_URL must be http(s)://host:port"),
    ("WEBMACS_SERVER_URL", "http://host:port", "WEBMACS_SERVER_URL must be http(s)://host:port"),
    ("WEBMACS_API_TOKEN", "", "WEBMACS_API_TOKEN, or WEBMACS_ADMIN_EMAIL and WEBMACS_ADMIN_PASSWORD"),
    ("WEBMACS_POLL_INTERVAL", "0.1", "WEBMACS_POLL_INTERVAL must be between 0.2"),
    ("WEBMACS_POLL_INTERVAL", "fast", "WEBMACS_POLL_INTERVAL must be a number"),
    ("WEBMACS_MAX_BATCH_SIZE", "501", "WEBMACS_MAX_BATCH_SIZE must be between 1 and 500"),
    ("WEBMACS_MAX_BATCH_SIZE", "0", "WEBMACS_MAX_BATCH_SIZE must be between 1 and 500"),
    ("WEBMACS_TELEMETRY_MODE", "mqtt", "WEBMACS_TELEMETRY_MODE must be websocket or http"),
    ("WEBMACS_SPOOL_MAX_MB", "lots", "WEBMACS_SPOOL_MAX_MB must be a number"),
    ("WEBMACS_SPOOL_PATH", "/nonexistent-dir/spool.db", "WEBMACS_SPOOL_PATH"),
])
async def test_controller_bad_config_is_one_line_exit_2(tmp_path, variable, value, message):
    env = controller_env(WEBMACS_SERVER_URL="http://127.0.0.1:9", WEBMACS_API_TOKEN="wm_x",
                         WEBMACS_SPOOL_PATH=str(tmp_path / "spool.db"))
    env[variable] = value
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "webmacs", "controller", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, err.decode()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err.decode(), err.decode()


def test_controller_config_defaults():
    cfg = ControllerConfig.from_env({"WEBMACS_SERVER_URL": "https://lab:8443/", "WEBMACS_ADMIN_EMAIL": "a@b.c",
                                     "WEBMACS_ADMIN_PASSWORD": "pw-123456"})
    assert (cfg.server_url, cfg.poll_interval, cfg.max_batch_size, cfg.mode) == ("https://lab:8443", 1.0, 100,
                                                                                 "websocket")
    assert (cfg.spool_path, cfg.spool_max_mb, cfg.token) == ("./webmacs-spool.db", 100.0, None)


async def start_controller(env: dict, log_path: Path):
    fh = open(log_path, "ab")
    try:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "webmacs", "controller", env=env,
                                                    stdout=fh, stderr=fh, cwd=str(log_path.parent))
    finally:
        fh.close()


async def stop_controller(proc, timeout: float = 15.0) -> tuple[int, float]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = await asyncio.wait_for(proc.wait(), timeout)
    return rc, time.monotonic() - t0


@pytest.mark.timeout(120)
async def test_controller_runs_plugins_resyncs_and_stops_cleanly(server, tmp_path):
    # auto_create_events defaults to true: every channel is linked to a new event
    resp = await server.request("POST", "/api/v1/plugins", {"plugin_id": "simulated", "instance_name": "Rig",
                                                           "demo_mode": True})
    assert resp.code == 201, resp
    instance = resp.json["data"]["public_id"]
    mappings = {m["channel_id"]: m for m in resp.json["data"]["channel_mappings"]}
    events = {ch: m["event_public_id"] for ch, m in mappings.items()}
    assert set(events) == {"temp_reactor", "temp_inlet", "temp_outlet", "pressure_chamber", "pressure_diff",
                           "volume_flow", "humidity", "heater_power", "valve_position"} and all(events.values())
    token = (await server.request("POST", "/api/v1/tokens", {"name": "controller"})).json["token"]
    log_path = tmp_path / "controller.log"
    spool = tmp_path / "spool.db"
    env = controller_env(WEBMACS_SERVER_URL=server.base_url, WEBMACS_API_TOKEN=token,
                         WEBMACS_POLL_INTERVAL="0.2", WEBMACS_SYNC_INTERVAL="1", WEBMACS_SPOOL_PATH=str(spool))
    started = datetime.now(timezone.utc)
    proc = await start_controller(env, log_path)
    try:
        svc = server.services
        await wait_for(lambda: all(count_rows(svc, [e]) >= 3 for e in events.values()), timeout=20,
                       message="readings of all nine channels")
        # unlink the valve: its readings stop after the next re-sync
        valve = mappings["valve_position"]["public_id"]
        resp = await server.request("PUT", f"/api/v1/plugins/{instance}/channels/{valve}",
                                    {"event_public_id": None})
        assert resp.code == 200, resp
        # the controller re-syncs: valve readings stop while temperature goes on
        await wait_for(stopped_while(svc, events["valve_position"], events["temp_reactor"], readings=5),
                       timeout=15, interval=0.1, message="valve readings to stop after the re-sync")
        valve_rows = count_rows(svc, [events["valve_position"]])
        temp_rows = count_rows(svc, [events["temp_reactor"]])
        await wait_for(lambda: count_rows(svc, [events["temp_reactor"]]) >= temp_rows + 5, timeout=10,
                       message="more temperature readings")
        assert count_rows(svc, [events["valve_position"]]) == valve_rows
        resp = await server.request("GET",
                                    f"/api/v1/datapoints?event_public_id={events['pressure_chamber']}&page_size=5")
        for dp in resp.json["data"]:  # each reading carries its own reading time
            ts = datetime.fromisoformat(dp["timestamp"]).replace(tzinfo=timezone.utc)
            assert started - timedelta(seconds=1) <= ts <= datetime.now(timezone.utc)
            assert 0 <= dp["value"] <= 6  # bar
        stamps = [dp["timestamp"] for dp in resp.json["data"]]
        assert len(set(stamps)) == len(stamps)
    finally:
        rc, took = await stop_controller(proc)
    log_text = log_path.read_text()
    assert rc == 0 and took < 8, log_text
    assert "Traceback" not in log_text, log_text
    check = Spool(str(spool))
    assert check.pending == 0  # flushed on SIGTERM
    check.close()

    # server unreachable: readings go to the spool (mappings from the spool's cache),
    # SIGTERM still exits 0 quickly, and the next start delivers them.
    sock, port = bind_unused_port()
    sock.close()
    down = dict(env, WEBMACS_SERVER_URL=f"http://127.0.0.1:{port}", WEBMACS_FLUSH_TIMEOUT="1")
    proc = await start_controller(down, log_path)
    await wait_for(lambda: spooled(spool) >= 10, timeout=15, message="readings spooled while the server is down")
    rc, took = await stop_controller(proc)
    assert rc == 0 and took < 5, log_path.read_text()
    check = Spool(str(spool))
    waiting = check.pending
    check.close()
    assert waiting >= 10, log_path.read_text()  # ~2 s at 0.2 s x 8 linked channels
    before = count_rows(svc, list(events.values()))
    proc = await start_controller(env, log_path)
    try:
        await wait_for(lambda: count_rows(svc, list(events.values())) >= before + waiting,
                       timeout=20, message="the spooled readings delivered")
    finally:
        rc, _ = await stop_controller(proc)
    assert rc == 0
