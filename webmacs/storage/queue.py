"""The durable ingest queue: a write-ahead log of accepted batches on the server's own disk.

A telemetry batch that passed validation and the linkage filter is appended here
(:meth:`IngestQueue.append`) and is *durable* once the log is fsynced; the writer
(:class:`webmacs.ingest.IngestPipeline`) drains it into ``datapoints`` in large
transactions. Layout of ``WEBMACS_INGEST_QUEUE_PATH``::

    <path>/<database key>/slot-<n>/queue.id        this queue's id (ingest_queue_state.queue_id)
                                    lock            flock'ed by the process using the slot
                                    <seq>.seg       segments, named by their first record's sequence

The database key is a hash of the database URL (without its password), so a queue is
only ever replayed into the database it was accepted for. Each server process takes
the first free slot (several workers on one machine each have their own).

A segment is a sequence of records ``[u32 body length][u32 crc32 of body][body]``;
the body is :data:`BODY_HEAD` (sequence number, experiment id, counts, time of
acceptance, sender and batch id lengths), the sender and batch id (UTF-8) and the rows
packed as :data:`ROW` (time in µs since the epoch, event id, value): 20 bytes a
reading. A torn record at the end of a segment (a crash in the middle of a write) is
cut off when the queue is opened.

Threads: :meth:`append` runs on the IOLoop and only encodes and buffers (no system
call). Every write, fsync, segment rotation and deletion runs on one I/O thread of
the queue's own, one after the other: the records appended while one fsync runs are
written and fsynced together by the next (group fsync). Records are handed to the
writer only once durable, and removed from disk once the database holds them (a
segment is deleted when its last record is committed).

Exactly once: sequence numbers only grow; the writer stores the highest committed one
in ``ingest_queue_state`` in the same transaction as the rows, so a replay after a
crash skips what is already in the database, whatever moment the crash hit.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import struct
import sys
import time
import uuid
import zlib
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

log = logging.getLogger("webmacs.queue")

RECORD_HEAD = struct.Struct("<II")  # body length, crc32(body)
BODY_HEAD = struct.Struct("<QqIIdHH")  # seq, experiment id (-1: none), accepted, rejected, accepted at, sender, batch id
ROW = struct.Struct("<qid")  # time (µs since the epoch), event id, value
SEGMENT_BYTES = 8 * 1024 * 1024  # a new segment is started past this size
MAX_SLOTS = 64
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_US = timedelta(microseconds=1)
_BIG_ENDIAN_HOST = sys.byteorder == "big"  # ROW is little-endian; array() is the host's order


class QueueFull(Exception):
    """The queue holds WEBMACS_INGEST_QUEUE_MAX_MB of uncommitted records."""


@dataclass(eq=False)
class Record:
    """One accepted batch. ``rows`` is packed (:data:`ROW`); ``durable`` resolves once it is fsynced."""

    seq: int
    experiment_id: int | None
    accepted: int
    rejected: int
    accepted_at: float  # time.time() at acceptance: the writer's lag is measured from it
    sender: str
    batch_id: str | None
    rows: bytes
    size: int = 0  # bytes on disk
    durable: asyncio.Future | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        return len(self.rows) // ROW.size

    def unpacked(self) -> Iterable[tuple[int, int, float]]:
        """``(µs since the epoch, event id, value)`` per row."""
        return ROW.iter_unpack(self.rows)


def pack_rows(rows: Iterable[tuple[datetime, int, float]]) -> bytes:
    """Rows as :data:`ROW` s, one by one (the format's definition; :func:`pack_columns` is the fast way)."""
    pack = ROW.pack
    return b"".join([pack((ts - EPOCH) // ONE_US, event_id, value) for ts, event_id, value in rows])


def _little_endian(column: array) -> bytes:
    if _BIG_ENDIAN_HOST:
        column.byteswap()
    return column.tobytes()


COLUMNS = {"time": (0, "q", 8), "event_id": (8, "i", 4), "value": (12, "d", 8)}  # ROW's fields


def column(rows: bytes, name: str) -> array:
    """One field of packed :data:`ROW` s as an array (``"time"``: µs since the epoch;
    ``"event_id"``, ``"value"``)."""
    offset, code, width = COLUMNS[name]
    data = bytearray(width * (len(rows) // ROW.size))
    for k in range(width):
        data[k::width] = rows[offset + k::ROW.size]
    values = array(code)
    values.frombytes(data)
    if _BIG_ENDIAN_HOST:
        values.byteswap()
    return values


def interleave(row_size: int, fields: Iterable[tuple[int, bytes, int]], n: int, row: bytes | None = None) -> bytearray:
    """``n`` rows of ``row_size`` bytes (each a copy of ``row``, zeros by default) with
    ``fields`` written into them: ``(offset in the row, the column's bytes, field width)``,
    byte by byte with extended slices — a few C loops per batch instead of a
    ``struct.pack`` per row."""
    out = bytearray(row * n if row is not None else row_size * n)
    for offset, column, width in fields:
        for k in range(width):
            out[offset + k::row_size] = column[k::width]
    return out


def pack_columns(times: int | list[int], event_ids: list[int], values: list[float]) -> bytes:
    """The same bytes as :func:`pack_rows`, from columns: ``times`` in µs since the
    epoch (one int: every row at that time)."""
    n = len(event_ids)
    t = array("q", [times]) * n if isinstance(times, int) else array("q", times)
    return bytes(interleave(ROW.size, ((0, _little_endian(t), 8), (8, _little_endian(array("i", event_ids)), 4),
                                       (12, _little_endian(array("d", values)), 8)), n))


def to_datetime(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def encode(rec: Record) -> bytes:
    sender = rec.sender.encode()
    batch = b"" if rec.batch_id is None else rec.batch_id.encode()
    body = b"".join((BODY_HEAD.pack(rec.seq, -1 if rec.experiment_id is None else rec.experiment_id, rec.accepted,
                                    rec.rejected, rec.accepted_at, len(sender),
                                    0xFFFF if rec.batch_id is None else len(batch)), sender, batch, rec.rows))
    return RECORD_HEAD.pack(len(body), zlib.crc32(body)) + body


def decode(body: bytes) -> Record:
    seq, exp, accepted, rejected, at, n_sender, n_batch = BODY_HEAD.unpack_from(body)
    pos = BODY_HEAD.size
    sender = body[pos:pos + n_sender].decode()
    pos += n_sender
    batch_id = None
    if n_batch != 0xFFFF:
        batch_id = body[pos:pos + n_batch].decode()
        pos += n_batch
    return Record(seq, None if exp < 0 else exp, accepted, rejected, at, sender, batch_id, body[pos:],
                  RECORD_HEAD.size + len(body))


def database_key(database_url: str) -> str:
    """A short stable name for a database URL, password left out."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an odd URL: hash it as written
        url = database_url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        url = "sqlite:///" + str(Path(url[len("sqlite:///"):]).expanduser().resolve())
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class _Segment:
    def __init__(self, path: Path, first: int, last: int, size: int) -> None:
        self.path, self.first, self.last, self.size = path, first, last, size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IngestQueue:
    """See the module docstring. ``open()`` (blocking, at start) before anything else."""

    def __init__(self, root: str, database_url: str, max_bytes: int) -> None:
        self.root = Path(root)
        self.database_url = database_url
        self.max_bytes = max_bytes
        self.dir: Path | None = None
        self.queue_id = ""
        self._lock_fd: int | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="webmacs-queue")
        # IOLoop state
        self.next_seq = 1
        self.pending: deque[Record] = deque()  # appended, not yet committed, in sequence order
        self.pending_bytes = 0
        self.durable_seq = 0  # every record up to this one is fsynced
        self.committed_seq = 0  # every record up to this one is in the database
        self._buffer: list[bytes] = []
        self._unsynced: list[Record] = []
        self._syncing = False
        self._unsynced_records = 0  # appended, not yet fsynced (buffered or being written)
        self._unsynced_bytes = 0
        self._ready = asyncio.Event()  # durable records wait for the writer
        self._committed_waiters: list[tuple[int, asyncio.Future]] = []
        self._truncating = False
        self._closed = False
        # I/O thread state
        self._segments: list[_Segment] = []
        self._fd: int | None = None

    # --- start (blocking) ------------------------------------------------------------
    def claim(self) -> str:
        """Take a free slot for this process; returns its queue id."""
        base = self.root / database_key(self.database_url)
        base.mkdir(parents=True, exist_ok=True)
        for n in range(MAX_SLOTS):
            slot = base / f"slot-{n}"
            slot.mkdir(exist_ok=True)
            fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._lock_fd, self.dir = fd, slot
            id_file = slot / "queue.id"
            if not id_file.exists():
                tmp = slot / "queue.id.tmp"
                tmp.write_text(uuid.uuid4().hex + "\n")
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, id_file)
                _fsync_dir(slot)
            self.queue_id = id_file.read_text().strip()
            return self.queue_id
        raise OSError(f"all {MAX_SLOTS} ingest queue slots under {base} are in use")

    def open(self, committed_seq: int) -> list[Record]:
        """Read the slot's segments: the records after ``committed_seq`` are pending again
        (replayed by the writer); torn tails are cut off; fully committed segments deleted."""
        assert self.dir is not None, "claim() first"
        self.committed_seq = self.durable_seq = committed_seq
        last_seq = committed_seq
        replay: list[Record] = []
        for path in sorted(self.dir.glob("*.seg")):
            first = int(path.stem)
            data = path.read_bytes()
            pos, seg_last = 0, first - 1
            while pos + RECORD_HEAD.size <= len(data):
                length, crc = RECORD_HEAD.unpack_from(data, pos)
                body = data[pos + RECORD_HEAD.size:pos + RECORD_HEAD.size + length]
                if len(body) < length or zlib.crc32(body) != crc or length < BODY_HEAD.size:
                    break
                rec = decode(body)
                pos += rec.size
                seg_last = rec.seq
                if rec.seq > committed_seq:
                    replay.append(rec)
            if pos < len(data):
                log.warning("ingest queue: cut a torn record (%d bytes) off the end of %s", len(data) - pos, path)
                with open(path, "r+b") as fh:
                    fh.truncate(pos)
                    os.fsync(fh.fileno())
            last_seq = max(last_seq, seg_last)
            self._segments.append(_Segment(path, first, seg_last, pos))
        self.next_seq = last_seq + 1
        for rec in replay:
            self.pending.append(rec)
            self.pending_bytes += rec.size
        self.durable_seq = last_seq
        self._delete_committed(committed_seq)
        if replay:
            self._ready.set()
            log.warning("ingest queue %s: replaying %d batches (%d readings) not yet in the database",
                        self.dir, len(replay), sum(r.count for r in replay))
        return replay

    # --- the IOLoop side ----------------------------------------------------------------
    def append(self, rows: bytes, experiment_id: int | None, accepted: int, rejected: int, sender: str,
               batch_id: str | None) -> Record:
        """Buffer one record (no I/O here); raises :class:`QueueFull` past the bound.
        ``record.durable`` resolves once it is fsynced."""
        if self._closed:
            raise QueueFull("ingest queue closed")
        rec = Record(self.next_seq, experiment_id, accepted, rejected, time.time(), sender, batch_id, rows)
        data = encode(rec)
        rec.size = len(data)
        if self.pending_bytes + rec.size > self.max_bytes:
            raise QueueFull()
        self.next_seq += 1
        rec.durable = asyncio.get_running_loop().create_future()
        self._buffer.append(data)
        self._unsynced.append(rec)
        self.pending.append(rec)
        self.pending_bytes += rec.size
        self._unsynced_records += 1
        self._unsynced_bytes += rec.size
        if not self._syncing:
            self._syncing = True
            asyncio.get_running_loop().call_soon(self._start_sync)
        return rec

    def _start_sync(self) -> None:
        data, recs = b"".join(self._buffer), self._unsynced
        self._buffer, self._unsynced = [], []
        fut = asyncio.get_running_loop().run_in_executor(self._io, self._write, data, recs[0].seq, recs[-1].seq)
        fut.add_done_callback(lambda f: self._synced(f, recs))

    def _synced(self, fut: asyncio.Future, recs: list[Record]) -> None:
        exc = fut.exception()
        self._unsynced_records -= len(recs)
        self._unsynced_bytes -= sum(r.size for r in recs)
        if exc is not None:
            log.error("ingest queue: write failed, %d batches not stored: %s", len(recs), exc)
            failed = set(map(id, recs))
            kept = [r for r in self.pending if id(r) not in failed]
            self.pending = deque(kept)
            self.pending_bytes = sum(r.size for r in kept)
        else:
            self.durable_seq = recs[-1].seq
            self._ready.set()
        for rec in recs:
            if not rec.durable.done():
                if exc is None:
                    rec.durable.set_result(True)
                else:
                    rec.durable.set_exception(OSError(str(exc)))
        if self._buffer:
            self._start_sync()
        else:
            self._syncing = False

    def take(self, max_rows: int) -> list[Record]:
        """The oldest durable uncommitted records, about ``max_rows`` readings (at least one
        record); they stay pending until :meth:`committed`."""
        out, n = [], 0
        for rec in self.pending:
            if rec.seq > self.durable_seq or (out and n + rec.count > max_rows):
                break
            out.append(rec)
            n += rec.count
        if not out:
            self._ready.clear()
        return out

    async def wait_ready(self, timeout: float) -> None:
        """Until a durable record waits for the writer (or ``timeout`` s)."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def committed(self, seq: int) -> list[Record]:
        """The writer committed every record up to ``seq``: drop them (and their segments)."""
        done = []
        while self.pending and self.pending[0].seq <= seq:
            rec = self.pending.popleft()
            self.pending_bytes -= rec.size
            done.append(rec)
        self.committed_seq = max(self.committed_seq, seq)
        still = []
        for want, fut in self._committed_waiters:
            if want <= self.committed_seq:
                if not fut.done():
                    fut.set_result(True)
            else:
                still.append((want, fut))
        self._committed_waiters = still
        if not self._truncating:
            self._truncating = True
            fut = asyncio.get_running_loop().run_in_executor(self._io, self._delete_committed, self.committed_seq)
            fut.add_done_callback(self._truncated)
        return done

    def _truncated(self, fut: asyncio.Future) -> None:
        self._truncating = False
        if fut.exception() is not None:
            log.warning("ingest queue: could not delete committed segments: %s", fut.exception())

    async def wait_committed(self, seq: int) -> None:
        if seq <= self.committed_seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._committed_waiters.append((seq, fut))
        await fut

    def depth(self) -> tuple[int, int, float]:
        """(records, bytes) durable and not yet committed, and the seconds since the oldest
        uncommitted record was accepted."""
        lag = time.time() - self.pending[0].accepted_at if self.pending else 0.0
        return (len(self.pending) - self._unsynced_records, self.pending_bytes - self._unsynced_bytes,
                max(0.0, lag))

    def close(self) -> None:
        """No more appends; the I/O thread closes the files and frees the slot after the
        write it may be doing (so everything acknowledged is on disk)."""
        if self._closed:
            return
        self._closed = True
        self._io.submit(self._close_files)
        self._io.shutdown(wait=False)

    # --- the I/O thread ---------------------------------------------------------------------
    def _write(self, data: bytes, first: int, last: int) -> None:
        seg = self._segments[-1] if self._segments else None
        if self._fd is None or seg is None or seg.size >= SEGMENT_BYTES:
            if self._fd is not None:
                os.close(self._fd)
            path = self.dir / f"{first:020d}.seg"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            seg = _Segment(path, first, first - 1, os.fstat(self._fd).st_size)
            self._segments.append(seg)
            _fsync_dir(self.dir)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            os.close(self._fd)  # what reached the file may be torn: the next write starts a new segment
            self._fd = None
            raise
        seg.size += len(data)
        seg.last = last

    def _delete_committed(self, seq: int) -> None:
        keep = []
        for i, seg in enumerate(self._segments):
            active = i == len(self._segments) - 1 and self._fd is not None
            if seg.last <= seq and not active:
                seg.path.unlink(missing_ok=True)
            else:
                keep.append(seg)
        self._segments = keep

    def _close_files(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
