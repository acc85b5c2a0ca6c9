"""Three real ``webmacs serve`` processes (A, B, C) on three ports and one TimescaleDB
database, sharing live state through the cluster bus (PostgreSQL LISTEN/NOTIFY):
telemetry into A reaches dashboards on B and C, a plugin disabled through B is dropped
by A at once, a logout through C closes the stream on A, ``sensor.reading`` goes out
once per throttle per sensor while all three ingest, a pending delivery is attempted
once, B survives the loss of its bus connection, and ``--workers 2`` serves one port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time

import psutil
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.conftest import ADMIN_EMAIL, truncate_pg, wait_for
from tests.test_shutdown import ServeProcess, client_for
from tests.webhook_receiver import Receiver
from webmacs.db import make_engine
from webmacs.models import Webhook, WebhookDelivery

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

TELEMETRY = "/ws/controller/telemetry"
STREAM = "/ws/datapoints/stream"
THROTTLE = 2.0  # WEBMACS_SENSOR_READING_THROTTLE for these processes (5 s by default)
PENDING_PATH = "/ok/pending-before-start"


def seed_pending_delivery(url: str, receiver: Receiver) -> str:
    """Before any process starts: a webhook and one pending delivery nobody claims."""
    engine = make_engine(url, 1)
    try:
        with Session(engine) as session:
            hook = Webhook(url=receiver.url(PENDING_PATH), events=json.dumps(["experiment.started"]))
            session.add(hook)
            session.flush()
            delivery = WebhookDelivery(webhook_id=hook.id, event_type="experiment.started", status="pending",
                                       payload=json.dumps({"type": "experiment.started", "seeded": True}))
            session.add(delivery)
            session.commit()
            return delivery.public_id
    finally:
        engine.dispose()


class Cluster:
    def __init__(self, procs: list[ServeProcess], clients: list, receiver: Receiver, pending: str, url: str):
        self.procs, self.clients, self.receiver, self.pending, self.url = procs, clients, receiver, pending, url
        self.a, self.b, self.c = clients

    def sql(self, statement: str, **params):
        engine = make_engine(self.url, 1)
        try:
            with engine.begin() as conn:
                return conn.execute(text(statement), params).all()
        finally:
            engine.dispose()


async def close_client(client) -> None:
    """Close the client's sockets and cut their streams now: the processes stop right after,
    and a close handshake still pending when the module's loop ends would leak its socket."""
    # (tornado drops its protocol object on close(): take the streams first)
    streams = [getattr(getattr(sock.conn, "protocol", None), "stream", None) for sock in client._sockets]
    await client.close()
    await asyncio.sleep(0.05)  # let the close frames go out
    for stream in streams:
        if stream is not None and not stream.closed():
            stream.close()


async def stop_gracefully(proc: ServeProcess) -> None:
    if proc.proc is not None and proc.proc.returncode is None:
        proc.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.proc.wait(), 20)
        except asyncio.TimeoutError:
            await proc.kill()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(pg_url, tmp_path_factory):
    truncate_pg(pg_url)
    receiver = Receiver().start()
    pending = seed_pending_delivery(pg_url, receiver)
    logs = tmp_path_factory.mktemp("cluster")
    procs = [ServeProcess(pg_url, logs / f"{name}.log", WEBMACS_SENSOR_READING_THROTTLE=str(THROTTLE),
                          WEBMACS_WEBHOOK_RETRY_BASE="0.2") for name in "abc"]
    clients = []
    try:
        await asyncio.gather(*(p.start() for p in procs))  # all at once: one first admin, one resume
        clients = [await client_for(p.port) for p in procs]
        yield Cluster(procs, clients, receiver, pending, pg_url)
    finally:
        for client in clients:
            await close_client(client)
        await asyncio.gather(*(stop_gracefully(p) for p in procs))
        await receiver.close()


async def linked(srv, n: int, prefix: str) -> tuple[str, list[str]]:
    """A plugin instance with ``n`` linked events (made through ``srv``): (instance, events)."""
    return await srv.linked_instance(n, prefix)


