"""A real HTTP webhook receiver for tests: a small Tornado app on 127.0.0.1.

The first path segment picks the behaviour, the rest only makes URLs unique:

- ``/ok/...``       200
- ``/fail/...``     500 with a 10 kB body (never to be stored beyond an excerpt)
- ``/redirect/...`` 302 to ``/ok/redirected`` (must not be followed)
- ``/hang/...``     no answer until :meth:`Receiver.close` (or ``release``)
- ``/switch/...``   ``Receiver.switch_status`` (change it during a test)

Every request is recorded as a :class:`Hit` (path, headers, raw body, monotonic time).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler


@dataclass
class Hit:
    path: str
    mode: str
    headers: dict
    body: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    def signature_ok(self, secret: str) -> bool:
        """The receiver-side check from docs/webhooks.md."""
        timestamp = self.headers["X-Webhook-Timestamp"]
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-Webhook-Signature", ""))


class _Hook(RequestHandler):
    def initialize(self, receiver: "Receiver") -> None:
        self.receiver = receiver

    async def post(self, mode: str, rest: str = "") -> None:
        rec = self.receiver
        rec.hits.append(Hit(self.request.path, mode, dict(self.request.headers), self.request.body, time.monotonic()))
        if mode == "ok":
            self.finish("ok")
        elif mode == "fail":
            self.set_status(500)
            self.finish("E" * 10_000)
        elif mode == "redirect":
            self.redirect("/ok/redirected", status=302)
        elif mode == "hang":
            rec.hanging += 1
            try:
                await rec.release.wait()
            finally:
                rec.hanging -= 1
            self.finish("late")
        elif mode == "switch":
            self.set_status(rec.switch_status)
            self.finish("switch")
        else:
            self.set_status(404)
            self.finish()


class Receiver:
    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.hanging = 0
        self.release = asyncio.Event()
        self.switch_status = 200
        self.port = 0
        self._server: HTTPServer | None = None

    def start(self, sock: socket.socket | None = None) -> "Receiver":
        """Listen on ``sock`` (a bound socket; made to listen here) or an unused port."""
        if sock is None:
            sock, self.port = bind_unused_port()
        else:
            self.port = sock.getsockname()[1]
            sock.listen(128)
            sock.setblocking(False)
        app = Application([(r"/([a-z]+)(/.*)?", _Hook, {"receiver": self})])
        self._server = HTTPServer(app)
        self._server.add_sockets([sock])
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits_for(self, prefix: str) -> list[Hit]:
        return [h for h in self.hits if h.path.startswith(prefix)]

    async def close(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.stop()
            await asyncio.sleep(0.05)  # let released handlers answer
            await asyncio.wait_for(self._server.close_all_connections(), 5)
            self._server = None


def bound_socket() -> socket.socket:
    """A socket bound to an unused port but not listening: connections are refused until
    ``Receiver().start(sock)``; holding it keeps the port ours."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
async def receiver():
    rec = Receiver().start()
    try:
        yield rec
    finally:
        await rec.close()
