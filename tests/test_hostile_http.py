"""Hostile HTTP clients (issue 10, REST side): every bad input a clear 4xx, bodies
refused before they are read, logins limited, forwarded headers trusted only from
proxies, half-open connections and fd exhaustion survived, /health answering
through a database freeze. Real sockets against real servers (in-process on a
real port, or a ``webmacs serve`` process)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import SECRET, make_settings, wait_for
from tests.test_no_loss import cluster  # noqa: F401 - a private PostgreSQL cluster fixture
from tests.test_shutdown import ServeProcess

REPO = Path(__file__).resolve().parent.parent


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh socket, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Content-Length: " in chunks[0]:
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return b"".join(chunks)


# --- bad input (item 5) ----------------------------------------------------------------

async def test_deep_nesting_is_a_400_not_a_500(server):
    for path, n in (("/api/v1/auth/login", 60_000), ("/api/v1/events", 60_000), ("/api/v1/datapoints/batch", 100_000)):
        resp = await server.request("POST", path, raw=b"[" * n)
        assert resp.code == 400, (path, resp)
        assert "nested" in resp.json["detail"]
    deep = b'{"name": "x", "type": "sensor", "unit": "C", "meta": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    resp = await server.request("POST", "/api/v1/events", raw=deep)
    assert resp.code == 400, resp
    # Brackets inside strings do not count.
    resp = await server.request("POST", "/api/v1/auth/login", raw=json.dumps(
        {"email": "nobody@example.com", "password": "[" * 1000}).encode(), token=None)
    assert resp.code == 401, resp


async def test_integers_beyond_float_range_are_422(server):
    [event] = await server.linked_events(1)
    big = "9" * 400
    cases = [
        ("/api/v1/datapoints", f'{{"value": {big}, "event_public_id": "{event}"}}'),
        ("/api/v1/datapoints/batch", f'{{"datapoints": [{{"value": {big}, "event_public_id": "{event}"}}]}}'),
        ("/api/v1/events", f'{{"name": "big", "type": "sensor", "unit": "C", "min_value": {big}}}'),
    ]
    for path, body in cases:
        resp = await server.request("POST", path, raw=body.encode())
        assert resp.code == 422, (path, resp)
        assert "value" in resp.json["detail"]


async def test_lone_surrogates_and_nul_are_4xx(server):
    resp = await server.request("POST", "/api/v1/auth/login",
                                raw=b'{"email": "a\\ud800@example.com", "password": "x"}', token=None)
    assert resp.code == 422, resp
    assert resp.json["detail"].startswith("email:")
    resp = await server.request("POST", "/api/v1/events",
                                raw=b'{"name": "ok\\udfff", "type": "sensor", "unit": "C", "min_value": 0, "max_value": 1}')
    assert resp.code == 422 and resp.json["detail"].startswith("name:"), resp
    resp = await server.request("POST", "/api/v1/events",
                                raw=b'{"name": "ok", "type": "sensor", "unit": "C", "min_value": 0, "max_value": 1, "x": {"y": "\\u0000"}}')
    assert resp.code == 422 and resp.json["detail"].startswith("x.y:"), resp
    # A properly paired surrogate (an emoji) is fine.
    resp = await server.request("POST", "/api/v1/events",
                                raw=b'{"name": "ok \\ud83d\\ude00", "type": "sensor", "unit": "C", "min_value": 0, "max_value": 1}')
    assert resp.code == 201, resp
    plugin = await server.request("POST", "/api/v1/plugins", {"plugin_id": "simulated", "instance_name": "p"})
    assert plugin.code == 201, plugin
    resp = await server.request("GET", f"/api/v1/plugins/{plugin.json['data']['public_id']}/channels/ab%00cd")
    assert resp.code == 404, resp
    resp = await server.request("GET", "/static/app.js%00.png", token=None)
    assert resp.code == 404, resp
    resp = await server.request("GET", "/api/v1/datapoints?event_public_id=a%00b")
    assert resp.code == 400 and resp.json["detail"].startswith("event_public_id:"), resp


# --- bodies (item 3) ---------------------------------------------------------------------

async def test_big_bodies_are_refused_before_they_are_read(server):
    # Only the header is sent: the answer must come without the 15 MB body.
    head = (b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 15000000\r\n\r\n[")
    answer = await asyncio.get_running_loop().run_in_executor(None, raw_request, server.port, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"detail"' in answer
    resp = await server.request("POST", "/api/v1/events", raw=b"[" + b"1," * 40_000 + b"1]")
    assert resp.code == 413, resp
    # The batch route allows more than the default limit.
    [event] = await server.linked_events(1)
    points = [{"value": float(i), "event_public_id": event, "timestamp": "2026-01-01T00:00:00+00:00"}
              for i in range(500)]
    body = json.dumps({"datapoints": points}, indent=2).encode()
    assert 64 * 1024 < len(body) < 256 * 1024
    resp = await server.request("POST", "/api/v1/datapoints/batch", raw=body)
    assert resp.code == 201, resp


# --- headers (item 9) --------------------------------------------------------------------

async def test_401_carries_www_authenticate_and_csp_ignores_host(server):
    resp = await server.request("GET", "/api/v1/events", token="not-a-token")
    assert resp.code == 401
    assert resp.headers.get("WWW-Authenticate") == "Bearer"
    resp = await server.request("GET", "/", token=None, headers={"Host": "a.b'unsafe-inline'"})
    assert resp.code == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "a.b" not in csp and "connect-src 'self';" in csp


def test_token_redaction_filter_covers_tracebacks():
    from webmacs.serving import RedactTokens

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactTokens())
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError("boom at /ws/controller/telemetry?token=wm_secretsecret&x=1")
        except RuntimeError:
            logger.exception("Uncaught exception GET /ws/datapoints/stream?token=eyJhbGciOi.abc.def (127.0.0.1)")
        logger.error("Authorization: Bearer eyJabc.def.ghi")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "wm_secretsecret" not in out and "eyJ" not in out, out
    assert out.count("token=***") >= 2 and "Bearer ***" in out


# --- logins and rate limits (item 4) -----------------------------------------------------

@pytest.fixture
def server_settings(request, database_url):
    overrides = getattr(request, "param", {})
    return make_settings(database_url, **overrides)


async def test_failed_logins_per_account_hold_from_loopback(server):
    body = {"email": "admin@example.com", "password": "wrong-password"}
    for _ in range(10):
        resp = await server.request("POST", "/api/v1/auth/login", body, token=None)
        assert resp.code == 401, resp
    resp = await server.request("POST", "/api/v1/auth/login", body, token=None)
    assert resp.code == 429, resp
    assert int(resp.headers["Retry-After"]) > 0 and "detail" in resp.json
    # The right password does not help while the account is locked...
    resp = await server.request("POST", "/api/v1/auth/login",
                                {"email": "admin@example.com", "password": "admin-password-1"}, token=None)
    assert resp.code == 429
    # ...but other accounts are not affected.
    resp = await server.request("POST", "/api/v1/auth/login",
                                {"email": "other@example.com", "password": "x"}, token=None)
    assert resp.code == 401


class GuardedFront:
    """The production server class (trusted proxies, caps) on the fixture's services."""

    def __init__(self, server, trusted: str) -> None:
        from tornado.testing import bind_unused_port

        from webmacs.app import make_app
        from webmacs.serving import GuardedHTTPServer, parse_networks

        self.token = server.admin_token
        self.http = GuardedHTTPServer(make_app(server.services), trusted_proxies=parse_networks(trusted, "x"))
        sock, self.port = bind_unused_port()
        self.http.add_sockets([sock])
        self.client = AsyncHTTPClient(force_instance=True)

    async def get(self, path: str, ip: str | None = None, auth: bool = True):
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        if ip:
            headers.update({"X-Real-IP": ip, "X-Forwarded-For": ip})
        return await self.client.fetch(f"http://127.0.0.1:{self.port}{path}", raise_error=False, headers=headers)

    async def close(self) -> None:
        self.client.close()
        self.http.stop()
        await self.http.close_all_connections()


