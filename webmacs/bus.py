"""The cluster bus: what one server process tells the others sharing its database.

One small interface, :class:`Bus`, so another engine (Redis, NATS) could take the
place of PostgreSQL later without touching its users:

- ``publish(channel, payload)``: send a JSON-able dict to every *other* process;
  returns at once (a future that resolves when it has been handed to the engine).
- ``subscribe(channel, callback)``: ``callback(payload)`` runs on the IOLoop for each
  message another process published (never for this process's own messages).
- ``on_resync(callback)``: runs after the bus was lost and is back: messages may have
  been missed meanwhile, so everything derived from them must be reloaded.
- ``start()`` / ``stop()``.

Implementations:

- :class:`LocalBus`: SQLite, where one process is all there is. Publishing does
  nothing: every caller has already acted locally. (On PostgreSQL another process
  may share the database at any time, so it always uses :class:`PgBus`.)
- :class:`PgBus`: PostgreSQL ``LISTEN``/``NOTIFY`` through psycopg2. A dedicated
  autocommit connection LISTENs; the IOLoop watches its socket
  (``IOLoop.add_handler(conn.fileno())``), and on readable calls ``conn.poll()``
  and drains ``conn.notifies``, which never blocks. Messages are sent on a second
  connection from a one-thread executor of its own (so they stay in order and never
  take a database pool slot) with ``SELECT pg_notify(%s, %s)``, parameters bound by
  psycopg2. A message longer than NOTIFY's payload limit (8,000 bytes by default) is
  cut into numbered parts and put together again by the receivers. Every message
  carries the sending process's id, so a process ignores its own.

  When the LISTEN connection drops (database restart, ``pg_terminate_backend``,
  network), it is reopened with backoff (0.5 s doubling to 30 s), then every
  ``on_resync`` callback runs (a full reload of every cache), all logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import socket
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

log = logging.getLogger("webmacs.bus")

# Channels (PostgreSQL identifiers once prefixed).
CHANGES = "changes"  # {"topics": [...]}: reload the views of these cache topics
REVOKE = "revoke"  # {"kind": ..., "id": ..., "reason": ...}: close matching sockets
POINTS = "points"  # {"points": [broadcast points]}: merge into the dashboard buffer

PREFIX = "webmacs_"
# NOTIFY refuses payloads of 8,000 bytes or more (default build); keep room for the envelope.
PAYLOAD_LIMIT = 7800
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0
OUTBOX_MAX = 10_000  # messages waiting to be sent; beyond it the oldest points go first
PARTS_TTL = 10.0  # seconds an incomplete multi-part message is kept
# Live points are gathered and published this often (a few messages per second).
POINTS_INTERVAL_MS = 50
POINTS_PER_MESSAGE = 60  # about 6 kB of points: one NOTIFY, no reassembly needed

Callback = Callable[[dict], None]


def new_process_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


class Bus:
    """The interface (and what both implementations share)."""

    shared = False  # True: other processes may be listening (worth publishing to)

    def __init__(self) -> None:
        self.process_id = new_process_id()
        self._subscribers: dict[str, list[Callback]] = defaultdict(list)
        self._resync: list[Callable[[], None]] = []

    def subscribe(self, channel: str, callback: Callback) -> None:
        """Before :meth:`start`."""
        self._subscribers[channel].append(callback)

    def on_resync(self, callback: Callable[[], None]) -> None:
        self._resync.append(callback)

    def publish(self, channel: str, payload: dict) -> asyncio.Future:
        raise NotImplementedError

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def _deliver(self, channel: str, payload: dict) -> None:
        for callback in self._subscribers.get(channel, ()):
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - one bad subscriber must not stop the others
                log.exception("bus subscriber of %s failed", channel)

    def _resynced(self) -> None:
        for callback in self._resync:
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("bus resync callback failed")


def _done() -> asyncio.Future:
    future = asyncio.get_event_loop().create_future()
    future.set_result(None)
    return future


class LocalBus(Bus):
    """One process: there is nobody to tell."""

    def publish(self, channel: str, payload: dict) -> asyncio.Future:
        return _done()


def encode_parts(process_id: str, serial: int, channel: str, payload: dict, limit: int = PAYLOAD_LIMIT) -> list[str]:
    """The NOTIFY payload(s) of one message: ``{"p": process, "d": payload}``, or when
    that is too long, ``{"p", "m": serial, "i": index, "n": count, "c": text part}``.
    ASCII-only JSON, so characters are bytes."""
    whole = json.dumps({"p": process_id, "d": payload}, separators=(",", ":"))
    if len(whole) <= limit:
        return [whole]
    text = json.dumps(payload, separators=(",", ":"))
    # the part envelope is ~100 bytes, and escaping may double a part's characters
    size = (limit - 120) // 2
    parts = [text[i:i + size] for i in range(0, len(text), size)]
    return [json.dumps({"p": process_id, "m": serial, "i": i, "n": len(parts), "c": part}, separators=(",", ":"))
            for i, part in enumerate(parts)]


class Reassembler:
    """Collects the parts of multi-part messages (per sender and serial)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], tuple[float, dict[int, str], int]] = {}

    def add(self, envelope: dict) -> dict | None:
        now = time.monotonic()
        for key in [k for k, (t, _, _) in self._parts.items() if now - t > PARTS_TTL]:
            del self._parts[key]
        key = (envelope["p"], int(envelope["m"]))
        started, parts, count = self._parts.get(key, (now, {}, int(envelope["n"])))
        parts[int(envelope["i"])] = envelope["c"]
        if len(parts) < count:
            self._parts[key] = (started, parts, count)
            return None
        self._parts.pop(key, None)
        return json.loads("".join(parts[i] for i in range(count)))


