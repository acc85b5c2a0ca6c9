#!/usr/bin/env python
"""Fan-out benchmark (issue 22): many passive dashboards, a few timed probes.

One run against a started server (``ingest_bench.Server``, SQLite by default):

1. N sensors (``ingest_bench.setup_sensors``); the server's idle RSS;
2. P passive dashboards on ``/ws/datapoints/stream`` in W worker processes: raw
   sockets, a minimal handshake and frame-header parsing only (asyncio protocols,
   no task per socket), counting the frames each receives; then the RSS again
   (KB per dashboard = the difference / P);
3. 10 probe dashboards (``ingest_bench`` subscribers worker: latency of every value,
   value = the controller's send time in epoch ms) and C controllers sending R dp/s
   with acks (``ingest_bench`` controllers worker: ack latency);
4. CPU of the server, the passive workers, the probes and the controllers; the
   server's flush count and mean flush time from ``/metrics``; frames each passive
   dashboard received against the flushes made.

Usage (repository root; run under ``flock /tmp/webmacs-bench.lock``)::

    python benchmarks/fanout_bench.py --passive 5000 --rate 1000 --sensors 500 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_bench as ib  # noqa: E402


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Passive(asyncio.Protocol):
    """One dashboard that only reads: handshake, then frame headers (payloads skipped);
    it answers the server's pings, as a browser does."""

    def __init__(self, request: bytes, ready: asyncio.Future) -> None:
        self.request, self.ready = request, ready
        self.compressed = False  # the server accepted permessage-deflate
        self.buf = b""
        self.handshaken = False
        self.skip = 0  # payload bytes of the current frame still to skip
        self.frames = 0  # text frames after the first ("connected")
        self.wire = 0  # bytes received (frames as sent: compressed when negotiated)
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.wire += len(data)
        if not self.handshaken:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(self.buf[:200]))
                return
            self.handshaken = True
            self.compressed = b"permessage-deflate" in self.buf[:end].lower()
            data, self.buf = self.buf[end + 4:], b""
        buf = self.buf + data if self.buf else data
        i, n = 0, len(buf)
        while True:
            if self.skip:
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                if self.skip:
                    break
            if n - i < 2:
                break
            b0, b1 = buf[i], buf[i + 1] & 0x7F
            head = 2
            if b1 == 126:
                if n - i < 4:
                    break
                b1, head = int.from_bytes(buf[i + 2:i + 4], "big"), 4
            elif b1 == 127:
                if n - i < 10:
                    break
                b1, head = int.from_bytes(buf[i + 2:i + 10], "big"), 10
            i += head
            self.skip = b1
            opcode = b0 & 0x0F
            if opcode == 1:
                if not self.ready.done():
                    self.ready.set_result(None)
                else:
                    self.frames += 1
            elif opcode == 8:
                self.closed = True
            elif opcode == 9:  # the server's keep-alive ping: answered as a browser does, or it closes us
                body = bytes(buf[i:i + b1]) if n - i >= b1 else b""
                mask = os.urandom(4)
                self.transport.write(bytes((0x8A, 0x80 | len(body))) + mask
                                     + bytes(c ^ mask[k % 4] for k, c in enumerate(body)))
        self.buf = buf[i:] if i < n else b""

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(RuntimeError("closed"))


