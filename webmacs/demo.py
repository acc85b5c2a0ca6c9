"""``webmacs serve --demo``: live data on the first look, with one command.

At start (before the server listens), when no plugin instance exists yet, a
``simulated`` instance is created exactly as ``POST /api/v1/plugins`` does with
``auto_create_events`` (:func:`webmacs.handlers.resources.create_instance`), owned by
the first admin. The controller client then runs as a child process with an API
token of that admin, and is stopped (SIGTERM, then waited for) before the server
stops. Its files (token, spool, plugin folder) live in a ``webmacs-demo`` folder
next to the SQLite file (``./webmacs-data/webmacs-demo`` with PostgreSQL), so a
restart reuses them.

The child asks the kernel to send it SIGTERM when the server process dies, so even a
``kill -9`` of the server leaves no controller behind (Linux).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from sqlalchemy import select

from webmacs.config import ConfigError, Settings, _data_dir

log = logging.getLogger("webmacs.demo")

INSTANCE = {"plugin_id": "simulated", "instance_name": "Demo rig"}
TOKEN_NAME = "webmacs serve --demo"
# Seconds the controller gets to send what it holds after SIGTERM, and the wait beyond it.
FLUSH_TIMEOUT = 2.0
STOP_GRACE = 5.0


def demo_dir(config: Settings) -> Path:
    return Path(_data_dir(config.database_url, "webmacs-demo"))


def prepare(config: Settings, db) -> str:
    """Blocking, after the schema check: the demo instance if none exists, and the
    controller's API token (plaintext, kept in ``webmacs-demo/token`` with mode 0600)."""
    from webmacs.handlers.resources import INSTANCE_SPEC, create_instance
    from webmacs.models import ApiToken, PluginInstance, User
    from webmacs.security import hash_api_token, new_api_token
    from webmacs.validation import validate

    folder = demo_dir(config)
    token_file = folder / "token"
    with db.Session() as session:
        admin = session.execute(select(User).where(User.role == "admin").order_by(User.id).limit(1)).scalar()
        if admin is None:
            raise ConfigError("--demo needs an admin: set WEBMACS_INITIAL_ADMIN_EMAIL and "
                              "WEBMACS_INITIAL_ADMIN_PASSWORD (or run `webmacs create-user --role admin`)")
        if session.execute(select(PluginInstance.id).limit(1)).first() is None:
            inst = create_instance(session, validate(dict(INSTANCE), INSTANCE_SPEC), admin.id)
            log.info("demo: created plugin instance %r (simulated) with %d linked events",
                     inst.instance_name, _linked(session, inst.id))
        token = token_file.read_text().strip() if token_file.exists() else ""
        known = token and session.execute(select(ApiToken.id).where(
            ApiToken.token_hash == hash_api_token(token), ApiToken.user_id == admin.id)).first()
        if not known:
            token, digest = new_api_token()
            session.add(ApiToken(name=TOKEN_NAME, token_hash=digest, user_id=admin.id))
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            log.info("demo: API token %r created for %s (kept in %s)", TOKEN_NAME, admin.email, token_file)
        session.commit()
    return token


def _linked(session, instance_id: int) -> int:
    from sqlalchemy import func

    from webmacs.models import ChannelMapping

    return session.execute(select(func.count()).select_from(ChannelMapping).where(
        ChannelMapping.instance_id == instance_id, ChannelMapping.event_id.is_not(None))).scalar()


def server_url(host: str, port: int) -> str:
    """Where the controller reaches a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class DemoController:
    """The controller client as a child process of the server."""

    def __init__(self, config: Settings, token: str) -> None:
        self.config = config
        self.token = token
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._watch: asyncio.Future | None = None

    async def start(self, url: str) -> None:
        folder = demo_dir(self.config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBMACS_")}
        env.update({
            "WEBMACS_SERVER_URL": url,
            "WEBMACS_API_TOKEN": self.token,
            "WEBMACS_SPOOL_PATH": str(folder / "controller-spool.db"),
            "WEBMACS_PLUGIN_DIR": str(folder / "plugins"),
            "WEBMACS_FLUSH_TIMEOUT": str(FLUSH_TIMEOUT),
            "WEBMACS_LOG_LEVEL": os.environ.get("WEBMACS_LOG_LEVEL", "INFO"),
        })
        # its own session: Ctrl-C in the terminal reaches the server only, which then stops
        # the controller itself (one SIGTERM, one flush)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "webmacs.demo", str(os.getpid()), env=env, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        log.info("demo: controller started (pid %d) against %s", self.proc.pid, url)
        self._watch = asyncio.ensure_future(self._watch_exit(self.proc))

    async def _watch_exit(self, proc) -> None:
        code = await proc.wait()
        if not self.stopping:
            log.warning("demo: the controller exited on its own (exit %s); the server keeps running without it",
                        code)

    async def stop(self) -> None:
        proc = self.proc
        self.stopping = True
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), FLUSH_TIMEOUT + STOP_GRACE)
        except asyncio.TimeoutError:
            log.warning("demo: controller did not stop in time; killing it")
            proc.kill()
            await proc.wait()
        if self._watch is not None:
            await self._watch
        log.info("demo: controller stopped (exit %s)", proc.returncode)


def _child(parent_pid: int) -> int:
    """The controller, ended by the kernel if the server process goes away."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the server died before the line above
        return 0
    from webmacs.controller.main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(_child(int(sys.argv[1])))
