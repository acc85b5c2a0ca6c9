"""Data retention: datapoints older than their window are removed (docs/retention.md).

Two windows, each "forever" when unset: ``WEBMACS_RETENTION_DAYS`` for readings
taken outside any experiment (``experiment_id IS NULL``) and
``WEBMACS_EXPERIMENT_RETENTION_DAYS`` for experiment readings. The hourly
housekeeping calls :func:`enforce`.

- On TimescaleDB, whole chunks go with ``drop_chunks`` first, but only chunks
  that hold no row either window keeps: a chunk may mix experiment and other
  readings, so with two different windows a chunk past one of them is looked
  into (one indexed probe) and stays if it holds a row to keep. Chunks past both
  windows go without a look.
- Then, on every backend, bounded deletes: per event, at most :data:`BATCH_ROWS`
  rows per statement, each statement its own transaction on the database
  executor, found through the ``(event_id, time)`` index; ingest is never held
  up by one long transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from webmacs.storage import typed_text

log = logging.getLogger("webmacs.retention")

BATCH_ROWS = 10_000

# Which rows each window covers.
PLAIN = "experiment_id IS NULL"
EXPERIMENT = "experiment_id IS NOT NULL"


@dataclass
class Outcome:
    """What one run removed (logged, and returned for tests)."""

    chunks: list[str] = field(default_factory=list)
    plain_rows: int = 0
    experiment_rows: int = 0
    statements: int = 0


def cutoffs(now: datetime, retention_days: int, experiment_retention_days: int
            ) -> tuple[datetime | None, datetime | None]:
    """(plain, experiment): readings older than these go; None keeps them forever."""
    return (now - timedelta(days=retention_days) if retention_days else None,
            now - timedelta(days=experiment_retention_days) if experiment_retention_days else None)


async def enforce(db, retention_days: int, experiment_retention_days: int, now: datetime | None = None,
                  batch_rows: int = BATCH_ROWS, progress: dict | None = None) -> Outcome:
    """Remove what is older than the windows; ``now`` is the clock (tests set it).

    ``progress`` (kept by the caller between runs, the server keeps one per process)
    remembers how far earlier runs got, so a run looks only at what aged past a window
    since then instead of reading again through years of rows that stay. A reading
    arriving already older than what an earlier run covered is removed after the next
    server start (a fresh ``progress``)."""
    now = now or datetime.now(timezone.utc)
    done = progress if progress is not None else {}
    plain, experiment = cutoffs(now, retention_days, experiment_retention_days)
    outcome = Outcome()
    if plain is None and experiment is None:
        return outcome
    if db.has_timescale:
        outcome.chunks = await db.run(drop_old_chunks, db.engine, plain, experiment, done.get("chunks"))
        done["chunks"] = max(c for c in (plain, experiment) if c is not None)
    event_ids = await db.run(_event_ids, db.engine)
    for kind, cutoff in ((PLAIN, plain), (EXPERIMENT, experiment)):
        if cutoff is None:
            continue
        removed = 0
        for event_id in event_ids:
            while True:
                n, more = await db.run(delete_batch, db.engine, event_id, kind, cutoff, batch_rows,
                                       done.get(kind))
                removed += n
                outcome.statements += 1
                if not more:
                    break
        done[kind] = cutoff
        if kind == PLAIN:
            outcome.plain_rows = removed
        else:
            outcome.experiment_rows = removed
    if outcome.chunks or outcome.plain_rows or outcome.experiment_rows:
        log.info("retention: dropped %d chunks, deleted %d datapoints outside experiments (older than %s) "
                 "and %d of experiments (older than %s) in %d statements", len(outcome.chunks),
                 outcome.plain_rows, _day(plain), outcome.experiment_rows, _day(experiment), outcome.statements)
    return outcome


def _day(cutoff: datetime | None) -> str:
    return "never" if cutoff is None else cutoff.strftime("%Y-%m-%d %H:%M UTC")


# --- executor-thread functions -----------------------------------------------------------

def _event_ids(engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM events ORDER BY id")).scalars())


def delete_batch(engine, event_id: int, kind: str, cutoff: datetime, limit: int,
                 since: datetime | None = None) -> tuple[int, bool]:
    """One transaction: at most ``limit`` rows of ``event_id`` and ``kind`` older than
    ``cutoff`` and not older than ``since`` (rows sharing one timestamp are never split,
    so a tie may add a few). Returns (rows deleted, whether more may remain)."""
    where = f"event_id = :e AND {kind} AND time < :cut"
    params = {"e": event_id, "cut": cutoff}
    times = ["cut"]
    if since is not None:
        where += " AND time >= :since"
        params["since"] = since
        times.append("since")

    def run(sql: str, **extra):
        return conn.execute(typed_text(sql, *times), {**params, **extra})

    with engine.begin() as conn:
        # the (limit+1)-th oldest such row bounds this statement; none: everything goes
        bound = run(f"SELECT time FROM datapoints WHERE {where} ORDER BY time LIMIT 1 OFFSET :n", n=limit).scalar()
        if bound is None:
            return run(f"DELETE FROM datapoints WHERE {where}").rowcount, False
        deleted = run(f"DELETE FROM datapoints WHERE {where} AND time < :b", b=bound).rowcount
        if deleted == 0:  # more than `limit` rows share the oldest timestamp
            deleted = run(f"DELETE FROM datapoints WHERE {where} AND time <= :b", b=bound).rowcount
        return deleted, True


def drop_old_chunks(engine, plain: datetime | None, experiment: datetime | None,
                    looked_until: datetime | None = None) -> list[str]:
    """``drop_chunks`` for every chunk past a window that holds nothing either window
    keeps (runs of neighbouring chunks in one call); returns the dropped chunks' names.
    Chunks ending by ``looked_until`` were looked into by an earlier run and kept: they
    stay until they are past both windows."""
    latest = max(c for c in (plain, experiment) if c is not None)
    both = min(plain, experiment) if plain is not None and experiment is not None else None
    keep = " OR ".join(f"({kind} AND time >= :{name})" if cutoff is not None else f"({kind})"
                       for kind, name, cutoff in ((PLAIN, "plain", plain), (EXPERIMENT, "exp", experiment)))
    dropped: list[str] = []
    with engine.begin() as conn:
        chunks = conn.execute(text(
            "SELECT range_start, range_end FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = current_schema() AND hypertable_name = 'datapoints' "
            "AND range_end <= :latest ORDER BY range_start"), {"latest": latest}).all()
        runs: list[list] = []  # [start, end] of neighbouring droppable chunks
        for chunk in chunks:
            if both is None or chunk.range_end > both:  # past one window only: look inside
                if looked_until is not None and chunk.range_end <= looked_until:
                    runs.append([])
                    continue
                held = conn.execute(text(
                    f"SELECT 1 FROM datapoints WHERE time >= :rs AND time < :re AND ({keep}) LIMIT 1"),
                    {"rs": chunk.range_start, "re": chunk.range_end, "plain": plain, "exp": experiment}).first()
                if held is not None:
                    runs.append([])  # a kept chunk ends the run
                    continue
            if runs and runs[-1] and runs[-1][1] == chunk.range_start:
                runs[-1][1] = chunk.range_end
            else:
                runs.append([chunk.range_start, chunk.range_end])
        for start, end in (run for run in runs if run):
            dropped += [str(name) for name in conn.execute(text(
                "SELECT drop_chunks('datapoints', older_than => CAST(:end AS timestamptz), "
                "newer_than => CAST(:start AS timestamptz))"), {"start": start, "end": end}).scalars()]
    return dropped
