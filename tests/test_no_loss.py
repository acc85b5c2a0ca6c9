"""End to end: no reading lost or doubled across a PostgreSQL restart, a server crash
and a controller crash.

A real TimescaleDB, a real ``webmacs serve`` process and a real controller process
(``CONTROLLER_SCRIPT``: a small program built on :class:`TelemetryClient` that submits
4 events x 6,000 readings, value = sequence number, timestamp = base + i ms, at
2,000 readings/s). While it runs the test

(a) restarts PostgreSQL (``pg_ctl stop -m immediate`` + start: a crash and recovery),
(b) SIGKILLs the server and starts it again,
(c) SIGKILLs the controller and starts it again (it resumes from the checkpoint it
    commits atomically with its readings in the spool, see ``submit_many``).

Afterwards the datapoints table must hold exactly the sequence sent: every reading
once, none missing, none twice, compared as a multiset of (event, timestamp, value).

The PostgreSQL restarted here is a throwaway cluster of this test (same binaries and
TimescaleDB build as the project cluster named by WEBMACS_TEST_PG_URL), so other test
runs sharing the project cluster are not disturbed by the restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from tests.conftest import wait_for
from tests.test_shutdown import ServeProcess, controller_events
from webmacs.db import upgrade

EVENTS = 4
PER_EVENT = 6000
RATE = 2000  # readings per second the controller produces

CONTROLLER_SCRIPT = r'''
"""Test controller: submits a known sequence through TelemetryClient, resumable after SIGKILL."""
import asyncio, json, logging, os, sys, time
from datetime import datetime, timedelta
from webmacs.controller import TelemetryClient

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

async def main():
    url, token, spool, events, base, per_event, rate, progress = sys.argv[1:]
    events, per_event, rate = json.loads(events), int(per_event), float(rate)
    base = datetime.fromisoformat(base)
    client = TelemetryClient(url, token=token, spool_path=spool, max_batch_size=100)
    await client.start()
    # the checkpoint is committed in the same transaction as the readings it counts
    start = i = int(client.checkpoint or 0)
    ticks_per_s = rate / len(events)
    step = 10  # ticks per transaction
    t0 = time.monotonic()
    last_report = -1.0
    while i < per_event:
        n = min(step, per_event - i)
        client.submit_many([(e, float(j), base + timedelta(milliseconds=j))
                            for j in range(i, i + n) for e in events], checkpoint=str(i + n))
        i += n
        now = time.monotonic()
        if now - last_report > 0.1 or i == per_event:
            last_report = now
            with open(progress + ".tmp", "w") as fh:
                json.dump({"pid": os.getpid(), "i": i, "rate": (i - start) * len(events) / max(now - t0, 1e-9),
                           "stats": client.stats.as_dict()}, fh)
            os.replace(progress + ".tmp", progress)
        ahead = t0 + (i - start) / ticks_per_s - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    submit_rate = (i - start) * len(events) / max(time.monotonic() - t0, 1e-9)
    ok = await client.flush(60)
    stats = client.stats.as_dict()
    await client.close()
    print(json.dumps({"ok": ok, "resumed_at": start, "submit_rate": submit_rate, "stats": stats}), flush=True)
    return 0 if ok else 3

sys.exit(asyncio.run(main()))
'''


class PrivateCluster:
    """A throwaway PostgreSQL + TimescaleDB cluster on a free port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.datadir = Path(tempfile.mkdtemp(prefix="webmacs-noloss-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")
        self.datadir.chmod(0o700)
        sock, self.port = bind_unused_port()
        sock.close()
        self.logfile = self.datadir / "server.log"

    def run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_pg, str(self.bindir / args[0]), *args[1:]], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def init(self) -> None:
        self.run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-sync")
        with open(self.datadir / "postgresql.conf", "a") as fh:
            fh.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                     f"unix_socket_directories = '{self.datadir}'\nshared_preload_libraries = 'timescaledb'\n"
                     "timescaledb.telemetry_level = off\nmax_connections = 60\nshared_buffers = 64MB\n")

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - not running
            pass
        shutil.rmtree(self.datadir, ignore_errors=True)


