"""The telemetry ack protocol over a real WebSocket (docs/telemetry-acks.md), on both backends."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import make_settings, start_server, stop_server, wait_for
from webmacs.db import make_engine

TELEMETRY = "/ws/controller/telemetry"


@pytest.fixture
def observer(server):
    """A connection of our own to the server's database: what another reader sees."""
    engine = make_engine(server.services.config.database_url, 1)
    yield engine
    engine.dispose()


def count(engine, where: str = "1=1", **params) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM datapoints WHERE {where}"), params).scalar()


def batch_rows(engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM ingest_batches WHERE batch_id = :b"), {"b": batch_id}).scalar()


def stored_times(engine, event: str) -> list[datetime]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT d.time FROM datapoints d JOIN events e ON e.id = d.event_id "
                                 "WHERE e.public_id = :e ORDER BY d.time"), {"e": event}).scalars().all()
    out = []
    for t in rows:
        if isinstance(t, str):
            t = datetime.fromisoformat(t)
        out.append(t if t.tzinfo else t.replace(tzinfo=timezone.utc))
    return out


def points(event: str, values, ts: datetime | None = None) -> list[dict]:
    out = []
    for i, v in enumerate(values):
        p = {"event_public_id": event, "value": float(v)}
        if ts is not None:
            p["timestamp"] = (ts + timedelta(microseconds=i)).isoformat()
        out.append(p)
    return out


async def test_ack_arrives_once_durable_and_the_rows_follow(server, observer):
    """Changed with the durable ingest queue: an ack means "durable in the server's queue"
    (``durable: queue``), in order; the writer commits every acked row, each once."""
    (event,) = await server.linked_events(1)
    ws = await server.ws(TELEMETRY)
    n_batches, size = 20, 250
    for k in range(n_batches):  # pipelined: the server reads them one after another
        await ws.send({"batch_id": f"commit-{k}", "datapoints": points(event, range(k * 1000, k * 1000 + size))})
    for k in range(n_batches):
        ack = await ws.recv_type("ack")
        assert ack == {"type": "ack", "batch_id": f"commit-{k}", "accepted": size, "rejected": 0, "durable": "queue"}
    await server.settled()
    for k in range(n_batches):
        assert count(observer, "value >= :lo AND value < :hi", lo=k * 1000, hi=k * 1000 + size) == size
        assert batch_rows(observer, f"commit-{k}") == 1
    assert count(observer) == n_batches * size


async def test_duplicate_batch_id_is_acked_again_without_inserting(server, observer):
    (event,) = await server.linked_events(1)
    ws = await server.ws(TELEMETRY)
    await ws.send({"batch_id": "dup-1", "datapoints": points(event, [1, 2, 3])})
    first = await ws.recv_type("ack")
    assert first == {"type": "ack", "batch_id": "dup-1", "accepted": 3, "rejected": 0, "durable": "queue"}
    for _ in range(2):  # a resend (even with other content) is answered from ingest_batches
        await ws.send({"batch_id": "dup-1", "datapoints": points(event, [7, 8, 9, 10])})
        again = await ws.recv_type("ack")
        assert again == {"type": "ack", "batch_id": "dup-1", "accepted": 3, "rejected": 0, "duplicate": True}
    await server.settled()
    assert count(observer) == 3
    # another socket, same batch_id: still a duplicate
    ws2 = await server.ws(TELEMETRY)
    await ws2.send({"batch_id": "dup-1", "datapoints": points(event, [1, 2, 3])})
    assert (await ws2.recv_type("ack"))["duplicate"] is True
    assert count(observer) == 3


async def test_dedup_survives_a_server_restart(database_url):
    settings = make_settings(database_url)
    srv, http = await start_server(settings)
    try:
        (event,) = await srv.linked_events(1)
        ws = await srv.ws(TELEMETRY)
        await ws.send({"batch_id": "restart-1", "datapoints": points(event, [1, 2])})
        assert (await ws.recv_type("ack"))["accepted"] == 2
    finally:
        await stop_server(srv, http)
    srv, http = await start_server(settings)
    try:
        ws = await srv.ws(TELEMETRY)
        await ws.send({"batch_id": "restart-1", "datapoints": points(event, [1, 2])})
        ack = await ws.recv_type("ack")
        assert ack == {"type": "ack", "batch_id": "restart-1", "accepted": 2, "rejected": 0, "duplicate": True}
        engine = make_engine(database_url, 1)
        try:
            assert count(engine) == 2
        finally:
            engine.dispose()
    finally:
        await stop_server(srv, http)


