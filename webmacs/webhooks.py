"""Outgoing webhooks: durable, bounded, and never in the way of ingest.

``emit(event_type, payload)`` and ``sensor_readings(last_values)`` run on the
IOLoop and only append to an in-memory *outbox*; everything else happens in the
background:

1. ``emit`` picks the enabled webhooks subscribed to the event type from an
   in-memory view (reloaded after any webhook change, before the API call that
   made it answers), so an event goes to the subscriptions of the moment it
   happened. The **writer** task drains the outbox and writes one
   ``webhook_deliveries`` row per webhook, all in one transaction on the
   database executor: status ``pending`` with the payload and
   ``next_attempt_at``. Only then is the first HTTP attempt made, so a delivery
   is never in flight without a row.
2. **Attempts** run on a bounded ``ThreadPoolExecutor`` (``webhook_workers``
   threads) through requests-futures: POST, 10 s timeout, redirects not followed,
   ``X-Webhook-Timestamp`` and, with a secret, ``X-Webhook-Signature`` (hex
   HMAC-SHA256 over ``f"{timestamp}.".encode() + body``). 2xx is delivered;
   anything else is retried after ``webhook_retry_base`` s, then 2x that; after
   the 3rd failure the row is ``dead_letter`` and an error log entry is written.
   Each attempt's outcome is queued for the writer, which batches the updates.
3. **Bounded**: at most ``webhook_queue`` deliveries are held in memory (waiting
   for a worker, in flight, or waiting for a retry). A delivery that does not
   fit is written as ``failed`` with ``last_error = "dropped: dispatcher
   overloaded"`` instead of being queued without limit.
4. **Durable**: ``start()`` resumes every ``pending`` row from the database (in
   chunks of ``webhook_queue``), at its ``next_attempt_at``. ``stop()`` stops
   taking work, cancels timers and shuts the pool down without waiting for hung
   requests; their rows stay ``pending`` and are resumed by the next start.
   The webhook view (a :class:`webmacs.cache.CachedView`, topic ``webhooks``) is
   refreshed in the background when it is old at an emit, so another process's
   changes are seen too.
   Delivery is therefore *at least once*: receivers can de-duplicate on the
   ``X-Webhook-Delivery`` header (the delivery's public id).
5. **Several processes, one database**: a pending row is *claimed* by the process
   that attempts it (``claimed_by``, ``claimed_until``: a lease of ``CLAIM_LEASE`` s it
   renews every ``CLAIM_RENEW`` s). New rows are written claimed by their writer;
   resumption claims unclaimed or expired rows with ``FOR UPDATE SKIP LOCKED``, so
   of several processes exactly one takes each row; ``stop()`` releases its claims,
   and every ``CLAIM_RENEW`` s each process also takes over rows whose claim expired
   (a process that died). ``sensor.reading`` is throttled per event across every
   process: besides the in-memory check, a process sends one only if it can move
   ``sensor_reading_throttle.sent_at`` forward by the throttle (one atomic
   ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``, database clock).

Statuses: ``pending`` (not final: waiting for its first attempt or a retry;
``attempts``/``last_error`` show earlier failures), ``delivered``,
``dead_letter`` (3 failed attempts) and ``failed`` (never attempted: dropped on
overload, or its webhook was disabled before it could be sent).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable
from urllib.parse import urlsplit

import requests
from requests_futures.sessions import FuturesSession
from sqlalchemy import bindparam, insert, or_, select, text, update

from webmacs import __version__, metrics, timefmt
from webmacs.cache import CachedView
from webmacs.config import Settings
from webmacs.db import Database
from webmacs.models import WEBHOOK_EVENT_TYPES, LogEntry, Webhook, WebhookDelivery, new_public_id, utcnow

log = logging.getLogger("webmacs.webhooks")

MAX_ATTEMPTS = 3
TIMEOUT = 10.0  # seconds, connect and read
ERROR_MAX = 500  # characters of last_error (and of a response body ever kept)
DROPPED = "dropped: dispatcher overloaded"
DISABLED = "cancelled: webhook disabled"
FLUSH_MAX_EVENTS = 200  # events fanned out per writer transaction
DEVICE = socket.gethostname()
# A delivery row's new status -> its webmacs_webhook_deliveries outcome ("pending" again: a retry).
_OUTCOME = {"pending": "retried"}

_T = WebhookDelivery.__table__
# A process's claim on the pending deliveries it attempts: renewed every CLAIM_RENEW
# seconds; a claim not renewed for CLAIM_LEASE seconds (its process died) is taken over.
CLAIM_LEASE = 60.0
CLAIM_RENEW = 15.0

_UPDATE = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        last_error=bindparam("b_last_error"),
        response_code=bindparam("b_response_code"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        delivered_on=bindparam("b_delivered_on"),
    )
)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Webhook-Signature`` value: hex HMAC-SHA256 over ``b"<timestamp>." + body``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return timefmt.webhook(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def encode_payload(event_type: str, data: dict, when: datetime | None = None) -> bytes:
    body = {"type": event_type, "time": timefmt.webhook(when or utcnow()), "device": DEVICE}
    body.update(data)
    return json.dumps(body, default=_json_default, separators=(",", ":")).encode()


def _host(url: str) -> str:
    """Scheme, host and port only: webhook URLs often carry a token in their path."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"


