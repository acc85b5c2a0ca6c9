"""The ingest queue's log: a segment file of our own vs SQLite in WAL mode (docs/ingest-queue.md).

Appends ``--records`` records of ``--rows`` packed readings (20 bytes each) in groups of
``--group`` records, one durable sync per group (the queue's group fsync), then reads
everything back and deletes it (what the writer's truncation does). Prints records/s
and the p50/p95 of one group's sync. Run: python benchmarks/experiments/queue_log_bench.py
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
import zlib


def segment(path: str, payloads: list[bytes], group: int) -> tuple[float, list[float], float]:
    fd = os.open(os.path.join(path, "0.seg"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    syncs = []
    t0 = time.perf_counter()
    for i in range(0, len(payloads), group):
        data = b"".join(len(p).to_bytes(4, "little") + zlib.crc32(p).to_bytes(4, "little") + p
                        for p in payloads[i:i + group])
        s = time.perf_counter()
        os.write(fd, data)
        os.fsync(fd)
        syncs.append(time.perf_counter() - s)
    write = time.perf_counter() - t0
    os.close(fd)
    t0 = time.perf_counter()
    with open(os.path.join(path, "0.seg"), "rb") as fh:
        data = fh.read()
    pos = n = 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "little")
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(body) == int.from_bytes(data[pos + 4:pos + 8], "little")
        pos += 8 + length
        n += 1
    os.unlink(os.path.join(path, "0.seg"))
    assert n == len(payloads)
    return write, syncs, time.perf_counter() - t0


def sqlite_wal(path: str, payloads: list[bytes], group: int) -> tuple[float, list[float], float]:
    db = sqlite3.connect(os.path.join(path, "q.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # durable at each commit, as the queue's acks need
    db.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    syncs = []
    t0 = time.perf_counter()
    seq = 0
    for i in range(0, len(payloads), group):
        s = time.perf_counter()
        db.execute("BEGIN")
        db.executemany("INSERT INTO q VALUES (?, ?)", [(seq + j, p) for j, p in enumerate(payloads[i:i + group])])
        db.execute("COMMIT")
        seq += group
        syncs.append(time.perf_counter() - s)
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in db.execute("SELECT body FROM q ORDER BY seq"))
    db.execute("DELETE FROM q")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert n == len(payloads)
    return write, syncs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--group", type=int, default=8)
    args = ap.parse_args()
    payloads = [os.urandom(60 + 20 * args.rows) for _ in range(args.records)]
    print(f"load average {os.getloadavg()[0]:.2f}; {args.records} records x {args.rows} readings, "
          f"{args.group} records per sync")
    for name, fn in (("segment file", segment), ("sqlite WAL", sqlite_wal)):
        with tempfile.TemporaryDirectory(dir=os.environ.get("QUEUE_BENCH_DIR")) as tmp:
            write, syncs, read = fn(tmp, payloads, args.group)
        q = statistics.quantiles(syncs, n=20)
        print(f"{name:13s} append {args.records / write:9.0f} records/s ({args.records * args.rows / write:10.0f} "
              f"readings/s), sync p50 {q[9] * 1000:.2f} ms p95 {q[18] * 1000:.2f} ms; "
              f"read back + delete {read * 1000:.0f} ms")


if __name__ == "__main__":
    main()
