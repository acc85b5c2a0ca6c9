#!/usr/bin/env python
"""Ingest load generator for webmacs: controllers -> server -> database -> subscribers.

One run, bounded in count and time, loopback only, stops by itself:

1. a scratch database (PostgreSQL/TimescaleDB ``webmacs_bench`` cloned from
   ``webmacs_test``, or an SQLite file), migrated with ``webmacs migrate``;
2. the server as a real subprocess (``python -m webmacs serve --port <free>``),
   or ``--url`` of one already running;
3. login, N sensors linked to one enabled ``simulated`` plugin instance (REST),
   and a running experiment (so rows carry an ``experiment_id`` as in the lab);
4. D stream subscribers (``/ws/datapoints/stream``) in one worker process and
   C controllers (``/ws/controller/telemetry``) in another, so the generator,
   the subscribers and the orchestrator (RSS/CPU sampler) do not share a GIL;
5. controllers send batches of B datapoints, pre-encoded (only the value, which
   is the send time in epoch ms, and the batch_id are spliced in per batch):
   - ``--rate R``: R datapoints/s in total, paced on an absolute schedule,
     spec frames (no batch_id) unless ``--ack``;
   - ``--rate 0``: flat out with the opt-in ack protocol (``batch_id`` per
     batch) and a window of W unacknowledged batches per connection, so what
     is measured is *persisted* throughput;
6. subscribers compute latency = receive time - value for every point of every
   ``datapoints_batch`` frame (the server sends the latest value per event
   every 200 ms), and for subscriber 0 split it at the server's timestamp;
7. the server's VmRSS is sampled every 100 ms; CPU seconds of the server, the
   workers and all ``postgres`` processes are read from /proc;
8. raw ``COPY`` of as many rows, same columns, into the same table, from this
   process with psycopg2: in batches of B rows with one commit each (what the
   server does per batch) and as one COPY (the database's ceiling);
9. bytes per datapoint on disk (``hypertable_size``, or
   ``pg_total_relation_size`` when not a hypertable), after topping the table
   up with COPY to ``--min-rows`` rows if the run stored fewer.

Usage (from the repository root)::

    .venv/bin/python benchmarks/ingest_bench.py --controllers 4 --batch 500 --rate 0 \
        --subscribers 10 --duration 25
    .venv/bin/python benchmarks/ingest_bench.py --rate 10000 --subscribers 100 --duration 30
    .venv/bin/python benchmarks/ingest_bench.py --db sqlite --rate 0 --duration 25

See benchmarks/README.md for results and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-password-1"
SECRET = "bench-secret-key-that-is-long-enough-0123456789abcdef"
# the repository's virtualenv, or (a git worktree without one) the interpreter running this
PYTHON = str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists() else sys.executable
HIST_RES_MS = 0.5  # latency histogram bucket width
HIST_MAX_MS = 60_000


# =====================================================================================
# small helpers
# =====================================================================================

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hist:
    """Fixed-width latency histogram (ms); cheap to fill, mergeable across processes."""

    def __init__(self, counts: list[int] | None = None) -> None:
        self.n_buckets = int(HIST_MAX_MS / HIST_RES_MS) + 1
        self.counts = counts or [0] * self.n_buckets
        self.total = sum(self.counts)
        self.negative = 0

    def add(self, ms: float) -> None:
        if ms < 0:
            self.negative += 1
            ms = 0.0
        i = int(ms / HIST_RES_MS)
        self.counts[i if i < self.n_buckets else self.n_buckets - 1] += 1
        self.total += 1

    def merge(self, other: "Hist") -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.total += other.total
        self.negative += other.negative

    def pct(self, p: float) -> float | None:
        if not self.total:
            return None
        rank = math.ceil(p / 100 * self.total)
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return (i + 0.5) * HIST_RES_MS
        return HIST_MAX_MS

    def summary(self) -> dict:
        return {"count": self.total, "p50": self.pct(50), "p95": self.pct(95), "p99": self.pct(99),
                "max": self.pct(100), "negative": self.negative}

    def dump(self) -> dict:
        return {"sparse": {i: c for i, c in enumerate(self.counts) if c}, "negative": self.negative}

    @classmethod
    def load(cls, d: dict) -> "Hist":
        h = cls()
        for i, c in d["sparse"].items():
            h.counts[int(i)] = c
        h.total = sum(h.counts)
        h.negative = d["negative"]
        return h


def fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def proc_cpu_seconds(pid: int, which: str = "both") -> float:
    """utime + stime (or only "user" / "system") of one process, in seconds (0 when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        user, system = int(fields[11]), int(fields[12])
        ticks = user if which == "user" else system if which == "system" else user + system
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    total = sum(fields) / hz
    idle = (fields[3] + fields[4]) / hz
    return total - idle, total


def postgres_cpu_by_pid() -> dict[int, float]:
    """CPU seconds of every process named ``postgres`` (backends, WAL writer, ...)."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        name = raw[raw.find("(") + 1:raw.rfind(")")]
        if name == "postgres":
            fields = raw.rsplit(")", 1)[1].split()
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def our_postgres_pids(database_url: str | None) -> set[int] | None:
    """Backends of our database plus the cluster's shared processes (WAL writer,
    checkpointer, ...), so other databases' test runs are not counted."""
    if not database_url or not database_url.startswith("postgresql"):
        return None
    conn = pg_connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the workers of ``webmacs serve --workers N``)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def rss_settle(pid: int, idle_kb: int, seconds: float, margin_kb: int = 50 * 1024) -> dict:
    """Server VmRSS every second for ``seconds`` after the run (everything committed,
    clients idle): when it first came within ``margin_kb`` of its idle RSS, and where it ended."""
    start, samples, within = time.monotonic(), [], None
    while time.monotonic() - start < seconds:
        kb = vmrss_kb(pid)
        if kb is None:
            break
        t = time.monotonic() - start
        samples.append((round(t, 1), kb))
        if within is None and kb <= idle_kb + margin_kb:
            within = t
        time.sleep(1.0)
    return {"idle_kb": idle_kb, "margin_kb": margin_kb, "within_margin_after_s": within,
            "end_kb": samples[-1][1] if samples else None, "samples": samples}


def vmrss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until the machine is less than ``threshold`` busy over
    2 s (other engineers run tests on the same 2 cores); return the last busy share."""
    deadline = time.time() + max_wait
    n = 0
    while True:
        b0, t0 = machine_cpu()
        time.sleep(2)
        b1, t1 = machine_cpu()
        busy = (b1 - b0) / max(1e-9, t1 - t0)
        if busy < threshold or time.time() >= deadline:
            return busy
        if n % 15 == 0:
            log(f"machine {busy:.0%} busy with other work; waiting (up to {deadline - time.time():.0f} s more)")
        n += 1


def code_state() -> str:
    """HEAD and the server files changed since (the tree is shared and moving)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--short", "--", "webmacs", "migrations"], cwd=REPO,
                               capture_output=True, text=True).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
        return f"{head}" + (f" + uncommitted changes in {len(dirty)} server files" if dirty else "")
    except OSError:
        return "?"


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


# =====================================================================================
# worker processes (controllers, subscribers): JSON config on argv, line protocol on
# stdin/stdout ("READY", then "GO <t0>" / "STOP", then "RESULT <json>")
# =====================================================================================

async def _readline() -> str:
    loop = asyncio.get_running_loop()
    return (await loop.run_in_executor(None, sys.stdin.readline)).strip()


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _connect(url: str, max_message_size: int = 64 * 1024 * 1024, compress: bool = False):
    from tornado.websocket import websocket_connect

    # compress: offer permessage-deflate as browsers do (the server may accept it on the stream)
    conn = await websocket_connect(url, max_message_size=max_message_size, connect_timeout=30,
                                   compression_options={} if compress else None)
    if "/telemetry" in url:  # the telemetry endpoint greets no one: a pong proves the token
        await conn.write_message('{"type":"ping"}')
    first = await asyncio.wait_for(conn.read_message(), 30)
    if first is None or json.loads(first).get("type") not in ("connected", "pong"):
        raise RuntimeError(f"{url.split('?')[0]}: not connected: {first!r} "
                           f"(close {conn.close_code} {conn.close_reason})")
    return conn