@dataclass(frozen=True)
class _Hook:
    id: int
    url: str
    secret: str | None
    events: frozenset


@dataclass(eq=False)
class _Delivery:
    id: int
    public_id: str
    webhook_id: int
    url: str
    secret: str | None
    event_type: str
    body: bytes
    attempts: int = 0
    timer: Any = field(default=None, repr=False)


def _read_excerpt(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Response hook, on the worker thread: keep at most ERROR_MAX bytes of an error
    body, read nothing of a success, and release the connection."""
    resp.excerpt = b""
    try:
        if not 200 <= resp.status_code < 300:
            resp.excerpt = resp.raw.read(ERROR_MAX, decode_content=True) or b""
    except Exception:  # noqa: BLE001 - the status code is what matters
        pass
    finally:
        resp.close()


def _load_hooks(session) -> dict[int, _Hook]:
    rows = session.execute(select(Webhook.id, Webhook.url, Webhook.secret, Webhook.events)
                           .where(Webhook.enabled.is_(True))).all()
    hooks = {}
    for r in rows:
        try:
            events = frozenset(json.loads(r.events or "[]"))
        except ValueError:
            events = frozenset()
        hooks[r.id] = _Hook(r.id, r.url, r.secret or None, events)
    return hooks


class WebhookDispatcher:
    def __init__(self, db: Database, config: Settings, owner: str | None = None) -> None:
        """``owner``: this process's id in delivery claims (webmacs.bus process id)."""
        self.db = db
        self.config = config
        self.owner = owner or new_public_id()
        self._maintainer: asyncio.Task | None = None
        self._state = "new"  # new -> running -> stopped
        self.view: CachedView[dict[int, _Hook]] = CachedView("webhooks", db.session, _load_hooks,
                                                              on_load=self._installed)
        self._subscribed: frozenset = frozenset()
        # (event type, body, webhook ids chosen at emit; None: choose when written)
        self._outbox: deque[tuple[str, bytes, tuple[int, ...] | None]] = deque()
        self._updates: list[dict] = []
        self._logs: list[str] = []
        self._active: dict[int, _Delivery] = {}
        self._unflushed: set[int] = set()  # finished deliveries whose final row update is not written yet
        self._tasks: set[asyncio.Task] = set()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._resumer: asyncio.Task | None = None
        self._backlog = False  # more pending rows in the database than fit in memory
        self._resumed_at = 0.0
        self._last_reading: dict[int, float] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._http: FuturesSession | None = None
        self.dropped_events = 0  # events lost because the outbox itself was full (database stuck)
        self.dropped_deliveries = 0  # deliveries recorded as failed because the queue was full
        self._overload_logged_at = float("-inf")

    # --- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        workers = self.config.webhook_workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webmacs-webhook")
        self._http = FuturesSession(executor=self._pool, adapter_kwargs={
            "pool_connections": workers, "pool_maxsize": workers})
        self._http.headers["User-Agent"] = f"webmacs/{__version__}"
        self._wake = asyncio.Event()
        await self.view.current()
        self._state = "running"
        await self._resume()
        self._writer = asyncio.ensure_future(self._write_loop())
        self._maintainer = asyncio.ensure_future(self._maintain_claims())
        if self._outbox:
            self._wake.set()

    async def stop(self) -> None:
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        for d in self._active.values():
            if d.timer is not None:
                d.timer.cancel()
                d.timer = None
        for task in list(self._tasks):
            task.cancel()
        self.view.close()
        if self._resumer is not None:
            self._resumer.cancel()
        if self._maintainer is not None:
            self._maintainer.cancel()
        # Hung requests keep their worker thread until their timeout; nobody waits for them.
        self._pool.shutdown(wait=False, cancel_futures=True)
        requests.Session.close(self._http)  # idle connections; in-flight ones close on return
        # Write what is already known (new events as pending rows, finished attempts).
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - database gone: rows stay as they were
            log.warning("webhook writer did not finish in time; %d events not stored", len(self._outbox))
            self._writer.cancel()
        else:  # another process (or our next start) takes over what is left pending
            try:
                await asyncio.wait_for(self.db.session(_release_claims, self.owner), timeout=2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the claims expire by themselves
                log.warning("webhook delivery claims not released; they expire in %.0f s", CLAIM_LEASE)
        self._active.clear()

    # --- the webhook view ------------------------------------------------------------------
    def _installed(self, hooks: dict[int, _Hook]) -> None:
        self._subscribed = frozenset().union(*(h.events for h in hooks.values()))

    # --- producers (IOLoop, synchronous, cheap) ---------------------------------------------
    def emit(self, event_type: str, payload: dict, when: datetime | None = None) -> None:
        """Queue ``event_type`` for every enabled webhook subscribed to it; returns at once."""
        if event_type not in WEBHOOK_EVENT_TYPES:
            log.error("emit: unknown webhook event type %r", event_type)
            return
        if self._state == "stopped":
            return
        self.view.maybe_refresh()
        hooks = self.view.value
        targets = None  # view reloading: choose the webhooks when the rows are written
        if hooks is not None:
            targets = tuple(h.id for h in hooks.values() if event_type in h.events)
            if not targets:
                return
        if len(self._outbox) >= self.config.webhook_queue:
            self.dropped_events += 1
            if self.dropped_events in (1, 10) or self.dropped_events % 1000 == 0:
                log.error("webhook outbox full (database not keeping up): %d events dropped", self.dropped_events)
            return
        try:
            body = encode_payload(event_type, payload, when)
        except (TypeError, ValueError):
            log.exception("emit: payload of %s is not JSON", event_type)
            return
        self._outbox.append((event_type, body, targets))
        if self._wake is not None:
            self._wake.set()

    def sensor_readings(self, last_values: Iterable) -> None:
        """``sensor.reading`` for the batch's last value per event, at most once per event
        every ``sensor_reading_throttle`` seconds."""
        if self._state == "stopped":
            return
        self.view.maybe_refresh()
        if self.view.loaded and "sensor.reading" not in self._subscribed:
            return
        throttle = self.config.sensor_reading_throttle
        now = time.monotonic()
        last = self._last_reading
        due = []
        for lv in last_values:
            previous = last.get(lv.event.id)
            if previous is not None and now - previous < throttle:
                continue
            last[lv.event.id] = now
            due.append(lv)
        if not due:
            return
        if not self.db.is_postgres:  # one process: the in-memory throttle is the whole story
            self._emit_readings(due)
            return
        task = asyncio.ensure_future(self._claim_readings(due, throttle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim_readings(self, due: list, throttle: float) -> None:
        """The cluster-wide half of the throttle: only the events this process may send now."""
        try:
            won = await self.db.session(_claim_throttle, [lv.event.id for lv in due], throttle)
        except RuntimeError:  # executor shut down: stopping
            return
        except Exception:  # noqa: BLE001 - database trouble: this reading is skipped, the next one tries
            log.warning("sensor.reading throttle not checked (database error)", exc_info=True)
            return
        self._emit_readings([lv for lv in due if lv.event.id in won])

    def _emit_readings(self, due: list) -> None:
        for lv in due:
            self.emit("sensor.reading", {
                "sensor": lv.event.name,
                "event_public_id": lv.event.public_id,
                "value": lv.value,
                "unit": lv.event.unit,
                "experiment_id": lv.experiment_public_id,
            }, when=lv.time)

    # --- the writer --------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox or self._updates or self._logs:
                try:
                    await self._flush()
                    delay = 0.2
                except RuntimeError:  # database executor shut down
                    return
                except Exception:  # noqa: BLE001 - database trouble: keep the work, retry
                    log.warning("webhook deliveries not written, retrying in %.1fs", delay, exc_info=True)
                    if self._state != "running":
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30)
            if self._state != "running":
                return

    async def _flush(self) -> None:
        events = [self._outbox.popleft() for _ in range(min(len(self._outbox), FLUSH_MAX_EVENTS))]
        updates, self._updates = self._updates, []
        logs, self._logs = self._logs, []
        try:
            inserts, keep = [], []
            if events:
                hooks = await self.view.current()
                room = self.config.webhook_queue - len(self._active)
                now = utcnow()
                for event_type, body, targets in events:
                    if targets is None:
                        chosen = [h for h in hooks.values() if event_type in h.events]
                    else:  # as chosen at emit, less any disabled or deleted since
                        chosen = [hooks[i] for i in targets if i in hooks]
                    for hook in chosen:
                        fits = room > 0
                        room -= fits
                        row = {"public_id": new_public_id(), "webhook_id": hook.id, "event_type": event_type,
                               "payload": body.decode(), "status": "pending" if fits else "failed",
                               "attempts": 0, "last_error": None if fits else DROPPED,
                               "next_attempt_at": now if fits else None, "created_on": now,
                               "claimed_by": self.owner if fits else None,
                               "claimed_until": now + timedelta(seconds=CLAIM_LEASE) if fits else None}
                        inserts.append(row)
                        if fits:
                            keep.append((row, hook, body))
            ids = await self.db.session(_write, inserts, updates, logs)
        except BaseException:
            self._outbox.extendleft(reversed(events))
            self._updates[:0] = updates
            self._logs[:0] = logs
            raise
        for u in updates:
            if u["b_id"] not in self._active:
                self._unflushed.discard(u["b_id"])
        dropped = len(inserts) - len(keep)
        if dropped:
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc(dropped)
            self.dropped_deliveries += dropped
            if time.monotonic() - self._overload_logged_at >= 10:
                self._overload_logged_at = time.monotonic()
                log.warning("webhook dispatcher overloaded: %d deliveries recorded as failed so far",
                            self.dropped_deliveries)
        for row, hook, body in keep:
            delivery_id = ids.get(row["public_id"])
            if delivery_id is None:  # its webhook was deleted meanwhile
                continue
            d = _Delivery(delivery_id, row["public_id"], hook.id, hook.url, hook.secret, row["event_type"], body)
            self._active[delivery_id] = d
            self._launch(d)

    # --- attempts -------------------------------------------------------------------------------
    def _launch(self, d: _Delivery) -> None:
        d.timer = None
        if self._state != "running":
            return
        hooks = self.view.value
        if hooks is not None:
            hook = hooks.get(d.webhook_id)
            if hook is None:  # disabled or deleted since: do not send
                self._finish(d, {"b_status": "failed", "b_last_error": DISABLED, "b_next_attempt_at": None})
                return
            d.url, d.secret = hook.url, hook.secret
        task = asyncio.ensure_future(self._attempt(d))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, d: _Delivery) -> None:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Webhook-Timestamp": timestamp,
            "X-Webhook-Event": d.event_type,
            "X-Webhook-Delivery": d.public_id,
        }
        if d.secret:
            headers["X-Webhook-Signature"] = sign(d.secret, timestamp, d.body)
        code: int | None = None
        error: str | None = None
        brief = ""  # for the log entry everyone can read: no URL, no response text
        try:
            future = self._http.post(d.url, data=d.body, headers=headers, timeout=TIMEOUT,
                                     allow_redirects=False, stream=True, hooks={"response": _read_excerpt})
        except RuntimeError:  # pool shut down: stopping
            return
        try:
            resp = await asyncio.wrap_future(future)
            code = resp.status_code
            brief = f"HTTP {code}"
            if not 200 <= code < 300:
                excerpt = getattr(resp, "excerpt", b"").decode("utf-8", "replace")
                if 300 <= code < 400:
                    error = f"HTTP {code}: redirect to {resp.headers.get('Location', '?')} not followed"
                else:
                    error = f"HTTP {code}: {excerpt}" if excerpt.strip() else f"HTTP {code}"
        except asyncio.CancelledError:
            raise
        except requests.Timeout:
            error = brief = f"timeout after {TIMEOUT:g} s"
        except Exception as exc:  # noqa: BLE001 - connection errors and anything else: a failed attempt
            error = f"{type(exc).__name__}: {exc}"
            brief = type(exc).__name__
        if self._state != "running":
            return
        self._record(d, code, error, brief)

    def _record(self, d: _Delivery, code: int | None, error: str | None, brief: str = "") -> None:
        d.attempts += 1
        now = utcnow()
        if error is None:
            self._finish(d, {"b_status": "delivered", "b_response_code": code, "b_delivered_on": now,
                             "b_next_attempt_at": None})
            return
        error = _short(error)
        if d.attempts >= MAX_ATTEMPTS:
            self._logs.append(_short(f"Webhook {d.event_type} delivery {d.public_id} to {_host(d.url)} "
                                     f"dead-lettered after {d.attempts} attempts (last: {brief or 'error'})"))
            self._finish(d, {"b_status": "dead_letter", "b_response_code": code, "b_last_error": error,
                             "b_next_attempt_at": None})
            return
        delay = self.config.webhook_retry_base * 2 ** (d.attempts - 1)
        self._queue_update(d, {"b_status": "pending", "b_response_code": code, "b_last_error": error,
                               "b_next_attempt_at": now + timedelta(seconds=delay)})
        d.timer = asyncio.get_running_loop().call_later(delay, self._launch, d)

    def _finish(self, d: _Delivery, values: dict) -> None:
        self._active.pop(d.id, None)
        self._unflushed.add(d.id)
        self._queue_update(d, values)
        if self._backlog and len(self._active) <= self.config.webhook_queue // 2 and (
                self._resumer is None or self._resumer.done()):
            # refill from the database, at most once a second
            self._resumer = asyncio.ensure_future(
                self._resume(delay=max(0.0, 1.0 - (time.monotonic() - self._resumed_at))))

    def _queue_update(self, d: _Delivery, values: dict) -> None:
        row = {"b_id": d.id, "b_status": "pending", "b_attempts": d.attempts, "b_last_error": None,
               "b_response_code": None, "b_next_attempt_at": None, "b_delivered_on": None}
        row.update(values)
        metrics.WEBHOOK_DELIVERIES.labels(_OUTCOME.get(row["b_status"], row["b_status"])).inc()
        self._updates.append(row)
        self._wake.set()

    # --- resume ------------------------------------------------------------------------------------
    async def _resume(self, delay: float = 0.0) -> None:
        """Load pending deliveries from the database (as many as fit) and schedule them."""
        if delay:
            await asyncio.sleep(delay)
        room = self.config.webhook_queue - len(self._active)
        if room <= 0 or self._state != "running":
            return
        self._resumed_at = time.monotonic()
        limit = room
        try:
            rows = await self.db.session(_claim_pending, limit, self.owner)
        except RuntimeError:
            return
        self._backlog = len(rows) >= limit
        rows = [r for r in rows if r.id not in self._active and r.id not in self._unflushed]
        room = self.config.webhook_queue - len(self._active)
        loop = asyncio.get_running_loop()
        now = utcnow()
        for r in rows[:room]:
            d = _Delivery(r.id, r.public_id, r.webhook_id, r.url, r.secret or None, r.event_type,
                          r.payload.encode(), r.attempts)
            if not r.enabled:
                self._unflushed.add(d.id)
                self._queue_update(d, {"b_status": "failed", "b_last_error": DISABLED})
                continue
            self._active[d.id] = d
            due = r.next_attempt_at
            delay = 0.0 if due is None else max(0.0, (due - now).total_seconds())
            d.timer = loop.call_later(delay, self._launch, d)
        if rows:
            log.info("resumed %d pending webhook deliveries", min(len(rows), room))


    async def _maintain_claims(self) -> None:
        """Every CLAIM_RENEW s: renew this process's claims, take over expired ones."""
        while self._state == "running":
            await asyncio.sleep(CLAIM_RENEW)
            try:
                await self.db.session(_renew_claims, self.owner)
                if self._resumer is None or self._resumer.done():
                    await self._resume()
            except RuntimeError:  # executor shut down: stopping
                return
            except Exception:  # noqa: BLE001 - tried again next round
                log.warning("webhook delivery claims not renewed", exc_info=True)


