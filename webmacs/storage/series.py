"""Chart series: up to ``max_points`` readings per event over a window, downsampled in the database.

See :func:`event_series` for how a window is sampled and :func:`load_series` for
the answer's shape. Run on the database executor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, text

from webmacs import timefmt
from webmacs.jsoncodec import dumps
from webmacs.models import Event, datapoints
from webmacs.storage import typed_text
from webmacs.timefmt import FUTURE_TOLERANCE

dp = datapoints.c

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

    def around(self, first: datetime, newest: datetime) -> "Grid":
        """The same number of buckets over the readings an event has in the window,
        when they start after its first bucket (60 readings in the last 2 s of an
        hour still give ``n`` points); the last bucket still runs on to ``end``."""
        if first < self.start + self.width or newest <= first:
            return self
        span_us = (newest - first) // timedelta(microseconds=1) + 1
        return Grid(first, self.end, timedelta(microseconds=-(-span_us // self.n)), self.n)

    def bounds(self) -> list[tuple[datetime, datetime]]:
        lows = [self.start + i * self.width for i in range(self.n)]
        return [(lo, lows[i + 1] if i + 1 < self.n else self.end) for i, lo in enumerate(lows)]


def _iso_sql(dialect: str, column: str) -> str:
    """SQL rendering ``column`` as the API's timestamp text, exactly what
    :func:`webmacs.timefmt.api` gives ('2026-01-05T11:00:00.500000+00:00'). Formatting
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
        raw = typed_text(f"SELECT {_iso_sql(dialect, 'time')} AS ts, value FROM datapoints "
                     "WHERE event_id = :e AND time >= :start AND time < :end ORDER BY time", "start", "end")
        return [tuple(r) for r in conn.execute(raw, {"e": event_id, "start": grid.start, "end": grid.end})]
    # Readings in the window, estimated from how long the newest n+1 took; the
    # aggregate itself reads at most cap + 1 rows and gives up beyond cap.
    newest = conn.execute(newest_first.limit(1)).scalar()
    cap = AGGREGATE_ROWS_PER_POINT.get(dialect, 20) * grid.n
    span = (newest - nth).total_seconds()
    if span <= 0 or grid.n * (newest - grid.start).total_seconds() / span > cap:
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
        stmt = typed_text(
            f"SELECT {_iso_sql('sqlite', 'max(time)')} AS ts, value, count(*) AS c FROM ({_NEWEST}) "
            "GROUP BY min(CAST((julianday(time) - julianday(:start)) * :per_day AS INTEGER), :n - 1) "
            "ORDER BY max(time)", "start", "end")
        params["per_day"] = 86_400_000_000 / (grid.width // timedelta(microseconds=1))
    elif has_timescale:
        stmt = typed_text(
            f"SELECT {_iso_sql('postgresql', 'max(time)')} AS ts, last(value, time) AS value, count(*) AS c "
            f"FROM ({_NEWEST}) AS w "
            "GROUP BY LEAST(time_bucket(CAST(:width AS interval), time, CAST(:start AS timestamptz)), "
            "               CAST(:last AS timestamptz)) "
            "ORDER BY max(time)", "start", "end", "last")
        params.update(width=grid.width, last=grid.start + (grid.n - 1) * grid.width)
    else:
        stmt = typed_text(
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
        chunks = typed_text(
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
        bounds = json.dumps([[timefmt.sqlite_text(lo), timefmt.sqlite_text(hi)] for lo, hi in grid.bounds()])
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
        stmt = typed_text(
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


def _event_grid(conn, event_id: int, window: Grid) -> Grid | None:
    """The window's grid, fitted to where the event's readings are (two index probes),
    or None when it has none in the window."""
    in_window = select(dp.time).where(dp.event_id == event_id, dp.time >= window.start, dp.time < window.end)
    first = conn.execute(in_window.order_by(dp.time).limit(1)).scalar()
    if first is None:
        return None
    newest = conn.execute(in_window.order_by(dp.time.desc()).limit(1)).scalar()
    return window.around(timefmt.utc(first), timefmt.utc(newest))


def load_series(session, public_ids: list[str], minutes: int, max_points: int, now: datetime,
                has_timescale: bool) -> dict[str, list[dict]]:
    """The series answer: ``{event_public_id: [{"timestamp", "value"}, ...]}`` in
    request order; an unknown id gets an empty list."""
    conn = session.connection()
    known = dict(conn.execute(select(Event.public_id, Event.id).where(Event.public_id.in_(public_ids))).all())
    window = Grid.make(now, minutes, max_points)
    series: dict[int, list] = {}
    dense: dict[Grid, list[int]] = {}  # events sampled by probes, by their grid
    for event_id in sorted(set(known.values())):
        grid = _event_grid(conn, event_id, window)
        if grid is None:
            continue  # nothing in the window
        points = event_series(conn, event_id, grid, has_timescale)
        if points is None:
            dense.setdefault(grid, []).append(event_id)
        else:
            series[event_id] = points
    for grid, event_ids in dense.items():
        series.update(_probe_buckets(conn, event_ids, grid, has_timescale))
    return {
        public_id: [{"timestamp": ts, "value": value} for ts, value in series.get(known.get(public_id), ())]
        for public_id in public_ids
    }


def series_json(session, *args) -> str:
    """:func:`load_series`, encoded on the DB thread (a 2000-point x 20 answer is
    3 MB of JSON: no reason to encode it on the IOLoop)."""
    return dumps(load_series(session, *args))
