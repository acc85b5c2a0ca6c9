"""`webmacs serve --demo` as a newcomer runs it: a real process on a free port, a fresh
SQLite file, live values of the simulated channels, and a clean SIGTERM stop that
takes the controller with it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil

from tests.conftest import wait_for
from tests.procs import clean_env, free_port, stop, wait_health
from webmacs.plugins.simulated import SimulatedPlugin

EMAIL, PASSWORD = "newcomer@example.com", "first-look-123"


def api(port: int, path: str, token: str | None = None, body: dict | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def start(tmp_path: Path, port: int, **env: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"serve-{port}.log"
    settings = {"WEBMACS_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}", "WEBMACS_INITIAL_ADMIN_EMAIL": EMAIL,
                "WEBMACS_INITIAL_ADMIN_PASSWORD": PASSWORD}
    settings.update(env)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "webmacs", "serve", "--demo", "--port", str(port)],
                                cwd=tmp_path, env=clean_env(**settings), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group, as a terminal gives it
    return proc, log


async def live_values(port: int, proc: subprocess.Popen, log: Path) -> tuple[str, dict]:
    """Log in, then wait until every simulated input channel has a value read by this
    process's controller (newer than the start)."""
    started = datetime.now(timezone.utc)
    await wait_health(port, proc, log)
    token = api(port, "/api/v1/auth/login", body={"email": EMAIL, "password": PASSWORD})["access_token"]
    events = {e["public_id"]: e["name"] for e in api(port, "/api/v1/events?page_size=100", token)["data"]}
    inputs = {ch.channel_name for ch in SimulatedPlugin.channels() if ch.direction == "input"}
    wanted = {pid for pid, name in events.items() if name.removeprefix("Demo rig ") in inputs}
    assert len(wanted) == len(inputs), events

    def latest():
        values = {d["event_public_id"]: d["value"] for d in api(port, "/api/v1/datapoints/latest", token)
                  if datetime.fromisoformat(d["timestamp"]) > started}
        return values if wanted <= values.keys() else None

    return token, await wait_for(latest, timeout=30, interval=0.2, message=f"live values\n{log.read_text()[-2000:]}")


def controllers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children(recursive=True) if "webmacs.demo" in " ".join(c.cmdline())]


async def test_demo_shows_live_data_and_stops_with_its_controller(tmp_path):
    port = free_port()
    proc, log = start(tmp_path, port)
    try:
        token, first = await live_values(port, proc, log)
        children = controllers_of(proc)
        assert len(children) == 1, children
        # the values move on: the controller keeps sending
        await wait_for(lambda: any(d["value"] != first.get(d["event_public_id"])
                                   for d in api(port, "/api/v1/datapoints/latest", token)),
                       timeout=15, interval=0.3, message="a changed reading")
    finally:
        code = stop(proc, signal.SIGTERM)
    assert code == 0, log.read_text()[-3000:]
    psutil.wait_procs(children, timeout=5)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), "controller left behind"
    text = log.read_text()
    assert "demo: controller stopped (exit 0)" in text and "Traceback" not in text
    assert "wm_" not in text  # the token is never logged

    # A second start reuses the instance, its events and the stored token; Ctrl-C (SIGINT
    # to the terminal's process group) stops it, the server stopping the controller.
    port = free_port()
    proc, log = start(tmp_path, port)
    try:
        token, _values = await live_values(port, proc, log)
        assert api(port, "/api/v1/plugins", token)["total"] == 1
        tokens = api(port, "/api/v1/tokens", token)
        assert [t["name"] for t in tokens["data"]] == ["webmacs serve --demo"], tokens
        children = controllers_of(proc)
    finally:
        assert stop(proc, signal.SIGINT, group=True) == 0, log.read_text()[-3000:]
    assert not psutil.wait_procs(children, timeout=5)[1], "controller left behind"
    assert log.read_text().count("demo: controller stopped (exit 0)") == 1
    assert (tmp_path / "webmacs-demo" / "token").stat().st_mode & 0o077 == 0


def test_demo_without_an_admin_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "webmacs", "serve", "--demo", "--port", str(free_port())],
                          cwd=tmp_path, env=clean_env(WEBMACS_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "webmacs: error: --demo needs an admin: set WEBMACS_INITIAL_ADMIN_EMAIL"), proc.stderr




async def test_controller_does_not_outlive_a_killed_server(tmp_path):
    """Even SIGKILL of the server (no shutdown code runs) ends the demo controller."""
    port = free_port()
    proc, log = start(tmp_path, port)
    try:
        await live_values(port, proc, log)
        children = controllers_of(proc)
        assert len(children) == 1, children
    finally:
        stop(proc, signal.SIGKILL)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "the demo controller outlived its server"
