"""The ingest pipeline, top to bottom. Every datapoint, WebSocket or REST, comes through here.

Per batch:

1. **validate** the batch (at most :data:`MAX_BATCH` points, a sane ``batch_id``),
   then, in one pass over its datapoints (:func:`accept_points`), check each
   (:func:`validate_point`: finite number ``value``, string ``event_public_id``,
   optional ``timestamp``) and
2. **filter** it to events linked to an enabled plugin instance, answered from the
   cached linkage view (:mod:`webmacs.cache`, loaded by
   :func:`webmacs.storage.linkage.load_linkage`; invalidated by every API change,
   so no query per batch and never a stale answer). An invalid or unlinked point is
   rejected alone, the rest of the batch goes on. What is kept are three columns
   (event ids, values, times), never an object per datapoint;
3. **accept**: telemetry (:meth:`IngestPipeline.enqueue`) is appended to the durable
   ingest queue (:mod:`webmacs.storage.queue`) and answered once it is fsynced; one
   writer task drains the queue into the database in large transactions (many
   batches, one COPY, the queue position in the same transaction), retrying with
   backoff while the database is down. REST writes (:meth:`IngestPipeline.ingest`)
   are committed directly, before the caller answers;
4. hand the **last value per event** to the registered listeners — webhooks
   (``sensor.reading``), rules, the broadcast buffer — at acceptance, in the order
   they were added (:meth:`IngestPipeline.add_listener`), so live data does not wait
   for the database. Each only queues work and returns at once.

A database failure of a REST write raises :class:`IngestError` with ``retry=True``
(the sender may resend); a full queue too (:data:`OVERLOADED`); anything else is a
bug: logged with its traceback, ``retry=False``, so a controller does not resend a
poison batch forever.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

from webmacs import metrics, timefmt
from webmacs.cache import CachedView
from webmacs.db import DATABASE_ERRORS, Database
from webmacs.storage import datapoints as dp_store
from webmacs.storage.datapoints import Writer
from webmacs.storage.queue import EPOCH, ONE_US, IngestQueue, QueueFull, Record, pack_columns
from webmacs.storage.linkage import EventInfo, Linkage
from webmacs.timefmt import FUTURE_TOLERANCE

log = logging.getLogger("webmacs.ingest")

MAX_BATCH = 500
MAX_BATCH_ID = 64
NO_VALID = "No valid datapoints in batch"
DATABASE_DOWN = "Database unavailable: batch not stored, retry later"
INTERNAL = "Internal error: batch not stored"
OVERLOADED = "Server overloaded: batch not stored"
QUEUE_WRITE_FAILED = "Ingest queue write failed: batch not stored, retry later"
# The writer commits up to this many readings per transaction (group commit).
GROUP_ROWS = 20_000
# Writer retries after a database error: 0.2 s doubling to 5 s.
RETRY_FIRST, RETRY_MAX = 0.2, 5.0
# Seconds between log lines about the queue (depth and lag, refused batches).
LOG_INTERVAL = 10.0
# Seconds a REST resend of a batch still in the queue waits for its commit before "retry".
REST_WAIT = 30.0
# (sender, batch_id) of batches committed lately, answered "duplicate" without a query.
RECENT_BATCH_IDS = 100_000
MAX_ERRORS = 10  # per-point messages returned with a batch


class IngestError(Exception):
    """The batch was not stored. ``retry`` tells a controller whether to resend it;
    ``status`` is the HTTP status a REST caller answers with."""

    def __init__(self, message: str, retry: bool = False, errors: list[str] | None = None, status: int = 422):
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.errors = errors or []
        self.status = 503 if retry else status


class LastValue(NamedTuple):
    """The newest reading of one event in a batch: what listeners see (a tuple: made
    for every event of every batch)."""

    event: EventInfo
    value: float
    time: datetime
    experiment_public_id: str | None


@dataclass
class BatchResult:
    accepted: int
    rejected: int
    duplicate: bool = False
    errors: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # datapoint public ids, when asked for
    experiment_public_id: str | None = None
    queued: bool = False  # durable in the ingest queue, not yet (known to be) in the database


Listener = Callable[[list[LastValue]], None]


def validate_point(raw: Any, now: datetime) -> tuple[str, float, datetime | None]:
    """One datapoint, or ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("datapoint must be an object")
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("value: must be a number")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError("value: must be a finite number") from None
    if not math.isfinite(value):
        raise ValueError("value: must be a finite number")
    event = raw.get("event_public_id")
    if not isinstance(event, str) or not event:
        raise ValueError("event_public_id: must be a non-empty string")
    ts = None
    if raw.get("timestamp") is not None:
        try:
            ts = timefmt.parse(raw["timestamp"])
        except (ValueError, OverflowError, OSError):
            raise ValueError("timestamp must be ISO 8601 with offset or epoch seconds") from None
        if ts - now > FUTURE_TOLERANCE:
            raise ValueError("timestamp is more than 5 minutes in the future")
    return event, value, ts


