"""The ingest pipeline, top to bottom. Every datapoint, WebSocket or REST, comes through here.

Per batch:

1. **validate** each datapoint (finite number ``value``, string ``event_public_id``,
   optional ``timestamp``; booleans and numeric strings are rejected);
2. **filter** to events linked to an enabled plugin instance, answered from
   :class:`LinkageView`, an in-memory view rebuilt after any change to events,
   plugin instances, channel mappings or experiments (no query per batch);
3. **persist** in one transaction on the database executor: the ``batch_id``
   (if any) and all rows in one bulk write (``COPY`` on PostgreSQL,
   ``executemany`` on SQLite), stamped with the running experiment;
4. hand the **last value per event** to webhooks (``sensor.reading``) and
5. to the **rules**; both only queue work and return at once;
6. put the points in the **broadcast buffer** (see :mod:`webmacs.broadcast`).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from webmacs.app import Services

log = logging.getLogger("webmacs.ingest")

MAX_BATCH = 500
MAX_BATCH_ID = 64
FUTURE_TOLERANCE = timedelta(minutes=5)
NO_VALID = "No valid datapoints in batch"


class IngestError(Exception):
    """The batch was not stored. ``retry`` tells a controller whether to resend it."""

    def __init__(self, message: str, retry: bool = False, errors: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.errors = errors or []


@dataclass(frozen=True)
class EventInfo:
    id: int
    public_id: str
    name: str
    unit: str | None


@dataclass(frozen=True)
class LastValue:
    """The newest reading of one event in a batch: what webhooks and rules see."""

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
    points: list[dict] = field(default_factory=list)  # broadcast shape


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds")


def datapoint_public_id(event_id: int, time: datetime, row_id: int) -> str:
    """The API id of a datapoint: event, time in µs and row id, so a lookup uses the
    (event_id, time) index and no per-row UUID is stored."""
    micros = int(time.timestamp() * 1_000_000) if time.tzinfo else int(
        time.replace(tzinfo=timezone.utc).timestamp() * 1_000_000)
    return f"{event_id}-{micros}-{row_id}"


def parse_datapoint_public_id(public_id: str) -> tuple[int, datetime, int] | None:
    parts = public_id.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    event_id, micros, row_id = (int(p) for p in parts)
    try:
        time = datetime.fromtimestamp(micros / 1_000_000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return event_id, time.replace(microsecond=micros % 1_000_000), row_id


def parse_timestamp(raw: Any) -> datetime:
    """ISO 8601 (an offset, or UTC when none) or epoch seconds; raises ValueError."""
    if isinstance(raw, bool):
        raise ValueError("timestamp must be an ISO 8601 string or epoch seconds")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise ValueError("timestamp must be finite")
        return datetime.fromtimestamp(raw, timezone.utc)
    if isinstance(raw, str):
        dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc)
    raise ValueError("timestamp must be an ISO 8601 string or epoch seconds")


def validate_point(raw: Any, now: datetime) -> tuple[str, float, datetime | None]:
    """One datapoint, or ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("datapoint must be an object")
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("value must be a number")
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits: rejected like inf
        value = math.inf
    if not math.isfinite(value):
        raise ValueError("value must be finite")
    event = raw.get("event_public_id")
    if not isinstance(event, str) or not event:
        raise ValueError("event_public_id must be a non-empty string")
    ts = None
    if raw.get("timestamp") is not None:
        try:
            ts = parse_timestamp(raw["timestamp"])
        except (ValueError, OverflowError, OSError):
            raise ValueError("timestamp must be ISO 8601 with offset or epoch seconds") from None
        if ts - now > FUTURE_TOLERANCE:
            raise ValueError("timestamp is more than 5 minutes in the future")
    return event, value, ts


