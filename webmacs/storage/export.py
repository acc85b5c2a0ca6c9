"""The experiment CSV export: pages of rows in ``(time, id)`` order, as CSV bytes.

See :class:`CsvExport`. Each page is one short query on the database executor.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Integer, bindparam, select

from webmacs import timefmt
from webmacs.models import Event, Experiment, UTCDateTime, utcnow
from webmacs.storage.datapoints import public_id as datapoint_public_id
from webmacs.storage import typed_text
from webmacs.timefmt import FUTURE_TOLERANCE

CSV_COLUMNS = ("timestamp", "event_name", "event_public_id", "value", "unit", "datapoint_public_id")
CSV_PAGE_ROWS = 5000
CSV_FIRST_WINDOW = timedelta(minutes=1)
CSV_MIN_WINDOW = timedelta(milliseconds=1)
CSV_MAX_WINDOW = timedelta(days=1)
# Empty windows skipped in one page call before handing back an empty chunk (keeps
# a call short over a long gap; the window doubles each time, so gaps are cheap).
CSV_WINDOWS_PER_CALL = 64


def export_filename(name: str, public_id: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_name).strip("_-")[:80].strip("_-") or "export"
    return f"experiment_{safe}_{public_id[:8]}.csv"


class CsvExport:
    """One export: pages of rows in ``(time, id)`` order, as CSV bytes.

    Each page is one short query on the DB executor (no connection or thread is
    held between pages, so a slow client costs nothing but its socket). Rows are
    read in time windows on the (event_id, time) index, ``time`` bounded on both
    sides (so TimescaleDB excludes the other chunks) and sorted within the window;
    a window is halved when it holds more than a page and doubled when nearly
    empty. Within a window, keyset ``(time, id) > last`` continues where the last
    page stopped, so ties on ``time`` (a batch shares one timestamp) are exact.
    """

    def __init__(self, db, experiment_id: int, events: dict[int, tuple[str, str, str]],
                 lo: datetime, hi: datetime) -> None:
        self.db = db
        self.experiment_id = experiment_id
        self.events = events  # id -> (name, public_id, unit)
        self.event_ids = sorted(events)
        self.time = lo  # next row has time >= self.time ...
        self.after_id: int | None = None  # ... and, at exactly self.time, id > after_id
        self.hi = hi
        self.window = CSV_FIRST_WINDOW
        self.rows = 0
        self.pages = 0

    @property
    def done(self) -> bool:
        return not self.event_ids or self.time >= self.hi

    def _query(self):
        return typed_text(
            "SELECT id, time, event_id, value FROM datapoints "
            "WHERE event_id IN :events AND experiment_id = :x AND time >= :lo AND time < :hi "
            "AND (:after IS NULL OR time > :lo OR id > :after) "
            "ORDER BY time, id LIMIT :limit", "lo", "hi"
        ).bindparams(bindparam("events", expanding=True), bindparam("after", type_=Integer())).columns(
            time=UTCDateTime())

    def next_page(self) -> bytes:
        """Executor thread: the next page as CSV bytes (possibly empty); sets ``done``."""
        rows: list = []
        with self.db.engine.connect() as conn:
            stmt = self._query()
            for _ in range(CSV_WINDOWS_PER_CALL):
                if self.done:
                    break
                end = min(self.time + self.window, self.hi)
                rows = conn.execute(stmt, {"events": self.event_ids, "x": self.experiment_id, "lo": self.time,
                                           "hi": end, "after": self.after_id, "limit": CSV_PAGE_ROWS}).all()
                if len(rows) == CSV_PAGE_ROWS:  # the window holds more: continue inside it
                    self.time, self.after_id = rows[-1].time, rows[-1].id
                    self.window = max(self.window / 2, CSV_MIN_WINDOW)
                else:
                    self.time, self.after_id = end, None
                    if len(rows) < CSV_PAGE_ROWS // 4:
                        self.window = min(self.window * 2, CSV_MAX_WINDOW)
                if rows:
                    break
        self.pages += 1
        self.rows += len(rows)
        return self.encode(rows)

    def encode(self, rows) -> bytes:
        if not rows:
            return b""
        buf = io.StringIO()
        writer = csv.writer(buf)
        events = self.events
        for r in rows:
            name, public_id, unit = events[r.event_id]
            writer.writerow((timefmt.csv(r.time), name, public_id, repr(r.value), unit,
                             datapoint_public_id(r.event_id, r.time, r.id)))
        return buf.getvalue().encode()


def csv_header() -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerow(CSV_COLUMNS)
    return buf.getvalue().encode()


class Plan(NamedTuple):
    experiment_id: int
    name: str
    lo: datetime
    hi: datetime
    events: dict[int, tuple[str, str, str]]  # id -> (name, public_id, unit)


def plan(session, experiment_public_id: str) -> Plan | None:
    """What an export of the experiment reads, or None if there is no such experiment.

    Datapoints are stamped with the experiment running when they were stored; their
    times lie between its start and stop (controller-supplied times may be up to
    FUTURE_TOLERANCE ahead). A running experiment exports what is stored when the
    export reaches it."""
    if "\x00" in experiment_public_id:
        return None
    exp = session.execute(select(Experiment).where(Experiment.public_id == experiment_public_id)).scalar_one_or_none()
    if exp is None:
        return None
    events = {r.id: (r.name, r.public_id, r.unit or "")
              for r in session.execute(select(Event.id, Event.name, Event.public_id, Event.unit))}
    now = utcnow()
    return Plan(exp.id, exp.name, (exp.started_on or now) - FUTURE_TOLERANCE, (exp.stopped_on or now) + FUTURE_TOLERANCE,
                events)