# --- database side (executor threads) --------------------------------------------------------------

def _write(session, inserts: list[dict], updates: list[dict], logs: list[str]) -> dict[str, int]:
    """One transaction: attempt outcomes, new delivery rows, dead-letter log entries.
    Returns ``{public_id: id}`` of the inserted rows."""
    if updates:
        session.execute(_UPDATE, updates)
    ids: dict[str, int] = {}
    if inserts:
        existing = set(session.execute(
            select(Webhook.id).where(Webhook.id.in_({r["webhook_id"] for r in inserts}))).scalars())
        inserts = [r for r in inserts if r["webhook_id"] in existing]
        if inserts:
            result = session.execute(insert(_T).returning(_T.c.id, _T.c.public_id), inserts)
            ids = {public_id: row_id for row_id, public_id in result.all()}
    for content in logs:
        session.add(LogEntry(content=content, logging_type="error"))
    return ids


def _claim_pending(session, limit: int, owner: str) -> list:
    """Claim up to ``limit`` pending deliveries nobody holds (or whose claim expired) and
    return them. ``SKIP LOCKED``: rows another process is claiming right now are left to it
    (PostgreSQL; SQLite has one process and ignores FOR UPDATE)."""
    now = utcnow()
    ids = session.execute(
        select(_T.c.id)
        .where(_T.c.status == "pending", or_(_T.c.claimed_until.is_(None), _T.c.claimed_until < now))
        .order_by(_T.c.next_attempt_at, _T.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    if not ids:
        return []
    session.execute(update(_T).where(_T.c.id.in_(ids))
                    .values(claimed_by=owner, claimed_until=now + timedelta(seconds=CLAIM_LEASE)))
    return session.execute(
        select(_T.c.id, _T.c.public_id, _T.c.webhook_id, _T.c.event_type, _T.c.payload, _T.c.attempts,
               _T.c.next_attempt_at, Webhook.url, Webhook.secret, Webhook.enabled)
        .join(Webhook, Webhook.id == _T.c.webhook_id)
        .where(_T.c.id.in_(ids))
        .order_by(_T.c.next_attempt_at, _T.c.id)
    ).all()


def _renew_claims(session, owner: str) -> None:
    session.execute(update(_T).where(_T.c.claimed_by == owner, _T.c.status == "pending")
                    .values(claimed_until=utcnow() + timedelta(seconds=CLAIM_LEASE)))


def _release_claims(session, owner: str) -> None:
    session.execute(update(_T).where(_T.c.claimed_by == owner, _T.c.status == "pending")
                    .values(claimed_by=None, claimed_until=None))


_CLAIM_THROTTLE = text(
    "INSERT INTO sensor_reading_throttle (event_id, sent_at) VALUES (:event_id, now()) "
    "ON CONFLICT (event_id) DO UPDATE SET sent_at = now() "
    "WHERE sensor_reading_throttle.sent_at <= now() - make_interval(secs => :seconds) "
    "RETURNING event_id")


def _claim_throttle(session, event_ids: list[int], seconds: float) -> set[int]:
    """PostgreSQL: the events whose ``sensor.reading`` this process may send now (their
    last one, by any process, is at least ``seconds`` old by the database's clock)."""
    won = set()
    for event_id in event_ids:
        row = session.execute(_CLAIM_THROTTLE, {"event_id": event_id, "seconds": float(seconds)}).first()
        if row is not None:
            won.add(row[0])
    return won
