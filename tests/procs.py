"""Helpers for tests that run real programs: a free port, waiting for /health, stopping."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any WEBMACS_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
    env.update(extra)
    return env


def get_json(url: str, timeout: float = 2.0) -> dict | None:
    """GET ``url``; the JSON body on 200, None when nothing answers (yet). Blocking: use it
    only against other processes."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp) if resp.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


async def wait_health(port: int, proc: subprocess.Popen | None = None, log: Path | None = None,
                      timeout: float = 30.0) -> dict:
    """Wait until http://127.0.0.1:port/health answers ok; fail early when ``proc`` exits."""
    def check():
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"process exited with {proc.returncode} before /health answered:\n{text}")
        body = get_json(f"http://127.0.0.1:{port}/health")
        return body if body and body.get("status") == "ok" else None

    return await wait_for(check, timeout=timeout, interval=0.1, message=f"/health on port {port}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0, group: bool = False) -> int:
    """Send ``sig`` (to the process group with ``group``), wait, kill if it does not exit."""
    if proc.poll() is None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(5)
            raise AssertionError(f"{proc.args!r} did not stop within {timeout}s after signal {sig}") from None
        except ProcessLookupError:
            pass
    return proc.wait(5)


def elapsed(start: float) -> float:
    return time.monotonic() - start
