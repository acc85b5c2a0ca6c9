"""The durable ingest queue (docs/ingest-queue.md): no reading lost or doubled for a
spec-only client (no batch_id, no ack) across a PostgreSQL freeze, a PostgreSQL
restart and a server SIGKILL; a full queue refuses loudly and loses nothing it
acknowledged; replay after a crash inside a writer transaction stores each row once.

The PostgreSQL frozen and restarted here is a throwaway cluster of this test
(:func:`tests.test_no_loss.cluster`), so other runs sharing the project cluster are
not disturbed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from tornado.websocket import websocket_connect

from tests.conftest import make_settings, start_server, stop_server, wait_for
from tests.test_no_loss import cluster, health  # noqa: F401 - the fixture, reused
from tests.test_shutdown import ServeProcess, controller_events
from webmacs.db import Database
from webmacs.ingest import OVERLOADED
from webmacs.storage.datapoints import Writer, queue_position
from webmacs.storage.queue import IngestQueue, pack_rows

TELEMETRY = "/ws/controller/telemetry"
EVENTS = 2
PER_EVENT = 10_000  # 20,000 readings
BATCH = 50  # readings per event per batch: 100 readings a batch, 200 batches


class SpecClient:
    """A controller written against the WebSocket spec alone: sends ``{"datapoints": [...]}``,
    never a batch_id, and never hears back about a stored batch."""

    def __init__(self, port: int, token: str, events: list[str], base: datetime) -> None:
        self.port, self.token, self.events, self.base = port, token, events, base
        self.conn = None
        self.sent = 0  # batches sent
        self.errors: list[dict] = []

    async def connect(self) -> None:
        self.conn = await websocket_connect(f"ws://127.0.0.1:{self.port}{TELEMETRY}?token={self.token}")
        await self.conn.write_message(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(self.conn.read_message(), 10)) == {"type": "pong"}

    def batch(self, k: int) -> dict:
        return {"datapoints": [{"event_public_id": e, "value": float(i),
                                "timestamp": (self.base + timedelta(milliseconds=i)).isoformat()}
                               for i in range(k * BATCH, (k + 1) * BATCH) for e in self.events]}

    async def send(self, upto: int, pace: float = 0.0) -> None:
        while self.sent < upto:
            await self.conn.write_message(json.dumps(self.batch(self.sent)))
            self.sent += 1
            if pace:
                await asyncio.sleep(pace)  # the controller's sampling rate, not a wait for the server

    async def no_errors(self) -> None:
        """Everything the server said to us so far (a ping answers behind our batches' errors)."""
        await self.conn.write_message(json.dumps({"type": "ping"}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.conn.read_message(), 30))
            if msg == {"type": "pong"}:
                break
            self.errors.append(msg)
        assert not self.errors, self.errors[:3]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _processes(pg) -> list[psutil.Process]:
    pid = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


def freeze(pg) -> None:
    for proc in _processes(pg):
        proc.send_signal(signal.SIGSTOP)


def thaw(pg) -> None:
    for proc in _processes(pg):
        proc.send_signal(signal.SIGCONT)


def stored(url: str) -> list:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT e.public_id, d.time, d.value FROM datapoints d "
                                     "JOIN events e ON e.id = d.event_id")).all()
    finally:
        engine.dispose()


def row_count(url: str) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM datapoints")).scalar()
    finally:
        engine.dispose()