class LinkageView:
    """Which events accept data (linked to an enabled plugin instance), and the running
    experiment. Rebuilt with one query after :meth:`invalidate`; a rebuild that raced
    with an invalidation is discarded, so an answer is never older than the last change."""

    def __init__(self) -> None:
        self.generation = 0
        self.linked: dict[str, EventInfo] | None = None
        self.experiment: tuple[int, str] | None = None

    def invalidate(self) -> None:
        self.generation += 1
        self.linked = None

    @staticmethod
    def load(session) -> tuple[dict[str, EventInfo], tuple[int, str] | None]:
        rows = session.execute(text(
            "SELECT DISTINCT e.id, e.public_id, e.name, e.unit FROM events e "
            "JOIN channel_mappings m ON m.event_id = e.id "
            "JOIN plugin_instances p ON p.id = m.instance_id WHERE p.enabled = :t"
        ), {"t": True}).all()
        exp = session.execute(text(
            "SELECT id, public_id FROM experiments WHERE started_on IS NOT NULL AND stopped_on IS NULL "
            "ORDER BY started_on DESC LIMIT 1"
        )).first()
        linked = {r.public_id: EventInfo(r.id, r.public_id, r.name, r.unit) for r in rows}
        return linked, (exp.id, exp.public_id) if exp else None


