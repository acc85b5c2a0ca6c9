"""POST /api/v1/datapoints/series: validation, roles, raw and downsampled series."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from webmacs.handlers import datapoints as datapoints_handlers
from webmacs.storage import series as series_storage

SERIES = "/api/v1/datapoints/series"


@pytest.fixture
def fixed_now(monkeypatch):
    """The server's "now" for the series window, on a whole second."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    monkeypatch.setattr(datapoints_handlers, "utcnow", lambda: now)
    return now


async def push(server, event: str, points: list[tuple[datetime, float]]) -> None:
    """Store readings with explicit timestamps through the REST batch endpoint (the pipeline)."""
    for i in range(0, len(points), 500):
        batch = [{"event_public_id": event, "value": v, "timestamp": t.isoformat()} for t, v in points[i:i + 500]]
        resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": batch})
        assert resp.code == 201 and resp.json["accepted"] == len(batch), resp


def reference(points, now: datetime, minutes: int, n: int) -> list[tuple[datetime, float]]:
    """The documented semantics, in plain Python: the last reading of each of n buckets."""
    start = now - timedelta(minutes=minutes)
    end = now + timedelta(minutes=5)
    inside = sorted(p for p in points if start <= p[0] < end)
    if len(inside) <= n:
        return inside
    width = timedelta(microseconds=minutes * 60_000_000 // n)
    first, newest = inside[0][0], inside[-1][0]
    if first >= start + width and newest > first:  # the buckets span the readings the event has
        start = first
        width = timedelta(microseconds=-(-((newest - first) // timedelta(microseconds=1) + 1) // n))
    last: dict[int, tuple[datetime, float]] = {}
    for t, v in inside:
        last[min((t - start) // width, n - 1)] = (t, v)
    return [last[k] for k in sorted(last)]


def parse(series: list[dict]) -> list[tuple[datetime, float]]:
    return [(datetime.fromisoformat(p["timestamp"]), p["value"]) for p in series]


async def series(server, ids, token="admin", **kw):
    return await server.request("POST", SERIES, {"event_public_ids": ids, **kw}, token=token)


# --- raw windows -------------------------------------------------------------------------

async def test_few_readings_come_back_as_stored(server, fixed_now):
    [event] = await server.linked_events(1)
    points = [(fixed_now - timedelta(seconds=10 * k + 0.25), float(k)) for k in range(50)]
    await push(server, event, points)
    resp = await series(server, [event], minutes=60, max_points=100)
    assert resp.code == 200, resp
    assert set(resp.json) == {event}
    assert parse(resp.json[event]) == sorted(points)
    first = resp.json[event][0]
    assert set(first) == {"timestamp", "value"} and first["timestamp"].endswith("+00:00")


async def test_defaults_window_of_60_minutes(server, fixed_now):
    [event] = await server.linked_events(1)
    old = [(fixed_now - timedelta(minutes=61), 1.0), (fixed_now - timedelta(hours=5), 2.0)]
    recent = [(fixed_now - timedelta(minutes=59), 3.0), (fixed_now - timedelta(seconds=1), 4.0)]
    await push(server, event, old + recent)
    resp = await series(server, [event])
    assert resp.code == 200, resp
    assert parse(resp.json[event]) == recent
    wider = await series(server, [event], minutes=62)
    assert [v for _t, v in parse(wider.json[event])] == [1.0, 3.0, 4.0]


async def test_reading_slightly_ahead_of_the_clock_is_the_last_point(server, fixed_now):
    [event] = await server.linked_events(1)
    points = [(fixed_now - timedelta(seconds=k + 0.5), float(k)) for k in range(1, 300)]
    ahead = (fixed_now + timedelta(seconds=90), 999.0)  # controllers may run up to 5 min ahead
    await push(server, event, points + [ahead])
    resp = await series(server, [event], minutes=10, max_points=20)
    got = parse(resp.json[event])
    assert len(got) <= 20
    assert got[-1] == ahead


async def test_unknown_and_duplicate_ids(server, fixed_now):
    [event] = await server.linked_events(1)
    await push(server, event, [(fixed_now - timedelta(seconds=5), 1.5)])
    resp = await series(server, ["no-such-event", event, event])
    assert resp.code == 200, resp
    assert list(resp.json) == ["no-such-event", event]
    assert resp.json["no-such-event"] == []
    assert [p["value"] for p in resp.json[event]] == [1.5]


async def test_event_without_readings_is_empty(server, fixed_now):
    [event] = await server.linked_events(1)
    resp = await series(server, [event])
    assert resp.json == {event: []}


# --- downsampling ----------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["aggregate", "probe", "aggregate-plain-sql", "probe-plain-sql"])
async def test_downsampled_to_at_most_max_points_keeping_the_latest(server, fixed_now, monkeypatch, strategy):
    factor = 10**9 if strategy.startswith("aggregate") else 0
    monkeypatch.setattr(series_storage, "AGGREGATE_ROWS_PER_POINT", {"postgresql": factor, "sqlite": factor})
    if strategy.endswith("plain-sql"):  # the plain-PostgreSQL queries (no time_bucket, no chunks)
        monkeypatch.setattr(server.services.db, "has_timescale", False)
    a, b = await server.linked_events(2)
    # a: 1 Hz for 50 minutes; b: a burst of 2000 readings within 2 minutes, 40 minutes ago
    pa = [(fixed_now - timedelta(seconds=k + 0.5), float(k % 97)) for k in range(3000)]
    pb = [(fixed_now - timedelta(minutes=40) + timedelta(milliseconds=60 * k + 7), float(k)) for k in range(2000)]
    await push(server, a, pa)
    await push(server, b, pb)
    for max_points in (10, 50, 500):
        resp = await series(server, [a, b], minutes=60, max_points=max_points)
        assert resp.code == 200, resp
        for event, points in ((a, pa), (b, pb)):
            got = parse(resp.json[event])
            assert 0 < len(got) <= max_points
            assert got == sorted(got) and len({t for t, _ in got}) == len(got)
            assert got[-1] == max(points)  # the latest reading is always the last point
            assert got == reference(points, fixed_now, 60, max_points)


async def test_probe_and_aggregate_agree(server, fixed_now, monkeypatch):
    [event] = await server.linked_events(1)
    points = [(fixed_now - timedelta(seconds=1.3 * k + 0.1), float(k)) for k in range(1500)]
    await push(server, event, points)
    answers = []
    for factor in (0, 10**9):
        monkeypatch.setattr(series_storage, "AGGREGATE_ROWS_PER_POINT", {"postgresql": factor, "sqlite": factor})
        answers.append((await series(server, [event], minutes=30, max_points=37)).json[event])
    assert answers[0] == answers[1]
    assert len(answers[0]) <= 37


async def test_default_strategy_choice(server, fixed_now):
    """Unpatched thresholds: a moderate window (aggregated) and a dense one (probed)."""
    [event] = await server.linked_events(1)
    points = [(fixed_now - timedelta(seconds=k + 0.5), float(k)) for k in range(3000)]
    await push(server, event, points)
    for minutes, max_points in ((60, 100), (60, 10), (1, 10)):
        got = parse((await series(server, [event], minutes=minutes, max_points=max_points)).json[event])
        assert got == reference(points, fixed_now, minutes, max_points)


# --- validation and roles ------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ({}, "event_public_ids"),
    ({"event_public_ids": []}, "event_public_ids"),
    ({"event_public_ids": [f"e{i}" for i in range(21)]}, "event_public_ids"),
    ({"event_public_ids": "abc"}, "event_public_ids"),
    ({"event_public_ids": [1]}, "event_public_ids[0]"),
    ({"event_public_ids": ["a"], "minutes": 0}, "minutes"),
    ({"event_public_ids": ["a"], "minutes": 14401}, "minutes"),
    ({"event_public_ids": ["a"], "minutes": "60"}, "minutes"),
    ({"event_public_ids": ["a"], "minutes": 1.5}, "minutes"),
    ({"event_public_ids": ["a"], "minutes": None}, "minutes"),
    ({"event_public_ids": ["a"], "max_points": 9}, "max_points"),
    ({"event_public_ids": ["a"], "max_points": 2001}, "max_points"),
    ({"event_public_ids": ["a"], "max_points": True}, "max_points"),
])
async def test_out_of_range_or_wrong_type_is_422_naming_the_field(server, body, field):
    resp = await server.request("POST", SERIES, body)
    assert resp.code == 422, resp
    assert resp.json["detail"].startswith(f"{field}:"), resp.json


async def test_bounds_are_inclusive(server):
    ids = [f"e{i}" for i in range(20)]
    for minutes, max_points in ((1, 10), (14400, 2000)):
        resp = await server.request("POST", SERIES, {"event_public_ids": ids, "minutes": minutes,
                                                     "max_points": max_points})
        assert resp.code == 200, resp
        assert resp.json == {i: [] for i in ids}


async def test_malformed_body_is_400(server):
    resp = await server.request("POST", SERIES, raw=b"{not json")
    assert resp.code == 400
    resp = await server.request("POST", SERIES, [1, 2])
    assert resp.code == 400


async def test_roles(server, fixed_now):
    [event] = await server.linked_events(1)
    await push(server, event, [(fixed_now - timedelta(seconds=3), 7.0)])
    viewer = await server.create_user("viewer")
    resp = await series(server, [event], token=viewer)
    assert resp.code == 200 and resp.json[event][0]["value"] == 7.0
    assert (await series(server, [event], token=None)).code == 401
    assert (await series(server, [event], token="garbage")).code == 401


async def test_series_route_is_not_taken_for_a_datapoint_id(server):
    resp = await server.request("GET", SERIES)
    assert resp.code == 405  # the series handler answers (POST only), not GET /datapoints/{id}


async def test_probe_across_chunk_boundaries(server, fixed_now, monkeypatch):
    """On TimescaleDB, probes run per chunk; a bucket cut by a chunk edge keeps its later reading."""
    db = server.services.db

    def chunk_interval(session, interval: str):
        # the tables are emptied between tests, but empty chunks stay: drop them so new
        # rows go to new chunks of the new interval
        session.execute(text("DELETE FROM datapoints"))
        session.execute(text("SELECT drop_chunks('datapoints', older_than => now() + INTERVAL '100 years')"))
        session.execute(text(f"SELECT set_chunk_time_interval('datapoints', INTERVAL '{interval}')"))

    if db.has_timescale:
        await db.session(chunk_interval, "7 minutes")
    try:
        monkeypatch.setattr(series_storage, "AGGREGATE_ROWS_PER_POINT", {"postgresql": 0, "sqlite": 0})
        [event] = await server.linked_events(1)
        points = [(fixed_now - timedelta(seconds=k + 0.5), float(k)) for k in range(3000)]
        await push(server, event, points)
        if db.has_timescale:
            chunks = await db.session(lambda s: s.execute(text(
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'datapoints'")).scalar())
            assert chunks >= 7
        for minutes, max_points in ((60, 37), (45, 500), (60, 10)):
            got = parse((await series(server, [event], minutes=minutes, max_points=max_points)).json[event])
            assert got == reference(points, fixed_now, minutes, max_points)
    finally:
        if db.has_timescale:
            await db.session(chunk_interval, "24 hours")


async def test_readings_in_part_of_the_window_are_still_spread_over_max_points(server, fixed_now):
    """60 readings in the last 2 s of a 60-minute window, max_points 10: about 10
    points spread over those 2 s (not one bucket), the newest reading last."""
    [event] = await server.linked_events(1)
    points = [(fixed_now - timedelta(seconds=2) + timedelta(milliseconds=33 * k), float(k)) for k in range(60)]
    await push(server, event, points)
    resp = await series(server, [event], minutes=60, max_points=10)
    got = parse(resp.json[event])
    assert 8 <= len(got) <= 10, got
    assert got[-1] == max(points)  # the newest reading is always kept
    assert got[0][0] - points[0][0] < timedelta(milliseconds=400)  # spread from the first reading on
    assert got == reference(points, fixed_now, 60, 10)