async def send(tel, events: list[str], value: float, batch_id: str) -> dict:
    """The answer to one batch: an ack, or (nothing accepted) an error naming the batch."""
    await tel.send({"batch_id": batch_id, "datapoints": [{"event_public_id": e, "value": value} for e in events]})
    while True:
        msg = await tel.recv()
        assert msg is not None, "telemetry socket closed"
        if msg.get("type") in ("ack", "error") and msg.get("batch_id") == batch_id:
            return msg


async def answered(tel, events: list[str], value: float, tag: str, wanted, timeout: float = 1.0) -> float:
    """Send until the answer is ``wanted(answer)``; the seconds it took. A change made through
    another process reaches this one through the bus: within milliseconds, but not before the
    NOTIFY has travelled, so a batch sent the instant the change was answered may still meet
    the old view. More than ``timeout`` fails."""
    started = time.monotonic()
    for n in itertools.count():
        answer = await send(tel, events, value, f"{tag}-{n}")
        if wanted(answer):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"still {answer} after {timeout} s"
        await asyncio.sleep(0.02)  # the next try, not a wait for a result


def accepted(events: list[str]):
    return lambda answer: answer["type"] == "ack" and answer["accepted"] == len(events)


def dropped(answer: dict) -> bool:
    """Nothing of the batch stored because its events are not linked to an enabled plugin."""
    return answer["type"] == "error" and any("not linked" in e for e in answer.get("errors", ()))


