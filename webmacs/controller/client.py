"""``TelemetryClient``: store-and-forward telemetry to a WebMACS server.

Every reading goes into the local :class:`~webmacs.controller.spool.Spool` first
(one committed SQLite transaction per :meth:`TelemetryClient.submit_many`). A
background task cuts the spool into batches of at most ``max_batch_size``
readings, each with a ``batch_id`` stored beside it, sends them over
``/ws/controller/telemetry`` (or ``POST /api/v1/datapoints/batch`` in ``http``
mode) keeping up to ``window`` batches unacknowledged in flight, and deletes a
batch from the spool only when the server acknowledges it (``{"type": "ack"}``,
sent after the commit) or refuses it for good (``retry: false``, logged at ERROR
and counted in ``stats.failed``).

On a disconnect the client reconnects with exponential backoff and jitter
(0.5 s doubling up to 10 s), resends the unacknowledged batches oldest first, with
the same batch ids (the server answers ``duplicate: true`` for those it had already
committed), then continues with new readings. See ``docs/telemetry-acks.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import sqlite3
import time
import urllib.parse
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from webmacs.controller.spool import Batch, Spool, SpoolError
from webmacs.ingest import MAX_BATCH  # the server's limit per batch

log = logging.getLogger("webmacs.controller")

MODES = ("websocket", "http")
MAX_DOWNLOAD = 100 * 1024 ** 3  # largest streamed download (OTA firmware), bytes


class Backoff:
    """Exponential backoff with jitter: attempt n waits a random time in
    ``[d/2, d]`` where ``d = min(cap, base * factor**n)``; never more than ``cap``."""

    def __init__(self, base: float = 0.5, cap: float = 10.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("need 0 < base <= cap and factor >= 1")
        self.base, self.cap, self.factor = base, cap, factor
        self.rng = rng or random.Random()
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


def format_timestamp(ts: Any = None) -> str:
    """ISO 8601 in UTC with microseconds and offset, the form the spool stores and sends.

    Accepts ``None`` (now), an aware ``datetime`` (a naive one is taken as UTC, as the
    server does), epoch seconds, or an ISO 8601 string."""
    if ts is None:
        dt = datetime.now(timezone.utc)
    elif isinstance(ts, datetime):
        dt = ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
    elif isinstance(ts, bool):
        raise ValueError("timestamp must be a datetime, epoch seconds or an ISO 8601 string")
    elif isinstance(ts, (int, float)):
        if not math.isfinite(ts):
            raise ValueError("timestamp must be finite")
        dt = datetime.fromtimestamp(ts, timezone.utc)
    elif isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp is not ISO 8601: {ts!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
    else:
        raise ValueError("timestamp must be a datetime, epoch seconds or an ISO 8601 string")
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _reading(event_public_id: Any, value: Any, timestamp: Any) -> tuple[str, float, str]:
    if not isinstance(event_public_id, str) or not event_public_id:
        raise ValueError("event_public_id must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"value must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    return event_public_id, value, format_timestamp(timestamp)


@dataclass
class Stats:
    submitted: int = 0   # readings put into the spool by this process
    sent: int = 0        # readings sent (resends included)
    acked: int = 0       # readings of acknowledged batches (they left the spool)
    accepted: int = 0    # ... of which the server stored
    rejected: int = 0    # ... of which the server refused (invalid, unlinked event, future timestamp)
    duplicates: int = 0  # batches acknowledged as duplicates (committed before, not stored again)
    failed: int = 0      # readings of batches refused with retry: false (discarded)
    dropped: int = 0     # readings dropped because the spool was full
    pending: int = 0     # readings in the spool, not yet acknowledged
    inflight: int = 0    # batches sent and not yet answered
    retries: int = 0     # batches answered with retry: true
    reconnects: int = 0  # connections lost after being established
    connected: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


class AuthError(Exception):
    """The server refused our credentials (login or token)."""


class ApiRequestError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}: {detail}")
        self.code = code
        self.detail = detail


def _detail(body: bytes | None) -> str:
    try:
        return str(json.loads(body or b"{}").get("detail") or "")
    except (ValueError, AttributeError):
        return (body or b"")[:200].decode("utf-8", "replace")


class TelemetryClient:
    """Asyncio client; create it inside a running event loop (or before ``start()``).

    ::

        client = TelemetryClient("http://lab-server:8000", token="wm_...", spool_path="spool.db")
        await client.start()
        client.submit(event_public_id, 23.5)          # spooled at once; sent in the background
        await client.flush(timeout=5)                 # True when everything is acknowledged
        await client.close()
    """

    def __init__(self, url: str, *, token: str | None = None, email: str | None = None,
                 password: str | None = None, spool_path: str = "./webmacs-spool.db",
                 spool_max_mb: float = 100, max_batch_size: int = 100, mode: str = "websocket",
                 window: int = 8, linger: float = 0.05, backoff_base: float = 0.5, backoff_cap: float = 10.0,
                 ack_timeout: float = 30.0, connect_timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server url must be http(s)://host[:port], got {url!r}")
        if not token and not (email and password):
            raise ValueError("give token=, or email= and password=")
        if not 1 <= max_batch_size <= MAX_BATCH:
            raise ValueError(f"max_batch_size must be between 1 and {MAX_BATCH}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if window < 1:
            raise ValueError("window must be >= 1")
        self.base_url = url.rstrip("/")
        self.ws_url = ("wss" if parsed.scheme == "https" else "ws") + self.base_url[len(parsed.scheme):]
        self.mode = mode
        self.spool_path = spool_path
        self.spool_max_bytes = int(spool_max_mb * 1024 * 1024)
        self.max_batch_size = max_batch_size
        self.window = window
        self.linger = linger
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self._static_token = token
        self._email, self._password = email, password
        self._token: str | None = token
        self._login_lock: asyncio.Lock | None = None
        self._ws_eof = False
        self._connect_backoff = Backoff(backoff_base, backoff_cap)
        self._retry_backoff = Backoff(backoff_base, backoff_cap)
        self._stats = Stats()
        self._spool: Spool | None = None
        self._http: AsyncHTTPClient | None = None
        self._task: asyncio.Task | None = None
        self._posts: set[asyncio.Task] = set()
        self._inflight: dict[str, tuple[float, Batch]] = {}
        self._pause_until = 0.0
        self._paused_logged = False
        self._probing = False
        self._flushing = 0
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None

    # --- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the spool (raises :class:`SpoolError`) and start sending in the background."""
        if self._task is not None:
            return
        self._spool = Spool(self.spool_path, self.spool_max_bytes)
        self._wake, self._drained = asyncio.Event(), asyncio.Event()
        self._http = AsyncHTTPClient(force_instance=True, max_body_size=MAX_DOWNLOAD)  # firmware streams to disk
        if self._spool.pending:
            log.info("spool %s holds %d unacknowledged readings from an earlier run; resending them",
                     self.spool_path, self._spool.pending)
        runner = self._run_websocket if self.mode == "websocket" else self._run_http
        self._task = asyncio.create_task(runner(), name="webmacs-telemetry")

    async def close(self) -> None:
        """Stop sending. Unacknowledged readings stay in the spool for the next start."""
        if self._closing:
            return
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        tasks = [t for t in [self._task, *self._posts] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self._http is not None:
            self._http.close()
        if self._spool is not None:
            self._stats.dropped = self._spool.dropped
            self._stats.pending = self._spool.pending
            self._spool.close()

    async def __aenter__(self) -> "TelemetryClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- submitting -------------------------------------------------------------------------
    def submit(self, event_public_id: str, value: float, timestamp: Any = None) -> None:
        """Spool one reading (committed when this returns). ``timestamp``: the reading
        time (aware datetime, epoch seconds or ISO 8601); default now."""
        self.submit_many([(event_public_id, value, timestamp)])

    def submit_many(self, readings: Iterable[tuple[str, float, Any]], checkpoint: str | None = None) -> int:
        """Spool ``(event_public_id, value, timestamp)`` readings in one transaction.

        ``checkpoint``: an opaque string stored in the same transaction, read back with
        :attr:`checkpoint` after a restart. A program that produces readings from a source
        with a position (a sequence number, a file offset) stores the position here, so a
        crash can neither lose nor repeat readings between the source and the spool."""
        spool = self._require_spool()
        rows = [_reading(*r) for r in readings]
        n = spool.add(rows, checkpoint)
        self._stats.submitted += n
        if n and self._wake is not None:
            self._wake.set()
        return n

    @property
    def spool(self) -> Spool:
        """The open spool (advanced use: ``get_meta``/``set_meta`` for small state of your own)."""
        return self._require_spool()

    @property
    def checkpoint(self) -> str | None:
        return self._require_spool().get_meta("checkpoint")

    def _require_spool(self) -> Spool:
        if self._spool is None or self._spool.closed:
            raise SpoolError("TelemetryClient is not started (call `await client.start()` first)")
        return self._spool

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything now (no lingering) and wait until the spool is empty.
        Returns False if readings are still unacknowledged after ``timeout`` seconds."""
        spool = self._require_spool()
        if spool.pending == 0:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flushing += 1
        self._wake.set()
        try:
            while spool.pending > 0:
                self._drained.clear()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._drained.wait(), remaining)
                except asyncio.TimeoutError:
                    return spool.pending == 0
            return True
        finally:
            self._flushing -= 1

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        s = Stats(**asdict(self._stats))
        if self._spool is not None and not self._spool.closed:
            s.pending = self._spool.pending
            s.dropped = self._spool.dropped
        s.inflight = len(self._inflight)
        return s

    # --- REST helper ------------------------------------------------------------------------
    async def api(self, method: str, path: str, body: Any = None, timeout: float = 15.0) -> Any:
        """A JSON request to the server's REST API with this client's credentials
        (logs in again once on 401 when email/password were given)."""
        for attempt in (1, 2):
            token = await self._get_token()
            resp = await self._fetch(method, path, body, token, timeout)
            if resp.code == 401 and self._static_token is None and attempt == 1:
                self._token = None
                continue
            if 200 <= resp.code < 300:
                return json.loads(resp.body) if resp.body else None
            raise ApiRequestError(resp.code, _detail(resp.body) or str(resp.error or ""))
        raise AssertionError("unreachable")

    async def download(self, path: str, dest: str, timeout: float = 3600.0) -> int:
        """GET ``path`` into the file ``dest``, streamed chunk by chunk; returns its size.
        Raises :class:`ApiRequestError` on a non-2xx answer (the partial file is removed)."""
        for attempt in (1, 2):
            token = await self._get_token()
            size = 0
            with open(dest, "wb") as fh:
                def write(chunk: bytes) -> None:
                    nonlocal size
                    size += len(chunk)
                    fh.write(chunk)

                req = HTTPRequest(self.base_url + path, headers={"Authorization": f"Bearer {token}"},
                                  connect_timeout=self.connect_timeout, request_timeout=timeout,
                                  streaming_callback=write)
                resp = await self._http.fetch(req, raise_error=False)
            if 200 <= resp.code < 300:
                return size
            with open(dest, "rb") as fh:
                detail = _detail(fh.read(4096))
            os.unlink(dest)
            if resp.code == 401 and self._static_token is None and attempt == 1:
                self._token = None
                continue
            raise ApiRequestError(resp.code, detail or str(resp.error or ""))
        raise AssertionError("unreachable")

    async def _fetch(self, method: str, path: str, body: Any, token: str | None, timeout: float):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        if data is None and method in ("POST", "PUT"):
            data = b""
        req = HTTPRequest(self.base_url + path, method=method, body=data, headers=headers,
                          connect_timeout=self.connect_timeout, request_timeout=timeout)
        return await self._http.fetch(req, raise_error=False)

    async def _get_token(self) -> str:
        if self._token:
            return self._token
        if self._login_lock is None:
            self._login_lock = asyncio.Lock()
        async with self._login_lock:  # concurrent requests share one login
            if self._token:
                return self._token
            return await self._login()

    async def _login(self) -> str:
        resp = await self._fetch("POST", "/api/v1/auth/login", {"email": self._email, "password": self._password},
                                 None, self.connect_timeout)
        if resp.code == 200:
            self._token = json.loads(resp.body)["access_token"]
            return self._token
        if resp.code in (400, 401, 403, 422):
            raise AuthError(f"login as {self._email} refused: {_detail(resp.body) or resp.code}")
        raise ConnectionError(f"login failed: {resp.error or resp.code}")

    # --- sending: shared by both modes ------------------------------------------------------
    def _fill(self, send: Callable[[Batch, str], None]) -> None:
        """Send batches, oldest first, until ``window`` are in flight."""
        spool = self._spool
        now = time.monotonic()
        if now < self._pause_until:
            return
        # after a retry: true answer, one batch probes the server until an ack reopens the window
        window = 1 if self._probing else self.window
        while len(self._inflight) < window and not self._closing:
            batch = spool.next_batch(self._inflight)
            if batch is None:
                if not self._should_cut(now):
                    return
                batch = spool.cut(self.max_batch_size)
                if batch is None:
                    return
            points = spool.load(batch)
            if not points:  # cannot happen (batches are dropped whole); never send an empty one
                spool.remove(batch.batch_id)
                continue
            payload = json.dumps({"batch_id": batch.batch_id, "datapoints": points}, separators=(",", ":"))
            self._inflight[batch.batch_id] = (now, batch)
            self._stats.sent += batch.n
            send(batch, payload)

    def _should_cut(self, now: float) -> bool:
        spool = self._spool
        if spool.unassigned <= 0:
            return False
        return (spool.unassigned >= self.max_batch_size or self._flushing > 0
                or now - spool.unassigned_since >= self.linger)

    def _wait_time(self) -> float:
        now = time.monotonic()
        wait = 1.0
        if now < self._pause_until:
            return max(0.001, min(wait, self._pause_until - now))
        if self._spool.unassigned > 0 and len(self._inflight) < self.window:
            wait = min(wait, max(0.001, self._spool.unassigned_since + self.linger - now))
        if self._inflight:
            oldest = min(sent for sent, _b in self._inflight.values())
            wait = min(wait, max(0.001, oldest + self.ack_timeout - now))
        return wait

    def _ack_overdue(self) -> bool:
        now = time.monotonic()
        return any(now - sent > self.ack_timeout for sent, _b in self._inflight.values())

    def _changed(self) -> None:
        if self._spool.pending <= 0:
            self._drained.set()
        self._wake.set()

    def _on_ack(self, batch_id: str, data: dict) -> None:
        self._inflight.pop(batch_id, None)
        n = self._spool.remove(batch_id)
        accepted, rejected = int(data.get("accepted") or 0), int(data.get("rejected") or 0)
        st = self._stats
        st.acked += n
        st.accepted += accepted
        st.rejected += rejected
        if data.get("duplicate"):
            st.duplicates += 1
            log.info("batch %s was already stored (duplicate ack): not stored twice", batch_id)
        if rejected:
            log.warning("batch %s: the server refused %d of %d readings: %s", batch_id, rejected,
                        accepted + rejected, "; ".join(data.get("errors") or []) or "no details")
        self._retry_backoff.reset()
        self._connect_backoff.reset()
        self._pause_until = 0.0
        self._paused_logged = False
        self._probing = False
        self._changed()

    def _on_error(self, batch_id: str, message: str, retry: bool, errors: list | None = None) -> None:
        entry = self._inflight.pop(batch_id, None)
        if retry:
            self._stats.retries += 1
            now = time.monotonic()
            if now < self._pause_until:
                # sent before the pause began: the same outage, not a reason to back off further
                log.debug("batch %s not stored (%s); already pausing", batch_id, message)
            else:
                delay = self._retry_backoff.next()
                self._pause_until = now + delay
                self._probing = True
                level = logging.DEBUG if self._paused_logged else logging.WARNING
                self._paused_logged = True
                log.log(level, "batch %s not stored (%s); resending in %.1fs", batch_id, message, delay)
        else:
            n = self._spool.remove(batch_id)
            self._stats.failed += n
            log.error("BATCH REFUSED by the server (retry: false): %d readings of batch %s DISCARDED: %s%s",
                      n or (entry[1].n if entry else 0), batch_id, message,
                      (" (" + "; ".join(errors) + ")") if errors else "")
        self._changed()

    def _on_message(self, raw: str | bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("server sent a non-JSON message: %.200r", raw)
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        batch_id = data.get("batch_id")
        if kind == "ack" and isinstance(batch_id, str):
            self._on_ack(batch_id, data)
        elif kind == "error" and isinstance(batch_id, str):
            self._on_error(batch_id, str(data.get("message")), bool(data.get("retry")), data.get("errors"))
        elif kind == "error":
            log.warning("server error: %s", data.get("message"))

    # --- websocket mode ---------------------------------------------------------------------
    async def _run_websocket(self) -> None:
        while not self._closing:
            started = time.monotonic()
            try:
                await self._ws_session()
            except asyncio.CancelledError:
                raise
            except AuthError as exc:
                log.error("%s", exc)
            except sqlite3.Error as exc:
                log.error("spool %s: %s", self.spool_path, exc)
            except Exception as exc:  # noqa: BLE001 - any failure: back off and reconnect
                log.warning("cannot reach %s: %s", self.base_url, _describe(exc))
            finally:
                self._inflight.clear()  # unacknowledged batches are resent, oldest first
                self._stats.connected = False
            if self._closing:
                return
            if time.monotonic() - started > 30:
                self._connect_backoff.reset()
            delay = self._connect_backoff.next()
            pending = self._spool.pending
            log.info("reconnecting in %.1fs (%d readings waiting in the spool)", delay, pending)
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less when closing (new readings do not shorten a backoff)."""
        deadline = time.monotonic() + delay
        while not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _ws_session(self) -> None:
        token = await self._get_token()
        url = f"{self.ws_url}/ws/controller/telemetry?token={urllib.parse.quote(token, safe='')}"
        req = HTTPRequest(url, connect_timeout=self.connect_timeout, request_timeout=self.connect_timeout)
        fut = websocket_connect(req, ping_interval=15, ping_timeout=10, max_message_size=1024 * 1024)
        try:
            conn = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_close_if_connected)
            raise
        self._ws_eof = False
        try:
            # The spec's telemetry endpoint sends no greeting: a ping answered by a pong
            # proves the token was accepted (a refused one is closed with 1008 instead).
            await conn.write_message('{"type":"ping"}')
            first = await asyncio.wait_for(conn.read_message(), self.connect_timeout)
            if first is None:
                self._ws_eof = True
                self._closed_by_server(conn, connected=False)
                return
            try:
                hello = json.loads(first)
            except ValueError:
                hello = {}
            if not isinstance(hello, dict) or hello.get("type") not in ("pong", "connected"):
                log.warning("unexpected first message from server: %.200r", first)
                return
            self._stats.connected = True
            log.info("connected to %s (%d readings waiting in the spool)", self.base_url, self._spool.pending)
            await self._ws_pump(conn)
        finally:
            await _close_ws(conn, wait=not self._ws_eof)

    async def _ws_pump(self, conn: WebSocketClientConnection) -> None:
        reader = asyncio.create_task(self._ws_reader(conn))

        def send(batch: Batch, payload: str) -> None:
            try:
                fut = conn.write_message(payload)
            except WebSocketClosedError:
                return  # the reader sees the close
            fut.add_done_callback(_consume)

        try:
            while not self._closing:
                self._wake.clear()
                if reader.done():
                    break
                self._fill(send)
                if self._ack_overdue():
                    log.warning("no answer to a batch for %.0fs: reconnecting", self.ack_timeout)
                    return
                waiter = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait({waiter, reader}, timeout=self._wait_time(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    await asyncio.gather(waiter, return_exceptions=True)
            if reader.done() and not self._closing:
                self._stats.reconnects += 1
                self._closed_by_server(conn, connected=True)
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _ws_reader(self, conn: WebSocketClientConnection) -> None:
        while True:
            msg = await conn.read_message()
            if msg is None:
                self._ws_eof = True
                return
            self._on_message(msg)

    def _closed_by_server(self, conn: WebSocketClientConnection, connected: bool) -> None:
        code, reason = conn.close_code, conn.close_reason
        what = "connection lost" if connected else "connection refused"
        n = len(self._inflight)
        if code == 1008:
            if self._static_token is None:
                self._token = None  # expired or revoked login: log in again
                log.warning("%s: %s (code 1008); logging in again", what, reason)
            else:
                log.error("%s: the server refused the API token: %s (code 1008)", what, reason)
        else:
            log.warning("%s (code %s%s)%s", what, code, f" {reason}" if reason else "",
                        f"; {n} unacknowledged batches will be resent" if n else "")

    # --- http mode --------------------------------------------------------------------------
    async def _run_http(self) -> None:
        def send(batch: Batch, payload: str) -> None:
            task = asyncio.create_task(self._post(batch, payload))
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)

        while not self._closing:
            self._wake.clear()
            self._fill(send)
            try:
                await asyncio.wait_for(self._wake.wait(), self._wait_time())
            except asyncio.TimeoutError:
                pass

    async def _post(self, batch: Batch, payload: str) -> None:
        try:
            token = await self._get_token()
            resp = await self._fetch("POST", "/api/v1/datapoints/batch", payload, token, self.ack_timeout)
        except asyncio.CancelledError:
            raise
        except AuthError as exc:
            log.error("%s", exc)
            self._on_error(batch.batch_id, str(exc), True)
            return
        except Exception as exc:  # noqa: BLE001 - unreachable server: retry later
            self._on_error(batch.batch_id, _describe(exc), True)
            return
        self._stats.connected = resp.code != 599
        if resp.code in (200, 201):
            self._on_ack(batch.batch_id, json.loads(resp.body))
        elif resp.code == 401:
            if self._static_token is None:
                self._token = None
            else:
                log.error("the server refused the API token: %s", _detail(resp.body))
            self._on_error(batch.batch_id, "unauthorized", True)
        elif resp.code >= 500 or resp.code in (408, 429):
            self._on_error(batch.batch_id, _detail(resp.body) or str(resp.error or resp.code), True)
        else:
            self._on_error(batch.batch_id, f"HTTP {resp.code}: {_detail(resp.body)}", False)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _close_if_connected(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


async def _close_ws(conn: WebSocketClientConnection, wait: bool) -> None:
    """Close and, unless the server already closed it, wait (briefly) for the closing handshake."""
    conn.close(1000)
    if not wait:
        return
    try:
        while await asyncio.wait_for(conn.read_message(), 1.0) is not None:
            pass
    except Exception:  # noqa: BLE001 - timeout or a dead stream: nothing more to wait for
        pass
