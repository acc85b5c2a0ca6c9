"""Benchmark of POST /api/v1/datapoints/series on TimescaleDB.

Loads one week of 1 Hz readings for 20 events (20 x 604,800 = 12.1 M rows) into a
scratch database (cloned from the cluster's extension-only template database),
then times the series query for all 20 events over 7 days (minutes=10080) and
over 60 minutes, both as the bare query function on the DB thread and end to end
over HTTP against a real server, and prints a Markdown table.

    .venv/bin/python benchmarks/series_bench.py            # load (once) and measure
    .venv/bin/python benchmarks/series_bench.py --drop     # drop the scratch database afterwards

The database URL is WEBMACS_BENCH_PG_URL, else ``scripts/timescaledb.sh url`` with
the database name replaced. The scratch database is kept between runs (loading
takes a minute or two); ``--reload`` rebuilds it, ``--drop`` removes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from webmacs.db import upgrade  # noqa: E402
from webmacs.handlers import datapoints as datapoints_handlers  # noqa: E402
from webmacs.storage import series  # noqa: E402

SCRATCH = "webmacs_series_bench"
TEMPLATE = "webmacs_test"
# The data ends here (a fixed instant, so a kept database measures the same windows).
END = datetime(2026, 1, 5, 12, 0, 0, tzinfo=timezone.utc)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until the machine is under ``threshold`` busy over 2 s
    (other work shares its cores); return the last busy share."""
    deadline = time.time() + max_wait
    while True:
        b0, t0 = machine_cpu()
        time.sleep(2)
        b1, t1 = machine_cpu()
        busy = (b1 - b0) / max(1e-9, t1 - t0)
        if busy < threshold or time.time() >= deadline:
            return busy


def cluster_url() -> str:
    url = os.environ.get("WEBMACS_BENCH_PG_URL")
    if url:
        return url
    out = subprocess.run(["bash", str(REPO / "scripts" / "timescaledb.sh"), "url"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return out.rsplit("/", 1)[0] + "/" + SCRATCH


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def admin_engine(url: str):
    return create_engine(sa_url(url.rsplit("/", 1)[0] + "/postgres"), isolation_level="AUTOCOMMIT")


def exists(url: str) -> bool:
    name = url.rsplit("/", 1)[1]
    with admin_engine(url).connect() as conn:
        return bool(conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar())


def drop(url: str) -> None:
    """Not WITH (FORCE): that must terminate TimescaleDB's scheduler, a superuser process."""
    from tests.conftest import drop_database

    drop_database(admin_engine(url), url.rsplit("/", 1)[1])


def load(url: str, events: int, days: int) -> None:
    name = url.rsplit("/", 1)[1]
    drop(url)
    with admin_engine(url).connect() as conn:
        for attempt in range(30):  # the template is busy while a test run clones it
            try:
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))
                break
            except Exception:  # noqa: BLE001
                if attempt == 29:
                    raise
                time.sleep(1)
    upgrade(url)  # the real schema: hypertable, 24 h chunks, (event_id, time DESC) index
    engine = create_engine(sa_url(url))
    t0 = time.monotonic()
    with engine.begin() as conn:
        for i in range(events):
            conn.execute(text("INSERT INTO events (public_id, name, type, unit, created_on) "
                              "VALUES (:p, :n, 'sensor', 'unit', now())"),
                         {"p": f"bench-event-{i:02d}", "n": f"Bench sensor {i:02d}"})
    start = END - timedelta(days=days)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for day in range(days):  # one day per statement, generated in SQL by the server
            lo = start + timedelta(days=day)
            cur.execute(
                "INSERT INTO datapoints (time, event_id, value, experiment_id) "
                "SELECT t, e.id, 20 + 5 * sin(extract(epoch FROM t) / 600 + e.id) + random(), NULL "
                "FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 second', "
                "                     interval '1 second') AS t CROSS JOIN events e ORDER BY t, e.id",
                (lo, lo + timedelta(days=1)))
            raw.commit()
            print(f"  loaded day {day + 1}/{days} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE datapoints"))
        rows = conn.execute(text("SELECT count(*) FROM datapoints")).scalar()
    engine.dispose()
    print(f"loaded {rows:,} rows in {time.monotonic() - t0:.0f} s", file=sys.stderr)


