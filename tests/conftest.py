"""Test fixtures: a real Tornado server on an unused port, on SQLite and on TimescaleDB.

Every test that uses ``server`` runs twice: once on a fresh SQLite file and once on
the project's TimescaleDB cluster (``WEBMACS_TEST_PG_URL``, set by
``scripts/test.sh``). A missing cluster is a failure, not a skip. Set
``WEBMACS_TEST_BACKENDS=sqlite`` to iterate quickly on one backend only.

We use pytest-asyncio rather than pytest-tornasync: the latter is unmaintained
and fails under ``-W error`` with current pytest. Helpers here close every socket
they open.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from typing import Any, Awaitable, Callable

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.websocket import websocket_connect

from webmacs.app import make_app, shutdown
from webmacs.config import Settings
from webmacs.db import upgrade
from webmacs.handlers.ws import StreamHandler
from webmacs.models import Base
from webmacs.services import Services

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"
SECRET = "test-secret-key-that-is-long-enough-0123456789"
BACKENDS = [b.strip() for b in os.environ.get("WEBMACS_TEST_BACKENDS", "sqlite,timescaledb").split(",") if b.strip()]


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02,
                   message: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


# --- databases ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return str(path)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A database of our own for this test session, cloned from the (extension-only)
    template database named by WEBMACS_TEST_PG_URL, dropped at the end; so several
    test runs can share the cluster."""
    base = os.environ.get("WEBMACS_TEST_PG_URL")
    if "timescaledb" not in BACKENDS and not os.environ.get("CI"):
        pytest.skip("WEBMACS_TEST_BACKENDS excludes timescaledb (local iteration only; never in CI)")
    if not base:
        pytest.fail("WEBMACS_TEST_PG_URL is not set: run the tests with scripts/test.sh "
                    "(it starts the TimescaleDB cluster), or set WEBMACS_TEST_BACKENDS=sqlite")
    prefix, _, template = base.rpartition("/")
    name = f"{template}_{os.getpid()}"
    admin = create_engine(f"{prefix}/postgres".replace("postgresql://", "postgresql+psycopg2://", 1),
                          isolation_level="AUTOCOMMIT")
    clone_template(admin, template, name)
    url = f"{prefix}/{name}"
    upgrade(url)
    yield url
    drop_database(admin, name)
    admin.dispose()


def clone_template(admin, template: str, name: str, timeout: float = 60) -> None:
    """(Re)create database ``name`` as a copy of ``template``. CREATE DATABASE ...
    TEMPLATE fails while anyone is connected to the template: other test runs take
    turns on an advisory lock, and a passing visitor (TimescaleDB's scheduler looks
    in now and then) is waited out."""
    deadline = time.monotonic() + timeout
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(7245001)"))
        try:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            while True:
                try:
                    conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
                    return
                except OperationalError as exc:
                    if "being accessed by other users" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(0.2)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(7245001)"))


def drop_database(admin, name: str) -> None:
    """DROP DATABASE without FORCE: FORCE would have to terminate TimescaleDB's
    per-database scheduler, a superuser process. End our own sessions, then retry
    while the scheduler lets go."""
    deadline = time.monotonic() + 30
    while True:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :n AND usename = current_user AND pid <> pg_backend_pid()"),
                         {"n": name})
            try:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                return
            except OperationalError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.1)


def truncate_pg(url: str) -> None:
    """Empty every table. DELETE, not TRUNCATE: a test leaves few rows, and TRUNCATE
    of a dozen tables costs a new file (and fsync) per table."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> str:
    """A fresh, migrated database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "webmacs.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_url")
    truncate_pg(url)
    return url


_QUEUE_ROOT: list[str] = []  # the session's folder of test ingest queues (removed at the end)


def _queue_root() -> str | None:
    return _QUEUE_ROOT[0] if _QUEUE_ROOT else None