LIMIT_5 = [{"WEBMACS_RATE_LIMIT": "5", "WEBMACS_RATE_LIMIT_EXEMPT": ""}]


@pytest.mark.parametrize("server_settings", LIMIT_5, indirect=True)
async def test_per_ip_rate_limit_behind_a_trusted_proxy(server):
    front = GuardedFront(server, "127.0.0.1/32")  # the test client plays the proxy
    try:
        for _ in range(5):
            assert (await front.get("/api/v1/events", "198.51.100.7")).code == 200
        resp = await front.get("/api/v1/events", "198.51.100.7")
        assert resp.code == 429 and int(resp.headers["Retry-After"]) >= 1, resp
        assert json.loads(resp.body)["detail"]
        assert (await front.get("/api/v1/events", "198.51.100.8")).code == 200  # another client
        for _ in range(10):  # /health is exempt
            assert (await front.get("/health", "198.51.100.7", auth=False)).code == 200
    finally:
        await front.close()


@pytest.mark.parametrize("server_settings", LIMIT_5, indirect=True)
async def test_forwarded_headers_ignored_from_untrusted_peers(server):
    front = GuardedFront(server, "192.0.2.1/32")  # 127.0.0.1 is not a trusted proxy here
    try:
        codes = [(await front.get("/api/v1/events", f"203.0.113.{i}")).code for i in range(7)]
        assert 429 in codes, codes  # one bucket: 127.0.0.1 (the fixture's login counted too)
    finally:
        await front.close()