def check_batch_size(points: list) -> str | None:
    """The reason a batch is too large, or None."""
    if len(points) > MAX_BATCH:
        return f"Batch too large: {len(points)} datapoints (max {MAX_BATCH})"
    return None


def check_batch_id(batch_id: Any) -> str | None:
    """The reason ``batch_id`` is unusable, or None."""
    if batch_id is None:
        return None
    if not isinstance(batch_id, str) or not 0 < len(batch_id) <= MAX_BATCH_ID or "\x00" in batch_id:
        return f"Invalid batch_id: must be a string of 1 to {MAX_BATCH_ID} characters, no NUL"
    try:
        batch_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no database can store it
        return f"Invalid batch_id: must be a string of 1 to {MAX_BATCH_ID} characters, no NUL"
    return None


class _Invalid(Exception):
    """A strict batch's first invalid datapoint (its message)."""


def accept_points(raw_points: list, linked: dict[str, EventInfo], now: datetime,
                  strict: bool = False) -> tuple[list[int], list[float], list[datetime] | None, list[str]]:
    """Check a batch's datapoints and keep those of linked events, in one pass.

    Returns their event ids, values and — only if any datapoint carried a
    ``timestamp`` — their times (``now`` for the others; None means all at ``now``),
    and at most :data:`MAX_ERRORS` messages: the invalid datapoints first, then the
    unlinked events, each in batch order. ``strict``: the first invalid datapoint
    raises :class:`_Invalid`.

    This loop runs for every datapoint the server takes: a spec datapoint (an object
    with a finite float ``value``, a linked ``event_public_id`` and no ``timestamp``)
    costs a few dict lookups and two appends; anything else goes through
    :func:`validate_point`, which words the refusal."""
    ids: list[int] = []
    values: list[float] = []
    stamps: list[datetime] | None = None
    invalid: list[str] = []
    unlinked: list[str] = []
    get = linked.get
    for i, raw in enumerate(raw_points):
        if type(raw) is dict:
            value, event = raw.get("value"), raw.get("event_public_id")
            # x - x == 0.0 is False for inf and nan; ints, timestamps and the rest take the long way
            if type(value) is float and value - value == 0.0 and type(event) is str and raw.get("timestamp") is None:
                info = get(event)
                if info is not None:
                    ids.append(info.id)
                    values.append(value)
                    if stamps is not None:
                        stamps.append(now)
                    continue
        try:
            event, value, ts = validate_point(raw, now)
        except ValueError as exc:
            if strict:
                raise _Invalid(f"datapoints[{i}]: {exc}") from None
            if len(invalid) < MAX_ERRORS:
                invalid.append(f"datapoints[{i}]: {exc}")
            continue
        info = get(event)
        if info is None:
            if len(unlinked) < MAX_ERRORS:
                unlinked.append(f"event {event}: unknown or not linked to an enabled plugin")
            continue
        if ts is not None and stamps is None:
            stamps = [now] * len(ids)
        ids.append(info.id)
        values.append(value)
        if stamps is not None:
            stamps.append(ts or now)
    return ids, values, stamps, (invalid + unlinked)[:MAX_ERRORS]


