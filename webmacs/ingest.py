"""The ingest pipeline, top to bottom. Every datapoint, WebSocket or REST, comes through here.

Per batch (:meth:`IngestPipeline.ingest`):

1. **validate** the batch (at most :data:`MAX_BATCH` points, a sane ``batch_id``)
   and each datapoint (:func:`validate_point`: finite number ``value``, string
   ``event_public_id``, optional ``timestamp``); an invalid point is rejected
   alone, the rest of the batch goes on;
2. **filter** to events linked to an enabled plugin instance, answered from the
   cached linkage view (:mod:`webmacs.cache`, loaded by
   :func:`webmacs.storage.linkage.load_linkage`; invalidated by every API change,
   so no query per batch and never a stale answer);
3. **persist** in one transaction on the database executor
   (:class:`webmacs.storage.datapoints.Writer`): the ``batch_id`` (if any) and all
   rows in one bulk write, stamped with the running experiment;
4. hand the **last value per event** to the registered listeners — webhooks
   (``sensor.reading``), rules, the broadcast buffer — in the order they were
   added (:meth:`IngestPipeline.add_listener`). Each only queues work and returns
   at once; the pipeline does not know who they are.

A database failure raises :class:`IngestError` with ``retry=True`` (the sender may
resend); anything else is a bug: logged with its traceback, ``retry=False``, so
a controller does not resend a poison batch forever.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from webmacs import metrics, timefmt
from webmacs.cache import CachedView
from webmacs.db import DATABASE_ERRORS, Database
from webmacs.storage.datapoints import Writer
from webmacs.storage.linkage import EventInfo, Linkage
from webmacs.timefmt import FUTURE_TOLERANCE

log = logging.getLogger("webmacs.ingest")

MAX_BATCH = 500
MAX_BATCH_ID = 64
NO_VALID = "No valid datapoints in batch"
DATABASE_DOWN = "Database unavailable: batch not stored, retry later"
INTERNAL = "Internal error: batch not stored"
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


@dataclass(frozen=True)
class LastValue:
    """The newest reading of one event in a batch: what listeners see."""

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


class IngestPipeline:
    def __init__(self, db: Database, linkage: CachedView[Linkage]) -> None:
        self.db = db
        self.linkage = linkage
        self.writer = Writer(db)
        self.listeners: list[Listener] = []
        self.last_time: datetime | None = None  # newest reading stored (``/health``)

    def add_listener(self, listener: Listener) -> None:
        """``listener(last_values)`` is called on the IOLoop after each committed batch;
        it must only queue work."""
        self.listeners.append(listener)

    async def ingest(self, raw_points: Any, batch_id: str | None = None, sender: str = "", want_ids: bool = False,
                     strict: bool = False) -> BatchResult:
        """Store a batch. ``batch_id``s are de-duplicated per ``sender``
        (:attr:`webmacs.accounts.Principal.sender`). ``strict`` (REST): the first invalid
        datapoint refuses the whole batch."""
        # 1. validate
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
        valid: list[tuple[str, float, datetime | None]] = []
        errors: list[str] = []
        for i, raw in enumerate(raw_points):
            try:
                valid.append(validate_point(raw, now))
            except ValueError as exc:
                if strict:
                    metrics.DATAPOINTS_REJECTED.inc(len(raw_points))
                    raise IngestError(f"datapoints[{i}]: {exc}") from None
                if len(errors) < MAX_ERRORS:
                    errors.append(f"datapoints[{i}]: {exc}")

        # 2. filter by enabled plugin linkage (in memory)
        self.linkage.maybe_refresh()  # another process's changes, within the refresh age
        try:
            linkage = await self.linkage.current()
        except DATABASE_ERRORS as exc:
            log.error("batch not stored: linkage unavailable: %s", exc)
            raise IngestError(DATABASE_DOWN, retry=True) from None
        linked = linkage.events
        rows: list[tuple[datetime, int, float]] = []
        infos: dict[int, EventInfo] = {}
        for event_public_id, value, ts in valid:
            info = linked.get(event_public_id)
            if info is None:
                if len(errors) < MAX_ERRORS:
                    errors.append(f"event {event_public_id}: unknown or not linked to an enabled plugin")
                continue
            infos[info.id] = info
            rows.append((ts or now, info.id, value))
        rejected = len(raw_points) - len(rows)
        metrics.DATAPOINTS_REJECTED.inc(rejected)
        if not rows:
            raise IngestError(NO_VALID, errors=errors)
        metrics.DATAPOINTS_ACCEPTED.inc(len(rows))
        experiment = linkage.experiment

        # 3. persist: one transaction, one bulk write
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
        if duplicate:
            metrics.DUPLICATE_BATCHES.inc()
            return BatchResult(accepted, rejected_stored, duplicate=True)
        metrics.DATAPOINTS_PERSISTED.inc(len(rows))

        # 4. last value per event -> listeners (they queue, never block)
        exp_public = experiment[1] if experiment else None
        newest: dict[int, tuple[datetime, int, float]] = {}  # plain tuples: this loop runs per datapoint
        for row in rows:
            prev = newest.get(row[1])
            if prev is None or row[0] >= prev[0]:
                newest[row[1]] = row
        last = [LastValue(infos[eid], value, ts, exp_public) for eid, (ts, _e, value) in newest.items()]
        for listener in self.listeners:
            try:
                listener(last)
            except Exception:  # noqa: BLE001 - the batch is stored; one consumer's bug must not undo that
                log.exception("ingest listener %r failed", listener)
        newest_time = max(lv.time for lv in last)
        if self.last_time is None or newest_time > self.last_time:
            self.last_time = newest_time
        return BatchResult(accepted, rejected, errors=errors, ids=ids, experiment_public_id=exp_public)