class FrameBuilder:
    """Pre-encoded batches of one controller: per batch only the batch_id and the value
    (and, with ``timestamps``, one timestamp per point) are spliced in.

    Points cycle through the controller's own events; batch k starts at event
    (k * B) % n, so every event gets the same share of points whatever B and n are.
    The value of every point of a batch is the batch's send time in epoch ms."""

    def __init__(self, events: list[str], batch: int, timestamps: bool) -> None:
        self.events = events
        self.batch = batch
        self.timestamps = timestamps
        self._cache: dict[int, list[str]] = {}

    def _parts(self, offset: int) -> list[str]:
        parts = self._cache.get(offset)
        if parts is None:
            n = len(self.events)
            if self.timestamps:  # one tail per point: '","event_public_id":"..."}' joined by the caller
                parts = [f',"event_public_id":"{self.events[(offset + j) % n]}"}}' for j in range(self.batch)]
            else:
                parts = ['{"value":']
                for j in range(self.batch):
                    ev = self.events[(offset + j) % n]
                    tail = "}]}" if j == self.batch - 1 else '},{"value":'
                    parts.append(f',"event_public_id":"{ev}"{tail}')
            self._cache[offset] = parts
        return parts

    def warm(self) -> None:
        for k in range(len(self.events)):
            self._parts((k * self.batch) % len(self.events))

    def frame(self, k: int, now: float, batch_id: str | None) -> str:
        parts = self._parts((k * self.batch) % len(self.events))
        value = f"{now * 1000:.3f}"
        head = f'{{"batch_id":"{batch_id}","datapoints":[' if batch_id is not None else '{"datapoints":['
        if not self.timestamps:
            return head + value.join(parts)
        # point j is stamped (B-1-j) µs before the send time: distinct, rising, last = now
        first = now - (self.batch - 1) * 1e-6
        body = ",".join([f'{{"value":{value},"timestamp":{first + j * 1e-6:.6f}{tail}'
                         for j, tail in enumerate(parts)])
        return head + body + "]}"


async def controllers_worker(cfg: dict) -> dict:
    url = f"{cfg['ws_base']}/ws/controller/telemetry?token={cfg['token']}"
    n_conn, batch, rate, window = cfg["controllers"], cfg["batch"], cfg["rate"], cfg["window"]
    flat_out = rate == 0
    use_ack = flat_out or cfg["ack"]
    # each controller owns its share of the sensors, as real controllers do
    builders = [FrameBuilder(cfg["events"][i::n_conn] or cfg["events"], batch, cfg["timestamps"])
                for i in range(n_conn)]
    for b in builders:  # pre-encode before the clock starts
        b.warm()
    conns = [await _connect(url) for _ in range(n_conn)]
    _emit("READY")
    line = await _readline()
    assert line.startswith("GO "), line
    t0 = float(line.split()[1])
    cpu0 = time.process_time()
    duration = cfg["duration"]
    t_end = t0 + duration
    run = uuid.uuid4().hex[:8]

    stats = {"sent_points": 0, "sent_batches": 0, "acked_points": 0, "acked_batches": 0, "rejected": 0,
             "errors": 0, "error_samples": [], "last_send": 0.0, "last_ack": 0.0, "late_sends": 0,
             "max_lateness_ms": 0.0, "closed": 0}
    ack_hist = Hist()

    async def one(ci: int, conn) -> None:
        builder = builders[ci]
        pending: dict[str, float] = {}
        sem = asyncio.Semaphore(window) if flat_out else None
        done_sending = asyncio.Event()

        async def reader() -> None:
            while True:
                msg = await conn.read_message()
                if msg is None:
                    stats["closed"] += 1
                    if sem is not None:
                        for _ in range(window):
                            sem.release()
                    return
                now = time.time()
                d = json.loads(msg)
                kind = d.get("type")
                bid = d.get("batch_id")
                if kind == "ack":
                    sent_at = pending.pop(bid, None)
                    if sent_at is not None:
                        ack_hist.add((now - sent_at) * 1000)
                    stats["acked_points"] += d.get("accepted", 0)
                    stats["rejected"] += d.get("rejected", 0)
                    stats["acked_batches"] += 1
                    stats["last_ack"] = max(stats["last_ack"], now)
                    if sem is not None:
                        sem.release()
                elif kind == "error":
                    stats["errors"] += 1
                    if len(stats["error_samples"]) < 5:
                        stats["error_samples"].append(d)
                    if bid is not None and pending.pop(bid, None) is not None and sem is not None:
                        sem.release()
                if done_sending.is_set() and not pending:
                    return

        rtask = asyncio.ensure_future(reader())
        k = 0
        if flat_out:
            while True:
                await sem.acquire()
                now = time.time()
                if now >= t_end or conn.protocol is None:
                    break
                bid = f"{run}-{ci}-{k}"
                pending[bid] = now
                await conn.write_message(builder.frame(k, now, bid))
                k += 1
                stats["sent_points"] += batch
                stats["sent_batches"] += 1
        else:
            interval = batch * n_conn / rate  # seconds between batches of one connection
            phase = interval * ci / n_conn
            while True:
                due = t0 + phase + k * interval
                if due >= t_end:
                    break
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.time()
                late = (now - due) * 1000
                if late > 5:
                    stats["late_sends"] += 1
                stats["max_lateness_ms"] = max(stats["max_lateness_ms"], late)
                bid = f"{run}-{ci}-{k}" if use_ack else None
                if bid is not None:
                    pending[bid] = now
                await conn.write_message(builder.frame(k, now, bid))
                k += 1
                stats["sent_points"] += batch
                stats["sent_batches"] += 1
        stats["last_send"] = max(stats["last_send"], time.time())
        done_sending.set()
        if use_ack and pending:
            try:
                await asyncio.wait_for(rtask, cfg["drain_timeout"])
            except asyncio.TimeoutError:
                stats["errors"] += len(pending)
                stats["error_samples"].append({"unacked_after_drain": len(pending)})
        if not rtask.done():
            rtask.cancel()

    start = time.time()
    await asyncio.gather(*(one(i, c) for i, c in enumerate(conns)))
    for c in conns:
        c.close()
    await asyncio.sleep(0.05)
    stats["t0"] = t0
    stats["started"] = start
    stats["cpu_s"] = time.process_time() - cpu0
    stats["ack_latency"] = ack_hist.summary()
    return stats


async def subscribers_worker(cfg: dict) -> dict:
    url = f"{cfg['ws_base']}/ws/datapoints/stream?token={cfg['token']}"
    n = cfg["subscribers"]
    conns = []
    for i in range(0, n, 20):  # connect in waves: each open() authenticates on the DB executor
        conns += await asyncio.gather(*(_connect(url, compress=cfg.get("compress", False))
                                        for _ in range(min(20, n - i))))
    stats = {"compressed": sum(1 for c in conns if c.protocol._compressor is not None)}
    _emit("READY")
    line = await _readline()
    assert line.startswith("GO "), line
    t0_ms = float(line.split()[1]) * 1000
    cpu0 = time.process_time()

    hist, ingest_hist, fanout_hist = Hist(), Hist(), Hist()
    stats.update({"frames": 0, "points": 0, "bytes": 0, "closed_by_server": 0, "close_codes": {}})
    parse_ts = datetime.fromisoformat

    async def reader(i: int, conn) -> None:
        split = i == 0 and not cfg["timestamps"]  # with client timestamps the server stamp is the client's
        while True:
            msg = await conn.read_message()
            if msg is None:
                if conn.close_code not in (None, 1000, 1005):
                    stats["closed_by_server"] += 1
                    key = f"{conn.close_code} {conn.close_reason}"
                    stats["close_codes"][key] = stats["close_codes"].get(key, 0) + 1
                return
            now_ms = time.time() * 1000
            if not msg.startswith('{"type":"datapoints_batch"'):
                continue
            stats["frames"] += 1
            stats["bytes"] += len(msg)
            for p in json.loads(msg)["datapoints"]:
                v = p["value"]
                if v < t0_ms:
                    continue
                stats["points"] += 1
                hist.add(now_ms - v)
                if split:
                    ts = parse_ts(p["timestamp"]).timestamp() * 1000
                    ingest_hist.add(ts - v)
                    fanout_hist.add(now_ms - ts)

    tasks = [asyncio.ensure_future(reader(i, c)) for i, c in enumerate(conns)]
    ping_hist = Hist()
    if cfg.get("pinger"):  # the server's loop lag: a ping every 20 ms on a telemetry socket, pong RTT
        tel = await _connect(f"{cfg['ws_base']}/ws/controller/telemetry?token={cfg['token']}")

        async def pinger() -> None:
            while True:
                sent = time.perf_counter()
                await tel.write_message('{"type":"ping"}')
                if await tel.read_message() is None:
                    return
                ping_hist.add((time.perf_counter() - sent) * 1000)
                await asyncio.sleep(0.02)

        tasks.append(asyncio.ensure_future(pinger()))
    line = await _readline()
    assert line == "STOP", line
    stats["ping_rtt"] = ping_hist.summary()
    stats["cpu_s"] = time.process_time() - cpu0
    for c in conns:
        c.close()
    await asyncio.wait(tasks, timeout=5)
    stats["latency"] = hist.summary()
    stats["latency_hist"] = hist.dump()
    stats["split_ingest"] = ingest_hist.summary()
    stats["split_fanout"] = fanout_hist.summary()
    return stats