@dataclass
class _Accepted:
    """A batch's accepted readings as columns (event ids, values, times)."""

    ids: list[int]
    values: list[float]
    stamps: list[datetime] | None  # per reading; None: every reading is stamped ``now``
    now: datetime
    events: dict[int, EventInfo]  # the linkage's events by id
    errors: list[str]
    rejected: int
    experiment: tuple[int, str] | None

    def rows(self) -> list[tuple[datetime, int, float]]:
        """``(time, event id, value)`` per reading (the REST path's direct write)."""
        stamps = self.stamps or [self.now] * len(self.ids)
        return list(zip(stamps, self.ids, self.values))

    def packed(self) -> bytes:
        """The readings as the ingest queue stores them (:func:`webmacs.storage.queue.pack_columns`)."""
        if self.stamps is None:
            times: int | list[int] = (self.now - EPOCH) // ONE_US
        else:
            micros: dict[datetime, int] = {}  # mostly a few distinct times
            times = [micros[t] if t in micros else micros.setdefault(t, (t - EPOCH) // ONE_US)
                     for t in self.stamps]
        return pack_columns(times, self.ids, self.values)

    def newest(self, exp_public: str | None) -> list[LastValue]:
        """The last value per event (the newest time; of equal times the later reading)."""
        events, now = self.events, self.now
        if self.stamps is None:  # one time: the last reading of each event
            return [LastValue(events[eid], value, now, exp_public)
                    for eid, value in dict(zip(self.ids, self.values)).items()]
        newest: dict[int, tuple[datetime, float]] = {}
        for eid, ts, value in zip(self.ids, self.stamps, self.values):
            prev = newest.get(eid)
            if prev is None or ts >= prev[0]:
                newest[eid] = (ts, value)
        return [LastValue(events[eid], value, ts, exp_public) for eid, (ts, value) in newest.items()]


class IngestPipeline:
    def __init__(self, db: Database, linkage: CachedView[Linkage], queue: IngestQueue | None = None) -> None:
        self.db = db
        self.linkage = linkage
        self.writer = Writer(db)
        self.queue = queue
        self.listeners: list[Listener] = []
        self.last_time: datetime | None = None  # newest reading accepted (``/health``)
        self._queued_ids: dict[tuple[str, str], Record] = {}  # batch ids in the queue, not yet committed
        self._recent_ids: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self._writer_task: asyncio.Future | None = None
        self._monitor_task: asyncio.Future | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webmacs-writer")
        self._stopping = False
        self.writer_error: str | None = None  # the last database error of the writer, while it lasts
        self.refused = [0, 0]  # batches, datapoints refused on a full queue since the last log line

    def add_listener(self, listener: Listener) -> None:
        """``listener(last_values)`` is called on the IOLoop for each accepted batch (at
        acceptance: before the database has it); it must only queue work."""
        self.listeners.append(listener)

    # --- validate and filter (both paths) ---------------------------------------------------
    async def _accept(self, raw_points: Any, batch_id: str | None, strict: bool) -> _Accepted:
        if not isinstance(raw_points, list):
            raise IngestError("'datapoints' must be an array")
        too_large = check_batch_size(raw_points)
        if too_large:
            metrics.DATAPOINTS_REJECTED.inc(len(raw_points))
            raise IngestError(too_large)
        bad_id = check_batch_id(batch_id)
        if bad_id:
            raise IngestError(bad_id)
        now = datetime.now(timezone.utc)
        self.linkage.maybe_refresh()  # another process's changes, within the refresh age
        try:
            linkage = await self.linkage.current()
        except DATABASE_ERRORS as exc:
            if strict:  # a refusal of the batch itself comes first, as without the database
                self._check_strict(raw_points, {}, now)
            log.error("batch not stored: linkage unavailable: %s", exc)
            raise IngestError(DATABASE_DOWN, retry=True) from None
        ids, values, stamps, errors = (self._check_strict(raw_points, linkage.events, now) if strict
                                       else accept_points(raw_points, linkage.events, now))
        rejected = len(raw_points) - len(ids)
        metrics.DATAPOINTS_REJECTED.inc(rejected)
        if not ids:
            raise IngestError(NO_VALID, errors=errors)
        metrics.DATAPOINTS_ACCEPTED.inc(len(ids))
        return _Accepted(ids, values, stamps, now, linkage.by_id, errors, rejected, linkage.experiment)

    @staticmethod
    def _check_strict(raw_points: list, linked: dict[str, EventInfo], now: datetime):
        try:
            return accept_points(raw_points, linked, now, strict=True)
        except _Invalid as exc:
            metrics.DATAPOINTS_REJECTED.inc(len(raw_points))
            raise IngestError(str(exc)) from None

    def _known_batch(self, sender: str, batch_id: str | None) -> tuple[Record | None, tuple[int, int] | None]:
        """A batch id already in the queue (its record) or committed lately (its counts)."""
        if batch_id is None:
            return None, None
        key = (sender, batch_id)
        return self._queued_ids.get(key), self._recent_ids.get(key)

    def _remember(self, key: tuple[str, str], counts: tuple[int, int]) -> None:
        self._recent_ids[key] = counts
        self._recent_ids.move_to_end(key)
        while len(self._recent_ids) > RECENT_BATCH_IDS:
            self._recent_ids.popitem(last=False)

    # --- telemetry: into the queue -------------------------------------------------------------
    async def enqueue(self, raw_points: Any, batch_id: str | None = None,
                      sender: str = "") -> tuple[BatchResult, asyncio.Future | None]:
        """Accept a telemetry batch into the durable queue. Returns its result and a future
        that resolves once it is durable (None: a duplicate, answered from the first time).
        A full queue raises :class:`IngestError` (:data:`OVERLOADED`, ``retry=True``)."""
        if self.queue is None:
            return await self.ingest(raw_points, batch_id, sender), None
        acc = await self._accept(raw_points, batch_id, False)
        queued, recent = self._known_batch(sender, batch_id)
        if queued is not None or recent is not None:
            metrics.DUPLICATE_BATCHES.inc()
            accepted, rejected = (queued.accepted, queued.rejected) if queued is not None else recent
            return BatchResult(accepted, rejected, duplicate=True), queued.durable if queued is not None else None
        experiment = acc.experiment
        try:
            rec = self.queue.append(acc.packed(), experiment[0] if experiment else None, len(acc.ids),
                                    acc.rejected, sender, batch_id)
        except QueueFull:
            self.refused[0] += 1
            self.refused[1] += len(acc.ids)
            metrics.QUEUE_REFUSED.inc()
            raise IngestError(OVERLOADED, retry=True) from None
        if batch_id is not None:
            key = (sender, batch_id)
            self._queued_ids[key] = rec
            rec.durable.add_done_callback(lambda f: f.exception() and self._queued_ids.pop(key, None))
        exp_public = experiment[1] if experiment else None
        self._publish(acc, exp_public)
        return BatchResult(len(acc.ids), acc.rejected, errors=acc.errors, experiment_public_id=exp_public,
                           queued=True), rec.durable

    # --- REST: committed before the answer ---------------------------------------------------------
    async def ingest(self, raw_points: Any, batch_id: str | None = None, sender: str = "", want_ids: bool = False,
                     strict: bool = False) -> BatchResult:
        """Store a batch now, in one transaction. ``batch_id``s are de-duplicated per ``sender``
        (:attr:`webmacs.accounts.Principal.sender`), across the queue and the database.
        ``strict`` (REST): the first invalid datapoint refuses the whole batch."""
        acc = await self._accept(raw_points, batch_id, strict)
        queued, recent = self._known_batch(sender, batch_id)
        if queued is not None:  # the first copy is on its way: answer once it is committed
            try:
                await asyncio.wait_for(self.queue.wait_committed(queued.seq), REST_WAIT)
            except asyncio.TimeoutError:  # the database is not taking it now: the caller may retry
                raise IngestError(DATABASE_DOWN, retry=True) from None
            metrics.DUPLICATE_BATCHES.inc()
            return BatchResult(queued.accepted, queued.rejected, duplicate=True)
        if recent is not None:
            metrics.DUPLICATE_BATCHES.inc()
            return BatchResult(*recent, duplicate=True)
        rows, rejected, experiment = acc.rows(), acc.rejected, acc.experiment
        started = time.perf_counter()
        try:
            duplicate, accepted, rejected_stored, ids = await self.db.run(
                self.writer.write, rows, experiment[0] if experiment else None, batch_id, sender, len(rows),
                rejected, want_ids)
        except DATABASE_ERRORS as exc:
            log.error("batch not stored: %s", exc)
            raise IngestError(DATABASE_DOWN, retry=True) from None
        except Exception:
            log.exception("batch not stored: unexpected error")
            raise IngestError(INTERNAL) from None
        metrics.COMMIT_DURATION.observe(time.perf_counter() - started)
        if batch_id is not None:
            self._remember((sender, batch_id), (accepted, rejected_stored))
        if duplicate:
            metrics.DUPLICATE_BATCHES.inc()
            return BatchResult(accepted, rejected_stored, duplicate=True)
        metrics.DATAPOINTS_PERSISTED.inc(len(rows))
        exp_public = experiment[1] if experiment else None
        self._publish(acc, exp_public)
        return BatchResult(accepted, rejected, errors=acc.errors, ids=ids, experiment_public_id=exp_public)

    def _publish(self, acc: _Accepted, exp_public: str | None) -> None:
        """The last value per event -> listeners (they queue, never block)."""
        last = acc.newest(exp_public)
        for listener in self.listeners:
            try:
                listener(last)
            except Exception:  # noqa: BLE001 - the batch is accepted; one consumer's bug must not undo that
                log.exception("ingest listener %r failed", listener)
        newest_time = max(lv.time for lv in last)
        if self.last_time is None or newest_time > self.last_time:
            self.last_time = newest_time

    # --- the queue's life cycle and its writer ------------------------------------------------------
    def open_queue(self) -> None:
        """Blocking, at start: take a queue slot and load what the last run left uncommitted
        (the writer replays it first)."""
        if self.queue is None:
            return
        queue_id = self.queue.claim()
        with self.db.Session() as session:
            committed = dp_store.queue_position(session, queue_id)
            # a controller resending after a restart is answered "duplicate" without a query
            for sender, batch_id, accepted, rejected in dp_store.recent_batch_ids(session, RECENT_BATCH_IDS):
                self._recent_ids[(sender, batch_id)] = (accepted, rejected)
        for rec in self.queue.open(committed):
            if rec.batch_id is not None:
                self._queued_ids[(rec.sender, rec.batch_id)] = rec

    def start(self) -> None:
        if self.queue is not None and self._writer_task is None:
            self._writer_task = asyncio.ensure_future(self._write_loop())
            self._monitor_task = asyncio.ensure_future(self._monitor())

    async def stop(self, timeout: float) -> None:
        """Let the writer commit what is queued, at most ``timeout`` s; what is left stays
        in the queue for the next start."""
        if self.queue is None or self._writer_task is None:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self._writer_task), timeout)
        except asyncio.TimeoutError:
            records, size, _lag = self.queue.depth()
            log.warning("ingest queue: %d batches (%d bytes) not yet in the database at shutdown: "
                        "kept in %s for the next start", records, size, self.queue.dir)
        finally:  # also when the caller gives up on us (cancelled)
            self._writer_task.cancel()
            self._monitor_task.cancel()
            self.queue.close()
            self._executor.shutdown(wait=False)

    async def _write_loop(self) -> None:
        queue, loop = self.queue, asyncio.get_running_loop()
        delay, last_log = RETRY_FIRST, 0.0
        while True:
            group = queue.take(GROUP_ROWS)
            if not group:
                if self._stopping and not queue.pending:
                    return
                await queue.wait_ready(0.5)
                continue
            started = time.perf_counter()
            try:
                seq, written, duplicates = await loop.run_in_executor(
                    self._executor, self.writer.write_group, group, queue.queue_id)
            except RuntimeError:  # executor shut down: the server is stopping
                return
            except Exception as exc:  # noqa: BLE001 - retried; the records stay queued
                self.writer_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                now = time.monotonic()
                if now - last_log >= LOG_INTERVAL:
                    last_log = now
                    if isinstance(exc, DATABASE_ERRORS):
                        log.warning("ingest writer: database unavailable, retrying (queue: %d batches): %s",
                                    len(queue.pending), self.writer_error)
                    else:
                        log.exception("ingest writer: unexpected error, retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self.writer_error is not None:
                log.info("ingest writer: database back, catching up (queue: %d batches)", len(queue.pending))
                self.writer_error = None
            delay = RETRY_FIRST
            metrics.COMMIT_DURATION.observe(time.perf_counter() - started)
            metrics.DATAPOINTS_PERSISTED.inc(written)
            metrics.DUPLICATE_BATCHES.inc(duplicates)
            for rec in queue.committed(seq):
                if rec.batch_id is not None:
                    key = (rec.sender, rec.batch_id)
                    if self._queued_ids.get(key) is rec:
                        del self._queued_ids[key]
                    self._remember(key, (rec.accepted, rec.rejected))

    async def _monitor(self) -> None:
        """Log the queue's depth and lag while the writer is behind, and refused batches."""
        behind = False
        while True:
            await asyncio.sleep(LOG_INTERVAL)
            records, size, lag = self.queue.depth()
            if lag > LOG_INTERVAL:
                behind = True
                log.warning("ingest queue: %d batches (%.1f MB) waiting for the database, oldest %.0f s",
                            records, size / 1e6, lag)
            elif behind:
                behind = False
                log.info("ingest queue: caught up (%d batches waiting)", records)
            if self.refused[0]:
                log.error("ingest queue full (%d of %d MB): refused %d batches (%d datapoints) in the last %.0f s",
                          size // (1024 * 1024), self.queue.max_bytes // (1024 * 1024), self.refused[0],
                          self.refused[1], LOG_INTERVAL)
                self.refused = [0, 0]

    def queue_depth(self) -> dict:
        """``/health``'s view of the queue."""
        if self.queue is None:
            return {"records": 0, "bytes": 0, "writer_lag_seconds": 0.0}
        records, size, lag = self.queue.depth()
        return {"records": records, "bytes": size, "writer_lag_seconds": round(lag, 3)}