async def queue_records(port: int) -> int | None:
    h = await health(port)
    return None if h is None else h["ingest_queue"]["records"]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_spec_client_loses_nothing_across_freeze_restart_and_server_kill(cluster, tmp_path):  # noqa: F811
    url = cluster.url("webmacs")
    server = ServeProcess(url, tmp_path / "server.log", WEBMACS_LOG_LEVEL="INFO", WEBMACS_SHUTDOWN_TIMEOUT="3")
    client = None
    total = PER_EVENT // BATCH
    try:
        await server.start()
        events, token = await controller_events(server.port, EVENTS, "Queue")
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
        client = SpecClient(server.port, token, events, base)
        await client.connect()
        await client.send(total // 5, pace=0.01)

        # (a) PostgreSQL frozen (SIGSTOP): ingest goes on into the queue, /health says so
        freeze(cluster)
        frozen_at = time.monotonic()
        try:
            await client.send(total // 5 + 60, pace=0.15)  # ~9 s of readings into a frozen database
            await client.no_errors()
            during = await health(server.port)
            assert during["status"] == "degraded", during
            assert during["ingest_queue"]["records"] > 0 and during["ingest_queue"]["writer_lag_seconds"] > 3, during
        finally:
            thaw(cluster)
        assert time.monotonic() - frozen_at < 20
        await wait_for(lambda: _is(queue_records(server.port), 0), 60, interval=0.2, message="caught up after the freeze")

        # (b) PostgreSQL stopped (a crash) and started again while the client streams
        await client.send(total // 2, pace=0.01)
        cluster.stop("immediate")
        try:
            await client.send(total // 2 + 20, pace=0.05)
            await client.no_errors()
        finally:
            cluster.start()
        await wait_for(lambda: _is(queue_records(server.port), 0), 60, interval=0.2, message="caught up after restart")

        # (c) the server SIGKILLed between two batches, with batches durable in its queue only
        # (the database frozen again, so its writer is stuck inside a transaction)
        await client.send(total * 3 // 4, pace=0.01)
        await wait_for(lambda: _is(queue_records(server.port), 0), 60, interval=0.2, message="committed")
        freeze(cluster)
        try:
            before = client.sent
            await client.send(before + 15)
            await wait_for(lambda: _is(queue_records(server.port), 15), 30, interval=0.05,
                           message="15 batches durable in the queue")
            await server.kill()
        finally:
            thaw(cluster)
        client.close()
        assert row_count(url) < client.sent * BATCH * EVENTS  # the killed server had not stored them
        await server.start(server.port)  # replays its queue
        client.port = server.port
        await client.connect()
        await client.send(total, pace=0.005)
        await client.no_errors()
        want_rows = EVENTS * PER_EVENT
        await wait_for(lambda: row_count(url) >= want_rows, 60, interval=0.2, message="every reading stored")
        await wait_for(lambda: _is(queue_records(server.port), 0), 30, interval=0.2, message="queue empty")
    finally:
        if client is not None:
            client.close()
        await server.kill()

    rows = stored(url)
    got = Counter((e, t.astimezone(timezone.utc), v) for e, t, v in rows)
    want = Counter((e, base + timedelta(milliseconds=i), float(i)) for e in events for i in range(PER_EVENT))
    missing, doubled = want - got, got - want
    assert not missing and not doubled, (
        f"{sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
        f"{sum(doubled.values())} extra or doubled (e.g. {list(doubled)[:3]})")
    log = (tmp_path / "server.log").read_text()
    assert "replaying 15 batches" in log, log[-3000:]


async def _is(value, want) -> bool:
    return (await value) == want


# --- a full queue -------------------------------------------------------------------------------

async def test_full_queue_refuses_loudly_and_loses_nothing_acknowledged(database_url, caplog):
    srv, http = await start_server(make_settings(database_url, WEBMACS_INGEST_QUEUE_MAX_MB=1))
    writer = srv.services.pipeline.writer
    original = writer.write_group

    def down(*args):
        raise OperationalError("COPY datapoints", {}, Exception("connection refused"))

    try:
        (event,) = await srv.linked_events(1)
        acked = await srv.ws(TELEMETRY)
        spec = await srv.ws(TELEMETRY)
        writer.write_group = down
        accepted, refused = 0, None
        for k in range(1000):  # 500 readings ~ 10 kB a record: 1 MB is full after ~100
            await acked.send({"batch_id": f"full-{k}", "datapoints": [
                {"event_public_id": event, "value": float(k * 1000 + i)} for i in range(500)]})
            answer = await acked.recv()
            if answer["type"] == "error":
                refused = (k, answer)
                break
            assert answer["durable"] == "queue"
            accepted += answer["accepted"]
        assert refused is not None, "the queue never filled"
        k, answer = refused
        assert answer == {"type": "error", "batch_id": f"full-{k}", "message": OVERLOADED, "retry": True}
        await spec.send({"datapoints": [{"event_public_id": event, "value": -1.0 - i} for i in range(500)]})
        assert await spec.recv() == {"type": "error", "message": "Server overloaded: batch not stored"}
        health = (await srv.request("GET", "/health", token=None)).json["ingest_queue"]
        assert health["records"] == k and 0.9 * 2 ** 20 < health["bytes"] <= 2 ** 20
        metrics = srv.services.pipeline.refused
        assert metrics == [2, 1000]  # counted for the once-per-interval log line
    finally:
        writer.write_group = original
    try:
        await srv.settled()
        # the refused batch is resent and stored; everything acknowledged is there, once
        await acked.send({"batch_id": f"full-{k}", "datapoints": [
            {"event_public_id": event, "value": float(k * 1000 + i)} for i in range(500)]})
        assert (await acked.recv())["type"] == "ack"
        await srv.settled()
        count = await srv.services.db.run(_count, srv)
        assert count == accepted + 500
    finally:
        await stop_server(srv, http)


def _count(srv) -> int:
    with srv.services.db.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM datapoints")).scalar()


# --- replay after a crash inside a writer transaction (unit level, a real database) --------------

class SimulatedCrash(Exception):
    pass


class CrashBeforeCommit(Writer):
    """Dies after the COPY, before the queue position is written: the transaction never commits."""

    def _set_committed(self, conn, queue_id, seq):
        raise SimulatedCrash("inside the writer transaction")


async def _filled_queue(path, url: str, n: int) -> tuple[IngestQueue, list]:
    queue = IngestQueue(str(path), url, 64 * 2 ** 20)
    queue.claim()
    queue.open(0)
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    records = []
    for k in range(n):
        rows = [(base + timedelta(milliseconds=k * 100 + i), 1 + i % 3, float(k * 100 + i)) for i in range(100)]
        records.append(queue.append(pack_rows(rows), None, 100, 0, "token:1", f"r-{k}" if k % 2 else None))
    await asyncio.gather(*(r.durable for r in records))
    return queue, records


async def closed(queue: IngestQueue) -> None:
    queue.close()
    await wait_for(lambda: queue._lock_fd is None, message="queue closed (its slot free)")


def _rows(db: Database) -> list[float]:
    with db.engine.connect() as conn:
        return [v for (v,) in conn.execute(text("SELECT value FROM datapoints ORDER BY value"))]


async def test_replay_after_a_crash_inside_the_writer_transaction_stores_each_row_once(database_url, tmp_path):
    db = Database(database_url, 2)
    qdir = tmp_path / "queue"
    try:
        queue, records = await _filled_queue(qdir, database_url, 10)
        with pytest.raises(SimulatedCrash):
            await db.run(CrashBeforeCommit(db).write_group, records, queue.queue_id)
        assert _rows(db) == []  # the COPY rolled back with the transaction
        await closed(queue)  # the process is gone; its queue files stay

        # the next start replays all ten records; a commit then a crash before the segments
        # are deleted; the start after that replays nothing: each row once
        again = IngestQueue(str(qdir), database_url, 64 * 2 ** 20)
        assert again.claim() == queue.queue_id
        replay = again.open(0)
        assert [r.seq for r in replay] == [r.seq for r in records]
        seq, written, dups = await db.run(Writer(db).write_group, replay, again.queue_id)
        assert (seq, written, dups) == (records[-1].seq, 1000, 0)
        # the same records once more (as if the queue position had not been read): skipped in
        # the transaction by the stored committed_seq
        assert (await db.run(Writer(db).write_group, replay, again.queue_id))[1:] == (0, 0)
        await closed(again)
        third = IngestQueue(str(qdir), database_url, 64 * 2 ** 20)
        third.claim()
        with db.Session() as session:
            committed = queue_position(session, third.queue_id)
        assert committed == records[-1].seq and third.open(committed) == []
        assert third.next_seq == records[-1].seq + 1  # sequence numbers never go back
        third.close()
        assert _rows(db) == sorted(float(k * 100 + i) for k in range(10) for i in range(100))
    finally:
        db.close()


async def test_torn_tail_is_cut_off_and_the_rest_replayed(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    queue, records = await _filled_queue(tmp_path / "queue", url, 3)
    await closed(queue)
    (segment,) = list(queue.dir.glob("*.seg"))
    whole = segment.stat().st_size
    with open(segment, "ab") as fh:  # a crash in the middle of writing a fourth record
        fh.write(b"\x40\x00\x00\x00garbage")
    again = IngestQueue(str(tmp_path / "queue"), url, 64 * 2 ** 20)
    again.claim()
    replay = again.open(0)
    assert [r.seq for r in replay] == [1, 2, 3] and segment.stat().st_size == whole
    assert [list(r.unpacked()) for r in replay] == [list(r.unpacked()) for r in records]
    assert [r.batch_id for r in replay] == [None, "r-1", None]
    again.close()


def test_each_process_takes_its_own_slot(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first, second = IngestQueue(str(tmp_path), url, 2 ** 20), IngestQueue(str(tmp_path), url, 2 ** 20)
    try:
        assert first.claim() != second.claim()
        assert first.dir.name == "slot-0" and second.dir.name == "slot-1"
        other_db = IngestQueue(str(tmp_path), f"sqlite:///{tmp_path / 'y.db'}", 2 ** 20)
        other_db.claim()  # another database never shares a queue directory
        assert other_db.dir.parent != first.dir.parent
        other_db._close_files()
    finally:
        first._close_files()
        second._close_files()
    assert os.path.exists(first.dir / "queue.id")