async def frame_with(stream, event: str, value: float, timeout: float = 3.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = await stream.recv_type("datapoints_batch", timeout=max(0.05, deadline - time.monotonic()))
        for point in msg["datapoints"]:
            if point["event_public_id"] == event and point["value"] == value:
                return point


async def test_pending_delivery_attempted_once(cluster):
    """Seeded before the three started at once: each resumed pending rows, one claimed it."""
    async def delivered():
        rows = cluster.sql("SELECT status FROM webhook_deliveries WHERE public_id = :p", p=cluster.pending)
        return rows and rows[0][0] == "delivered"

    await wait_for(delivered, timeout=10, message="the seeded delivery delivered")
    hits = cluster.receiver.hits_for(PENDING_PATH)
    assert len(hits) == 1 and hits[0].headers["X-Webhook-Delivery"] == cluster.pending
    resumed = [p for p in cluster.procs if "resumed 1 pending webhook deliveries" in p.log_path.read_text()]
    assert len(resumed) == 1, [p.log() for p in cluster.procs]
    # exactly one initial admin although all three started on an empty users table
    assert cluster.sql("SELECT count(*) FROM users WHERE email = :e", e=ADMIN_EMAIL)[0][0] == 1


async def test_telemetry_into_a_reaches_dashboards_on_b_and_c(cluster):
    a, b, c = cluster.a, cluster.b, cluster.c
    _, [event, other] = await linked(a, 2, "Spread")
    on_b, on_c, on_a = await b.ws(STREAM), await c.ws(STREAM), await a.ws(STREAM)
    tel_a, tel_b = await a.ws(TELEMETRY), await b.ws(TELEMETRY)
    await answered(tel_b, [event, other], 0.0, "known", accepted([event, other]))  # made through A
    t0 = time.monotonic()
    assert (await send(tel_a, [event], 1.5, "s1"))["accepted"] == 1
    for stream in (on_a, on_b, on_c):
        point = await frame_with(stream, event, 1.5)
        assert set(point) == {"value", "event_public_id", "timestamp", "experiment_public_id"}
    assert time.monotonic() - t0 < 1.0
    # a burst into A and B for one event: C still gets at most one frame per 200 ms for it,
    # and the last value sent is the one it ends with
    for k in range(10):
        await send(tel_a if k % 2 else tel_b, [event, other], float(k), f"burst-{k}")
    assert (await send(tel_a, [event], 99.0, "last"))["accepted"] == 1
    seen: list[float] = []
    while True:
        msg = await on_c.recv_type("datapoints_batch", timeout=3)
        mine = [p for p in msg["datapoints"] if p["event_public_id"] == event]
        if mine:
            seen.append(time.monotonic())
            if mine[0]["value"] == 99.0:
                break
    gaps = [y - x for x, y in zip(seen, seen[1:])]
    assert all(g >= 0.1 for g in gaps), gaps  # flush every 200 ms (loop jitter allowed)


async def test_plugin_disabled_through_b_is_dropped_by_a_at_once(cluster):
    a, b, c = cluster.a, cluster.b, cluster.c
    instance, [event] = await linked(a, 1, "Toggle")
    tel_a = await a.ws(TELEMETRY)
    assert (await send(tel_a, [event], 1.0, "on-1"))["accepted"] == 1
    resp = await b.request("PUT", f"/api/v1/plugins/{instance}", {"enabled": False})
    assert resp.code == 200, resp
    assert await answered(tel_a, [event], 2.0, "off", dropped) < 0.5  # from B's answer on
    resp = await c.request("PUT", f"/api/v1/plugins/{instance}", {"enabled": True})
    assert resp.code == 200, resp
    assert await answered(tel_a, [event], 3.0, "on-2", accepted([event])) < 0.5


async def test_logout_through_c_closes_the_stream_on_a(cluster):
    a, c = cluster.a, cluster.c
    await a.create_user("viewer", "wallscreen")
    token = await c.login("wallscreen@example.com", "password-123")
    stream = await a.ws(STREAM, token=token)
    other = await a.ws(STREAM)  # the admin's: stays open
    t0 = time.monotonic()
    resp = await c.request("POST", "/api/v1/auth/logout", token=token)
    assert resp.code == 200, resp
    assert await stream.closed(timeout=1.0) == (1008, "Token has been revoked")
    assert time.monotonic() - t0 < 1.0
    assert other.conn.close_code is None


async def test_sensor_reading_once_per_throttle_across_processes(cluster):
    a = cluster.a
    _, events = await linked(a, 2, "Reading")
    resp = await a.request("POST", "/api/v1/webhooks", {"url": cluster.receiver.url("/ok/readings"),
                                                       "events": ["sensor.reading"]})
    assert resp.code == 201, resp
    sockets = [await srv.ws(TELEMETRY) for srv in cluster.clients]
    for i, tel in enumerate(sockets):  # the linkage made through A is known everywhere
        await answered(tel, events, 0.0, f"known-{i}", accepted(events))
    started = time.monotonic()
    k = 0
    while time.monotonic() - started < 2.5 * THROTTLE:
        for tel in sockets:  # all three ingest the same sensors
            k += 1
            assert (await send(tel, events, float(k), f"r-{k}"))["accepted"] == 2
        await asyncio.sleep(0.05)  # pacing the senders, not waiting for a result
    last_sent = time.monotonic()

    async def settled():
        pending = cluster.sql("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' "
                              "AND event_type = 'sensor.reading'")[0][0]
        return pending == 0 and cluster.receiver.hits_for("/ok/readings")

    await wait_for(settled, timeout=10, message="sensor.reading deliveries sent")
    for event in events:
        times = sorted(time_of(h.json["time"]) for h in cluster.receiver.hits_for("/ok/readings")
                       if h.json["event_public_id"] == event)
        gaps = [y - x for x, y in zip(times, times[1:])]
        # one per throttle window: 2.5 windows of ingest -> 2 or 3, never one per process
        assert 2 <= len(times) <= 3, (event, times)
        assert all(g >= THROTTLE - 0.3 for g in gaps), gaps
    assert last_sent - started >= 2.5 * THROTTLE


def time_of(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_b_survives_losing_its_bus_connection(cluster):
    a, b = cluster.a, cluster.b
    proc_b = cluster.procs[1]
    instance, [event] = await linked(a, 1, "Outage")
    tel_b = await b.ws(TELEMETRY)
    await answered(tel_b, [event], 1.0, "before", accepted([event]))  # made through A
    name = f"webmacs-bus {proc_b.proc.pid}"
    killed = cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = :n AND datname = current_database()", n=name)
    assert killed == [(True,)], killed
    # a change while B may not be listening: B must see it once it is back
    resp = await a.request("PUT", f"/api/v1/plugins/{instance}", {"enabled": False})
    assert resp.code == 200, resp
    await wait_for(lambda: "cluster bus reconnected" in proc_b.log_path.read_text(), timeout=10,
                   message="B's bus reconnected")
    assert "reloading 3 caches after a cluster bus loss" in proc_b.log_path.read_text()

    async def dropped_on_b():
        return dropped(await send(tel_b, [event], 2.0, f"after-{time.monotonic()}"))

    await wait_for(dropped_on_b, timeout=3, interval=0.1, message="B's linkage fresh after the reconnect")
    # and live points flow into B again
    resp = await a.request("PUT", f"/api/v1/plugins/{instance}", {"enabled": True})
    assert resp.code == 200, resp
    on_b = await b.ws(STREAM)
    tel_a = await a.ws(TELEMETRY)
    assert (await send(tel_a, [event], 7.0, "after-a"))["accepted"] == 1
    await frame_with(on_b, event, 7.0)
    assert (await b.request("GET", "/health")).code == 200 and proc_b.proc.returncode is None


async def test_two_workers_on_one_port(cluster, tmp_path):
    proc = ServeProcess(cluster.url, tmp_path / "workers.log", args=("--workers", "2"))
    srv = None
    try:
        await proc.start()
        srv = await client_for(proc.port)
        _, [event] = await linked(srv, 1, "Workers")
        streams = [await srv.ws(STREAM) for _ in range(8)]
        tels = [await srv.ws(TELEMETRY) for _ in range(8)]
        parent = psutil.Process(proc.proc.pid)
        workers = parent.children()
        assert len(workers) == 2

        def established(p: psutil.Process) -> int:
            return sum(1 for c in p.net_connections("tcp")
                       if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == proc.port)

        counts = [established(w) for w in workers]
        assert all(n > 0 for n in counts) and sum(counts) >= 16, counts  # the kernel spread them
        for k, tel in enumerate(tels):  # made through one worker, sent to both
            await answered(tel, [event], float(k), f"w-{k}", accepted([event]))
        for stream in streams:  # whichever worker took the telemetry, every dashboard sees it
            await frame_with(stream, event, float(len(tels) - 1))
        await stop_gracefully(proc)
        assert proc.proc.returncode == 0, proc.log()
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if srv is not None:
            await close_client(srv)
        await proc.kill()


async def test_bus_carries_a_message_longer_than_notify_allows(cluster):
    """Two real PgBus instances on the database: a 60 kB message goes out in parts, each
    under NOTIFY's payload limit, and arrives whole and once; the sender ignores its own."""
    from concurrent.futures import ThreadPoolExecutor

    from webmacs.bus import PAYLOAD_LIMIT, encode_parts, make_bus

    pool = ThreadPoolExecutor(2)

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    sender, listener = make_bus(cluster.url, True, run), make_bus(cluster.url, True, run)
    got_there, got_back = [], []
    listener.subscribe("test", got_there.append)
    sender.subscribe("test", got_back.append)
    payload = {"points": [{"event_public_id": f"e-{i}", "value": i / 7, "text": "é" * 20} for i in range(600)]}
    parts = encode_parts(sender.process_id, 0, "test", payload)
    assert len(parts) > 1 and all(len(p.encode()) <= PAYLOAD_LIMIT for p in parts)
    await sender.start()
    await listener.start()
    try:
        await asyncio.wait_for(sender.publish("test", payload), 5)
        await wait_for(lambda: got_there, timeout=5, message="the long message")
        assert got_there == [payload] and got_back == []
    finally:
        await sender.stop()
        await listener.stop()
        pool.shutdown()



async def test_workers_refused_on_sqlite(tmp_path):
    """No cluster needed: more than one process on SQLite is one clear line, exit 2."""
    import sys

    from tests.procs import clean_env, free_port

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webmacs", "serve", "--workers", "2", "--port", str(free_port()),
        env=clean_env(WEBMACS_DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err
    assert err.decode().strip().splitlines() == [
        "webmacs: error: --workers 2: more than one server process needs PostgreSQL/TimescaleDB "
        "(WEBMACS_DATABASE_URL is SQLite, which one process owns); use --workers 1"], err
    assert not (tmp_path / "w.db").exists()  # refused before touching anything