def worker_main(role: str) -> int:
    cfg = json.loads(sys.stdin.readline())
    fn = controllers_worker if role == "controllers" else subscribers_worker
    result = asyncio.run(fn(cfg))
    _emit("RESULT " + json.dumps(result))
    return 0


class Worker:
    def __init__(self, role: str, cfg: dict) -> None:
        self.role = role
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", role], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.proc.stdin.write(json.dumps(cfg) + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float) -> str:
        result: list[str] = []

        def read() -> None:
            result.append(self.proc.stdout.readline())

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        if not result or not result[0].startswith(word):
            self.proc.kill()
            raise RuntimeError(f"{self.role} worker: expected {word}, got {result[:1]!r} "
                               f"(exit {self.proc.poll()})")
        return result[0][len(word):].strip()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict:
        out = json.loads(self.expect("RESULT", timeout))
        self.proc.wait(10)
        return out


# =====================================================================================
# database side (orchestrator)
# =====================================================================================

def pg_connect(url: str):
    import psycopg2

    return psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1))


def drop_database(cur, name: str) -> None:
    """Drop a scratch database. Not ``WITH (FORCE)``: that must terminate TimescaleDB's
    background worker (a superuser process), which the webmacs role may not do; a plain
    DROP lets TimescaleDB stop its worker. Nobody else's session is terminated: if the
    database is still in use after a few seconds (another run?), give up."""
    import psycopg2

    for attempt in range(20):
        try:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            return
        except psycopg2.errors.ObjectInUse:
            time.sleep(0.5)
    raise SystemExit(f"cannot drop database {name}: it is in use (another benchmark run?)")