@pytest.fixture(scope="session", autouse=True)
def queue_root():
    """One folder for every test server's ingest queue, removed when the session ends."""
    root = tempfile.mkdtemp(prefix="webmacs-test-queues-")
    _QUEUE_ROOT.append(root)
    yield root
    _QUEUE_ROOT.clear()
    shutil.rmtree(root, ignore_errors=True)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    env = {
        "WEBMACS_DATABASE_URL": database_url,
        "WEBMACS_SECRET_KEY": SECRET,
        "WEBMACS_INITIAL_ADMIN_EMAIL": ADMIN_EMAIL,
        "WEBMACS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "WEBMACS_DB_POOL_SIZE": "4",
        # each server its own ingest queue: a test database is reused (truncated) by the next test
        "WEBMACS_INGEST_QUEUE_PATH": tempfile.mkdtemp(prefix="queue-", dir=_queue_root()),
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return Settings.from_env(env)


# --- the server ---------------------------------------------------------------------

class Response:
    def __init__(self, code: int, body: bytes, headers) -> None:
        self.code = code
        self.body = body
        self.headers = headers

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.body[:300]!r}>"


class WS:
    """A test WebSocket client; ``recv()`` returns parsed JSON or None once closed."""

    def __init__(self, conn) -> None:
        self.conn = conn

    async def send(self, payload: Any) -> None:
        await self.conn.write_message(payload if isinstance(payload, (str, bytes)) else json.dumps(payload))

    async def recv(self, timeout: float = 5.0) -> Any:
        msg = await asyncio.wait_for(self.conn.read_message(), timeout)
        return None if msg is None else json.loads(msg)

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                raise AssertionError(f"socket closed while waiting for {kind!r}")
            if msg.get("type") == kind:
                return msg

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:
        """Wait for the server to close; return (code, reason)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await asyncio.wait_for(self.conn.read_message(), max(0.01, deadline - time.monotonic()))
            if msg is None:
                return self.conn.close_code, self.conn.close_reason

    def close(self) -> None:
        self.conn.close()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close and wait until the TCP connection is really gone: a socket still
        mid-handshake when the test's event loop ends is garbage-collected later and
        raises ResourceWarning inside whatever test runs then."""
        stream = getattr(self.conn.protocol, "stream", None)
        self.conn.close()
        if stream is None or stream.closed():  # closed already (by the server, or before)
            return
        deadline = time.monotonic() + timeout
        try:
            while not stream.closed():
                if await asyncio.wait_for(self.conn.read_message(), max(0.01, deadline - time.monotonic())) is None:
                    break
        except (asyncio.TimeoutError, TimeoutError):
            stream.close()  # the server never answered the close: drop the TCP connection


