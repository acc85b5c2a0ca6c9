"""The documentation runs: every shell block of docs/quickstart.md is executed, in order,
against a real server started by its own first block; the WebSocket client of
docs/websocket.md runs against a real server; README and docs link only files inside
the repository.

Quickstart blocks are fenced as ```bash quickstart (run in one bash session, so variables
carry over, with ``set -euo pipefail``) or ```bash quickstart background (a long-running
process, stopped with SIGTERM at the end). The only changes made to the text: port 8000
becomes a free port and the controller's log file goes to the test's temp dir."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from tests.conftest import WS, wait_for
from tests.procs import REPO, clean_env, free_port, stop

DOCS = REPO / "docs"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
SENTINEL = "__webmacs_block_done__"


def fenced(path: Path) -> list[tuple[str, str]]:
    return [(info.strip(), body) for info, body in FENCE.findall(path.read_text())]


def test_every_shell_block_of_the_quickstart_is_run():
    blocks = fenced(DOCS / "quickstart.md")
    shell = [(info, body) for info, body in blocks if info.split()[:1] in (["bash"], ["sh"], ["shell"], ["console"])]
    assert len(shell) >= 9
    untested = [body for info, body in shell if info not in ("bash quickstart", "bash quickstart background")]
    assert not untested, f"shell blocks in docs/quickstart.md that tests/test_docs.py does not run: {untested}"


class Shell:
    """One bash session fed block by block; a failing command ends it (set -e)."""

    def __init__(self, proc: asyncio.subprocess.Process, tmp: Path) -> None:
        self.proc = proc
        self.tmp = tmp
        self.n = 0

    @classmethod
    async def start(cls, env: dict, tmp: Path) -> "Shell":
        proc = await asyncio.create_subprocess_exec(
            "bash", "--noprofile", "--norc", cwd=REPO, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        shell = cls(proc, tmp)
        await shell.run("set -euo pipefail\nset -a\n")
        return shell

    async def run(self, script: str, timeout: float = 180) -> str:
        self.n += 1
        path = self.tmp / f"block{self.n}.sh"
        path.write_text(script)
        self.proc.stdin.write(f"source {path}\nprintf '\\n{SENTINEL}\\n'\n".encode())
        await self.proc.stdin.drain()
        out: list[str] = []

        async def read() -> None:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"block failed (shell exited {await self.proc.wait()}):\n{script}\n"
                                         f"output:\n{''.join(out)}")
                text = line.decode(errors="replace")
                if text.strip() == SENTINEL:
                    return
                out.append(text)

        await asyncio.wait_for(read(), timeout)
        return "".join(out)

    async def var(self, name: str) -> str:
        return (await self.run(f'printf "%s\\n" "${name}"\n')).strip()

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.mark.timeout(300)
async def test_quickstart_commands_give_a_live_reading(tmp_path):
    port = free_port()
    controller_log = tmp_path / "controller.log"
    blocks = [(info.endswith("background"), body.replace("8000", str(port))
               .replace("webmacs-controller.log", str(controller_log)))
              for info, body in fenced(DOCS / "quickstart.md") if info.startswith("bash quickstart")]
    env = clean_env(WEBMACS_DATABASE_URL=f"sqlite:///{tmp_path}/webmacs.db",
                    WEBMACS_SPOOL_PATH=str(tmp_path / "spool.db"), PYTHONUNBUFFERED="1")
    background: list[tuple[subprocess.Popen, Path]] = []
    shell = await Shell.start(env, tmp_path)
    http = AsyncHTTPClient(force_instance=True)
    sockets: list[WS] = []
    outputs: list[str] = []
    try:
        for is_background, body in blocks:
            if is_background:
                log = tmp_path / f"background{len(background)}.log"
                with open(log, "wb") as fh:
                    background.append((subprocess.Popen(["bash", "-c", body], cwd=REPO, env=env, stdout=fh,
                                                        stderr=subprocess.STDOUT, start_new_session=True), log))
                continue
            if "/api/v1/datapoints/latest" in body:
                # the controller syncs its mappings and sends its first batch within seconds
                token, event = await shell.var("TOKEN"), await shell.var("EVENT")
                await wait_for(lambda: event in json.dumps(get_json_auth(port, token)), timeout=30,
                               interval=0.2, message=f"a reading of {event}; controller log:\n"
                                                     f"{controller_log.read_text() if controller_log.exists() else ''}")
                await check_live_stream(http, sockets, port, token, event)
            outputs.append(await shell.run(body))
            for proc, log in background:
                assert proc.poll() is None, f"background block exited early:\n{log.read_text()}"

        health = json.loads(outputs[0])
        assert health["status"] == "ok" and health["database"] == "ok"
        assert "created admin admin <admin@example.com>" in outputs[1]
        assert (await shell.var("API_TOKEN")).startswith("wm_")
        latest = json.loads(next(o for o in outputs if o.lstrip().startswith("[")))
        event = await shell.var("EVENT")
        (reading,) = [p for p in latest if p["event_public_id"] == event]
        assert isinstance(reading["value"], float) and 20 <= reading["value"] <= 500  # the reactor's range
        # the last block stops the controller: it flushes and says so
        await wait_for(lambda: "stopped: every reading acknowledged" in controller_log.read_text(), timeout=15,
                       message=f"controller to stop:\n{controller_log.read_text()}")
    finally:
        for sock in sockets:
            sock.close()
        http.close()
        await shell.close()
        for proc, log in background:
            stop(proc, signal.SIGTERM, timeout=20, group=True)
    server_log = background[0][1].read_text()
    assert "webmacs: stopped" in server_log and "alembic" not in server_log, server_log


def get_json_auth(port: int, token: str):
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/datapoints/latest",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return json.load(resp)
    except OSError:
        return None


async def check_live_stream(http, sockets: list, port: int, token: str, event: str) -> None:
    """What the dashboard sees: the page, and the event's readings on the live stream."""
    page = await http.fetch(f"http://127.0.0.1:{port}/", raise_error=False)
    assert page.code == 200 and b"<html" in page.body.lower()
    sock = WS(await websocket_connect(f"ws://127.0.0.1:{port}/ws/datapoints/stream?token={token}"))
    sockets.append(sock)
    assert (await sock.recv())["type"] == "connected"
    seen: list[float] = []
    while len(seen) < 2:  # two successive readings: it is live
        batch = await sock.recv_type("datapoints_batch", timeout=10)
        seen += [p["value"] for p in batch["datapoints"] if p["event_public_id"] == event]


async def test_websocket_doc_client_runs(server, capsys):
    (code,) = [body for info, body in fenced(DOCS / "websocket.md") if info == "python"]
    (event,) = await server.linked_events(1)
    namespace: dict = {}
    exec(compile(code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}"), "docs/websocket.md", "exec"),
         namespace)
    await asyncio.wait_for(namespace["main"](server.admin_token, event), 10)
    printed = capsys.readouterr().out
    assert "'type': 'connected'" in printed and "'type': 'datapoints_batch'" in printed and event in printed


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_and_docs_link_only_files_inside_the_repository():
    files = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    checked = 0
    for md in files:
        for target in LINK.findall(md.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                assert not target.startswith("file:"), (md.name, target)
                continue
            path = (md.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(REPO), f"{md.name} links outside the repository: {target}"
            assert path.exists(), f"{md.name} links a missing file: {target}"
            checked += 1
    assert checked >= 10
    readme = (REPO / "README.md").read_text()
    assert "shared/spec" not in readme and "../" not in readme
    for doc in ("websocket.md", "quickstart.md", "deploy.md", "telemetry-acks.md"):
        assert f"docs/{doc}" in readme, doc
