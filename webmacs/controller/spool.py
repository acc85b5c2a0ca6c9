"""The local store-and-forward spool: an SQLite file (WAL) every reading goes into first.

Tables::

    readings(id INTEGER PRIMARY KEY AUTOINCREMENT, event, value, ts)   -- oldest first
    batches(batch_id PRIMARY KEY, first_id, last_id, n, created)       -- cut, not yet acked
    meta(key PRIMARY KEY, value)                                       -- checkpoint, plugin cache

A *batch* is a contiguous range of reading ids with a ``batch_id`` chosen when it is
cut and stored with it, so a resend after a reconnect or a restart carries the same
id and the server's ``ingest_batches`` table turns it into a ``duplicate`` ack
instead of a second insert. Readings with an id above the newest batch's
``last_id`` are not yet in any batch. A batch leaves the spool only when it is
acknowledged (or refused for good by the server: ``retry: false``).

Durability: every :meth:`Spool.add` is one committed transaction. With WAL and
``synchronous=NORMAL`` a committed transaction survives the process being killed
(SIGKILL, OOM, crash); after a power cut the last transactions before it may be
rolled back, never half-applied.

Size bound: when the pages in use exceed ``max_bytes`` the *oldest* readings are
deleted (whole batches, so a batch's content never changes under its id), counted
in :attr:`Spool.dropped` and logged at ERROR.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Sequence

log = logging.getLogger("webmacs.controller.spool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    value REAL NOT NULL,
    ts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_first_id ON batches (first_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

# After dropping, get down to this fraction of max_bytes, so a full spool drops in
# chunks rather than a few rows per submit.
DROP_TARGET = 0.9


class SpoolError(Exception):
    """The spool file cannot be opened or is in use by another process."""


@dataclass(frozen=True)
class Batch:
    batch_id: str
    first_id: int
    last_id: int
    n: int


class Spool:
    def __init__(self, path: str, max_bytes: int = 100 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0  # readings dropped because the spool was full (this process)
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        try:
            self._lock()
            db = sqlite3.connect(path, isolation_level=None, timeout=30)
            self._db = db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_size_limit=4194304")  # truncate the WAL to 4 MB after checkpoints
            db.executescript(SCHEMA)
            self.page_size = db.execute("PRAGMA page_size").fetchone()[0]
            self._cut = db.execute("SELECT coalesce(max(last_id), 0) FROM batches").fetchone()[0]
            self.pending = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            self.unassigned = db.execute("SELECT count(*) FROM readings WHERE id > ?", (self._cut,)).fetchone()[0]
        except sqlite3.Error as exc:
            self.close()
            raise SpoolError(f"cannot open spool {path}: {exc}") from None
        except SpoolError:
            self.close()
            raise
        # monotonic time since when unassigned readings have been waiting (0: long ago)
        self.unassigned_since = 0.0
        self._enforce_bound()

    def _lock(self) -> None:
        """One process per spool: two would send the same batches twice at once."""
        lock_path = self.path + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SpoolError(f"cannot open spool lock {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"spool {self.path} is in use by another process") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    @property
    def closed(self) -> bool:
        return self._db is None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError("spool is closed")
        return self._db

    # --- writing ---------------------------------------------------------------------------
    def add(self, rows: Sequence[tuple[str, float, str]], checkpoint: str | None = None) -> int:
        """Store ``(event_public_id, value, iso_timestamp)`` rows, and optionally a checkpoint
        string, in one committed transaction. Returns the number of rows stored."""
        if not rows and checkpoint is None:
            return 0
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO readings (event, value, ts) VALUES (?, ?, ?)", rows)
            if checkpoint is not None:
                db.execute("INSERT INTO meta (key, value) VALUES ('checkpoint', ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (checkpoint,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if rows:
            if self.unassigned == 0:
                self.unassigned_since = time.monotonic()
            self.pending += len(rows)
            self.unassigned += len(rows)
            self._enforce_bound()
        return len(rows)

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # --- batches ---------------------------------------------------------------------------
    def cut(self, max_size: int) -> Batch | None:
        """Put up to ``max_size`` of the oldest unassigned readings into a new batch."""
        if self.unassigned <= 0:
            return None
        db = self.db
        row = db.execute(
            "SELECT min(id), max(id), count(*) FROM (SELECT id FROM readings WHERE id > ? ORDER BY id LIMIT ?)",
            (self._cut, max_size)).fetchone()
        if not row or not row[2]:
            self.unassigned = 0
            return None
        first, last, n = row
        batch = Batch(uuid.uuid4().hex, first, last, n)
        db.execute("INSERT INTO batches (batch_id, first_id, last_id, n, created) VALUES (?, ?, ?, ?, ?)",
                   (batch.batch_id, first, last, n, time.time()))
        self._cut = last
        self.unassigned -= n
        if self.unassigned > 0:
            self.unassigned_since = time.monotonic()
        return batch

    def next_batch(self, exclude: Iterable[str] = ()) -> Batch | None:
        """The oldest cut batch whose id is not in ``exclude`` (the ones in flight)."""
        exclude = list(exclude)
        marks = ",".join("?" * len(exclude))
        where = f"WHERE batch_id NOT IN ({marks})" if exclude else ""
        row = self.db.execute(
            f"SELECT batch_id, first_id, last_id, n FROM batches {where} ORDER BY first_id LIMIT 1",
            exclude).fetchone()
        return Batch(*row) if row else None

    def batches(self) -> list[Batch]:
        return [Batch(*r) for r in self.db.execute(
            "SELECT batch_id, first_id, last_id, n FROM batches ORDER BY first_id")]

    def load(self, batch: Batch) -> list[dict]:
        """The datapoints of a batch, as sent."""
        return [{"event_public_id": e, "value": v, "timestamp": t} for e, v, t in self.db.execute(
            "SELECT event, value, ts FROM readings WHERE id BETWEEN ? AND ? ORDER BY id",
            (batch.first_id, batch.last_id))]

    def remove(self, batch_id: str) -> int:
        """Delete an acknowledged (or refused) batch and its readings; returns how many
        readings left the spool (0 when the batch is unknown, e.g. dropped meanwhile)."""
        db = self.db
        row = db.execute("SELECT first_id, last_id FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        if row is None:
            return 0
        db.execute("BEGIN IMMEDIATE")
        try:
            n = db.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", row).rowcount
            db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.pending -= n
        return n

    # --- size bound ------------------------------------------------------------------------
    def used_bytes(self) -> int:
        db = self.db
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * self.page_size

    def _enforce_bound(self) -> None:
        used = self.used_bytes()
        if used <= self.max_bytes:
            return
        db = self.db
        dropped_now, first_dropped, last_ts = 0, None, None
        while used > self.max_bytes * DROP_TARGET and self.pending > 0:
            # drop a share of the rows proportional to the excess (at least one batch's worth)
            share = (used - self.max_bytes * DROP_TARGET) / used
            k = max(1, min(self.pending, int(self.pending * share) + 1))
            row = db.execute("SELECT id FROM readings ORDER BY id LIMIT 1 OFFSET ?", (k - 1,)).fetchone()
            if row is None:
                break
            upto = row[0]
            inside = db.execute("SELECT last_id FROM batches WHERE first_id <= ? AND last_id > ?",
                                (upto, upto)).fetchone()
            if inside:  # never split a batch: its id names exactly its readings
                upto = inside[0]
            span = db.execute("SELECT min(ts), max(ts) FROM readings WHERE id <= ?", (upto,)).fetchone()
            db.execute("BEGIN IMMEDIATE")
            try:
                n = db.execute("DELETE FROM readings WHERE id <= ?", (upto,)).rowcount
                db.execute("DELETE FROM batches WHERE last_id <= ?", (upto,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if first_dropped is None:
                first_dropped = span[0]
            last_ts = span[1]
            self.pending -= n
            self._cut = max(self._cut, upto)  # no reading <= upto is left to assign
            self.unassigned = db.execute("SELECT count(*) FROM readings WHERE id > ?", (self._cut,)).fetchone()[0]
            dropped_now += n
            used = self.used_bytes()
        if dropped_now:
            self.dropped += dropped_now
            log.error("SPOOL FULL (%s, limit %.1f MB): DROPPED the %d oldest unsent readings (%s .. %s); "
                      "%d readings dropped since start. The server has been unreachable too long or "
                      "WEBMACS_SPOOL_MAX_MB is too small.",
                      self.path, self.max_bytes / 1048576, dropped_now, first_dropped, last_ts, self.dropped)