async def test_timestamps_are_kept_as_given(server, observer):
    ev = await server.linked_events(3)
    ws = await server.ws(TELEMETRY)
    batch = [
        {"event_public_id": ev[0], "value": 1.0, "timestamp": "2025-06-01T14:30:00.123456+02:00"},
        {"event_public_id": ev[1], "value": 2.0, "timestamp": "2025-06-01T12:30:00.5Z"},
        {"event_public_id": ev[2], "value": 3.0, "timestamp": 1748781000.25},  # epoch seconds
    ]
    await ws.send({"batch_id": "ts-1", "datapoints": batch})
    assert (await ws.recv_type("ack"))["accepted"] == 3
    await server.settled()
    utc = timezone.utc
    assert stored_times(observer, ev[0]) == [datetime(2025, 6, 1, 12, 30, 0, 123456, tzinfo=utc)]
    assert stored_times(observer, ev[1]) == [datetime(2025, 6, 1, 12, 30, 0, 500000, tzinfo=utc)]
    assert stored_times(observer, ev[2]) == [datetime(2025, 6, 1, 12, 30, 0, 250000, tzinfo=utc)]
    resp = await server.request("GET", f"/api/v1/datapoints?event_public_id={ev[0]}")
    (dp,) = resp.json["data"]
    stamp = datetime.fromisoformat(dp["timestamp"])
    assert (stamp if stamp.tzinfo else stamp.replace(tzinfo=utc)) == datetime(2025, 6, 1, 12, 30, 0, 123456, tzinfo=utc)


async def test_future_timestamp_is_rejected_with_a_clear_error(server, observer):
    (event,) = await server.linked_events(1)
    ws = await server.ws(TELEMETRY)
    now = datetime.now(timezone.utc)
    future = (now + timedelta(minutes=10)).isoformat()
    await ws.send({"batch_id": "future-1", "datapoints": [{"event_public_id": event, "value": 1, "timestamp": future}]})
    err = await ws.recv_type("error")
    assert err["batch_id"] == "future-1" and err["retry"] is False
    assert err["message"] == "No valid datapoints in batch"
    assert err["errors"] == ["datapoints[0]: timestamp is more than 5 minutes in the future"]
    # mixed batch: the good reading is stored, the future one counted and named
    near = (now + timedelta(minutes=4)).isoformat()  # inside the 5 minute tolerance (clock skew)
    await ws.send({"batch_id": "future-2", "datapoints": [
        {"event_public_id": event, "value": 2, "timestamp": near},
        {"event_public_id": event, "value": 3, "timestamp": future}]})
    ack = await ws.recv_type("ack")
    assert (ack["accepted"], ack["rejected"]) == (1, 1)
    assert ack["errors"] == ["datapoints[1]: timestamp is more than 5 minutes in the future"]
    await server.settled()
    assert count(observer) == 1 and count(observer, "value = 3") == 0
    assert batch_rows(observer, "future-1") == 0  # a refused batch is not remembered: it may be fixed and resent


async def test_spec_client_without_batch_id_sees_no_acks(server, observer):
    (event,) = await server.linked_events(1)
    ws = await server.ws(TELEMETRY)
    for k in range(3):
        await ws.send({"datapoints": points(event, [k])})
    await ws.send({"datapoints": [{"value": "nope", "event_public_id": event}]})
    await ws.send({"type": "ping"})
    # the pong is answered at once, the batches in order behind it: one error, no acks
    seen = [await ws.recv(), await ws.recv()]
    assert sorted(seen, key=str) == [{"type": "error", "message": "No valid datapoints in batch"},
                                     {"type": "pong"}]
    await ws.send({"type": "ping"})  # nothing else was sent for the three stored batches
    assert await ws.recv() == {"type": "pong"}
    await server.settled()
    assert count(observer) == 3


async def test_invalid_batch_id_is_refused(server):
    (event,) = await server.linked_events(1)
    ws = await server.ws(TELEMETRY)
    for bad in ("x" * 65, "", 17):
        await ws.send({"batch_id": bad, "datapoints": points(event, [1])})
        err = await ws.recv_type("error")
        assert "batch_id" in err["message"] and "batch_id" not in err


@contextmanager
def database_down(server):
    """Make the server's database unavailable. PostgreSQL: our per-run database refuses
    connections and its sessions are terminated (the real outage, other databases of the
    cluster untouched). SQLite: the engine points at a file that cannot be opened."""
    services = server.services
    url = services.config.database_url
    if services.db.is_postgres:
        prefix, _, name = url.rpartition("/")
        admin = create_engine(f"{prefix}/postgres".replace("postgresql://", "postgresql+psycopg2://", 1),
                              isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
                # the server's sessions (TimescaleDB's own background workers are left alone)
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n "
                                  "AND usename = current_user AND pid <> pg_backend_pid()"), {"n": name})
            yield
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
            admin.dispose()
    else:
        real = services.db.engine
        broken = make_engine(f"sqlite:////nonexistent-{uuid.uuid4().hex}/webmacs.db", 1)
        services.db.engine = broken
        try:
            yield
        finally:
            services.db.engine = real
            broken.dispose()


