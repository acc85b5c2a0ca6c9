"""The ``datapoints`` table: the bulk write path, the public-id codec, and the REST reads.

Rows are ``(id bigint, time, event_id, value, experiment_id)`` with one index on
``(event_id, time)``. A datapoint's API id is ``<event_id>-<epoch µs>-<id>``
(:func:`public_id`), which that index resolves, so no per-row UUID is stored.
"""

from __future__ import annotations

import io
import struct
import sys
from array import array
from datetime import datetime, timedelta, timezone
from itertools import groupby
from operator import attrgetter

from sqlalchemy import and_, delete, func, select, text

from webmacs import timefmt
from webmacs.models import Event, Experiment, UTCDateTime, datapoints
from webmacs.storage.queue import ROW, column, interleave

dp = datapoints.c

# A reading as the write path takes it: (time, event id, value).
Row = tuple[datetime, int, float]


# --- public ids ----------------------------------------------------------------------

def public_id(event_id: int, time: datetime, row_id: int) -> str:
    """The API id of a datapoint: event, time in µs and row id."""
    micros = int(timefmt.utc(time).timestamp() * 1_000_000)
    return f"{event_id}-{micros}-{row_id}"


def parse_public_id(value: str) -> tuple[int, datetime, int] | None:
    parts = value.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    event_id, micros, row_id = (int(p) for p in parts)
    if max(event_id, row_id) > 2**63 - 1:  # past BIGINT: no such row (SQLite cannot even bind it: a 500)
        return None
    try:
        time = datetime.fromtimestamp(micros / 1_000_000, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return event_id, time.replace(microsecond=micros % 1_000_000), row_id


# --- the write path (executor thread) -------------------------------------------------

class Writer:
    """One transaction per call: the ``batch_id`` row (if any), then all rows in one
    bulk write, stamped with ``experiment_id``."""

    def __init__(self, db) -> None:
        self.db = db  # webmacs.db.Database: its engine, read per write
        self._seq_name: str | None = None

    def write(self, rows: list[Row], experiment_id: int | None, batch_id: str | None, sender: str,
              accepted: int, rejected: int, want_ids: bool) -> tuple[bool, int, int, list[str]]:
        """Returns ``(duplicate, accepted, rejected, ids)``; a ``batch_id`` this
        ``sender`` used before writes nothing and answers the counts stored the first time."""
        with self.db.engine.begin() as conn:
            if batch_id is not None:
                now = datetime.now(timezone.utc)
                inserted = conn.execute(text(
                    "INSERT INTO ingest_batches (sender, batch_id, accepted, rejected, created_on) "
                    "VALUES (:s, :b, :a, :r, :c) ON CONFLICT (sender, batch_id) DO NOTHING"
                ), {"s": sender, "b": batch_id, "a": accepted, "r": rejected,
                    "c": timefmt.sqlite_text(now) if conn.dialect.name == "sqlite" else now})
                if inserted.rowcount == 0:
                    prev = conn.execute(text("SELECT accepted, rejected FROM ingest_batches "
                                             "WHERE sender = :s AND batch_id = :b"), {"s": sender, "b": batch_id}).first()
                    return True, prev.accepted, prev.rejected, []
            if conn.dialect.name == "postgresql":
                ids = self._copy_postgresql(conn, rows, experiment_id, want_ids)
            else:
                ids = self._insert_sqlite(conn, rows, experiment_id, want_ids)
        return False, accepted, rejected, ids

    def _copy_postgresql(self, conn, rows: list[Row], exp_id: int | None, want_ids: bool) -> list[str]:
        exp = "\\N" if exp_id is None else str(exp_id)
        buf = io.StringIO()
        text_of = _TimeText(datetime.isoformat)
        row_ids: list[int] = []
        if want_ids:
            if self._seq_name is None:
                self._seq_name = conn.execute(text("SELECT pg_get_serial_sequence('datapoints', 'id')")).scalar()
            row_ids = list(conn.execute(text("SELECT nextval(:s) FROM generate_series(1, :n)"),
                                        {"s": self._seq_name, "n": len(rows)}).scalars())
            for rid, (ts, event_id, value) in zip(row_ids, rows):
                buf.write(f"{rid}\t{text_of[ts]}\t{event_id}\t{value!r}\t{exp}\n")
            columns = "(id, time, event_id, value, experiment_id)"
        else:
            buf.write("".join([f"{text_of[ts]}\t{event_id}\t{value!r}\t{exp}\n" for ts, event_id, value in rows]))
            columns = "(time, event_id, value, experiment_id)"
        buf.seek(0)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.copy_expert(f"COPY datapoints {columns} FROM STDIN", buf)
        finally:
            cursor.close()
        return [public_id(event_id, ts, rid) for rid, (ts, event_id, _v) in zip(row_ids, rows)]

    @staticmethod
    def _insert_sqlite(conn, rows: list[Row], exp_id: int | None, want_ids: bool) -> list[str]:
        text_of = _TimeText(timefmt.sqlite_text)
        params = [(text_of[ts], event_id, value, exp_id) for ts, event_id, value in rows]
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
        return [public_id(event_id, ts, first + i) for i, (ts, event_id, _v) in enumerate(rows)]


    # --- the ingest queue's writer: many records, one transaction ---------------------------
    def write_group(self, records: list, queue_id: str) -> tuple[int, int, int]:
        """Commit queue records (:class:`webmacs.storage.queue.Record`, in sequence order) in
        one transaction: their batch ids, all their rows in one COPY (one executemany on
        SQLite), and ``ingest_queue_state.committed_seq`` of ``queue_id`` — together, so a
        crash at any moment leaves either all of it or none. Records at or below the stored
        ``committed_seq`` (a replay of what a previous run committed) and records whose
        batch id this sender already stored are skipped.

        Returns ``(committed seq, rows written, duplicate batches skipped)``."""
        with self.db.engine.begin() as conn:
            pg = conn.dialect.name == "postgresql"
            done = conn.execute(text("SELECT committed_seq FROM ingest_queue_state WHERE queue_id = :q"
                                     + (" FOR UPDATE" if pg else "")), {"q": queue_id}).scalar()
            if done is None:
                conn.execute(text("INSERT INTO ingest_queue_state (queue_id, committed_seq) VALUES (:q, 0)"),
                             {"q": queue_id})
                done = 0
            todo = [r for r in records if r.seq > done]
            fresh = self._claim_batch_ids(conn, todo, pg)
            if fresh:
                if pg:
                    self._copy_records(conn, fresh)
                else:
                    self._insert_records(conn, fresh)
            committed = max(done, records[-1].seq)
            self._set_committed(conn, queue_id, committed)
        return committed, sum(r.count for r in fresh), len(todo) - len(fresh)

    @staticmethod
    def _claim_batch_ids(conn, records: list, pg: bool) -> list:
        """Insert the batch ids of ``records``; the records to write (no batch id, or one
        not stored before, first occurrence)."""
        keys = list(dict.fromkeys((r.sender, r.batch_id) for r in records if r.batch_id is not None))
        inserted: set = set()
        now = datetime.now(timezone.utc)
        created = now if pg else timefmt.sqlite_text(now)
        counts = {(r.sender, r.batch_id): (r.accepted, r.rejected) for r in reversed(records) if r.batch_id}
        for start in range(0, len(keys), 200):
            chunk = keys[start:start + 200]
            params: dict = {"c": created}
            values = []
            for i, key in enumerate(chunk):
                params[f"s{i}"], params[f"b{i}"] = key
                params[f"a{i}"], params[f"r{i}"] = counts[key]
                values.append(f"(:s{i}, :b{i}, :a{i}, :r{i}, :c)")
            inserted.update(tuple(row) for row in conn.execute(text(
                "INSERT INTO ingest_batches (sender, batch_id, accepted, rejected, created_on) VALUES "
                + ", ".join(values) + " ON CONFLICT (sender, batch_id) DO NOTHING RETURNING sender, batch_id"),
                params))
        out = []
        for r in records:
            if r.batch_id is None:
                out.append(r)
            elif (r.sender, r.batch_id) in inserted:
                inserted.discard((r.sender, r.batch_id))  # a second record with the same id is a duplicate
                out.append(r)
        return out

    @staticmethod
    def _set_committed(conn, queue_id: str, seq: int) -> None:
        conn.execute(text("UPDATE ingest_queue_state SET committed_seq = :s WHERE queue_id = :q"),
                     {"s": seq, "q": queue_id})

    @staticmethod
    def _copy_records(conn, records: list) -> None:
        """All rows of ``records`` in one binary COPY (:func:`copy_payload`)."""
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            payload = copy_payload(records)
            cursor.copy_expert("COPY datapoints (time, event_id, value, experiment_id) FROM STDIN WITH (FORMAT binary)",
                               io.BytesIO(payload), size=len(payload))  # one read, not one per 8 kB
        finally:
            cursor.close()

    @staticmethod
    def _insert_records(conn, records: list) -> None:
        text_of = _MicrosText(lambda us: (_EPOCH_NAIVE + timedelta(microseconds=us)).isoformat(" ", "microseconds"))
        params = [(text_of[us], event_id, value, rec.experiment_id)
                  for rec in records for us, event_id, value in rec.unpacked()]
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.executemany("INSERT INTO datapoints (time, event_id, value, experiment_id) VALUES (?, ?, ?, ?)",
                               params)
        finally:
            cursor.close()


_EPOCH_NAIVE = datetime(1970, 1, 1)
# PostgreSQL's binary COPY: signature, flags, header extension; per row the field count
# and each field as (length, value) — timestamptz as µs since 2000-01-01, int4, float8,
# int4 or NULL (length -1) — then -1 to end.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_COPY_ROW = struct.Struct(">hiqiiidii")
_COPY_ROW_NULL = struct.Struct(">hiqiiidi")
_PG_EPOCH_US = 946_684_800_000_000
_BIG_ENDIAN_HOST = sys.byteorder == "big"


def _big_endian(column: array) -> bytes:
    if not _BIG_ENDIAN_HOST:
        column.byteswap()
    return column.tobytes()


def copy_payload(records: list) -> bytes:
    """PostgreSQL binary COPY data for every row of queue ``records``, built in bulk: the
    rows of each run of records with one experiment id are split into columns
    (:func:`webmacs.storage.queue.column`) in PostgreSQL's epoch and byte order and
    written into copies of a template row (:func:`webmacs.storage.queue.interleave`):
    a few C loops per run, no Python call per row."""
    parts = [_COPY_HEADER]
    for exp_id, run in groupby(records, key=attrgetter("experiment_id")):
        run = list(run)
        rows = b"".join([rec.rows for rec in run])
        times = b"".join([_pg_times(rec.rows) for rec in run])
        if exp_id is None:
            template = _COPY_ROW_NULL.pack(4, 8, 0, 4, 0, 8, 0.0, -1)
        else:
            template = _COPY_ROW.pack(4, 8, 0, 4, 0, 8, 0.0, 4, exp_id)
        parts.append(interleave(len(template), ((6, times, 8), (18, _big_endian(column(rows, "event_id")), 4),
                                                (26, _big_endian(column(rows, "value")), 8)),
                                len(rows) // ROW.size, template))
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def _pg_times(rows: bytes) -> bytes:
    """A record's times as timestamptz (µs since 2000, big-endian). A spec batch has one
    time for all its rows: shifted once."""
    times = column(rows, "time")
    if times and times.count(times[0]) == len(times):
        return _big_endian(array("q", [times[0] - _PG_EPOCH_US])) * len(times)
    return _big_endian(array("q", [us - _PG_EPOCH_US for us in times]))


class _MicrosText(dict):
    """Formats each distinct time (µs since the epoch) once."""

    def __init__(self, fmt) -> None:
        super().__init__()
        self.fmt = fmt

    def __missing__(self, micros: int) -> str:
        value = self[micros] = self.fmt(micros)
        return value


class _TimeText(dict):
    """Formats each distinct time once: rows of a batch mostly share the receive time."""

    def __init__(self, fmt) -> None:
        super().__init__()
        self.fmt = fmt

    def __missing__(self, ts: datetime) -> str:
        value = self[ts] = self.fmt(ts)
        return value


# --- reads and deletes (session functions, executor thread) ------------------------------

_COLUMNS = (dp.id, dp.time, dp.value, dp.event_id,
            Event.public_id.label("event_public_id"), Experiment.public_id.label("experiment_public_id"))


def _joined(stmt):
    return stmt.select_from(datapoints).outerjoin(Event, Event.id == dp.event_id).outerjoin(
        Experiment, Experiment.id == dp.experiment_id)


def to_dict(row) -> dict:
    return {
        "public_id": public_id(row.event_id, row.time, row.id),
        "value": row.value,
        "timestamp": timefmt.api(row.time),
        "event_public_id": row.event_public_id,
        "experiment_public_id": row.experiment_public_id,
    }


def list_page(session, page: int, size: int, event: str | None, experiment: str | None) -> dict:
    """One page, newest first, optionally of one event and/or experiment (by public id)."""
    conditions = []
    if event:
        conditions.append(dp.event_id == select(Event.id).where(Event.public_id == event).scalar_subquery())
    if experiment:
        conditions.append(dp.experiment_id == select(Experiment.id).where(
            Experiment.public_id == experiment).scalar_subquery())
    where = and_(True, *conditions)
    total = session.execute(select(func.count()).select_from(datapoints).where(where)).scalar_one()
    rows = session.execute(
        _joined(select(*_COLUMNS)).where(where).order_by(dp.time.desc(), dp.id.desc())
        .limit(size).offset((page - 1) * size)
    ).all()
    return {"page": page, "page_size": size, "total": total, "data": [to_dict(r) for r in rows]}


def _where(value: str):
    parsed = parse_public_id(value)
    if parsed is None:
        return None
    event_id, time, row_id = parsed
    return and_(dp.event_id == event_id, dp.time == time, dp.id == row_id)


def get(session, value: str) -> dict | None:
    where = _where(value)
    row = None if where is None else session.execute(_joined(select(*_COLUMNS)).where(where)).first()
    return None if row is None else to_dict(row)


def delete_one(session, value: str) -> bool:
    where = _where(value)
    return where is not None and session.execute(delete(datapoints).where(where)).rowcount > 0


def delete_experiment(session, experiment_id: int) -> None:
    session.execute(delete(datapoints).where(dp.experiment_id == experiment_id))


def latest_per_event(session) -> list[dict]:
    """The newest reading of every event that has one (one index probe per event)."""
    if session.bind.dialect.name == "postgresql":
        sql = (
            "SELECT d.id, d.time, d.value, e.id AS event_id, e.public_id AS event_public_id, "
            "x.public_id AS experiment_public_id FROM events e "
            "CROSS JOIN LATERAL (SELECT id, time, value, experiment_id FROM datapoints "
            "  WHERE event_id = e.id ORDER BY time DESC LIMIT 1) d "
            "LEFT JOIN experiments x ON x.id = d.experiment_id ORDER BY e.id"
        )
    else:
        sql = (
            "SELECT d.id, d.time, d.value, e.id AS event_id, e.public_id AS event_public_id, "
            "x.public_id AS experiment_public_id FROM events e "
            "JOIN datapoints d ON d.id = (SELECT id FROM datapoints WHERE event_id = e.id "
            "  ORDER BY time DESC, id DESC LIMIT 1) "
            "LEFT JOIN experiments x ON x.id = d.experiment_id ORDER BY e.id"
        )
    rows = session.execute(text(sql).columns(time=UTCDateTime())).all()
    return [to_dict(r) for r in rows]


def newest_time(session) -> datetime | None:
    """The time of the newest stored reading (``/health``'s ``last_datapoint`` at start)."""
    return timefmt.from_db(session.execute(select(func.max(dp.time))).scalar())


def event_exists(session, event_public_id: str) -> bool:
    return session.execute(select(Event.id).where(Event.public_id == event_public_id)).first() is not None



def queue_position(session, queue_id: str) -> int:
    """The highest ingest queue record of ``queue_id`` already committed (0: none)."""
    seq = session.execute(text("SELECT committed_seq FROM ingest_queue_state WHERE queue_id = :q"),
                          {"q": queue_id}).scalar()
    return int(seq or 0)


def recent_batch_ids(session, limit: int) -> list[tuple[str, str, int, int]]:
    """``(sender, batch_id, accepted, rejected)`` of the ``limit`` newest stored batch ids, oldest first."""
    rows = session.execute(text("SELECT sender, batch_id, accepted, rejected FROM ingest_batches "
                                "ORDER BY created_on DESC LIMIT :n"), {"n": limit}).all()
    return [tuple(r) for r in reversed(rows)]