class PgBus(Bus):
    shared = True

    def __init__(self, dsn: str, run: Callable[..., Any]) -> None:
        """``dsn``: a libpq URL (``postgresql://...``); ``run(fn, *args)``: awaits a blocking
        call on the database executor (used to open the LISTEN connection)."""
        super().__init__()
        self.dsn = dsn
        self._run = run
        self._conn = None
        self._fd: int | None = None
        self._loop = None
        self._stopped = False
        self._reconnecting: asyncio.Task | None = None
        self._reassembler = Reassembler()
        self._serial = itertools.count()
        self._outbox: deque[tuple[str, str, asyncio.Future | None]] = deque()
        self._wake: asyncio.Event | None = None
        self._sender: asyncio.Task | None = None
        self._send_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webmacs-bus")
        self._send_conn = None
        self.connected = False
        self.reconnects = 0  # how often the LISTEN connection came back (tests, metrics)
        self.backend_pid: int | None = None  # of the LISTEN connection

    # --- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        from tornado.ioloop import IOLoop

        self._loop = IOLoop.current()
        self._wake = asyncio.Event()
        await self._connect()
        self._sender = asyncio.ensure_future(self._send_loop())

    async def stop(self) -> None:
        self._stopped = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._wake is not None:
            self._wake.set()
        if self._sender is not None:
            try:
                await asyncio.wait_for(self._sender, timeout=2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - unsent messages are lost: we stop
                self._sender.cancel()
        self._unwatch()
        self._close(self._conn)
        self._conn = None
        conn, self._send_conn = self._send_conn, None
        self._send_pool.submit(self._close, conn)
        self._send_pool.shutdown(wait=False)

    # --- listening --------------------------------------------------------------------------
    def _open_listener(self):
        import psycopg2

        # TCP keepalives: a peer gone without a word (network cut) is noticed within about a minute
        conn = psycopg2.connect(self.dsn, application_name=f"webmacs-bus {os.getpid()}", connect_timeout=10,
                                keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
        conn.autocommit = True
        with conn.cursor() as cur:
            for channel in self._subscribers:
                cur.execute(f'LISTEN "{PREFIX}{channel}"')
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        return conn, pid

    async def _connect(self) -> None:
        from tornado.ioloop import IOLoop

        conn, pid = await self._run(self._open_listener)
        if self._stopped:
            self._close(conn)
            return
        self._conn, self.backend_pid = conn, pid
        self._fd = conn.fileno()
        self._loop.add_handler(self._fd, self._readable, IOLoop.READ)
        self.connected = True
        self._readable(self._fd, 0)  # anything that arrived while LISTENing

    def _readable(self, fd: int, events: int) -> None:
        import psycopg2

        conn = self._conn
        if conn is None:
            return
        try:
            conn.poll()
        except (psycopg2.Error, OSError) as exc:
            self._lost(exc)
            return
        while conn.notifies:
            note = conn.notifies.pop(0)
            self._received(note.channel, note.payload)
        if conn.closed:
            self._lost(None)

    def _received(self, channel: str, text: str) -> None:
        if not channel.startswith(PREFIX):
            return
        try:
            envelope = json.loads(text)
            if envelope.get("p") == self.process_id:
                return
            payload = envelope["d"] if "d" in envelope else self._reassembler.add(envelope)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed bus message on %s", channel)
            return
        if isinstance(payload, dict):
            self._deliver(channel[len(PREFIX):], payload)

    def _unwatch(self) -> None:
        if self._fd is not None and self._loop is not None:
            try:
                self._loop.remove_handler(self._fd)
            except (KeyError, ValueError):
                pass
        self._fd = None

    def _lost(self, exc: BaseException | None) -> None:
        self._unwatch()
        conn, self._conn = self._conn, None
        self.connected = False
        self._close(conn)
        if self._stopped:
            return
        log.warning("cluster bus connection lost (%s); reconnecting", str(exc).strip().splitlines()[0]
                    if exc is not None and str(exc).strip() else "closed")
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        delay = RECONNECT_FIRST
        while not self._stopped:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except RuntimeError:  # executor shut down: stopping
                return
            except Exception as exc:  # noqa: BLE001 - retried with backoff
                log.warning("cluster bus reconnect failed (%s), next try in %.1fs",
                            type(exc).__name__, min(delay * 2, RECONNECT_MAX))
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            self.reconnects += 1
            log.warning("cluster bus reconnected; reloading every cache (changes may have been missed)")
            self._resynced()
            return

    @staticmethod
    def _close(conn) -> None:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    # --- sending ------------------------------------------------------------------------------
    def publish(self, channel: str, payload: dict) -> asyncio.Future:
        future = asyncio.get_event_loop().create_future()
        if self._stopped:
            future.set_result(None)
            return future
        parts = encode_parts(self.process_id, next(self._serial), channel, payload)
        for part in parts[:-1]:
            self._outbox.append((PREFIX + channel, part, None))
        self._outbox.append((PREFIX + channel, parts[-1], future))
        while len(self._outbox) > OUTBOX_MAX:
            _, _, dropped = self._outbox.popleft()
            if dropped is not None and not dropped.done():
                dropped.set_exception(OverflowError("bus outbox full"))
        if self._wake is not None:
            self._wake.set()
        return future

    def _send(self, messages: list[tuple[str, str]]) -> None:
        """On the bus thread: every message in one transaction (delivered in order at commit)."""
        import psycopg2

        if self._send_conn is None or self._send_conn.closed:
            self._send_conn = psycopg2.connect(self.dsn, application_name=f"webmacs-bus-send {os.getpid()}",
                                               connect_timeout=10)
        conn = self._send_conn
        try:
            with conn.cursor() as cur:
                for channel, text in messages:
                    cur.execute("SELECT pg_notify(%s, %s)", (channel, text))
            conn.commit()
        except BaseException:
            self._send_conn = None
            self._close(conn)
            raise

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RECONNECT_FIRST
        while True:
            if not self._outbox:
                if self._stopped:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 200))]
            try:
                await loop.run_in_executor(self._send_pool, self._send, [(c, t) for c, t, _ in batch])
                delay = RECONNECT_FIRST
            except RuntimeError:  # pool shut down
                return
            except Exception as exc:  # noqa: BLE001 - database trouble: keep them, retry
                self._outbox.extendleft(reversed(batch))
                if self._stopped:
                    return
                log.warning("cluster bus: could not send %d messages (%s), retrying in %.1fs",
                            len(batch), type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            for _, _, future in batch:
                if future is not None and not future.done():
                    future.set_result(None)


class PointRelay:
    """Gathers the newest accepted point per event (:meth:`add`, the broadcast points the
    hub was given) and publishes them every ``POINTS_INTERVAL_MS``; merges what other
    processes publish into ``hub``."""

    def __init__(self, bus: Bus, hub) -> None:
        self.bus = bus
        self.hub = hub
        self._pending: dict[str, dict] = {}

    def add(self, points: Iterable[dict]) -> None:
        for point in points:
            self._pending[point["event_public_id"]] = point

    def flush(self) -> None:
        if not self._pending:
            return
        points = list(self._pending.values())
        self._pending = {}
        for i in range(0, len(points), POINTS_PER_MESSAGE):
            self.bus.publish(POINTS, {"points": points[i:i + POINTS_PER_MESSAGE]})

    def received(self, payload: dict) -> None:
        points = payload.get("points")
        if isinstance(points, list):
            self.hub.merge_remote(points)


def make_bus(database_url: str, is_postgres: bool, run: Callable[..., Any]) -> Bus:
    if not is_postgres:
        return LocalBus()
    from sqlalchemy.engine import make_url

    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    return PgBus(dsn, run)