def drop_scratch_pg(base_url: str, name: str) -> None:
    admin = pg_connect(base_url.rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            drop_database(cur, name)
        log(f"dropped database {name}")
    finally:
        admin.close()


def create_scratch_pg(base_url: str, name: str, template: str, keep: bool, migrate: bool = True) -> str:
    import psycopg2

    prefix = base_url.rsplit("/", 1)[0]
    admin = pg_connect(f"{prefix}/postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user")
            if not cur.fetchone()[0]:
                raise SystemExit(f"role of {prefix} lacks CREATEDB: cannot create scratch database {name}")
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            exists = cur.fetchone() is not None
            if exists and not keep:
                drop_database(cur, name)
                exists = False
            if not exists:
                # the template must have no other session for a moment: take turns with the
                # test suite (tests/conftest.py holds the same advisory lock), and retry in
                # case something else is connected to it
                cur.execute("SELECT pg_advisory_lock(7245001)")
                try:
                    for attempt in range(240):
                        try:
                            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                            break
                        except psycopg2.errors.ObjectInUse:
                            if attempt == 239:
                                raise
                            time.sleep(0.25 + 0.25 * (attempt % 4))
                finally:
                    cur.execute("SELECT pg_advisory_unlock(7245001)")
                log(f"created database {name} from template {template}")
    finally:
        admin.close()
    url = f"{prefix}/{name}"
    if not migrate:
        return url
    env = dict(os.environ, WEBMACS_DATABASE_URL=url, WEBMACS_SECRET_KEY=SECRET)
    out = subprocess.run([str(REPO / ".venv/bin/webmacs"), "migrate"], env=env, cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"webmacs migrate failed:\n{out.stdout}{out.stderr}")
    log(f"migrated {name} ({out.stdout.strip()})")
    return url


class DB:
    """Direct access for counting, raw COPY and sizes (PostgreSQL or SQLite)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_pg = url.startswith("postgresql")
        if self.is_pg:
            self.conn = pg_connect(url)
            self.conn.autocommit = True
        else:
            import sqlite3

            self.conn = sqlite3.connect(url[len("sqlite:///"):], timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")

    def scalar(self, sql: str, args=()):
        cur = self.conn.cursor()
        cur.execute(sql, args)
        row = cur.fetchone()
        cur.close()
        return row[0] if row else None

    def count(self) -> int:
        return self.scalar("SELECT count(*) FROM datapoints")

    def is_hypertable(self) -> bool:
        if not self.is_pg:
            return False
        return bool(self.scalar("SELECT count(*) FROM pg_extension WHERE extname='timescaledb'")) and bool(
            self.scalar("SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name='datapoints'"))

    def event_ids(self, public_ids: list[str]) -> list[int]:
        cur = self.conn.cursor()
        ph = "%s" if self.is_pg else "?"
        ids = []
        for pid in public_ids:
            cur.execute(f"SELECT id FROM events WHERE public_id = {ph}", (pid,))
            ids.append(cur.fetchone()[0])
        cur.close()
        return ids

    # --- raw COPY ------------------------------------------------------------------
    @staticmethod
    def _rows_text(n: int, event_ids: list[int], exp: str, start: datetime, step_us: int) -> str:
        """n rows "time\\tevent_id\\tvalue\\texperiment_id\\n", events interleaved as the
        server writes them, times rising by step_us."""
        out = []
        ne = len(event_ids)
        base = start
        for i in range(n):
            ts = base + timedelta(microseconds=i * step_us)
            out.append(f"{ts.isoformat()}\t{event_ids[i % ne]}\t{1764000000000.0 + i * 0.001!r}\t{exp}\n")
        return "".join(out)

    def raw_copy_binary(self, n: int, event_ids: list[int], exp_id: int | None, start: datetime) -> dict:
        """n rows in one binary COPY and one commit (PostgreSQL): the format the server's
        writer uses (``webmacs.storage.datapoints``), so the ratio compares like with like.
        The bytes are built before the clock starts."""
        from webmacs.storage.datapoints import _COPY_HEADER, _COPY_ROW, _COPY_ROW_NULL, _COPY_TRAILER, _PG_EPOCH_US

        us0 = int((start - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)) - _PG_EPOCH_US
        ne = len(event_ids)
        if exp_id is None:
            rows = [_COPY_ROW_NULL.pack(4, 8, us0 + i * 20, 4, event_ids[i % ne], 8, 1764000000000.0 + i * 0.001, -1)
                    for i in range(n)]
        else:
            rows = [_COPY_ROW.pack(4, 8, us0 + i * 20, 4, event_ids[i % ne], 8, 1764000000000.0 + i * 0.001, 4, exp_id)
                    for i in range(n)]
        data = _COPY_HEADER + b"".join(rows) + _COPY_TRAILER
        conn = pg_connect(self.url)
        cur = conn.cursor()
        t = time.perf_counter()
        cur.copy_expert("COPY datapoints (time, event_id, value, experiment_id) FROM STDIN WITH (FORMAT binary)",
                        io.BytesIO(data))
        conn.commit()
        elapsed = time.perf_counter() - t
        cur.close()
        conn.close()
        return {"rows": n, "batch": None, "format": "binary", "seconds": elapsed, "rows_per_s": n / elapsed}

    def raw_copy(self, n: int, batch: int | None, event_ids: list[int], exp_id: int | None,
                 start: datetime) -> dict:
        """COPY n rows; batch=None: one COPY, one commit; else one COPY + commit per batch.
        The row text is built before the clock starts (the database's cost only)."""
        exp = "\\N" if exp_id is None else str(exp_id)
        step_us = 20
        chunks: list[str] = []
        size = batch or n
        for off in range(0, n, size):
            m = min(size, n - off)
            chunks.append(self._rows_text(m, event_ids, exp, start + timedelta(microseconds=off * step_us), step_us))
        if self.is_pg:
            conn = pg_connect(self.url)
            cur = conn.cursor()
            t = time.perf_counter()
            for chunk in chunks:
                cur.copy_expert("COPY datapoints (time, event_id, value, experiment_id) FROM STDIN",
                                io.StringIO(chunk))
                conn.commit()
            elapsed = time.perf_counter() - t
            cur.close()
            conn.close()
        else:
            import sqlite3

            conn = sqlite3.connect(self.url[len("sqlite:///"):], timeout=30)
            conn.execute("PRAGMA synchronous=NORMAL")
            params = []
            for chunk in chunks:
                rows = []
                for line in chunk.splitlines():
                    ts, ev, val, ex = line.split("\t")
                    dt = datetime.fromisoformat(ts).strftime("%Y-%m-%d %H:%M:%S.%f")
                    rows.append((dt, int(ev), float(val), None if ex == "\\N" else int(ex)))
                params.append(rows)
            t = time.perf_counter()
            for rows in params:
                conn.executemany("INSERT INTO datapoints (time, event_id, value, experiment_id) "
                                 "VALUES (?, ?, ?, ?)", rows)
                conn.commit()
            elapsed = time.perf_counter() - t
            conn.close()
        return {"rows": n, "batch": batch, "seconds": elapsed, "rows_per_s": n / elapsed if elapsed else None}

    def top_up(self, target: int, event_ids: list[int], exp_id: int | None) -> int:
        """COPY rows (same shape) until the table holds ``target`` rows; returns rows added."""
        have = self.count()
        need = target - have
        added = 0
        start = datetime.now(timezone.utc) - timedelta(hours=1)
        while need > 0:
            m = min(need, 200_000)
            self.raw_copy(m, None, event_ids, exp_id, start + timedelta(seconds=added * 20e-6))
            added += m
            need -= m
        return added

    def size(self) -> dict:
        rows = self.count()
        if not self.is_pg:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            path = Path(self.url[len("sqlite:///"):])
            total = path.stat().st_size
            try:  # dbstat is compiled into most SQLite builds
                cur = self.conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN "
                                        "('datapoints','ix_datapoints_event_time','ix_datapoints_time')")
                dp = cur.fetchone()[0]
            except Exception:  # noqa: BLE001
                dp = None
            b = dp or total
            return {"rows": rows, "method": "dbstat (table + indexes)" if dp else "file size",
                    "bytes": b, "bytes_per_row": b / rows if rows else None}
        if self.is_hypertable():
            cur = self.conn.cursor()
            cur.execute("SELECT table_bytes, index_bytes, toast_bytes, total_bytes "
                        "FROM hypertable_detailed_size('datapoints')")
            table_b, index_b, toast_b, total_b = cur.fetchone()
            cur.close()
            hsize = self.scalar("SELECT hypertable_size('datapoints')")
            chunks = self.scalar("SELECT count(*) FROM show_chunks('datapoints')")
            return {"rows": rows, "method": "hypertable_size('datapoints')", "bytes": hsize,
                    "bytes_per_row": hsize / rows if rows else None, "table_bytes": table_b,
                    "index_bytes": index_b, "toast_bytes": toast_b, "chunks": chunks}
        total = self.scalar("SELECT pg_total_relation_size('datapoints')")
        index = self.scalar("SELECT pg_indexes_size('datapoints')")
        return {"rows": rows, "method": "pg_total_relation_size('datapoints')", "bytes": total,
                "bytes_per_row": total / rows if rows else None, "index_bytes": index,
                "table_bytes": total - index}

    def close(self) -> None:
        self.conn.close()


# =====================================================================================
# server + REST setup
# =====================================================================================

class Server:
    def __init__(self, database_url: str, workdir: Path, pool_size: int | None, extra_env: dict,
                 switch_interval: float | None = None, wrapper: str | None = None, workers: int = 1) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({
            "WEBMACS_DATABASE_URL": database_url,
            "WEBMACS_SECRET_KEY": SECRET,
            "WEBMACS_INITIAL_ADMIN_EMAIL": ADMIN_EMAIL,
            "WEBMACS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "WEBMACS_LOG_LEVEL": "WARNING",
        })
        if pool_size:
            env["WEBMACS_DB_POOL_SIZE"] = str(pool_size)
        env.update(extra_env)
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")
        argv = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if workers != 1:
            argv += ["--workers", str(workers)]
        if wrapper:  # experiment only: the unchanged server with proposed changes patched in
            cmd = [PYTHON, str(Path(wrapper).resolve()), *argv]
        elif switch_interval is None:
            cmd = [PYTHON, "-m", "webmacs", *argv]
        else:  # experiment only: the unchanged server with another GIL switch interval
            cmd = [PYTHON, "-c",
                   f"import sys; sys.setswitchinterval({switch_interval}); from webmacs.cli import main; "
                   f"raise SystemExit(main({argv!r}))"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"server did not answer /health in {timeout}s")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


async def rest(method: str, url: str, body=None, token: str | None = None) -> tuple[int, dict]:
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "PUT") else None)
    resp = await AsyncHTTPClient().fetch(HTTPRequest(url, method=method, body=data, headers=headers,
                                                     request_timeout=60), raise_error=False)
    try:
        payload = json.loads(resp.body) if resp.body else {}
    except ValueError:
        payload = {"raw": resp.body[:200]}
    return resp.code, payload


def _data(body: dict) -> dict:
    """A write's resource: under "data" (the StatusResponse envelope), or the body itself."""
    return body["data"] if isinstance(body.get("data"), dict) else body


async def setup_sensors(base: str, email: str, password: str, n: int, experiment: bool) -> dict:
    code, body = await rest("POST", f"{base}/api/v1/auth/login", {"email": email, "password": password})
    if code != 200:
        raise SystemExit(f"login failed: {code} {body}")
    token = body["access_token"]
    tag = uuid.uuid4().hex[:6]
    code, inst = await rest("POST", f"{base}/api/v1/plugins",
                            {"plugin_id": "revpi", "instance_name": f"bench {tag}"}, token)
    if code != 201:
        raise SystemExit(f"plugin instance: {code} {inst}")
    instance = _data(inst)["public_id"]
    events = []
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        async with sem:
            code, ev = await rest("POST", f"{base}/api/v1/events",
                                  {"name": f"bench {tag} sensor {i}", "type": "sensor", "unit": "ms",
                                   "min_value": 0, "max_value": 1e15}, token)
            if code != 201:
                raise SystemExit(f"event: {code} {ev}")
            ev = _data(ev)
            code, ch = await rest("POST", f"{base}/api/v1/plugins/{instance}/channels", {
                "channel_id": f"bench{i}", "channel_name": f"Bench {i}", "direction": "input", "unit": "ms",
                "event_public_id": ev["public_id"]}, token)
            if code != 201:
                raise SystemExit(f"channel mapping: {code} {ch}")
            events.append((i, ev["public_id"]))

    await asyncio.gather(*(one(i) for i in range(n)))
    events.sort()
    exp_public = None
    if experiment:
        code, exps = await rest("GET", f"{base}/api/v1/experiments?page=1&page_size=100", token=token)
        for e in exps.get("data", []) if isinstance(exps, dict) else []:
            if e.get("status") == "running":
                await rest("PUT", f"{base}/api/v1/experiments/{e['public_id']}/stop", token=token)
        code, exp = await rest("POST", f"{base}/api/v1/experiments", {"name": f"bench {tag}"}, token)
        if code != 201:
            raise SystemExit(f"experiment: {code} {exp}")
        exp_public = _data(exp)["public_id"]
    return {"token": token, "events": [e for _, e in events], "experiment": exp_public, "instance": instance}


