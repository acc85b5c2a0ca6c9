"""The browser dashboard: the page, chart series (downsampled) and the CSV export.

- ``GET /`` and ``/index.html``: the single-page dashboard (``webmacs/static``).
- ``POST /api/v1/datapoints/series``: up to 20 events over a window of 1 to
  14400 minutes, at most ``max_points`` points per event. See
  :func:`event_series` for the downsampling.
- ``GET /api/v1/experiments/{id}/export/csv``: the experiment's datapoints,
  streamed page by page (keyset pagination on ``(time, id)``), never all rows
  in memory. See :class:`CsvExport`.

Every database call runs on the bounded DB executor (``db.session``/``db.run``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Integer, bindparam, select, text
from tornado.iostream import StreamClosedError
from tornado.template import Loader
from tornado.web import RequestHandler

from webmacs.handlers.base import BaseHandler, authenticated, dumps, get_or_404
from webmacs.ingest import FUTURE_TOLERANCE, _sqlite_time, datapoint_public_id
from webmacs.models import Event, Experiment, UTCDateTime, datapoints, utcnow
from webmacs.validation import Int, List, Str

log = logging.getLogger("webmacs.dashboard")

dp = datapoints.c

# --- the page ------------------------------------------------------------------------

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"  # == webmacs.app.STATIC_DIR


class IndexHandler(RequestHandler):
    """The dashboard page; asset URLs carry a content hash (``static_url``), so
    they can be cached for long while the page itself is never cached."""

    _loader: Loader | None = None

    def get(self) -> None:
        if IndexHandler._loader is None:
            IndexHandler._loader = Loader(str(STATIC_DIR))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            # 'self' covers same-origin ws:/wss: (CSP 3); never built from request headers.
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'",
        )
        self.finish(IndexHandler._loader.load("index.html").generate(static_url=self.static_url))

    head = get


# --- time series ---------------------------------------------------------------------

SERIES_SPEC = {
    "event_public_ids": List(Str(1, 64), min_items=1, max_items=20, required=True),
    "minutes": Int(1, 14400, default=60),
    "max_points": Int(10, 2000, default=500),
}

# Downsampling, per event (see event_series): a window holding at most
# AGGREGATE_ROWS_PER_POINT * max_points rows is aggregated in one pass over its
# rows (time_bucket on TimescaleDB); a denser one is sampled with one index probe
# per bucket (_probe_buckets), which costs max_points index descents however many
# rows the window holds. The factor is about where the two cost the same, measured
# with benchmarks/series_bench.py (PostgreSQL: ~1.5 us per aggregated row against
# ~30 us per probe).
AGGREGATE_ROWS_PER_POINT = {"postgresql": 20, "sqlite": 20}


@dataclass(frozen=True)
class Grid:
    """``n`` buckets of ``width`` from ``start``; the last one runs on to ``end``
    (now + the ingest's future tolerance), so no point of the window is lost and
    there are never more than ``n`` buckets."""

    start: datetime
    end: datetime
    width: timedelta
    n: int

    @classmethod
    def make(cls, now: datetime, minutes: int, n: int) -> "Grid":
        width = timedelta(microseconds=minutes * 60_000_000 // n)
        return cls(now - timedelta(minutes=minutes), now + FUTURE_TOLERANCE, width, n)

    @property
    def window(self) -> timedelta:
        return self.end - self.start

    def index(self, t: datetime) -> int:
        """The bucket of a time inside [start, end)."""
        return max(0, min((t - self.start) // self.width, self.n - 1))

    def bounds(self) -> list[tuple[datetime, datetime]]:
        lows = [self.start + i * self.width for i in range(self.n)]
        return [(lo, lows[i + 1] if i + 1 < self.n else self.end) for i, lo in enumerate(lows)]


def _typed(sql: str, *names: str):
    """A text() statement whose time parameters bind through UTCDateTime."""
    return text(sql).bindparams(*(bindparam(n, type_=UTCDateTime()) for n in names))


def _iso_sql(dialect: str, column: str) -> str:
    """SQL rendering ``column`` as the API's timestamp text, exactly what
    ``webmacs.ingest.iso`` gives ('2026-01-05T11:00:00.500000+00:00'). Formatting
    in the database spares the Python side a datetime per point (the bulk of the
    cost of a 40,000-point answer)."""
    if dialect == "sqlite":  # stored as naive UTC 'YYYY-MM-DD HH:MM:SS.ffffff'
        return f"replace({column}, ' ', 'T') || '+00:00'"
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def event_series(conn, event_id: int, grid: Grid, has_timescale: bool) -> list[tuple[str, float]] | None:
    """At most ``grid.n`` (timestamp, value) points of one event, oldest first, or
    None when the window is too dense to aggregate (:func:`_probe_buckets` samples it).

    Each bucket is represented by its **last** reading (a real reading: its own
    timestamp and value), so the newest reading in the window is always the last
    point. A window with no more than ``grid.n`` readings is returned as is.
    """
    dialect = conn.dialect.name
    in_window = (dp.event_id == event_id, dp.time >= grid.start, dp.time < grid.end)
    newest_first = select(dp.time).where(*in_window).order_by(dp.time.desc())
    nth = conn.execute(newest_first.offset(grid.n).limit(1)).scalar()
    if nth is None:  # n readings or fewer: all of them
        raw = _typed(f"SELECT {_iso_sql(dialect, 'time')} AS ts, value FROM datapoints "
                     "WHERE event_id = :e AND time >= :start AND time < :end ORDER BY time", "start", "end")
        return [tuple(r) for r in conn.execute(raw, {"e": event_id, "start": grid.start, "end": grid.end})]
    # Readings in the window, estimated from how long the newest n+1 took; the
    # aggregate itself reads at most cap + 1 rows and gives up beyond cap.
    newest = conn.execute(newest_first.limit(1)).scalar()
    cap = AGGREGATE_ROWS_PER_POINT.get(dialect, 20) * grid.n
    span = (newest - nth).total_seconds()
    if span <= 0 or grid.n * grid.window.total_seconds() / span > cap:
        return None
    rows = _aggregate_buckets(conn, event_id, grid, has_timescale, cap)
    if sum(r.c for r in rows) > cap:
        return None
    return [(r.ts, r.value) for r in rows]


# The newest cap + 1 readings of the window (newest first, on the index).
_NEWEST = ("SELECT time, value FROM datapoints WHERE event_id = :e AND time >= :start AND time < :end "
           "ORDER BY time DESC LIMIT :cap_1")


def _aggregate_buckets(conn, event_id: int, grid: Grid, has_timescale: bool, cap: int):
    """One pass over the window's rows (index range scan), last reading per bucket;
    column ``c`` counts the rows read (more than ``cap``: the window was too dense)."""
    params = {"e": event_id, "start": grid.start, "end": grid.end, "n": grid.n, "cap_1": cap + 1}
    if conn.dialect.name == "sqlite":
        # julianday() keeps milliseconds: a reading within a millisecond of a bucket
        # edge may fall in the neighbour bucket, which changes no count or value.
        # A bare column next to a single max() takes the values of the max row.
        stmt = _typed(
            f"SELECT {_iso_sql('sqlite', 'max(time)')} AS ts, value, count(*) AS c FROM ({_NEWEST}) "
            "GROUP BY min(CAST((julianday(time) - julianday(:start)) * :per_day AS INTEGER), :n - 1) "
            "ORDER BY max(time)", "start", "end")
        params["per_day"] = 86_400_000_000 / (grid.width // timedelta(microseconds=1))
    elif has_timescale:
        stmt = _typed(
            f"SELECT {_iso_sql('postgresql', 'max(time)')} AS ts, last(value, time) AS value, count(*) AS c "
            f"FROM ({_NEWEST}) AS w "
            "GROUP BY LEAST(time_bucket(CAST(:width AS interval), time, CAST(:start AS timestamptz)), "
            "               CAST(:last AS timestamptz)) "
            "ORDER BY max(time)", "start", "end", "last")
        params.update(width=grid.width, last=grid.start + (grid.n - 1) * grid.width)
    else:
        stmt = _typed(
            f"SELECT DISTINCT ON (b) {_iso_sql('postgresql', 'time')} AS ts, value, c FROM ("
            "  SELECT time, value, count(*) OVER (PARTITION BY b) AS c, b FROM ("
            "    SELECT time, value, LEAST(floor(extract(epoch FROM time - CAST(:start AS timestamptz))"
            f"           * 1000000 / :width_us), :n - 1) AS b FROM ({_NEWEST}) AS w) AS x) AS s "
            "ORDER BY b, time DESC", "start", "end")
        params["width_us"] = grid.width // timedelta(microseconds=1)
    return conn.execute(stmt, params).all()


def _segments(conn, grid: Grid, has_timescale: bool) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at the TimescaleDB chunk boundaries inside it. A query
    bounded by one segment's constants is planned against that one chunk; a probe
    through the hypertable instead pays ChunkAppend's runtime exclusion over every
    chunk of the window on each rescan (6x slower over a week of daily chunks).
    Correctness never depends on the cuts: a chunk made since is merely slower."""
    cuts: set[datetime] = set()
    if has_timescale:
        chunks = _typed(
            "SELECT range_start, range_end FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = current_schema() AND hypertable_name = 'datapoints' "
            "AND range_end > :start AND range_start < :end", "start", "end")
        for lo, hi in conn.execute(chunks, {"start": grid.start, "end": grid.end}):
            cuts.update(c for c in (lo, hi) if c is not None and grid.start < c < grid.end)
    points = [grid.start, *sorted(cuts), grid.end]
    return list(zip(points, points[1:]))


def _probe_buckets(conn, event_ids: list[int], grid: Grid, has_timescale: bool) -> dict[int, list]:
    """The last reading of each bucket, one index descent per bucket and event (on
    the (event_id, time) index, newest first), whatever the number of rows."""
    found: dict[tuple[int, int], tuple[str, float]] = {}
    if conn.dialect.name == "sqlite":
        bounds = json.dumps([[_sqlite_time(lo), _sqlite_time(hi)] for lo, hi in grid.bounds()])
        stmt = text(
            f"SELECT CAST(j.key AS INTEGER) AS i, {_iso_sql('sqlite', 'd.time')} AS ts, d.value AS value "
            "FROM json_each(:bounds) AS j "
            "JOIN datapoints AS d ON d.id = ("
            "  SELECT id FROM datapoints WHERE event_id = :e"
            "  AND time >= json_extract(j.value, '$[0]') AND time < json_extract(j.value, '$[1]')"
            "  ORDER BY time DESC LIMIT 1)")
        for event_id in event_ids:
            for i, ts, value in conn.execute(stmt, {"e": event_id, "bounds": bounds}):
                found[(event_id, i)] = (ts, value)
    else:
        stmt = _typed(
            f"SELECT e.id, b.i, {_iso_sql('postgresql', 'd.time')} AS ts, d.value "
            "FROM unnest(CAST(:events AS integer[])) AS e(id) "
            "CROSS JOIN generate_series(:i0, :i1) AS b(i) "
            "CROSS JOIN LATERAL ("
            "  SELECT time, value FROM datapoints WHERE event_id = e.id"
            "  AND time >= :seg_start AND time < :seg_end"
            "  AND time >= CAST(:start AS timestamptz) + b.i * CAST(:width AS interval)"
            "  AND time < CASE WHEN b.i = :n - 1 THEN CAST(:end AS timestamptz)"
            "                  ELSE CAST(:start AS timestamptz) + (b.i + 1) * CAST(:width AS interval) END"
            "  ORDER BY time DESC LIMIT 1) AS d",
            "seg_start", "seg_end", "start", "end")
        for seg_start, seg_end in _segments(conn, grid, has_timescale):
            params = {"events": list(event_ids), "i0": grid.index(seg_start),
                      "i1": grid.index(seg_end - timedelta(microseconds=1)), "seg_start": seg_start,
                      "seg_end": seg_end, "start": grid.start, "end": grid.end, "width": grid.width, "n": grid.n}
            for event_id, i, ts, value in conn.execute(stmt, params):
                key = (event_id, i)
                # a bucket cut by a chunk edge has a reading on each side: the later wins
                # (same-format UTC texts compare like the times they show)
                if key not in found or ts > found[key][0]:
                    found[key] = (ts, value)
    out: dict[int, list] = {e: [] for e in event_ids}
    for (event_id, _i), point in sorted(found.items()):
        out[event_id].append(point)
    return out


def load_series(session, public_ids: list[str], minutes: int, max_points: int, now: datetime,
                has_timescale: bool) -> dict[str, list[dict]]:
    """The series answer: ``{event_public_id: [{"timestamp", "value"}, ...]}`` in
    request order; an unknown id gets an empty list."""
    conn = session.connection()
    known = dict(conn.execute(select(Event.public_id, Event.id).where(Event.public_id.in_(public_ids))).all())
    grid = Grid.make(now, minutes, max_points)
    series: dict[int, list] = {}
    dense: list[int] = []
    for event_id in sorted(set(known.values())):
        points = event_series(conn, event_id, grid, has_timescale)
        if points is None:
            dense.append(event_id)
        else:
            series[event_id] = points
    if dense:
        series.update(_probe_buckets(conn, dense, grid, has_timescale))
    return {
        public_id: [{"timestamp": ts, "value": value} for ts, value in series.get(known.get(public_id), ())]
        for public_id in public_ids
    }


def series_json(session, *args) -> str:
    """:func:`load_series`, encoded on the DB thread (a 2000-point x 20 answer is
    3 MB of JSON: no reason to encode it on the IOLoop)."""
    return dumps(load_series(session, *args))


class SeriesHandler(BaseHandler):
    @authenticated()
    async def post(self) -> None:
        body = self.validated(SERIES_SPEC)
        ids = list(dict.fromkeys(body["event_public_ids"]))  # unique, in request order
        now = utcnow()
        body_text = await self.db.session(series_json, ids, body["minutes"], body["max_points"], now,
                                          self.db.has_timescale)
        self.finish(body_text)


# --- CSV export ------------------------------------------------------------------------

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
        return _typed(
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
            t = r.time.astimezone(timezone.utc).replace(tzinfo=None)
            writer.writerow((t.isoformat(timespec="microseconds"), name, public_id, repr(r.value), unit,
                             datapoint_public_id(r.event_id, r.time, r.id)))
        return buf.getvalue().encode()


def csv_header() -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerow(CSV_COLUMNS)
    return buf.getvalue().encode()


class ExperimentCsvHandler(BaseHandler):
    @authenticated()
    async def get(self, public_id: str) -> None:
        def plan(session):
            exp = get_or_404(session, Experiment, public_id, "Experiment")
            events = {r.id: (r.name, r.public_id, r.unit or "")
                      for r in session.execute(select(Event.id, Event.name, Event.public_id, Event.unit))}
            return exp.id, exp.name, exp.started_on, exp.stopped_on, events

        exp_id, name, started_on, stopped_on, events = await self.db.session(plan)
        now = utcnow()
        # Datapoints are stamped with the experiment running when they were stored;
        # their times lie between its start and stop (controller-supplied times may
        # be up to FUTURE_TOLERANCE ahead). A running experiment exports what is
        # stored when the export reaches it.
        lo = (started_on or now) - FUTURE_TOLERANCE
        hi = (stopped_on or now) + FUTURE_TOLERANCE
        export = CsvExport(self.db, exp_id, events, lo, hi)

        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{export_filename(name, public_id)}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.write(csv_header())
        pending = None
        try:
            await self.flush()  # headers and the CSV header row go out at once
            pending = asyncio.ensure_future(self.db.run(export.next_page))
            while pending is not None:
                chunk = await pending
                # fetch the next page (a task: it starts now) while this one goes out
                pending = None if export.done else asyncio.ensure_future(self.db.run(export.next_page))
                if chunk:
                    self.write(chunk)
                    await self.flush()
        except StreamClosedError:
            log.info("CSV export of %s: client went away after %d rows", public_id, export.rows)
            await _settle(pending)
            return
        except Exception:
            # Headers are out: a clean end would pass a truncated file off as
            # complete. Drop the connection so the client sees an incomplete body.
            log.exception("CSV export of %s failed after %d rows", public_id, export.rows)
            await _settle(pending)
            self.request.connection.close()
            try:
                self.finish()  # bookkeeping only: the stream is closed, nothing is written
            except Exception:  # noqa: BLE001
                pass
            return
        log.info("CSV export of %s: %d rows in %d pages", public_id, export.rows, export.pages)
        self.finish()


async def _settle(future) -> None:
    """Wait out a page fetch still running (its result is not needed)."""
    if future is not None:
        try:
            await future
        except Exception:  # noqa: BLE001 - already failing; nothing to add
            pass


default_handlers = [
    (r"/", IndexHandler),
    (r"/index\.html", IndexHandler),
    (r"/api/v1/datapoints/series", SeriesHandler),
    (r"/api/v1/experiments/([^/]+)/export/csv", ExperimentCsvHandler),
]