def time_function(engine, ids, minutes, max_points, runs, strategy=None):
    """Median and max seconds of load_series (the handler's work on the DB thread);
    ``strategy`` forces "probe" or "aggregate" for every event instead of the choice."""
    saved = dict(series.AGGREGATE_ROWS_PER_POINT)
    if strategy == "aggregate":
        series.AGGREGATE_ROWS_PER_POINT.update(postgresql=10**9)
    elif strategy == "probe":
        series.AGGREGATE_ROWS_PER_POINT.update(postgresql=0)
    try:
        times, result = [], None
        for _ in range(runs + 1):  # first run warms the caches and is not counted
            t0 = time.perf_counter()
            with Session(engine) as session:
                result = series.load_series(session, ids, minutes, max_points, END, True)
            times.append(time.perf_counter() - t0)
        times = times[1:]
    finally:
        series.AGGREGATE_ROWS_PER_POINT.clear()
        series.AGGREGATE_ROWS_PER_POINT.update(saved)
    points = sum(len(v) for v in result.values())
    return statistics.median(times), max(times), points


async def time_http(url, ids, cases, runs):
    """End to end: a real server, login, POST /api/v1/datapoints/series."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    from webmacs.app import make_app
    from webmacs.services import Services
    from webmacs.config import Settings

    datapoints_handlers.utcnow = lambda: END  # the window ends where the data does
    settings = Settings.from_env({
        "WEBMACS_DATABASE_URL": url, "WEBMACS_SECRET_KEY": "bench-secret-key-0123456789-0123456789-abcdef",
        "WEBMACS_INITIAL_ADMIN_EMAIL": "bench@example.com", "WEBMACS_INITIAL_ADMIN_PASSWORD": "bench-password-1",
    })
    services = Services(settings)
    services.prepare_database()
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(services))
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)
    base = f"http://127.0.0.1:{port}"
    try:
        resp = await client.fetch(f"{base}/api/v1/auth/login", method="POST", body=json.dumps(
            {"email": "bench@example.com", "password": "bench-password-1"}))
        token = json.loads(resp.body)["access_token"]
        out = {}
        for minutes, max_points in cases:
            body = json.dumps({"event_public_ids": ids, "minutes": minutes, "max_points": max_points})
            times, size = [], 0
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                resp = await client.fetch(HTTPRequest(f"{base}/api/v1/datapoints/series", method="POST", body=body,
                                                      headers={"Authorization": f"Bearer {token}"},
                                                      request_timeout=120))
                times.append(time.perf_counter() - t0)
                size = len(resp.body)
            out[(minutes, max_points)] = (statistics.median(times[1:]), max(times[1:]), size)
        return out
    finally:
        client.close()
        server.stop()
        services.db.close()


def explain(engine, ids, minutes, max_points) -> None:
    """Print the plans for one event: the aggregate (time_bucket) and one segment's probes."""
    grid = series.Grid.make(END, minutes, max_points)
    with engine.connect() as conn:
        eid = conn.execute(text("SELECT id FROM events WHERE public_id = :p"), {"p": ids[0]}).scalar()
        seg_start, seg_end = series._segments(conn, grid, True)[-1]
        for label, sql, params in (
            ("probe (last chunk segment)",
             "EXPLAIN (ANALYZE, COSTS OFF) SELECT d.time, d.value FROM generate_series(:i0, :i1) AS b(i) "
             "CROSS JOIN LATERAL (SELECT time, value FROM datapoints WHERE event_id = :e "
             "AND time >= :a AND time < :b "
             "AND time >= CAST(:start AS timestamptz) + b.i * CAST(:width AS interval) "
             "AND time < CAST(:start AS timestamptz) + (b.i + 1) * CAST(:width AS interval) "
             "ORDER BY time DESC LIMIT 1) d",
             {"i0": grid.index(seg_start), "i1": grid.index(seg_end - timedelta(microseconds=1)), "e": eid,
              "a": seg_start, "b": seg_end, "start": grid.start, "width": grid.width}),
            ("aggregate", "EXPLAIN (ANALYZE, COSTS OFF) SELECT max(time), last(value, time) "
                          "FROM datapoints WHERE event_id = :e AND time >= :start AND time < :end "
                          "GROUP BY time_bucket(CAST(:width AS interval), time, CAST(:start AS timestamptz))",
             {"e": eid, "start": grid.start, "end": grid.end, "width": grid.width}),
        ):
            plan = [r[0] for r in conn.execute(text(sql), params)]
            print(f"\n-- {label}, minutes={minutes}, max_points={max_points}, one event", file=sys.stderr)
            print("\n".join(plan[:14] + (["  ..."] if len(plan) > 14 else []) + plan[-2:]), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reload", action="store_true", help="rebuild the scratch database")
    ap.add_argument("--drop", action="store_true", help="drop the scratch database at the end")
    ap.add_argument("--explain", action="store_true", help="print query plans")
    ap.add_argument("--wait-quiet", type=float, default=600, metavar="S",
                    help="wait up to S seconds for the machine to be idle before measuring (default 600)")
    args = ap.parse_args()

    url = cluster_url()
    if args.reload or not exists(url):
        print(f"loading {args.events} events x {args.days} days at 1 Hz into {url.rsplit('/', 1)[1]}",
              file=sys.stderr)
        load(url, args.events, args.days)
    engine = create_engine(sa_url(url))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM datapoints")).scalar()
        chunks = conn.execute(text("SELECT count(*) FROM timescaledb_information.chunks "
                                   "WHERE hypertable_name = 'datapoints'")).scalar()
        ids = list(conn.execute(text("SELECT public_id FROM events ORDER BY id")).scalars())[:20]
    print(f"{rows:,} rows, {chunks} chunks, {len(ids)} events queried", file=sys.stderr)

    minutes_week = args.days * 1440
    cases = [(minutes_week, 500), (minutes_week, 2000), (60, 500), (60, 2000)]
    if args.explain:
        explain(engine, ids, minutes_week, 500)
        explain(engine, ids, 60, 500)

    busy = wait_quiet(args.wait_quiet)
    print(f"\n{rows:,} rows ({len(ids)} events x {args.days} days at 1 Hz), {chunks} chunks of 24 h; "
          f"median of {args.runs} runs after one warm-up. Machine: {os.cpu_count()} CPUs, "
          f"{busy:.0%} busy with other work just before, load average {open('/proc/loadavg').read().split()[:3]}.\n")
    print("| window | max_points | strategy | points returned | query (median / max) |")
    print("|---|---|---|---|---|")
    for minutes, max_points in cases:
        strategies = [None, "probe", "aggregate"]
        for strategy in strategies:
            # aggregating a week of 12 M rows takes ~25 s: once, without repeats
            runs = 1 if (strategy == "aggregate" and minutes > 1440) else args.runs
            if strategy == "aggregate" and minutes > 1440 and max_points != 500:
                continue
            med, worst, points = time_function(engine, ids, minutes, max_points, runs, strategy)
            label = strategy or "auto (as served)"
            window = f"{minutes // 1440} days" if minutes >= 1440 else f"{minutes} min"
            print(f"| {window} | {max_points} | {label} | {points:,} | {med * 1000:.0f} / {worst * 1000:.0f} ms |",
                  flush=True)
    engine.dispose()

    http = asyncio.run(time_http(url, ids, cases, args.runs))
    print("\nEnd to end over HTTP (login once; POST /api/v1/datapoints/series, 20 events):\n")
    print("| window | max_points | response (median / max) | body |")
    print("|---|---|---|---|")
    for (minutes, max_points), (med, worst, size) in http.items():
        window = f"{minutes // 1440} days" if minutes >= 1440 else f"{minutes} min"
        print(f"| {window} | {max_points} | {med * 1000:.0f} / {worst * 1000:.0f} ms | {size / 1024:.0f} KiB |")
    if args.drop:
        drop(url)


if __name__ == "__main__":
    main()