# --- a real server process (items 2, 11, 12) -----------------------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _health(port: int, timeout: float = 5.0) -> dict | None:
    http = AsyncHTTPClient(force_instance=True)
    try:
        resp = await http.fetch(f"http://127.0.0.1:{port}/health", raise_error=False, request_timeout=timeout)
        return json.loads(resp.body) if resp.code == 200 else None
    except Exception:  # noqa: BLE001 - refused, reset or timed out: no answer
        return None
    finally:
        http.close()


def _half_headers(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        return s.recv(4096) == b"" or True
    except (socket.timeout, BlockingIOError):
        return False
    except OSError:
        return True


@pytest.mark.timeout(120)
async def test_fd_exhaustion_and_half_open_connections(database_url, tmp_path):
    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    proc = ServeProcess(database_url, tmp_path / "server.log", WEBMACS_HTTP_HEADER_TIMEOUT="2",
                        WEBMACS_MAX_CONNECTIONS="1000")
    orig = asyncio.create_subprocess_exec

    async def exec_with_limit(*args, **kw):
        return await orig(*args, preexec_fn=low_fd_limit, **kw)

    asyncio.create_subprocess_exec = exec_with_limit
    try:
        await proc.start()
    finally:
        asyncio.create_subprocess_exec = orig
    socks: list[socket.socket] = []
    try:
        loop = asyncio.get_running_loop()
        socks = await loop.run_in_executor(None, _half_headers, proc.port, 200)
        cpu0, t0 = _cpu_seconds(proc.proc.pid), time.monotonic()
        await asyncio.sleep(1.5)  # measuring: the accept loop must rest, not spin
        cpu = (_cpu_seconds(proc.proc.pid) - cpu0) / (time.monotonic() - t0)
        assert cpu < 0.5, f"server used {cpu:.0%} CPU while out of descriptors"
        # The header timeout frees the descriptors; /health answers again.
        assert await wait_for(lambda: _health(proc.port, 2), timeout=20, message="/health during the flood")
        await wait_for(lambda: all(_closed_by_server(s) for s in socks[:50]), timeout=10,
                       message="half-header connections closed by the server")
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert log.count("Too many open files") <= 3, log[-3000:]
        assert len(log.encode()) < 20_000, f"{len(log)} bytes of log"
    finally:
        for s in socks:
            s.close()
        await proc.kill()


@pytest.mark.timeout(60)
async def test_connection_cap_makes_room_by_closing_half_open_connections(database_url, tmp_path):
    # The header timeout is long here: what frees room is the cap, not the timeout.
    proc = ServeProcess(database_url, tmp_path / "server.log", WEBMACS_MAX_CONNECTIONS="20",
                        WEBMACS_HTTP_HEADER_TIMEOUT="60")
    await proc.start()
    socks: list[socket.socket] = []
    try:
        socks = await asyncio.get_running_loop().run_in_executor(None, _half_headers, proc.port, 40)
        await wait_for(lambda: sum(_closed_by_server(s) for s in socks[:20]) == 20, timeout=5,
                       message="the oldest half-open connections closed to make room")
        assert not any(_closed_by_server(s) for s in socks[-10:])  # the newest are kept
        t0 = time.monotonic()
        body = await _health(proc.port, 2)
        assert body is not None and body["status"] == "ok" and time.monotonic() - t0 < 2
        log = (tmp_path / "server.log").read_text()
        assert log.count("connection cap reached") == 1, log[-2000:]
    finally:
        for s in socks:
            s.close()
        await proc.kill()


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "webmacs", *args], env=full, capture_output=True, text=True,
                          timeout=60)