@pytest.fixture
def cluster():
    base = os.environ.get("WEBMACS_TEST_PG_URL")
    if not base:
        pytest.fail("WEBMACS_TEST_PG_URL is not set: this test needs TimescaleDB (run scripts/test.sh, "
                    "or set it to the URL printed by scripts/timescaledb.sh with /webmacs_test)")
    engine = create_engine(base.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            major = int(conn.execute(text("SHOW server_version_num")).scalar()) // 10000
            assert conn.execute(text("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
                                ).scalar(), "TimescaleDB is not installed"
    finally:
        engine.dispose()
    bindir = Path(f"/usr/lib/postgresql/{major}/bin")
    assert (bindir / "pg_ctl").exists(), f"PostgreSQL {major} binaries not found in {bindir}"
    pg = PrivateCluster(bindir)
    try:
        pg.init()
        pg.start()
        admin = create_engine(pg.url("postgres").replace("postgresql://", "postgresql+psycopg2://", 1),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE webmacs"))
        admin.dispose()
        db = create_engine(pg.url("webmacs").replace("postgresql://", "postgresql+psycopg2://", 1),
                           isolation_level="AUTOCOMMIT")
        with db.connect() as conn:
            conn.execute(text("SET client_min_messages = warning"))
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        db.dispose()
        upgrade(pg.url("webmacs"))
        yield pg
    finally:
        pg.destroy()


async def health(port: int) -> dict | None:
    http = AsyncHTTPClient(force_instance=True)
    try:
        resp = await http.fetch(f"http://127.0.0.1:{port}/health", raise_error=False, request_timeout=10)
        return json.loads(resp.body) if resp.code == 200 else None
    except OSError:
        return None
    finally:
        http.close()


class Controller:
    def __init__(self, tmp: Path, args: list[str]) -> None:
        self.script = tmp / "controller.py"
        self.script.write_text(CONTROLLER_SCRIPT)
        self.args = args
        self.progress = Path(args[-1])
        self.log = tmp / "controller.log"
        self.out = tmp / "controller.out"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log, "ab") as err, open(self.out, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(sys.executable, str(self.script), *self.args, env=env,
                                                             stdout=out, stderr=err)

    def report(self) -> dict:
        """The last progress report of the running process ({} before its first)."""
        try:
            data = json.loads(self.progress.read_text())
        except (OSError, ValueError):
            return {}
        return data if self.proc and data["pid"] == self.proc.pid else {}

    def position(self) -> int:
        return self.report().get("i", 0)

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_no_reading_lost_or_doubled(cluster, tmp_path):
    t_start = time.monotonic()
    server = ServeProcess(cluster.url("webmacs"), tmp_path / "server.log", WEBMACS_SHUTDOWN_TIMEOUT="3",
                          WEBMACS_LOG_LEVEL="WARNING")
    controller = None
    try:
        await server.start()
        events, token = await controller_events(server.port, EVENTS, "NoLoss")
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
        controller = Controller(tmp_path, [f"http://127.0.0.1:{server.port}", token, str(tmp_path / "spool.db"),
                                           json.dumps(events), base.isoformat(), str(PER_EVENT), str(RATE),
                                           str(tmp_path / "progress.json")])
        await controller.start()

        # (a) PostgreSQL crashes and comes back; the server reports it and recovers by itself
        await wait_for(lambda: controller.position() >= PER_EVENT * 0.15, 30, message="15% submitted")
        cluster.stop("immediate")
        degraded = await health(server.port)
        assert degraded is not None and (degraded["status"], degraded["database"]) == ("degraded", "error"), degraded
        await asyncio.sleep(1.5)
        cluster.start()
        await wait_for(lambda: _ok(health(server.port)), 30, message="server healthy again")

        # (c) the controller is killed (with a backlog in its spool) and started again
        await wait_for(lambda: controller.position() >= PER_EVENT * 0.35, 30, message="35% submitted")
        first_run = controller.report()
        await controller.kill()
        await asyncio.sleep(0.3)
        await controller.start()

        # (b) the server is killed and started again
        await wait_for(lambda: controller.position() >= PER_EVENT * 0.55, 30, message="55% submitted (second run)")
        await server.kill()
        await asyncio.sleep(0.5)
        await server.start(server.port)

        rc = await asyncio.wait_for(controller.proc.wait(), 60)
        report = controller.out.read_text()
        assert rc == 0, f"controller exited {rc}: {report}\n{controller.log.read_text()[-3000:]}"
        result = json.loads(report)
    finally:
        if controller is not None:
            await controller.kill()
        await server.kill()

    # the second run resumed at the first one's last committed checkpoint: at or after the
    # last progress it reported (reports are written after the commit, every 0.1 s)
    print("\nfirst run:", first_run, "\nsecond run:", result)
    assert first_run["i"] <= result["resumed_at"] <= first_run["i"] + 200, (first_run, result)
    assert first_run["rate"] >= 1000 and result["submit_rate"] >= 1000, (first_run, result)
    stats = result["stats"]
    assert stats["pending"] == 0 and stats["dropped"] == 0 and stats["failed"] == 0 and stats["rejected"] == 0, stats

    engine = create_engine(cluster.url("webmacs").replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT e.public_id, d.time, d.value FROM datapoints d "
                                     "JOIN events e ON e.id = d.event_id")).all()
    finally:
        engine.dispose()
    got = Counter((e, t.astimezone(timezone.utc), v) for e, t, v in rows)
    want = Counter((e, base + timedelta(milliseconds=i), float(i)) for e in events for i in range(PER_EVENT))
    missing, doubled = want - got, got - want
    assert not missing and not doubled, (
        f"{sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
        f"{sum(doubled.values())} extra or doubled (e.g. {list(doubled)[:3]})")
    assert len(rows) == EVENTS * PER_EVENT
    elapsed = time.monotonic() - t_start
    assert elapsed < 90, f"took {elapsed:.0f}s"


async def _ok(h) -> bool:
    h = await h
    return bool(h) and h["status"] == "ok"