class TestServer:
    def __init__(self, services: Services, port: int) -> None:
        self.services = services
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_base = f"ws://127.0.0.1:{port}"
        self.admin_token: str = ""
        self._sockets: list[WS] = []
        self.http = AsyncHTTPClient(force_instance=True)

    async def settled(self, timeout: float = 30) -> None:
        """Until the ingest queue is empty: every acknowledged batch is in the database
        (an ack means durable in the queue, docs/telemetry-acks.md)."""
        await wait_for(lambda: not self.services.pipeline.queue.pending, timeout,
                       message="ingest queue committed")

    async def request(self, method: str, path: str, body: Any = None, token: str | None = "admin",
                      raw: bytes | None = None, headers: dict | None = None, timeout: float = 30) -> Response:
        hdrs = dict(headers or {})
        if token == "admin":
            token = self.admin_token
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is None and method in ("POST", "PUT"):
            data = b""
        req = HTTPRequest(self.base_url + path, method=method, body=data, headers=hdrs,
                          request_timeout=timeout, allow_nonstandard_methods=True)
        resp = await self.http.fetch(req, raise_error=False)
        return Response(resp.code, resp.body or b"", resp.headers)

    async def login(self, email: str, password: str) -> str:
        resp = await self.request("POST", "/api/v1/auth/login", {"email": email, "password": password}, token=None)
        assert resp.code == 200, resp
        return resp.json["access_token"]

    async def create_user(self, role: str, name: str | None = None) -> str:
        name = name or f"{role}{len(self._sockets)}{int(time.monotonic() * 1e6) % 100000}"
        email = f"{name}@example.com"
        resp = await self.request("POST", "/api/v1/users", {"email": email, "username": name,
                                                            "password": "password-123", "role": role})
        assert resp.code == 201, resp
        return await self.login(email, "password-123")

    async def ws(self, path: str, token: str | None = "admin", expect_connected: bool = True) -> WS:
        """Open a socket; with ``expect_connected`` wait until the server accepted it:
        the stream's ``connected`` greeting, or a pong on telemetry (which greets no one)."""
        if token == "admin":
            token = self.admin_token
        url = self.ws_base + path + (f"?token={token}" if token is not None else "")
        sock = WS(await websocket_connect(url))
        self._sockets.append(sock)
        if expect_connected:
            if path.startswith("/ws/datapoints/stream"):
                msg = await sock.recv()
                assert msg is not None and msg["type"] == "connected", msg
            else:
                await sock.send({"type": "ping"})
                msg = await sock.recv()
                assert msg == {"type": "pong"}, msg
        return sock

    async def linked_events(self, n: int = 1, prefix: str = "Sensor") -> list[str]:
        """Create ``n`` events linked to one enabled plugin instance; return their public ids."""
        return (await self.linked_instance(n, prefix))[1]

    async def linked_instance(self, n: int = 1, prefix: str = "Sensor") -> tuple[str, list[str]]:
        """One enabled plugin instance with ``n`` linked events: (instance, event public ids)."""
        # a Revolution Pi instance: its channels are piCtory IO names, any id may be mapped
        resp = await self.request("POST", "/api/v1/plugins", {"plugin_id": "revpi",
                                                              "instance_name": f"{prefix} device"})
        assert resp.code == 201, resp
        instance = resp.json["data"]["public_id"]
        ids = []
        for i in range(n):
            ev = await self.request("POST", "/api/v1/events", {"name": f"{prefix} {i}", "type": "sensor",
                                                               "unit": "°C", "min_value": 0, "max_value": 100})
            assert ev.code == 201, ev
            ids.append(ev.json["data"]["public_id"])
            ch = await self.request("POST", f"/api/v1/plugins/{instance}/channels", {
                "channel_id": f"ch{i}", "channel_name": f"Channel {i}", "direction": "input", "unit": "°C",
                "event_public_id": ids[-1]})
            assert ch.code == 201, ch
        return instance, ids

    async def close(self) -> None:
        await asyncio.gather(*(sock.aclose() for sock in self._sockets))
        self.http.close()


async def start_server(settings: Settings) -> tuple[TestServer, HTTPServer]:
    services = Services(settings)
    services.prepare_database()
    await services.start()
    sock, port = bind_unused_port()
    http_server = HTTPServer(make_app(services))
    http_server.add_sockets([sock])
    srv = TestServer(services, port)
    srv.admin_token = await srv.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    return srv, http_server


async def stop_server(srv: TestServer, http_server: HTTPServer) -> None:
    """The server's own shutdown (webmacs.app.shutdown), then the database."""
    await srv.close()
    await shutdown(http_server, srv.services)
    srv.services.db.close()


@pytest.fixture
def server_settings(database_url) -> Settings:
    """Override in a test module to change settings (e.g. webhook retry base)."""
    return make_settings(database_url)


@pytest.fixture
async def server(server_settings) -> TestServer:
    srv, http_server = await start_server(server_settings)
    try:
        yield srv
    finally:
        await stop_server(srv, http_server)


class StreamRefusal:
    """While ``on``, ``/ws/datapoints/stream`` answers upgrades with HTTP 503, as a
    proxy in front of a restarting server would."""

    def __init__(self, monkeypatch) -> None:
        self.on = False
        upgrade = StreamHandler.get

        async def get(handler, *args, **kwargs):
            if self.on:
                handler.set_status(503)
                handler.finish()
                return
            await upgrade(handler, *args, **kwargs)

        monkeypatch.setattr(StreamHandler, "get", get)


@pytest.fixture
def stream_refusal(monkeypatch) -> StreamRefusal:
    return StreamRefusal(monkeypatch)


ServerFactory = Callable[..., Awaitable[TestServer]]