class IngestPipeline:
    def __init__(self, services: "Services") -> None:
        self.services = services
        self.db = services.db
        self.view = LinkageView()
        self._seq_name: str | None = None
        self.last_time: datetime | None = None
        self.persisted = 0

    def invalidate(self) -> None:
        """Call after committing any change to events, plugins, mappings or experiments."""
        self.view.invalidate()

    async def current_view(self) -> LinkageView:
        view = self.view
        while view.linked is None:
            generation = view.generation
            linked, experiment = await self.db.session(LinkageView.load)
            if generation == view.generation:
                view.linked, view.experiment = linked, experiment
        return view

    async def ingest(self, raw_points: Any, batch_id: str | None = None, want_ids: bool = False) -> BatchResult:
        # 1. validate
        if not isinstance(raw_points, list):
            raise IngestError("'datapoints' must be an array")
        if len(raw_points) > MAX_BATCH:
            raise IngestError(f"Batch too large: {len(raw_points)} datapoints (max {MAX_BATCH})")
        if batch_id is not None and (not 0 < len(batch_id) <= MAX_BATCH_ID or "\x00" in batch_id):
            raise IngestError(f"Invalid batch_id: must be a string of 1 to {MAX_BATCH_ID} characters, no NUL")
        now = datetime.now(timezone.utc)
        valid: list[tuple[str, float, datetime | None]] = []
        errors: list[str] = []
        for i, raw in enumerate(raw_points):
            try:
                valid.append(validate_point(raw, now))
            except ValueError as exc:
                if len(errors) < 10:
                    errors.append(f"datapoints[{i}]: {exc}")

        # 2. filter by enabled plugin linkage (in memory)
        view = await self.current_view()
        linked = view.linked or {}
        rows: list[tuple[datetime, EventInfo, float]] = []
        for event_public_id, value, ts in valid:
            info = linked.get(event_public_id)
            if info is None:
                if len(errors) < 10:
                    errors.append(f"event {event_public_id}: unknown or not linked to an enabled plugin")
                continue
            rows.append((ts or now, info, value))
        rejected = len(raw_points) - len(rows)
        if not rows:
            raise IngestError(NO_VALID, errors=errors)
        experiment = view.experiment

        # 3. persist: one transaction, one bulk write
        try:
            outcome = await self.db.run(self._write, rows, experiment, batch_id, len(rows), rejected, want_ids)
        except Exception as exc:  # noqa: BLE001 - any database failure: tell the sender to retry
            log.error("batch not stored: %s", exc)
            raise IngestError("Database unavailable: batch not stored, retry later", retry=True) from None
        duplicate, accepted, rejected_stored, ids = outcome
        if duplicate:
            return BatchResult(accepted, rejected_stored, duplicate=True)
        self.persisted += len(rows)

        # 4.-5. last value per event -> webhooks and rules (they queue, never block)
        exp_public = experiment[1] if experiment else None
        newest: dict[int, tuple] = {}  # plain tuples: this loop runs once per datapoint
        for row in rows:
            prev = newest.get(row[1].id)
            if prev is None or row[0] >= prev[0]:
                newest[row[1].id] = row
        last = {eid: LastValue(info, value, ts, exp_public) for eid, (ts, info, value) in newest.items()}
        services = self.services
        if services.webhooks is not None:
            services.webhooks.sensor_readings(last.values())
        if services.rules is not None:
            services.rules.evaluate(last.values())

        # 6. broadcast buffer: newest point per event, never older than what was shown
        points = []
        latest = services.hub.latest
        for lv in last.values():
            stamp = iso(lv.time)
            shown = latest.get(lv.event.public_id)
            if shown is not None and shown["timestamp"] > stamp:
                continue
            points.append({
                "value": lv.value,
                "event_public_id": lv.event.public_id,
                "timestamp": stamp,
                "experiment_public_id": exp_public,
            })
        services.hub.publish(points)
        newest = max(lv.time for lv in last.values())
        if self.last_time is None or newest > self.last_time:
            self.last_time = newest
        return BatchResult(accepted, rejected, errors=errors, ids=ids, points=points,
                           experiment_public_id=exp_public)

    # --- database side (executor thread) ---------------------------------------------
    def _write(self, rows, experiment, batch_id, accepted, rejected, want_ids):
        exp_id = experiment[0] if experiment else None
        with self.db.engine.begin() as conn:
            if batch_id is not None:
                inserted = conn.execute(text(
                    "INSERT INTO ingest_batches (batch_id, accepted, rejected, created_on) "
                    "VALUES (:b, :a, :r, :c) ON CONFLICT (batch_id) DO NOTHING"
                ), {"b": batch_id, "a": accepted, "r": rejected, "c": _bind_time(conn, datetime.now(timezone.utc))})
                if inserted.rowcount == 0:
                    prev = conn.execute(text("SELECT accepted, rejected FROM ingest_batches WHERE batch_id = :b"),
                                        {"b": batch_id}).first()
                    return True, prev.accepted, prev.rejected, []
            if conn.dialect.name == "postgresql":
                ids = self._copy_postgresql(conn, rows, exp_id, want_ids)
            else:
                ids = self._insert_sqlite(conn, rows, exp_id, want_ids)
        return False, accepted, rejected, ids

    def _copy_postgresql(self, conn, rows, exp_id, want_ids):
        exp = "\\N" if exp_id is None else str(exp_id)
        buf = io.StringIO()
        row_ids: list[int] = []
        if want_ids:
            if self._seq_name is None:
                self._seq_name = conn.execute(text("SELECT pg_get_serial_sequence('datapoints', 'id')")).scalar()
            row_ids = list(conn.execute(text("SELECT nextval(:s) FROM generate_series(1, :n)"),
                                        {"s": self._seq_name, "n": len(rows)}).scalars())
            text_of = _TimeText(datetime.isoformat)
            for rid, (ts, info, value) in zip(row_ids, rows):
                buf.write(f"{rid}\t{text_of[ts]}\t{info.id}\t{value!r}\t{exp}\n")
            columns = "(id, time, event_id, value, experiment_id)"
        else:
            text_of = _TimeText(datetime.isoformat)
            buf.write("".join([f"{text_of[ts]}\t{info.id}\t{value!r}\t{exp}\n" for ts, info, value in rows]))
            columns = "(time, event_id, value, experiment_id)"
        buf.seek(0)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.copy_expert(f"COPY datapoints {columns} FROM STDIN", buf)
        finally:
            cursor.close()
        return [datapoint_public_id(info.id, ts, rid) for rid, (ts, info, _v) in zip(row_ids, rows)]

    def _insert_sqlite(self, conn, rows, exp_id, want_ids):
        text_of = _TimeText(_sqlite_time)
        params = [(text_of[ts], info.id, value, exp_id) for ts, info, value in rows]
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.executemany("INSERT INTO datapoints (time, event_id, value, experiment_id) VALUES (?, ?, ?, ?)",
                               params)
            last_id = cursor.execute("SELECT last_insert_rowid()").fetchone()[0]
        finally:
            cursor.close()
        if not want_ids:
            return []
        first = last_id - len(rows) + 1
        return [datapoint_public_id(info.id, ts, first + i) for i, (ts, info, _v) in enumerate(rows)]


class _TimeText(dict):
    """Formats each distinct time once: rows of a batch mostly share the receive time."""

    def __init__(self, fmt) -> None:
        super().__init__()
        self.fmt = fmt

    def __missing__(self, ts: datetime) -> str:
        text = self[ts] = self.fmt(ts)
        return text


def _sqlite_time(ts: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime uses, for naive UTC."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _bind_time(conn, ts: datetime):
    return _sqlite_time(ts) if conn.dialect.name == "sqlite" else ts