def test_settings_are_refused_with_one_line(tmp_path):
    db = f"sqlite:///{tmp_path}/x.db"
    for args, env, needle in [
        (("serve", "--port", "80000"), {}, "--port must be between 1 and 65535, got 80000"),
        (("serve", "--port", "0"), {}, "--port must be between 1 and 65535, got 0"),
        (("serve", "--port", "-1"), {}, "--port must be between 1 and 65535, got -1"),
        (("serve",), {"WEBMACS_LOG_LEVEL": "verbose"}, "WEBMACS_LOG_LEVEL must be one of"),
        (("serve",), {"WEBMACS_ENV": "production", "WEBMACS_SECRET_KEY": "change-me-in-production-please-0123456789"},
         "WEBMACS_SECRET_KEY is the example placeholder"),
        (("serve",), {"WEBMACS_TRUSTED_PROXIES": "10.0.0.0/33"}, "WEBMACS_TRUSTED_PROXIES"),
    ]:
        out = _run_cli(*args, WEBMACS_DATABASE_URL=db, **env)
        assert out.returncode == 2, (args, env, out)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, env, out.stderr)
    # The example file's own value is refused in production too.
    example = dict(line.split("=", 1) for line in (REPO / "conf/webmacs.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    out = _run_cli("serve", WEBMACS_DATABASE_URL=db, WEBMACS_ENV="production",
                   WEBMACS_SECRET_KEY=example["WEBMACS_SECRET_KEY"])
    assert out.returncode == 2 and "WEBMACS_SECRET_KEY" in out.stderr


@pytest.mark.timeout(60)
async def test_no_user_is_said_loudly(tmp_path):
    db = f"sqlite:///{tmp_path}/empty.db"
    proc = ServeProcess(db, tmp_path / "server.log")
    for k in ("WEBMACS_INITIAL_ADMIN_EMAIL", "WEBMACS_INITIAL_ADMIN_PASSWORD"):
        proc.env.pop(k)
    await proc.start()
    http = AsyncHTTPClient(force_instance=True)
    try:
        resp = await http.fetch(f"http://127.0.0.1:{proc.port}/api/v1/auth/login-hint")
        hint = json.loads(resp.body)
        assert hint["users_exist"] is False and "webmacs create-user --role admin" in hint["command"]
        assert "NO USER EXISTS" in (tmp_path / "server.log").read_text()
    finally:
        http.close()
        await proc.kill()


# --- PostgreSQL: migrate lock, /health during a freeze (item 11) -----------------------------

@pytest.fixture
def fresh_pg_db():
    base = os.environ.get("WEBMACS_TEST_PG_URL")
    if not base:
        pytest.fail("WEBMACS_TEST_PG_URL is not set")
    prefix, _, template = base.rpartition("/")
    name = f"{template}_mig_{os.getpid()}"
    admin = create_engine(f"{prefix}/postgres".replace("postgresql://", "postgresql+psycopg2://", 1),
                          isolation_level="AUTOCOMMIT")
    from tests.conftest import clone_template, drop_database

    clone_template(admin, template, name)
    yield f"{prefix}/{name}"
    drop_database(admin, name)
    admin.dispose()


@pytest.mark.timeout(120)
def test_concurrent_migrations_take_turns(fresh_pg_db):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    env.update(WEBMACS_DATABASE_URL=fresh_pg_db, WEBMACS_SECRET_KEY=SECRET)
    procs = [subprocess.Popen([sys.executable, "-m", "webmacs", "migrate"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=100) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "latest schema revision" in out


@pytest.mark.timeout(180)
async def test_health_answers_during_a_database_freeze(cluster, tmp_path):  # noqa: F811
    pg = cluster
    proc = ServeProcess(pg.url("webmacs"), tmp_path / "server.log")
    stopped: list[int] = []
    try:
        await proc.start()
        assert (await _health(proc.port))["database"] == "ok"
        pids = _cluster_pids(pg.datadir)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        for _ in range(3):
            t0 = time.monotonic()
            body = await _health(proc.port, timeout=5)
            elapsed = time.monotonic() - t0
            assert body is not None and elapsed < 2.0, (elapsed, body)
            assert body["database"] == "error" and body["status"] == "degraded", body
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        await proc.kill()


def _cluster_pids(datadir: Path) -> list[int]:
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                pids.append(int(entry.name))
    return pids


@pytest.mark.timeout(90)
async def test_a_flood_of_bad_requests_is_not_a_flood_of_log_lines(database_url, tmp_path):
    proc = ServeProcess(database_url, tmp_path / "server.log")
    await proc.start()
    http = AsyncHTTPClient(force_instance=True)
    try:
        before = (tmp_path / "server.log").stat().st_size
        base = f"http://127.0.0.1:{proc.port}"
        bad = [("POST", "/api/v1/auth/login", b"[" * 60_000), ("POST", "/api/v1/events", b'{"name": "\\ud800"}'),
               ("GET", "/api/v1/events", None), ("POST", "/api/v1/auth/login", b"x" * 70_000)]
        for i in range(200):
            method, path, body = bad[i % len(bad)]
            resp = await http.fetch(base + path + "?token=abc", method=method, body=body, raise_error=False,
                                    headers={"Authorization": "Bearer nope"})
            assert 400 <= resp.code < 500, (path, resp.code, resp.body)
        log = (tmp_path / "server.log").read_text(errors="replace")[before:]
        assert len(log.splitlines()) <= 10, log
        assert "abc" not in log
    finally:
        http.close()
        await proc.kill()