async def passive_worker(cfg: dict) -> dict:
    raise_nofile()
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws/datapoints/stream?token={cfg['token']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n"
               # what Chromium offers; payloads are skipped, so the compressed frames are only counted
               + ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                  if cfg["compress"] else "") + "\r\n").encode()
    protos: list[Passive] = []

    async def one() -> None:
        ready = loop.create_future()
        _, proto = await loop.create_connection(lambda: Passive(request, ready), "127.0.0.1", cfg["port"])
        await asyncio.wait_for(ready, 60)
        protos.append(proto)

    n = cfg["passive"]
    for i in range(0, n, 100):  # in waves: each open() authenticates on the server's DB executor
        await asyncio.gather(*(one() for _ in range(min(100, n - i))))
    ib._emit("READY")
    line = await ib._readline()
    assert line.startswith("GO"), line
    cpu0 = time.process_time()
    start = [p.frames for p in protos]
    wire0 = sum(p.wire for p in protos)
    line = await ib._readline()
    assert line == "STOP", line
    got = sorted(p.frames - s for p, s in zip(protos, start))
    wire = sum(p.wire for p in protos) - wire0
    cpu = time.process_time() - cpu0
    for p in protos:
        p.transport.close()
    return {"cpu_s": cpu, "n": len(protos), "closed": sum(p.closed for p in protos),
            "compressed": sum(p.compressed for p in protos), "wire_bytes": wire, "frames_total": sum(got),
            "frames_min": got[0] if got else 0, "frames_median": got[len(got) // 2] if got else 0,
            "frames_max": got[-1] if got else 0}


class PassiveWorker(ib.Worker):
    """ingest_bench's worker protocol (READY / GO / STOP / RESULT), this file's passive role."""

    def __init__(self, cfg: dict) -> None:
        self.role = "passive"
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker-passive"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.send(json.dumps(cfg))


def scrape(base_url: str) -> dict:
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name in ("webmacs_broadcast_flush_duration_seconds_count", "webmacs_broadcast_flush_duration_seconds_sum",
                 "webmacs_broadcast_frames_sent_total", "webmacs_broadcast_frames_skipped_total"):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def run(args) -> dict:
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="webmacs-fanout-"))
    report: dict = {"args": vars(args), "code": ib.code_state(), "loadavg_before": ib.loadavg()}
    drop_after = None
    if args.db == "sqlite":
        database_url = f"sqlite:///{workdir / 'bench.db'}"
    else:  # a scratch TimescaleDB database (needed for --workers > 1)
        base = subprocess.run(["bash", str(ib.REPO / "scripts/timescaledb.sh"), "url"],
                              capture_output=True, text=True, check=True).stdout.strip()
        scratch = f"webmacs_fanout_{os.getpid()}"
        database_url = ib.create_scratch_pg(base, scratch, "webmacs_test", False)
        drop_after = (base, scratch)
    env = {"WEBMACS_METRICS_PUBLIC": "true", **dict(e.split("=", 1) for e in args.server_env)}
    server = ib.Server(database_url, workdir, None, env, workers=args.workers)
    workers = []
    try:
        server.wait_ready()
        base = server.base_url
        setup = asyncio.run(ib.setup_sensors(base, ib.ADMIN_EMAIL, ib.ADMIN_PASSWORD, args.sensors, True))
        time.sleep(1)
        # the serving processes: the server, or its workers (--workers N)
        pids = ib.children(server.pid) if args.workers != 1 else [server.pid]

        def rss() -> list[int]:
            return [ib.vmrss_kb(p) or 0 for p in pids]

        def cpu() -> float:
            return sum(ib.proc_cpu_seconds(p) for p in pids)

        idle_each = rss()
        idle_kb = sum(idle_each)
        per = -(-args.passive // args.passive_procs) if args.passive else 0
        passives = []
        for i in range(args.passive_procs if args.passive else 0):
            n = min(per, args.passive - i * per)
            if n > 0:
                passives.append(PassiveWorker({"token": setup["token"], "port": server.port, "passive": n,
                                               "compress": not args.no_compress, "pinger": True}))
        for w in passives:
            w.expect("READY", 600)
        time.sleep(1)
        connected_each = rss()
        connected_kb = sum(connected_each)
        report["rss_idle_kb"], report["rss_connected_kb"] = idle_kb, connected_kb
        report["rss_idle_kb_each"], report["rss_connected_kb_each"] = idle_each, connected_each
        report["kb_per_dashboard"] = (connected_kb - idle_kb) / args.passive if args.passive else None
        ws_base = base.replace("http://", "ws://", 1)
        common = {"ws_base": ws_base, "token": setup["token"], "events": setup["events"]}
        probes = ib.Worker("subscribers", {**common, "subscribers": args.probes, "timestamps": False,
                                           "compress": not args.no_compress, "pinger": True})
        probes.expect("READY", 120)
        ctl = ib.Worker("controllers", {**common, "controllers": args.controllers, "batch": args.batch,
                                        "rate": args.rate, "window": 4, "duration": args.duration, "ack": True,
                                        "drain_timeout": 30, "timestamps": False})
        ctl.expect("READY", 60)
        workers = [*passives, probes, ctl]
        report["loadavg_start"] = ib.loadavg()
        m0 = scrape(base)
        cpu0 = cpu()
        t0 = time.time() + 0.3
        for w in passives:
            w.send("GO")
        probes.send(f"GO {t0}")
        ctl.send(f"GO {t0}")
        peak_kb = connected_kb
        c = ctl.result(args.duration + 90)
        time.sleep(0.6)
        peak_kb = max(peak_kb, sum(rss()))
        for w in passives:
            w.send("STOP")
        m1 = scrape(base)
        cpu1 = cpu()
        probes.send("STOP")
        pr = probes.result(60)
        ps = [w.result(120) for w in passives]
        span = max(1e-9, c["last_send"] - c["t0"])
        flushes = m1["webmacs_broadcast_flush_duration_seconds_count"] - m0["webmacs_broadcast_flush_duration_seconds_count"]
        flush_s = m1["webmacs_broadcast_flush_duration_seconds_sum"] - m0["webmacs_broadcast_flush_duration_seconds_sum"]
        report.update({
            "loadavg_after": ib.loadavg(),
            "offered_dp_s": c["sent_points"] / span,
            "ack_latency": c["ack_latency"], "controller_errors": c["errors"],
            "latency": pr["latency"], "probe_frames": pr["frames"], "probe_closed": pr["closed_by_server"],
            "probe_bytes": pr["bytes"], "probes_compressed": pr["compressed"],
            "split_ingest": pr["split_ingest"], "split_fanout": pr["split_fanout"], "ping_rtt": pr["ping_rtt"],
            "server_cpu_s": cpu1 - cpu0, "server_cpu_share": (cpu1 - cpu0) / span,
            "rss_end_kb": peak_kb,
            "flushes": flushes, "flush_mean_ms": 1000 * flush_s / flushes if flushes else None,
            "frames_sent": m1["webmacs_broadcast_frames_sent_total"] - m0["webmacs_broadcast_frames_sent_total"],
            "frames_skipped": m1["webmacs_broadcast_frames_skipped_total"] - m0["webmacs_broadcast_frames_skipped_total"],
            "passive": ps, "passive_cpu_s": sum(p["cpu_s"] for p in ps),
            "probe_cpu_s": pr["cpu_s"], "controller_cpu_s": c["cpu_s"], "span_s": span,
        })
        return report
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
        server.stop()
        if drop_after:
            ib.drop_scratch_pg(*drop_after)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker-passive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--passive", type=int, default=1000)
    p.add_argument("--passive-procs", type=int, default=2)
    p.add_argument("--probes", type=int, default=10)
    p.add_argument("--sensors", type=int, default=500)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--controllers", type=int, default=4)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--workers", type=int, default=1, help="server processes (more than 1: --db pg)")
    p.add_argument("--db", choices=("sqlite", "pg"), default="sqlite")
    p.add_argument("--no-compress", action="store_true",
                   help="dashboards do not offer permessage-deflate (browsers do)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the server (repeatable)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    if args.worker_passive:
        cfg = json.loads(sys.stdin.readline())
        ib._emit("RESULT " + json.dumps(asyncio.run(passive_worker(cfg))))
        return 0
    r = run(args)
    lat, ack = r["latency"], r["ack_latency"]
    print(f"{args.passive} passive + {args.probes} probes, {r['offered_dp_s']:.0f} dp/s over {args.sensors} sensors, "
          f"{r['span_s']:.0f} s; load {r['loadavg_before']} -> {r['loadavg_after']}")
    print(f"  send->dashboard P50 {ib.fmt_ms(lat['p50'])} P95 {ib.fmt_ms(lat['p95'])} P99 {ib.fmt_ms(lat['p99'])} "
          f"max {ib.fmt_ms(lat['max'])} ({lat['count']} values)")
    si, sf = r["split_ingest"], r["split_fanout"]
    print(f"  probe 0 split at the server's timestamp: send->accepted P95 {ib.fmt_ms(si['p95'])}, "
          f"accepted->dashboard P50 {ib.fmt_ms(sf['p50'])} P95 {ib.fmt_ms(sf['p95'])}")
    pg = r["ping_rtt"]
    print(f"  loop lag: ping->pong every 20 ms on a telemetry socket P50 {ib.fmt_ms(pg['p50'])} "
          f"P95 {ib.fmt_ms(pg['p95'])} P99 {ib.fmt_ms(pg['p99'])} max {ib.fmt_ms(pg['max'])} ({pg['count']})")
    print(f"  controller ack P50 {ib.fmt_ms(ack['p50'])} P95 {ib.fmt_ms(ack['p95'])}, errors {r['controller_errors']}")
    kb = r["kb_per_dashboard"]
    print(f"  RSS idle {r['rss_idle_kb'] / 1024:.1f} MB, {args.passive} connected {r['rss_connected_kb'] / 1024:.1f} MB "
          f"({'n/a' if kb is None else f'{kb:.1f}'} KB/dashboard), end {r['rss_end_kb'] / 1024:.1f} MB")
    if args.workers != 1:
        print("  per worker RSS idle -> connected: " + ", ".join(
            f"{a / 1024:.0f} -> {b / 1024:.0f} MB" for a, b in zip(r["rss_idle_kb_each"], r["rss_connected_kb_each"])))
    print(f"  server CPU {r['server_cpu_s']:.1f} s ({r['server_cpu_share']:.0%} of a core); passive clients "
          f"{r['passive_cpu_s']:.1f} s, probes {r['probe_cpu_s']:.1f} s, controllers {r['controller_cpu_s']:.1f} s")
    fm = r["flush_mean_ms"]
    print(f"  flushes {r['flushes']:.0f}, mean flush {'n/a' if fm is None else f'{fm:.2f}'} ms, frames sent "
          f"{r['frames_sent']:.0f}, skipped {r['frames_skipped']:.0f}")
    for i, ps in enumerate(r["passive"]):
        print(f"  passive worker {i}: {ps['n']} sockets ({ps['compressed']} compressed), frames min/median/max "
              f"{ps['frames_min']}/{ps['frames_median']}/{ps['frames_max']}, closed {ps['closed']}")
    wire, nframes = sum(p["wire_bytes"] for p in r["passive"]), sum(p["frames_total"] for p in r["passive"])
    print(f"  passive dashboards received {wire / 1e6:.1f} MB on the wire, {wire / max(1, nframes):.0f} bytes "
          f"per frame, {wire / max(1, args.passive) / r['span_s'] / 1024:.1f} KiB/s per dashboard")
    print(f"  probes: {r['probes_compressed']} of {args.probes} compressed, {r['probe_frames']} frames, "
          f"{r['probe_bytes'] / max(1, r['probe_frames']):.0f} bytes per frame (decompressed)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
