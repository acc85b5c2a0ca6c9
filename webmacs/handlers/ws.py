"""The two WebSocket endpoints of ``websocket-api.md``.

- ``/ws/controller/telemetry``: batches in, through :mod:`webmacs.ingest`.
  ``on_message`` is a coroutine, so Tornado reads the next frame of a connection
  only after the previous batch is stored: batches persist in arrival order.
- ``/ws/datapoints/stream``: read-only; the connection manager pushes coalesced
  ``datapoints_batch`` frames to it.

Auth: ``?token=`` (JWT or ``wm_`` API token). A bad token gets the upgrade and
is then closed at once with 1008 and the spec's reason. A bad frame gets an
``error`` message and the connection stays usable.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from webmacs.accounts import AuthError, authenticate
from webmacs.broadcast import CONTROLLER, FRONTEND, Connection
from webmacs.ingest import MAX_BATCH, MAX_BATCH_ID, IngestError

log = logging.getLogger("webmacs.ws")


class _Socket(WebSocketHandler):
    group = ""
    role = "viewer"
    connected_message = ""
    conn: Connection | None = None

    @property
    def services(self):
        return self.settings["webmacs"]

    def check_origin(self, origin: str) -> bool:
        # Auth is the token in the URL, never a cookie, so a foreign page cannot
        # ride on a browser's session: any origin may connect.
        return True

    async def open(self, *args: Any) -> None:
        services = self.services
        if not services.accepting:
            self.close(1001, "Server shutting down")
            return
        token = self.get_query_argument("token", None)
        try:
            principal = await services.db.session(authenticate, services.config.secret_key, token)
        except AuthError as exc:
            self.close(1008, exc.reason)
            return
        except Exception:  # noqa: BLE001 - database down: tell the client to come back
            log.warning("cannot authenticate websocket: database unavailable")
            self.close(1011, "Database unavailable")
            return
        if not principal.has_role(self.role):
            self.close(1008, "Insufficient permissions")
            return
        if self.ws_connection is None:  # closed by the peer while we authenticated
            return
        self.conn = Connection(self, self.group, principal)
        services.hub.add(self.conn)
        if self.connected_message:
            self.send({"type": "connected", "message": self.connected_message})

    def on_close(self) -> None:
        if self.conn is not None:
            self.services.hub.remove(self.conn)

    def send(self, message: dict) -> None:
        try:
            self.write_message(json.dumps(message, separators=(",", ":")))
        except WebSocketClosedError:
            pass

    def error(self, message: str, **extra: Any) -> None:
        self.send({"type": "error", "message": message, **extra})

    async def on_message(self, message: str | bytes) -> None:
        if self.conn is None:  # not (or no longer) authenticated
            return
        data = self.parse(message)
        if data is None:
            return
        if data.get("type") == "ping":
            self.send({"type": "pong"})
            return
        await self.handle(data)

    async def handle(self, data: dict) -> None:
        raise NotImplementedError

    def parse(self, message: str | bytes) -> dict | None:
        """The frame as a JSON object, or None after answering an error."""
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            self.error("Invalid JSON: message must be a JSON object")
            return None
        if not isinstance(data, dict):
            self.error("Invalid message: expected a JSON object")
            return None
        return data


class TelemetryHandler(_Socket):
    group = CONTROLLER
    role = "operator"
    connected_message = ""  # the spec greets stream subscribers only

    def reject(self, message: str, batch_id: str | None, retry: bool = False, errors: list | None = None) -> None:
        """An error reply; spec clients (no batch_id) get exactly type and message."""
        if batch_id is None:
            self.error(message)
        else:
            self.error(message, batch_id=batch_id, retry=retry, **({"errors": errors} if errors else {}))

    async def handle(self, data: dict) -> None:
        batch_id = data.get("batch_id")
        if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= MAX_BATCH_ID):
            self.error(f"Invalid batch_id: must be a string of 1 to {MAX_BATCH_ID} characters")
            return
        points = data.get("datapoints")
        if points is None:
            self.reject("Invalid message: missing 'datapoints' array", batch_id)
            return
        if not isinstance(points, list):
            self.reject("Invalid message: 'datapoints' must be an array", batch_id)
            return
        if len(points) > MAX_BATCH:
            self.reject(f"Batch too large: {len(points)} datapoints (max {MAX_BATCH})", batch_id)
            return
        services = self.services
        if not services.accepting:
            self.reject("Server shutting down: batch not stored, retry later", batch_id, retry=True)
            return
        services.inflight += 1
        try:
            result = await services.pipeline.ingest(points, batch_id=batch_id)
        except IngestError as exc:
            self.reject(exc.message, batch_id, exc.retry, exc.errors)
            return
        finally:
            services.inflight -= 1
        if batch_id is not None:
            ack = {"type": "ack", "batch_id": batch_id, "accepted": result.accepted, "rejected": result.rejected}
            if result.duplicate:
                ack["duplicate"] = True
            if result.errors:
                ack["errors"] = result.errors
            self.send(ack)


class StreamHandler(_Socket):
    group = FRONTEND
    role = "viewer"
    connected_message = "Subscribed to live datapoint stream."

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.services.refuse_stream:  # test hook: simulate a proxy refusing upgrades
            self.set_status(503)
            self.finish()
            return
        await super().get(*args, **kwargs)

    async def handle(self, data: dict) -> None:
        self.error("Unsupported message: this stream is read-only (send {\"type\": \"ping\"})")


default_handlers = [
    (r"/ws/controller/telemetry", TelemetryHandler),
    (r"/ws/datapoints/stream", StreamHandler),
]
