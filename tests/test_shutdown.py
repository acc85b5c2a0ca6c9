"""SIGTERM on a real ``webmacs serve`` process: in-flight batches are stored and
acknowledged, later ones get ``retry: true``, sockets close with 1001, exit code 0
within WEBMACS_SHUTDOWN_TIMEOUT; nothing is half-written and a resend after the
restart completes the data exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from tests import conftest
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, SECRET
from webmacs.db import make_engine

TELEMETRY = "/ws/controller/telemetry"
SHUTDOWN_TIMEOUT = 5.0


class ServeProcess:
    """``python -m webmacs serve`` on a free port, logging to a file."""

    def __init__(self, database_url: str, log_path: Path, args: tuple[str, ...] = (), **env: str) -> None:
        self.database_url = database_url
        self.args = args  # more `webmacs serve` options
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
        self.env.update({
            "WEBMACS_DATABASE_URL": database_url, "WEBMACS_SECRET_KEY": SECRET,
            "WEBMACS_INITIAL_ADMIN_EMAIL": ADMIN_EMAIL, "WEBMACS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "WEBMACS_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT), "WEBMACS_DB_POOL_SIZE": "4",
            "WEBMACS_INGEST_QUEUE_PATH": str(log_path.parent / "ingest-queue"),
            "PYTHONUNBUFFERED": "1", **env,
        })
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, port: int | None = None) -> None:
        if port is None:
            sock, port = bind_unused_port()
            sock.close()
        self.port = port
        with open(self.log_path, "ab") as fh:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "webmacs", "serve", "--port", str(port), *self.args, env=self.env,
                stdout=fh, stderr=fh)
        http = AsyncHTTPClient(force_instance=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
                try:
                    resp = await http.fetch(f"http://127.0.0.1:{port}/health", raise_error=False,
                                            request_timeout=2)
                    if resp.code == 200:
                        return
                except OSError:  # not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not come up: {self.log()}")
                await asyncio.sleep(0.1)
        finally:
            http.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def serve(database_url, tmp_path):
    proc = ServeProcess(database_url, tmp_path / "server.log")
    try:
        yield proc
    finally:
        await proc.kill()


async def client_for(port: int) -> "conftest.TestServer":
    srv = conftest.TestServer(None, port)  # only its HTTP/WebSocket helpers are used
    srv.admin_token = await srv.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    return srv


async def controller_events(port: int, n: int, prefix: str) -> tuple[list[str], str]:
    """``n`` linked events on the server at ``port`` and an API token for a controller."""
    api = await client_for(port)
    try:
        events = await api.linked_events(n, prefix=prefix)
        token = (await api.request("POST", "/api/v1/tokens", {"name": f"{prefix} controller"})).json["token"]
    finally:
        await api.close()
    return events, token


def batch(event: str, k: int, size: int) -> dict:
    return {"batch_id": f"b-{k}", "datapoints": [{"event_public_id": event, "value": float(k * 1000 + i)}
                                                  for i in range(size)]}


def rows_per_batch(database_url: str, n_batches: int) -> dict[int, int]:
    engine = make_engine(database_url, 1)
    try:
        with engine.connect() as conn:
            got = dict(conn.execute(text(
                "SELECT CAST(floor(value / 1000) AS INTEGER), count(*) FROM datapoints GROUP BY 1")).all())
    finally:
        engine.dispose()
    return {k: got.get(k, 0) for k in range(n_batches)}


@pytest.mark.timeout(120)
async def test_sigterm_acknowledges_in_flight_batches_and_closes_with_1001(serve):
    await serve.start()
    srv = await client_for(serve.port)
    try:
        (event,) = await srv.linked_events(1)
        n_sockets, per_socket, size = 3, 15, 500
        sockets = [await srv.ws(TELEMETRY) for _ in range(n_sockets)]
        idle = await srv.ws(TELEMETRY)  # a connected controller with nothing to send
        for k in range(per_socket):  # pipelined: many batches queued on every socket
            for s, ws in enumerate(sockets):
                await ws.send(batch(event, s * per_socket + k, size))
        first = await sockets[0].recv(timeout=30)  # the server is now busy storing
        assert first["type"] == "ack", first
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)

        answers: dict[str, dict] = {first["batch_id"]: first}
        codes = []
        for ws in sockets + [idle]:
            while True:
                msg = await ws.recv(timeout=SHUTDOWN_TIMEOUT + 5)
                if msg is None:
                    codes.append((ws.conn.close_code, ws.conn.close_reason))
                    break
                assert msg["batch_id"] not in answers, f"two answers for {msg['batch_id']}"
                answers[msg["batch_id"]] = msg
        rc = await asyncio.wait_for(serve.proc.wait(), SHUTDOWN_TIMEOUT + 5)
        took = time.monotonic() - t0
    finally:
        await srv.close()
    log = serve.log()
    assert rc == 0, log
    assert took < SHUTDOWN_TIMEOUT + 3, f"shutdown took {took:.1f}s"
    assert codes == [(1001, "Server shutting down")] * (n_sockets + 1)
    assert "Traceback" not in log, log

    n_batches = n_sockets * per_socket
    acked = {m["batch_id"] for m in answers.values() if m["type"] == "ack"}
    retry = {m["batch_id"] for m in answers.values() if m["type"] == "error"}
    assert all(m["retry"] is True and "shutting down" in m["message"] for m in answers.values()
               if m["type"] == "error")
    assert len(acked) >= 2, answers.keys()  # the one in flight at SIGTERM was finished and acknowledged
    stored = rows_per_batch(serve.database_url, n_batches)
    for k, n in stored.items():  # every acked batch complete, nothing else, nothing partial
        assert n == (size if f"b-{k}" in acked else 0), (k, n, f"b-{k}" in acked, f"b-{k}" in retry)

    # the controller's side of it: resend every unacknowledged batch to the restarted server
    await serve.start(serve.port)
    srv = await client_for(serve.port)
    try:
        ws = await srv.ws(TELEMETRY)
        for k in range(n_batches):  # all of them, acked ones included: those come back as duplicates
            await ws.send(batch(event, k, size))
        for k in range(n_batches):
            ack = await ws.recv_type("ack", timeout=30)
            assert ack["batch_id"] == f"b-{k}" and ack["accepted"] == size
            assert bool(ack.get("duplicate")) == (f"b-{k}" in acked)
    finally:
        await srv.close()
    assert set(rows_per_batch(serve.database_url, n_batches).values()) == {size}


async def test_sigterm_when_idle_exits_at_once(serve):
    await serve.start()
    srv = await client_for(serve.port)
    try:
        ws = await srv.ws(TELEMETRY)
        stream = await srv.ws("/ws/datapoints/stream")
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert await ws.closed(5) == (1001, "Server shutting down")
        assert await stream.closed(5) == (1001, "Server shutting down")
        rc = await asyncio.wait_for(serve.proc.wait(), 10)
    finally:
        await srv.close()
    assert rc == 0 and time.monotonic() - t0 < 3, serve.log()
