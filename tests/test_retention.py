"""Data retention (webmacs.storage.retention) on SQLite and TimescaleDB, with a clock we set.

Old rows are written straight into the table; :func:`retention.enforce` is called with
``now``. On TimescaleDB the rows far in the past sit in chunks of their own, so whole
chunks really are dropped (checked in timescaledb_information.chunks).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from tests.conftest import make_settings
from webmacs.db import Database
from webmacs.models import Event
from webmacs.services import HOUSEKEEPING_LOCK, Services
from webmacs.storage import retention, typed_text

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
EXP = 7  # experiment id stamped on experiment rows


@pytest.fixture
async def db(database_url):
    database = Database(database_url, 2)
    database.detect_features()
    if database.has_timescale:  # the fixture empties tables with DELETE: empty chunks stay behind
        with database.engine.begin() as conn:
            conn.execute(text("TRUNCATE datapoints"))
    try:
        yield database
    finally:
        database.close()


def make_events(db: Database, n: int = 2) -> list[int]:
    with db.Session() as session:
        events = [Event(name=f"Probe {i}", type="sensor", unit="K", min_value=0, max_value=1) for i in range(n)]
        session.add_all(events)
        session.commit()
        return [e.id for e in events]


def insert(db: Database, rows: list[tuple[datetime, int, int | None]]) -> None:
    with db.engine.begin() as conn:
        conn.execute(typed_text("INSERT INTO datapoints (time, value, event_id, experiment_id) "
                                "VALUES (:t, :v, :e, :x)", "t"),
                     [{"t": t, "v": 1.5, "e": e, "x": x} for t, e, x in rows])


def remaining(db: Database) -> list[tuple[datetime, int, int | None]]:
    from webmacs.timefmt import from_db

    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT time, event_id, experiment_id FROM datapoints ORDER BY time, event_id"))
        return [(from_db(t), e, x) for t, e, x in rows]


def chunk_starts(db: Database) -> list[datetime]:
    with db.engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT range_start FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'datapoints' ORDER BY range_start")).scalars())


def days(n: float) -> datetime:
    return NOW - timedelta(days=n)


async def test_two_windows_chunks_and_rows(db):
    """Plain rows kept 30 days, experiment rows 365: what is inside a window stays."""
    a, b = make_events(db)
    old_both = [(days(2000), a, None), (days(2000), b, EXP)]        # older than both: its chunk goes
    old_plain_only = [(days(100), a, None), (days(100), b, None)]   # chunk of plain rows past 30 d: goes
    exp_kept = [(days(200), a, EXP)]                                # experiment row inside 365 d: stays
    mixed = [(days(40), a, None), (days(40), b, EXP)]               # one chunk; only the plain row goes
    exp_old = [(days(400), b, EXP)]                                 # experiment row past 365 d: goes
    recent = [(days(10), a, None), (days(1), b, EXP), (days(29.9), b, None)]
    insert(db, old_both + old_plain_only + exp_kept + mixed + exp_old + recent)
    chunks_before = chunk_starts(db) if db.has_timescale else []

    outcome = await retention.enforce(db, 30, 365, now=NOW)

    assert remaining(db) == sorted(exp_kept + [mixed[1]] + recent, key=lambda r: (r[0], r[1]))
    if db.has_timescale:
        after = chunk_starts(db)
        assert len(chunks_before) == 8 and len(after) == 5, (chunks_before, after)
        gone = set(chunks_before) - set(after)
        assert {start.date() for start in gone} == {days(2000).date(), days(400).date(), days(100).date()}
        assert len(outcome.chunks) == 3
        assert outcome.plain_rows == 1 and outcome.experiment_rows == 0  # the rest went with their chunks
    else:
        assert outcome.chunks == []
        assert (outcome.plain_rows, outcome.experiment_rows) == (4, 2)

    # a second run finds nothing more
    again = await retention.enforce(db, 30, 365, now=NOW)
    assert (again.chunks, again.plain_rows, again.experiment_rows) == ([], 0, 0)


async def test_experiment_data_kept_forever_by_default(db):
    """Only WEBMACS_RETENTION_DAYS set: experiment rows of any age stay, even in a
    chunk past the window (that chunk is kept, its plain rows are deleted)."""
    (a,) = make_events(db, 1)
    exp_rows = [(days(3000), a, EXP)]
    insert(db, exp_rows + [(days(3000) + timedelta(hours=1), a, None), (days(1000), a, None), (days(5), a, None)])
    chunks_before = chunk_starts(db) if db.has_timescale else []

    outcome = await retention.enforce(db, 30, 0, now=NOW)

    assert remaining(db) == [exp_rows[0], (days(5), a, None)]
    if db.has_timescale:
        assert len(outcome.chunks) == 1  # the plain-only chunk of days(1000)
        assert [c for c in chunk_starts(db) if c < days(2000)] == [c for c in chunks_before if c < days(2000)]
        assert outcome.plain_rows == 1
    else:
        assert outcome.plain_rows == 2


async def test_forever_touches_nothing(db):
    (a,) = make_events(db, 1)
    rows = [(days(5000), a, None), (days(5000), a, EXP)]
    insert(db, rows)
    outcome = await retention.enforce(db, 0, 0, now=NOW)
    assert remaining(db) == rows and outcome.statements == 0


async def test_deletes_are_bounded_batches(db):
    """25 old rows of one event, 10 per statement: three statements, the newer rows stay.
    The rows share a chunk with a kept one, so it is the deletes that remove them."""
    (a,) = make_events(db, 1)
    base = days(31)
    old = [(base - timedelta(minutes=i), a, None) for i in range(25)]
    kept = (days(29), a, None)
    insert(db, old + [kept, (days(31) - timedelta(minutes=3), a, EXP)])
    outcome = await retention.enforce(db, 30, 0, now=NOW, batch_rows=10)
    assert outcome.plain_rows == 25 and outcome.statements == 3
    assert remaining(db) == [(days(31) - timedelta(minutes=3), a, EXP), kept]


async def test_same_timestamp_beyond_batch_size(db):
    """More rows than a batch on one timestamp: removed without looping forever
    (beside a kept experiment row, so their chunk stays and deletes do the work)."""
    (a,) = make_events(db, 1)
    insert(db, [(days(50) - timedelta(hours=1), a, EXP)] + [(days(50), a, None)] * 12)
    outcome = await retention.enforce(db, 30, 0, now=NOW, batch_rows=5)
    assert outcome.plain_rows == 12 and remaining(db) == [(days(50) - timedelta(hours=1), a, EXP)]


async def test_housekeeping_runs_retention_once_per_database(database_url):
    """The server's hourly housekeeping applies the settings; on PostgreSQL only the
    process holding the advisory lock runs it."""
    services = Services(make_settings(database_url, WEBMACS_RETENTION_DAYS=30,
                                      WEBMACS_EXPERIMENT_RETENTION_DAYS=90))
    services.prepare_database()
    try:
        (a,) = make_events(services.db, 1)
        now = datetime.now(timezone.utc)
        insert(services.db, [(now - timedelta(days=31), a, None), (now - timedelta(days=31), a, EXP),
                             (now - timedelta(days=91), a, EXP), (now - timedelta(days=1), a, None)])
        if services.db.is_postgres:
            with services.db.engine.connect() as other:  # another server process holds the lock
                assert other.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": HOUSEKEEPING_LOCK}).scalar()
                await services._housekeeping()
                assert len(remaining(services.db)) == 4
                other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": HOUSEKEEPING_LOCK})
                other.commit()
        await services._housekeeping()
        assert [(e, x) for _t, e, x in remaining(services.db)] == [(a, EXP), (a, None)]
        if services.db.is_postgres:  # the lock was let go
            with services.db.engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                         "AND objid = :k"), {"k": HOUSEKEEPING_LOCK}).scalar() == 0
    finally:
        services.db.close()


async def test_progress_limits_later_runs_to_what_aged_since(db):
    """With the progress the server keeps, the next run looks only at what passed the
    window since the last one; a reading arriving already past the covered range waits
    for a fresh progress (the next server start)."""
    (a,) = make_events(db, 1)
    insert(db, [(days(31), a, None), (days(20), a, EXP), (days(29.5), a, None), (days(5), a, None)])
    progress: dict = {}
    first = await retention.enforce(db, 30, 0, now=NOW, progress=progress)
    assert first.plain_rows + len(first.chunks) >= 1 and (days(31), a, None) not in remaining(db)
    assert progress[retention.PLAIN] == days(30)

    insert(db, [(days(45), a, None)])  # a controller replaying a reading from long ago
    later = await retention.enforce(db, 30, 0, now=NOW + timedelta(days=1), progress=progress)
    assert (days(29.5), a, None) not in remaining(db)  # aged past the window since the first run
    assert remaining(db) == [(days(45), a, None), (days(20), a, EXP), (days(5), a, None)], later
    assert progress[retention.PLAIN] == days(29)

    fresh = await retention.enforce(db, 30, 0, now=NOW + timedelta(days=1))  # after a restart
    assert remaining(db) == [(days(20), a, EXP), (days(5), a, None)], fresh


async def test_plain_postgresql_uses_deletes_only_and_logs_counts(db, caplog):
    """Without TimescaleDB (SQLite, or PostgreSQL without the extension: forced here on
    the cluster) everything goes by bounded deletes; the run logs its counts."""
    db.has_timescale = False
    a, b = make_events(db)
    insert(db, [(days(400), a, None), (days(400), b, EXP), (days(40), a, None), (days(40), b, EXP),
                (days(3), a, None)])
    chunks_before = chunk_starts(db) if db.is_postgres else []
    with caplog.at_level("INFO", logger="webmacs.retention"):
        outcome = await retention.enforce(db, 30, 365, now=NOW)
    assert (outcome.chunks, outcome.plain_rows, outcome.experiment_rows) == ([], 2, 1)
    assert remaining(db) == [(days(40), b, EXP), (days(3), a, None)]
    if db.is_postgres:
        assert chunk_starts(db) == chunks_before  # no chunk dropped: rows only
    line = next(r.getMessage() for r in caplog.records if r.name == "webmacs.retention")
    assert "deleted 2 datapoints outside experiments" in line and "and 1 of experiments" in line, line
