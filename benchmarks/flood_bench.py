"""Hostile-client floods against a real server while an honest controller streams.

Starts ``python -m webmacs serve`` (SQLite in a scratch directory by default, or
``--database-url``), sets up one linked sensor, then runs an honest controller on
``/ws/controller/telemetry`` (one batch of 10 datapoints with a ``batch_id`` every
100 ms, waiting for each ``ack``) through these phases, each ``--seconds`` long:

- ``idle``: no attacker (the baseline);
- ``half-open``: ``--sockets`` connections that send half a request header and stop,
  reopened as the server closes them;
- ``big-bodies``: 3 clients posting 15 MB JSON arrays to ``/api/v1/auth/login`` over and over;
- ``login``: 16 concurrent clients posting wrong passwords (one known account and random
  unknown ones);
- ``reply-flood``: a viewer on ``/ws/datapoints/stream`` that sends tiny frames as fast
  as it can (each earns an ``error`` reply) and never reads, reconnecting when closed.

The attackers run in a separate process (so they do not slow the controller's own loop).
Per phase it reports the server's peak RSS (VmRSS sampled every 100 ms), the controller's
ack latency P50/P95/max, the attacker's request/answer counts, and the bytes the server
wrote to its log. The attacker is not on a trusted network: ``WEBMACS_RATE_LIMIT_EXEMPT`` is
emptied so the per-address limit applies to loopback as it would to a remote host.

    .venv/bin/python benchmarks/flood_bench.py [--seconds 15] [--json out.json]

Not a test: it measures, it does not assert (the targets are in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "bench-admin-password"
PHASES = ("idle", "half-open", "big-bodies", "login", "reply-flood")


# --- the attacker (own process) --------------------------------------------------------------

def attack(kind: str, port: int, seconds: float, sockets: int, out, token: str = "") -> None:
    asyncio.run(_attack(kind, port, seconds, sockets, out, token))


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _attack(kind: str, port: int, seconds: float, sockets: int, out, token: str = "") -> None:
    stats: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    def count(key: str) -> None:
        stats[key] = stats.get(key, 0) + 1

    if kind == "half-open":
        async def holder() -> None:
            while time.monotonic() < deadline:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
                except (OSError, asyncio.TimeoutError):
                    count("connect failed")
                    await asyncio.sleep(0.05)
                    continue
                count("opened")
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                try:
                    await asyncio.wait_for(reader.read(1), max(0.01, deadline - time.monotonic()))
                    count("closed by server")
                except (asyncio.TimeoutError, OSError):
                    pass
                writer.close()

        await asyncio.gather(*(holder() for _ in range(sockets)))
    elif kind == "big-bodies":
        body = b"[" + b"1," * (7_500_000 - 1) + b"1]"  # 15 MB

        async def poster() -> None:
            http = AsyncHTTPClient(force_instance=True)
            try:
                while time.monotonic() < deadline:
                    try:
                        resp = await http.fetch(HTTPRequest(f"http://127.0.0.1:{port}/api/v1/auth/login",
                                                            method="POST", body=body, request_timeout=10),
                                                raise_error=False)
                        count(str(resp.code))
                    except Exception:  # noqa: BLE001 - reset after the 413
                        count("reset")
                        await asyncio.sleep(0.01)
            finally:
                http.close()

        await asyncio.gather(*(poster() for _ in range(3)))
    elif kind == "login":
        async def guesser(i: int) -> None:
            http = AsyncHTTPClient(force_instance=True)
            try:
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    email = ADMIN_EMAIL if n % 2 else f"user{random.randrange(10**9)}@example.com"
                    body = json.dumps({"email": email, "password": f"guess-{i}-{n}"})
                    try:
                        resp = await http.fetch(HTTPRequest(f"http://127.0.0.1:{port}/api/v1/auth/login",
                                                            method="POST", body=body, request_timeout=10),
                                                raise_error=False)
                        count(str(resp.code))
                    except Exception:  # noqa: BLE001
                        count("error")
            finally:
                http.close()

        await asyncio.gather(*(guesser(i) for i in range(16)))
    elif kind == "reply-flood":
        burst = _masked(b'{"a":1}') * 5000
        loop = asyncio.get_running_loop()
        while time.monotonic() < deadline:
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.setblocking(False)
            try:
                await loop.sock_connect(raw, ("127.0.0.1", port))
                await loop.sock_sendall(raw, (
                    f"GET /ws/datapoints/stream?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n").encode())
                count("opened")
                while time.monotonic() < deadline:
                    await asyncio.wait_for(loop.sock_sendall(raw, burst), max(0.01, deadline - time.monotonic()))
                    stats["frames"] = stats.get("frames", 0) + 5000
            except (OSError, asyncio.TimeoutError):
                count("closed by server" if time.monotonic() < deadline else "ended")
            finally:
                raw.close()
    else:
        await asyncio.sleep(seconds)
    out.put(stats)


# --- the server ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def request(http, port, method, path, body=None, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await http.fetch(HTTPRequest(f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
                                        body=json.dumps(body) if body is not None else None), raise_error=False)
    return resp.code, json.loads(resp.body) if resp.body else None


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--sockets", type=int, default=1000, help="half-open connections")
    ap.add_argument("--database-url", default=None, help="default: SQLite in a scratch directory")
    ap.add_argument("--json", default=None)
    ap.add_argument("--exempt-loopback", action="store_true",
                    help="keep the default WEBMACS_RATE_LIMIT_EXEMPT (loopback exempt): only the per-account "
                         "limit and the hash pool stand between the login flood and ingest")
    ap.add_argument("--phases", default=",".join(PHASES))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="webmacs-flood-"))
    log_path = tmp / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    env.update({
        "WEBMACS_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/webmacs.db",
        "WEBMACS_SECRET_KEY": "flood-bench-secret-0123456789abcdefghijklmnop",
        "WEBMACS_INITIAL_ADMIN_EMAIL": ADMIN_EMAIL, "WEBMACS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "PYTHONUNBUFFERED": "1",
    })
    if not args.exempt_loopback:
        env["WEBMACS_RATE_LIMIT_EXEMPT"] = ""
    with open(log_path, "wb") as fh:
        server = subprocess.Popen([sys.executable, "-m", "webmacs", "serve", "--port", str(port)], env=env,
                                  stdout=fh, stderr=fh)
    http = AsyncHTTPClient(force_instance=True)
    report: dict = {"phases": {}}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await http.fetch(f"http://127.0.0.1:{port}/health", raise_error=False)).code == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start: {log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        code, body = await request(http, port, "POST", "/api/v1/auth/login",
                                   {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        token = body["access_token"]
        _, plugin = await request(http, port, "POST", "/api/v1/plugins",
                                  {"plugin_id": "revpi", "instance_name": "bench", "auto_create_events": False}, token)
        plugin = plugin["data"]
        _, event = await request(http, port, "POST", "/api/v1/events",
                                 {"name": "bench sensor", "type": "sensor", "unit": "C", "min_value": 0,
                                  "max_value": 100}, token)
        event = event["data"]
        await request(http, port, "POST", f"/api/v1/plugins/{plugin['public_id']}/channels",
                      {"channel_id": "c0", "channel_name": "c0", "direction": "input", "unit": "C",
                       "event_public_id": event["public_id"]}, token)
        ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws/controller/telemetry?token={token}")

        async def controller(seconds: float) -> list[float]:
            latencies = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.monotonic()
                bid = uuid.uuid4().hex
                await ws.write_message(json.dumps({"batch_id": bid, "datapoints": [
                    {"event_public_id": event["public_id"], "value": float(i)} for i in range(10)]}))
                while True:
                    msg = await asyncio.wait_for(ws.read_message(), 60)
                    if msg is None:
                        raise SystemExit("controller socket closed")
                    frame = json.loads(msg)
                    if frame.get("type") == "ack" and frame.get("batch_id") == bid:
                        break
                latencies.append((time.monotonic() - t0) * 1000)
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
            return latencies

        await controller(2.0)  # warm up
        idle_rss = rss_kb(server.pid)
        report["idle_rss_mb"] = round(idle_rss / 1024, 1)
        ctx = multiprocessing.get_context("spawn")
        for phase in args.phases.split(","):
            queue = ctx.Queue()
            attacker = ctx.Process(target=attack, args=(phase, port, args.seconds, args.sockets, queue, token))
            log0, cpu0 = log_path.stat().st_size, cpu_s(server.pid)
            peak = [rss_kb(server.pid)]

            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], rss_kb(server.pid))
                    await asyncio.sleep(0.1)

            sampler = asyncio.ensure_future(sample())
            attacker.start()
            await asyncio.sleep(1.0)  # let the flood build up
            lat = await controller(args.seconds - 1.5)
            stats = await asyncio.get_running_loop().run_in_executor(None, queue.get, True, 60)
            attacker.join(30)
            sampler.cancel()
            health_t0 = time.monotonic()
            health = (await http.fetch(f"http://127.0.0.1:{port}/health", raise_error=False)).code
            lat.sort()
            report["phases"][phase] = {
                "acks": len(lat),
                "ack_p50_ms": round(statistics.median(lat), 1),
                "ack_p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1),
                "ack_max_ms": round(lat[-1], 1),
                "peak_rss_mb": round(peak[0] / 1024, 1),
                "rss_over_idle_mb": round((peak[0] - idle_rss) / 1024, 1),
                "server_cpu_s": round(cpu_s(server.pid) - cpu0, 2),
                "log_bytes": log_path.stat().st_size - log0,
                "health_after": health, "health_ms": round((time.monotonic() - health_t0) * 1000, 1),
                "attacker": stats,
            }
            print(phase, json.dumps(report["phases"][phase]), flush=True)
        ws.close()
    finally:
        http.close()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    load = os.getloadavg()
    report["loadavg"] = [round(x, 2) for x in load]
    report["exempt_loopback"] = args.exempt_loopback
    print(f"\nidle RSS {report['idle_rss_mb']} MB; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'phase':<11} {'acks':>5} {'P50 ms':>8} {'P95 ms':>8} {'max ms':>8} {'RSS +MB':>8} {'CPU s':>6} "
          f"{'log B':>7}  attacker")
    for phase, r in report["phases"].items():
        print(f"{phase:<11} {r['acks']:>5} {r['ack_p50_ms']:>8} {r['ack_p95_ms']:>8} {r['ack_max_ms']:>8} "
              f"{r['rss_over_idle_mb']:>8} {r['server_cpu_s']:>6} {r['log_bytes']:>7}  {r['attacker']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