async def test_database_unavailable_batches_are_queued_and_stored_when_back(server, observer):
    """Changed with the durable ingest queue: during an outage batches are acknowledged
    once durable in the queue (not "retry"), /health shows the queue growing and the
    writer's lag; when the database is back the writer stores them, and a resend of an
    acked batch is a duplicate."""
    (event,) = await server.linked_events(1)
    ws = await server.ws(TELEMETRY)
    await ws.send({"batch_id": "before", "datapoints": points(event, [0])})
    assert (await ws.recv_type("ack"))["accepted"] == 1
    await server.settled()
    assert (await server.request("GET", "/health", token=None)).json["database"] == "ok"
    with database_down(server):
        await ws.send({"batch_id": "outage-1", "datapoints": points(event, [1, 2, 3])})
        ack = await ws.recv_type("ack", timeout=30)
        assert ack == {"type": "ack", "batch_id": "outage-1", "accepted": 3, "rejected": 0, "durable": "queue"}
        await ws.send({"datapoints": points(event, [4])})  # a spec client's batch: kept too
        health = (await server.request("GET", "/health", token=None, timeout=30)).json
        assert (health["status"], health["database"]) == ("degraded", "error")
        assert health["ingest_queue"]["records"] >= 1 and health["ingest_queue"]["writer_lag_seconds"] >= 0
    # the database is back: the writer catches up by itself; the resend is stored once
    await server.settled()
    await ws.send({"batch_id": "outage-1", "datapoints": points(event, [1, 2, 3])})
    ack = await ws.recv_type("ack", timeout=30)
    assert ack == {"type": "ack", "batch_id": "outage-1", "accepted": 3, "rejected": 0, "duplicate": True}
    assert count(observer) == 5 and batch_rows(observer, "outage-1") == 1
    health = (await server.request("GET", "/health", token=None)).json
    assert (health["status"], health["database"]) == ("ok", "ok")
    assert health["ingest_queue"] == {"records": 0, "bytes": 0, "writer_lag_seconds": 0.0}


async def test_failure_inside_the_writer_transaction_leaves_nothing_half_written(server, observer, monkeypatch):
    """The batch_id rows are written first in the same transaction as the rows and the
    queue position: a failure after them (connection lost mid-COPY) rolls all back, so
    the writer's retry stores the batch once and is not taken for a duplicate."""
    (event,) = await server.linked_events(1)
    pipeline = server.services.pipeline
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        raise OperationalError("INSERT INTO datapoints", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(pipeline.writer, "_insert_records", fail)
    monkeypatch.setattr(pipeline.writer, "_copy_records", fail)
    ws = await server.ws(TELEMETRY)
    await ws.send({"batch_id": "half-1", "datapoints": points(event, range(50))})
    ack = await ws.recv_type("ack")
    assert ack == {"type": "ack", "batch_id": "half-1", "accepted": 50, "rejected": 0, "durable": "queue"}
    await wait_for(lambda: len(calls) >= 2, 10, message="the writer retrying")
    assert batch_rows(observer, "half-1") == 0 and count(observer) == 0
    monkeypatch.undo()
    await server.settled()
    assert count(observer) == 50 and batch_rows(observer, "half-1") == 1
    await ws.send({"batch_id": "half-1", "datapoints": points(event, range(50))})
    assert (await ws.recv_type("ack"))["duplicate"] is True
    assert count(observer) == 50


async def test_many_sockets_resending_the_same_batch_store_it_once(server, observer):
    """A controller that reconnects while its old socket's batch is still being stored
    sends the same batch_id concurrently: the unique batch_id keeps it to one copy."""
    (event,) = await server.linked_events(1)
    sockets = [await server.ws(TELEMETRY) for _ in range(6)]
    batch = {"batch_id": "race-1", "datapoints": points(event, range(300))}
    await asyncio.gather(*(ws.send(batch) for ws in sockets))
    acks = [await ws.recv_type("ack", timeout=30) for ws in sockets]
    assert all(a["accepted"] == 300 for a in acks)
    assert sum(1 for a in acks if not a.get("duplicate")) == 1
    await server.settled()
    assert count(observer) == 300


async def test_batch_ids_are_per_sender(server, observer):
    """Two controllers that both number their batches from "1" are both stored; the
    same sender resending "1" is a duplicate. A REST batch_id is the same sender's."""
    (event,) = await server.linked_events(1)
    tokens = [(await server.request("POST", "/api/v1/tokens", {"name": f"rig {i}"})).json["token"] for i in (1, 2)]
    first, second = [await server.ws(TELEMETRY, token=t) for t in tokens]
    await first.send({"batch_id": "1", "datapoints": points(event, [1.0])})
    assert (await first.recv_type("ack")).get("duplicate") is None
    await second.send({"batch_id": "1", "datapoints": points(event, [2.0])})
    ack = await second.recv_type("ack")
    assert ack["accepted"] == 1 and "duplicate" not in ack
    await second.send({"batch_id": "1", "datapoints": points(event, [2.0])})
    assert (await second.recv_type("ack"))["duplicate"] is True
    rest = await server.request("POST", "/api/v1/datapoints/batch", {"batch_id": "1", "datapoints": points(event, [3.0])},
                                token=tokens[0])
    assert rest.code == 201 and rest.json["duplicate"] is True
    await server.settled()
    assert count(observer) == 2