# =====================================================================================
# orchestration
# =====================================================================================

class PgWaits(threading.Thread):
    """``--pg-waits``: sample what the server's database sessions are doing every 10 ms
    (pg_stat_activity state and wait event). "idle in transaction" is time the database
    waits for the server (Python) between statements of a batch's transaction."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.conn = pg_connect(database_url)
        self.conn.autocommit = True
        self.stop_event = threading.Event()
        self.counts: dict[str, int] = {}
        self.samples = 0

    def run(self) -> None:
        cur = self.conn.cursor()
        while not self.stop_event.wait(0.01):
            cur.execute("SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = 'webmacs' "
                        "AND pid <> pg_backend_pid()")
            self.samples += 1
            for state, wtype, wevent in cur.fetchall():
                if state == "active":
                    key = f"active: {wtype}:{wevent}" if wtype else "active: on CPU (or runnable)"
                else:
                    key = state or "?"
                self.counts[key] = self.counts.get(key, 0) + 1
        cur.close()
        self.conn.close()

    def finish(self) -> dict:
        self.stop_event.set()
        self.join()
        n = max(1, self.samples)
        # average number of sessions in each state
        return {"samples": self.samples,
                "avg_sessions": {k: round(v / n, 3) for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1])}}


class Sampler(threading.Thread):
    """Server VmRSS every 100 ms (peak); CPU seconds of the server, of our database's
    postgres processes and of the whole machine (workers report their own)."""

    def __init__(self, server_pid: int | None, database_url: str | None) -> None:
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.database_url = database_url
        self.stop_event = threading.Event()
        self.rss_start = vmrss_kb(server_pid) if server_pid else None
        self.rss_peak = self.rss_start or 0
        self.rss_end = None
        # with --workers: the parent and its workers (RSS per worker, CPU summed)
        self.workers = children(server_pid) if server_pid else []
        self.worker_rss_peak = {pid: vmrss_kb(pid) or 0 for pid in self.workers}
        self.server0 = self._cpu()
        self.server_sys0 = self._cpu("system")
        self.pg0 = postgres_cpu_by_pid()
        self.machine0 = machine_cpu()
        self.t0 = time.monotonic()

    def _cpu(self, which: str = "both") -> float:
        pids = ([self.server_pid] if self.server_pid else []) + self.workers
        return sum(proc_cpu_seconds(pid, which) for pid in pids)

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            if self.server_pid:
                rss = vmrss_kb(self.server_pid)
                if rss:
                    self.rss_peak = max(self.rss_peak, rss)
            for pid in self.workers:
                self.worker_rss_peak[pid] = max(self.worker_rss_peak[pid], vmrss_kb(pid) or 0)

    def finish(self) -> dict:
        server = self._cpu() - self.server0
        server_sys = self._cpu("system") - self.server_sys0
        pg1 = postgres_cpu_by_pid()
        busy1, total1 = machine_cpu()
        wall = time.monotonic() - self.t0
        ours = our_postgres_pids(self.database_url)
        pg = sum(v - self.pg0.get(pid, 0.0) for pid, v in pg1.items() if ours is None or pid in ours)
        self.stop_event.set()
        self.join()
        if self.server_pid:
            self.rss_end = vmrss_kb(self.server_pid)
        return {"wall_s": wall,
                "cpu_s": {"server": server, "server_system": server_sys, "postgres": pg, "machine_busy": busy1 - self.machine0[0],
                          "machine_total": total1 - self.machine0[1]},
                "rss_kb": {"start": self.rss_start, "peak": self.rss_peak, "end": self.rss_end,
                           "worker_peaks": list(self.worker_rss_peak.values())}}


def cluster_processes(database_url: str) -> list[int]:
    """Pids of the PostgreSQL cluster serving ``database_url``: its postmaster and every child."""
    import psutil

    conn = pg_connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
    finally:
        conn.close()
    main = psutil.Process(backend).parent()
    return [main.pid, *(c.pid for c in main.children(recursive=True))]


def health_queue(base_url: str) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(base_url + "/health", timeout=5) as resp:
            return json.loads(resp.read()).get("ingest_queue")
    except (OSError, ValueError):
        return None


class Freezer(threading.Thread):
    """``--freeze-db S``: SIGSTOP the whole PostgreSQL cluster ``after`` s into the run for
    S s (its own cluster: use a private one), then SIGCONT; meanwhile /health's ingest queue
    every 0.25 s: its peak, and the time from the thaw until it is empty (catch-up)."""

    def __init__(self, database_url: str, base_url: str, t0: float, after: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.database_url, self.base_url = database_url, base_url
        self.t0, self.after, self.seconds = t0, after, seconds
        self.result: dict = {}
        self.pids = cluster_processes(database_url)

    def _signal(self, sig) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run(self) -> None:
        time.sleep(max(0.0, self.t0 + self.after - time.time()))
        peak_records = peak_bytes = 0
        frozen = time.monotonic()
        self._signal(signal.SIGSTOP)
        log(f"database cluster frozen ({len(self.pids)} processes) for {self.seconds:.0f} s")
        try:
            while time.monotonic() - frozen < self.seconds:
                q = health_queue(self.base_url)
                if q:
                    peak_records, peak_bytes = max(peak_records, q["records"]), max(peak_bytes, q["bytes"])
                time.sleep(0.25)
        finally:
            self._signal(signal.SIGCONT)
        thawed = time.monotonic()
        log("database cluster thawed")
        caught_up = None
        while time.monotonic() - thawed < 600:
            q = health_queue(self.base_url)
            if q:
                peak_records, peak_bytes = max(peak_records, q["records"]), max(peak_bytes, q["bytes"])
                if q["records"] == 0:
                    caught_up = time.monotonic() - thawed
                    break
            time.sleep(0.1)
        self.result = {"seconds": thawed - frozen, "queue_peak_records": peak_records,
                       "queue_peak_bytes": peak_bytes, "catch_up_s": caught_up}


class Backlog(threading.Thread):
    """Paced runs: /health's ingest queue every 0.5 s while the controllers send (one
    worker's queue when there are several). A backlog that grows shows as a queue deeper at
    the end than in the first third of the run."""

    def __init__(self, base_url: str, t0: float, duration: float) -> None:
        super().__init__(daemon=True)
        self.base_url, self.t0, self.duration = base_url, t0, duration
        self.samples: list[tuple[float, int, float]] = []  # (s into the run, batches queued, oldest s)

    def run(self) -> None:
        time.sleep(max(0.0, self.t0 - time.time()))
        while time.time() < self.t0 + self.duration:
            q = health_queue(self.base_url)
            if q:
                self.samples.append((round(time.time() - self.t0, 2), q["records"], q.get("writer_lag_seconds", 0.0)))
            time.sleep(0.5)

    def result(self) -> dict:
        third = [n for t, n, _ in self.samples if t <= self.duration / 3]
        last = [n for t, n, _ in self.samples if t >= self.duration * 2 / 3]
        return {"peak_records": max((n for _, n, _ in self.samples), default=0),
                "first_third_mean": sum(third) / len(third) if third else 0.0,
                "last_third_mean": sum(last) / len(last) if last else 0.0,
                "peak_lag_s": max((lag for *_, lag in self.samples), default=0.0), "samples": self.samples}


def wait_committed(db: "DB", rows_before: int, want: int, timeout: float) -> tuple[int, float]:
    """With the durable ingest queue an ack means "durable on the server's disk", not
    "committed": poll the table until it holds ``want`` new rows (or stops growing for 3 s
    when ``want`` is unknown); returns (rows, time.time() when the last of them was seen)."""
    deadline = time.monotonic() + timeout
    rows, seen_at, last_change = db.count() - rows_before, time.time(), time.monotonic()
    while time.monotonic() < deadline and (rows < want if want else time.monotonic() - last_change < 3):
        time.sleep(0.05)
        now = db.count() - rows_before
        if now != rows:
            rows, seen_at, last_change = now, time.time(), time.monotonic()
    return rows, seen_at


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="webmacs-bench-"))
    shm_queue = Path("/dev/shm") / f"webmacs-bench-queue-{os.getpid()}"  # --accept-only
    report: dict = {"args": vars(args), "machine": {"cpus": os.cpu_count(), "loadavg_before": loadavg()},
                    "code": code_state()}
    server = None
    db = None
    spy = None
    drop_after = None
    try:
        # --- database -------------------------------------------------------------
        if args.url:
            database_url = args.database_url
        elif args.db == "sqlite":
            database_url = f"sqlite:///{workdir / 'bench.db'}"
        else:
            base = args.pg_url or subprocess.run(["bash", str(REPO / "scripts/timescaledb.sh"), "url"],
                                                 capture_output=True, text=True, check=True).stdout.strip()
            scratch = args.pg_db or f"webmacs_bench_{os.getpid()}"
            database_url = create_scratch_pg(base, scratch, args.pg_template, args.keep_db)
            if not args.keep_db:
                drop_after = (base, scratch)
        report["database_url"] = re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", database_url or "")

        # --- server -----------------------------------------------------------------
        if args.url:
            base_url = args.url.rstrip("/")
            server_pid = args.server_pid
        else:
            extra_env = dict(kv.split("=", 1) for kv in args.server_env)
            wrapper = args.server_wrapper
            if args.accept_only:  # the accept path alone: writer paused, the queue on tmpfs and roomy
                wrapper = str(REPO / "benchmarks/experiments/patched_server.py")
                extra_env.update({"BENCH_WRITER_PAUSED": "1", "WEBMACS_INGEST_QUEUE_PATH": str(shm_queue),
                                  "WEBMACS_INGEST_QUEUE_MAX_MB": "65536"})
            server = Server(database_url, workdir, args.pool_size, extra_env, args.server_switch_interval,
                            wrapper, args.workers)
            server.wait_ready()
            base_url = server.base_url
            server_pid = server.pid
            log(f"server pid {server.pid} on {base_url} ({'sqlite' if args.db == 'sqlite' else 'postgresql'})")
        ws_base = base_url.replace("http://", "ws://", 1)
        setup = asyncio.run(setup_sensors(base_url, args.email, args.password, args.sensors, not args.no_experiment))
        log(f"{len(setup['events'])} linked sensors, experiment {setup['experiment']}")
        if database_url:
            db = DB(database_url)
            report["hypertable"] = db.is_hypertable()
            rows_before = db.count()

        # --- workers ----------------------------------------------------------------
        common = {"ws_base": ws_base, "token": setup["token"], "events": setup["events"]}
        subs = None
        if args.subscribers:
            subs = Worker("subscribers", {**common, "subscribers": args.subscribers, "timestamps": args.timestamps})
            subs.expect("READY", 120)
        ctl = Worker("controllers", {**common, "controllers": args.controllers, "batch": args.batch,
                                     "rate": args.rate, "window": args.window, "duration": args.duration,
                                     "ack": args.ack, "drain_timeout": args.drain_timeout,
                                     "timestamps": args.timestamps})
        ctl.expect("READY", 60)
        if args.wait_quiet:
            report["machine"]["busy_before"] = wait_quiet(args.wait_quiet, args.quiet_threshold)
        log(f"{args.subscribers} subscribers and {args.controllers} controllers connected; "
            f"load average {loadavg()}, machine busy {report['machine'].get('busy_before', 0):.0%}")
        if args.py_spy and server_pid:
            spy = subprocess.Popen([str(REPO / ".venv/bin/py-spy"), "record", "-p", str(server_pid),
                                    "-d", str(max(1, int(args.duration) - 1)), "-r", "100", "-f",
                                    args.py_spy_format, "-o", args.py_spy, *args.py_spy_args.split()],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sampler = Sampler(server_pid, database_url)
        sampler.start()
        waits = None
        if args.pg_waits and database_url and database_url.startswith("postgresql"):
            waits = PgWaits(database_url)
            waits.start()
        t0 = time.time() + 0.3
        freezer = None
        if args.freeze_db:
            freezer = Freezer(database_url, base_url, t0, args.freeze_after, args.freeze_db)
            freezer.start()
        backlog = None
        if args.rate:
            backlog = Backlog(base_url, t0, args.duration)
            backlog.start()
        if subs:
            subs.send(f"GO {t0}")
        ctl.send(f"GO {t0}")
        c = ctl.result(args.duration + args.drain_timeout + 60 + args.freeze_db)
        if freezer is not None:
            freezer.join(args.freeze_db + 660)
            report["freeze"] = freezer.result
        if backlog is not None:
            backlog.join(10)
            report["backlog"] = backlog.result()
        time.sleep(max(0.5, 2.5 * args.broadcast_wait))  # let the last flush reach subscribers
        resources = sampler.finish()
        if waits is not None:
            report["pg_waits"] = waits.finish()
        s = None
        if subs:
            subs.send("STOP")
            s = subs.result(60)
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()

        # --- throughput ---------------------------------------------------------------
        send_span = max(1e-9, c["last_send"] - c["t0"])
        report["controllers"] = {k: v for k, v in c.items() if k not in ("t0", "started")}
        report["offered_dp_s"] = c["sent_points"] / send_span
        if c["acked_batches"]:
            ack_span = max(1e-9, c["last_ack"] - c["t0"])
            report["persisted_acked_dp_s"] = c["acked_points"] / ack_span
        if db is not None and not args.accept_only:
            rows_run, committed_at = wait_committed(db, rows_before, c["acked_points"] if c["acked_batches"] else 0,
                                                    args.drain_timeout + 600)
            report["rows_persisted"] = rows_run
            end = max(committed_at, c["last_ack"] if c["acked_batches"] else c["last_send"])
            report["persisted_db_dp_s"] = rows_run / max(1e-9, end - c["t0"])
            report["drain_s"] = max(0.0, committed_at - (c["last_ack"] if c["acked_batches"] else c["last_send"]))
            if args.freeze_db:
                report["freeze"]["lost"] = c["sent_points"] - c["rejected"] - rows_run
        resources["cpu_s"]["controllers"] = c.get("cpu_s", 0.0)
        resources["cpu_s"]["subscribers"] = (s or {}).get("cpu_s", 0.0)
        resources["cpu_s"]["others"] = resources["cpu_s"]["machine_busy"] - sum(
            resources["cpu_s"][k] for k in ("server", "postgres", "controllers", "subscribers"))
        report["resources"] = resources
        if s is not None:
            report["subscribers"] = {k: v for k, v in s.items() if k != "latency_hist"}

        # --- memory after the burst: does the server give it back? ---------------------
        if args.rss_settle and sampler.server_pid:
            report["rss_settle"] = rss_settle(sampler.server_pid, resources["rss_kb"]["start"], args.rss_settle)
        # --- bytes per datapoint (before the raw COPY adds rows of its own) -------------
        if server is not None:
            report["server_exit"] = server.stop()
            server = None
        if db is not None and args.size:
            if args.min_rows and db.count() < args.min_rows:
                event_ids = db.event_ids(setup["events"])
                exp_id = db.scalar("SELECT id FROM experiments WHERE public_id = " + ("%s" if db.is_pg else "?"),
                                   (setup["experiment"],)) if setup["experiment"] else None
                added = db.top_up(args.min_rows, event_ids, exp_id)
                report["size_top_up_rows"] = added
                log(f"topped up with {added} COPY rows to {args.min_rows}")
            report["size"] = db.size()
        # --- raw COPY of the same number of rows ------------------------------------
        if db is not None and args.raw_copy and report.get("rows_persisted"):
            n = args.raw_rows or report["rows_persisted"]
            event_ids = db.event_ids(setup["events"])
            exp_id = db.scalar("SELECT id FROM experiments WHERE public_id = " + ("%s" if db.is_pg else "?"),
                               (setup["experiment"],)) if setup["experiment"] else None
            start = datetime.now(timezone.utc)
            # best of --raw-repeat: checkpoints and full-page writes make single runs noisy,
            # and the point is the database's capability
            batched = single = binary = None
            for rep in range(args.raw_repeat):
                log(f"raw COPY of {n} rows in batches of {args.batch} ({rep + 1}/{args.raw_repeat})")
                r = db.raw_copy(n, args.batch, event_ids, exp_id, start + timedelta(seconds=2 * rep * n * 20e-6))
                batched = r if batched is None or r["rows_per_s"] > batched["rows_per_s"] else batched
                log(f"raw COPY of {n} rows in one COPY ({rep + 1}/{args.raw_repeat})")
                r = db.raw_copy(n, None, event_ids, exp_id, start + timedelta(seconds=(2 * rep + 1) * n * 20e-6))
                single = r if single is None or r["rows_per_s"] > single["rows_per_s"] else single
                if db.is_pg:
                    log(f"raw binary COPY of {n} rows in one COPY ({rep + 1}/{args.raw_repeat})")
                    r = db.raw_copy_binary(n, event_ids, exp_id,
                                           start + timedelta(seconds=(2 * args.raw_repeat + rep) * n * 20e-6))
                    binary = r if binary is None or r["rows_per_s"] > binary["rows_per_s"] else binary
            server_rate = report["persisted_db_dp_s"]  # acks say "durable in the queue": count the table
            report["raw_copy"] = {"batched": batched, "single": single, "single_binary": binary,
                                  "ratio_vs_batched": server_rate / batched["rows_per_s"],
                                  "ratio_vs_single": server_rate / single["rows_per_s"],
                                  "ratio_vs_single_binary": server_rate / binary["rows_per_s"] if binary else None}

        report["machine"]["loadavg_after"] = loadavg()
        return report
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if server is not None:
            server.stop()
        if db is not None:
            db.close()
        if drop_after is not None:
            try:
                drop_scratch_pg(*drop_after)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - report, keep the results
                log(f"could not drop scratch database {drop_after[1]}: {exc}")
        shutil.rmtree(shm_queue, ignore_errors=True)
        if args.keep_workdir:
            log(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def print_report(r: dict) -> None:
    a = r["args"]
    mode = "flat out (ack window %d)" % a["window"] if a["rate"] == 0 else f"{a['rate']} dp/s offered"
    if a["url"] and not a["database_url"]:
        db = f"server at {a['url']} (database not inspected)"
    else:
        db = "sqlite" if r.get("database_url", "").startswith("sqlite") else (
            "timescaledb hypertable" if r.get("hypertable") else "postgresql")
    print()
    print(f"== webmacs ingest benchmark: {db}, {a['controllers']} controllers x batches of {a['batch']}, "
          f"{mode}, {a['subscribers']} subscribers, {a['sensors']} sensors, {a['duration']} s")
    print(f"   machine: {r['machine']['cpus']} CPUs shared by server, database and load generator; "
          + (f"busy {r['machine']['busy_before']:.0%} just before the run; " if "busy_before" in r["machine"] else "")
          + f"load avg before {r['machine']['loadavg_before']}, after {r['machine'].get('loadavg_after')}")
    print(f"   code: {r.get('code')}" + (f"; attempt {r['attempt']} (earlier ones were disturbed by other work)"
                                          if r.get("attempt", 1) > 1 else ""))
    c = r["controllers"]
    print(f"offered            {r['offered_dp_s']:>12,.0f} dp/s   ({c['sent_points']:,} dp in {c['sent_batches']:,} batches)")
    if "persisted_acked_dp_s" in r:
        print(f"acked (durable)    {r['persisted_acked_dp_s']:>12,.0f} dp/s   ({c['acked_points']:,} dp acknowledged: in the ingest queue)")
    if "persisted_db_dp_s" in r:
        print(f"persisted (DB)     {r['persisted_db_dp_s']:>12,.0f} dp/s   ({r['rows_persisted']:,} rows counted, "
              "until the table held them all)")
    if a.get("accept_only") and "persisted_acked_dp_s" in r:
        cpu = r["resources"]["cpu_s"]["server"] / r["resources"]["wall_s"]
        print(f"accept path alone  writer paused, queue on tmpfs: {r['persisted_acked_dp_s']:,.0f} dp/s acked at "
              f"server {cpu:.0%} of a core = {r['persisted_acked_dp_s'] / max(cpu, 1e-9):,.0f} dp/s per core")
    if "drain_s" in r:
        print(f"drain              {r['drain_s']:.2f} s from the last {'ack' if c['acked_batches'] else 'send'} "
              "until the table held every row")
    bl = r.get("backlog")
    if bl and bl["samples"]:
        print(f"ingest queue       /health every 0.5 s: peak {bl['peak_records']:,} batches, mean "
              f"{bl['first_third_mean']:.1f} in the first third, {bl['last_third_mean']:.1f} in the last; "
              f"oldest waiting ≤ {bl['peak_lag_s']:.2f} s")
    f = r.get("freeze")
    if f:
        catch = "never (within 600 s)" if f.get("catch_up_s") is None else f"{f['catch_up_s']:.1f} s"
        print(f"database freeze    {f['seconds']:.0f} s: lost {f.get('lost', '?')} readings; ingest queue peak "
              f"{f['queue_peak_records']:,} batches / {f['queue_peak_bytes'] / 1e6:.1f} MB; catch-up after the thaw {catch}")
    if c["acked_batches"]:
        al = c["ack_latency"]
        print(f"send->ack          P50 {fmt_ms(al['p50'])}  P95 {fmt_ms(al['p95'])}  P99 {fmt_ms(al['p99'])}")
    if a["rate"]:
        print(f"pacing             {c['late_sends']} sends > 5 ms late, max lateness {c['max_lateness_ms']:.1f} ms")
    if c["errors"] or c["rejected"] or c["closed"]:
        print(f"errors             {c['errors']} error replies, {c['rejected']} rejected points, "
              f"{c['closed']} controller sockets closed; samples {c['error_samples'][:3]}")
    s = r.get("subscribers")
    if s:
        lat = s["latency"]
        print(f"send->subscriber   P50 {fmt_ms(lat['p50'])}  P95 {fmt_ms(lat['p95'])}  P99 {fmt_ms(lat['p99'])}  "
              f"max {fmt_ms(lat['max'])}  ({lat['count']:,} point deliveries, {s['frames']:,} frames, "
              f"{s['bytes'] / 1e6:.1f} MB)")
        si, sf = s["split_ingest"], s["split_fanout"]
        if si["count"]:
            print(f"  split (sub 0)    send->server stamp P50 {fmt_ms(si['p50'])} P95 {fmt_ms(si['p95'])} | "
                  f"stamp->subscriber P50 {fmt_ms(sf['p50'])} P95 {fmt_ms(sf['p95'])}")
        if s["closed_by_server"]:
            print(f"  subscribers closed by server: {s['close_codes']}")
    res = r["resources"]
    rss = res["rss_kb"]
    if rss["peak"]:
        print(f"server RSS         peak {rss['peak'] / 1024:.1f} MiB (start {rss['start'] / 1024:.1f}, "
              f"end {(rss['end'] or 0) / 1024:.1f})")
    settle = r.get("rss_settle")
    if settle:
        within = settle["within_margin_after_s"]
        print(f"RSS after the run  {settle['end_kb'] / 1024:.1f} MiB after {settle['samples'][-1][0]:.0f} s "
              f"(idle {settle['idle_kb'] / 1024:.1f}); within idle + {settle['margin_kb'] // 1024} MiB "
              + (f"after {within:.0f} s" if within is not None else "never"))
    if rss.get("worker_peaks"):
        print("worker RSS peaks   " + ", ".join(f"{kb / 1024:.1f} MiB" for kb in rss["worker_peaks"]))
    cpu = res["cpu_s"]
    wall = res["wall_s"]
    print(f"CPU over {wall:.1f} s  (100% = one core; machine has {r['machine']['cpus']}) "
          f"server {cpu['server'] / wall:.0%} (kernel {cpu.get('server_system', 0) / wall:.0%}), postgres (our db + shared) {cpu['postgres'] / wall:.0%}, "
          f"controllers {cpu['controllers'] / wall:.0%}, subscribers {cpu['subscribers'] / wall:.0%}, "
          f"everything else {max(0.0, cpu['others']) / wall:.0%}; machine busy "
          f"{cpu['machine_busy'] / cpu['machine_total']:.0%}")
    w = r.get("pg_waits")
    if w:
        print("server's DB sessions (average number in each state, pg_stat_activity every 10 ms):")
        for k, v in w["avg_sessions"].items():
            if v >= 0.01:
                print(f"    {v:6.2f}  {k}")
    rc = r.get("raw_copy")
    if rc:
        b, s1 = rc["batched"], rc["single"]
        what = "COPY" if a["db"] != "sqlite" else "executemany"
        print(f"raw {what:<15}{b['rows_per_s']:>12,.0f} rows/s in batches of {b['batch']} (commit each), "
              f"{s1['rows_per_s']:,.0f} rows/s in one transaction ({b['rows']:,} rows, one process, "
              f"best of {a.get('raw_repeat', 1)})")
        print(f"{'server / raw ' + what:<18} {rc['ratio_vs_batched']:.0%} of batched, "
              f"{rc['ratio_vs_single']:.0%} of one transaction")
        if rc.get("single_binary"):
            print(f"raw binary COPY     {rc['single_binary']['rows_per_s']:>12,.0f} rows/s in one transaction "
                  f"(the writer's format): server {rc['ratio_vs_single_binary']:.0%} of it")
    z = r.get("size")
    if z:
        extra = ""
        if "index_bytes" in z:
            extra = (f" (heap {z.get('table_bytes', 0) / z['rows']:.1f} + indexes {z['index_bytes'] / z['rows']:.1f}"
                     + (f", {z['chunks']} chunks" if "chunks" in z else "") + ")")
        top = f", {r['size_top_up_rows']:,} of them COPY top-up" if r.get("size_top_up_rows") else ""
        print(f"bytes / datapoint  {z['bytes_per_row']:.1f} B{extra}  [{z['method']}, {z['rows']:,} rows{top}]")
    print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=("controllers", "subscribers"), help=argparse.SUPPRESS)
    p.add_argument("--db", choices=("pg", "sqlite"), default="pg", help="database of the started server")
    p.add_argument("--pg-url", help="any URL of the cluster (default: scripts/timescaledb.sh url)")
    p.add_argument("--pg-db", help="scratch database (default webmacs_bench_<pid>; created from the "
                                   "template, dropped at the end unless --keep-db)")
    p.add_argument("--pg-template", default="webmacs_test", help="template with the timescaledb extension")
    p.add_argument("--keep-db", action="store_true",
                   help="keep the scratch database at the end, and reuse --pg-db if it exists")
    p.add_argument("--url", help="benchmark a running server instead of starting one")
    p.add_argument("--database-url", help="with --url: its database, for row counts, raw COPY and size")
    p.add_argument("--server-pid", type=int, help="with --url: its pid, for RSS and CPU")
    p.add_argument("--email", default=ADMIN_EMAIL)
    p.add_argument("--password", default=ADMIN_PASSWORD)
    p.add_argument("--sensors", type=int, default=100, help="N linked events")
    p.add_argument("--controllers", type=int, default=4, help="C telemetry connections")
    p.add_argument("--batch", type=int, default=500, help="B datapoints per batch (max 500)")
    p.add_argument("--rate", type=float, default=0, help="R total datapoints/s; 0 = flat out with acks")
    p.add_argument("--window", type=int, default=4, help="unacknowledged batches per connection (flat out)")
    p.add_argument("--ack", action="store_true", help="send batch_id (acks) also when paced")
    p.add_argument("--timestamps", action="store_true",
                   help="give every point its own timestamp (distinct, as a sampling controller would); "
                        "default: spec frames, the server stamps the whole batch with one time")
    p.add_argument("--subscribers", type=int, default=10, help="D stream subscribers")
    p.add_argument("--duration", type=float, default=25, help="seconds of sending")
    p.add_argument("--drain-timeout", type=float, default=30, help="seconds to wait for outstanding acks")
    p.add_argument("--pool-size", type=int, help="WEBMACS_DB_POOL_SIZE of the started server")
    p.add_argument("--workers", type=int, default=1, help="`webmacs serve --workers N` (PostgreSQL only)")
    p.add_argument("--server-switch-interval", type=float, metavar="S",
                   help="experiment: start the server with sys.setswitchinterval(S) (default 0.005)")
    p.add_argument("--server-wrapper", metavar="PY",
                   help="experiment: start the server as `python PY serve ...` (see benchmarks/experiments/)")
    p.add_argument("--server-env", action="append", default=[], metavar="K=V",
                   help="extra environment for the started server (repeatable)")
    p.add_argument("--no-experiment", action="store_true", help="do not start an experiment (experiment_id NULL)")
    p.add_argument("--no-raw-copy", dest="raw_copy", action="store_false", help="skip the raw COPY comparison")
    p.add_argument("--raw-repeat", type=int, default=2, help="raw COPY runs of each kind; the best counts")
    p.add_argument("--accept-only", action="store_true",
                   help="the accept path alone: the server's queue writer paused (experiments/patched_server.py), "
                        "its queue on tmpfs; counts acks, not rows (flat out)")
    p.add_argument("--rss-settle", type=float, default=0, metavar="S",
                   help="after the run, sample the server's RSS for S s (does it return to idle + 50 MiB?)")
    p.add_argument("--raw-rows", type=int, default=0,
                   help="rows of each raw COPY (default: as many as the server stored; issue 21 uses 1,000,000)")
    p.add_argument("--no-size", dest="size", action="store_false", help="skip bytes per datapoint")
    p.add_argument("--min-rows", type=int, default=1_000_000,
                   help="top the table up with COPY to this many rows before measuring size (0: never)")
    p.add_argument("--pg-waits", action="store_true",
                   help="sample pg_stat_activity of the server's sessions every 10 ms (state, wait event)")
    p.add_argument("--py-spy", metavar="FILE", help="record the server with py-spy during the run")
    p.add_argument("--py-spy-format", default="speedscope", help="py-spy output format (flamegraph, raw, speedscope)")
    p.add_argument("--wait-quiet", type=float, default=600, metavar="S",
                   help="wait up to S s for the machine to be quiet before starting (0: don't)")
    p.add_argument("--quiet-threshold", type=float, default=0.25, metavar="F",
                   help="'quiet': the machine less than F busy over 2 s (default 0.25)")
    p.add_argument("--retry-noisy", type=int, default=2, metavar="N",
                   help="run again (up to N times) when other work used more than --noisy-threshold")
    p.add_argument("--noisy-threshold", type=float, default=0.10, metavar="F",
                   help="share of one core used by other processes during the run that makes it noisy")
    p.add_argument("--py-spy-args", default="--threads --idle", help="extra py-spy record arguments")
    p.add_argument("--freeze-db", type=float, default=0, metavar="S",
                   help="SIGSTOP the database cluster for S seconds during the run (a private cluster!): "
                        "readings lost, ingest queue peak, catch-up time")
    p.add_argument("--freeze-after", type=float, default=5, metavar="T", help="seconds into the run the freeze starts")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (server log)")
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if not 1 <= args.batch <= 500:
        p.error("--batch must be 1..500 (the server's limit)")
    if args.url and not args.database_url:
        args.raw_copy = args.size = False
    if args.accept_only:
        if args.url or args.rate:
            p.error("--accept-only starts its own server and runs flat out (--rate 0)")
        args.raw_copy = args.size = False
    args.broadcast_wait = 0.2
    if args.db == "sqlite" and not args.url:
        args.pg_db = None
    for attempt in range(args.retry_noisy + 1):
        report = run(args)
        cpu, wall = report["resources"]["cpu_s"], report["resources"]["wall_s"]
        others = max(0.0, cpu["others"]) / wall
        report["attempt"] = attempt + 1
        if others <= args.noisy_threshold or attempt == args.retry_noisy:
            break
        log(f"other work used {others:.0%} of a core during the run (> {args.noisy_threshold:.0%}): "
            f"running again ({attempt + 2}/{args.retry_noisy + 1})")
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
