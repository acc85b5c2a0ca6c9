"""The two WebSocket endpoints of ``websocket-api.md``.

- ``/ws/controller/telemetry``: batches in, through :mod:`webmacs.ingest` into the
  durable ingest queue. ``on_message`` is synchronous, so Tornado goes on reading a
  connection (its pings and pongs among them) while a batch is being accepted; data
  frames wait in a per-connection queue (bounded by :data:`MAX_QUEUED_BYTES`) drained
  by one task, so a connection's batches enter the ingest queue (and the database)
  in arrival order, and are answered in that order once durable.
- ``/ws/datapoints/stream``: read-only; the connection manager pushes coalesced
  ``datapoints_batch`` frames to it.

Auth: ``?token=`` (JWT or ``wm_`` API token). A bad token gets the upgrade and
is then closed at once with 1008 and the spec's reason. A bad frame gets an
``error`` message and the connection stays usable.

Every reply (pong, error, ack) goes through the connection manager's bounded
path (:meth:`webmacs.broadcast.ConnectionManager.reply`): a client that sends
but does not read is closed (1013) once its unsent replies pass the bound,
instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tornado.websocket import WebSocketHandler, WebSocketProtocol13

from webmacs import jsoncodec, metrics
from webmacs.accounts import AuthError, authenticate
from webmacs.broadcast import CONTROLLER, FRONTEND, Connection
from webmacs.db import DATABASE_ERRORS
from webmacs.ingest import OVERLOADED, QUEUE_WRITE_FAILED, IngestError, check_batch_id, check_batch_size

if TYPE_CHECKING:  # typing only: webmacs.services never imports the handlers
    from webmacs.services import Services

log = logging.getLogger("webmacs.ws")

# Data frames of one telemetry connection waiting while its earlier batches are
# stored, bounded in bytes received and in datapoints held (a frame is at most
# 256 kB and 500 datapoints): ~45 full batches, a generous pipeline for a
# controller, a few tens of MB of parsed objects at the very worst.
MAX_QUEUED_BYTES = 4 * 1024 * 1024
MAX_QUEUED_POINTS = 25_000
# Messages per second one connection may send besides telemetry batches (pings, bad
# frames, anything on the read-only stream), in bursts up to MESSAGE_BURST: a client
# pings now and then; a flood of tiny frames costs the loop a parse and a reply each,
# so its sender is cut off (1008 "Too many messages"). Batches are bounded by the
# per-connection queue instead: a controller may send them as fast as it is answered.
MESSAGE_RATE = 200
MESSAGE_BURST = 1000
SHUTTING_DOWN = "Server shutting down: batch not stored, retry later"


class _Socket(WebSocketHandler):
    group = ""
    role = "viewer"
    connected_message = ""
    conn: Connection | None = None

    @property
    def services(self) -> "Services":
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
        except DATABASE_ERRORS:  # database down: tell the client to come back
            log.warning("cannot authenticate websocket: database unavailable")
            self.close(1011, "Database unavailable")
            return
        except Exception:  # noqa: BLE001 - a bug: logged with its traceback, the client told so
            log.exception("cannot authenticate websocket")
            self.close(1011, "Internal error")
            return
        if not principal.has_role(self.role):
            self.close(1008, "Insufficient permissions")
            return
        if self.ws_connection is None:  # closed by the peer while we authenticated
            return
        self.conn = Connection(self, self.group, principal, getattr(self.ws_connection, "wbits", None))
        services.hub.add(self.conn)
        if self.connected_message:
            self.send({"type": "connected", "message": self.connected_message})

    def on_close(self) -> None:
        if self.conn is not None:
            self.services.hub.remove(self.conn)

    def send(self, message: dict) -> None:
        if self.conn is not None:
            self.services.hub.reply(self.conn, message)

    def error(self, message: str, **extra: Any) -> None:
        self.send({"type": "error", "message": message, **extra})

    def on_message(self, message: str | bytes) -> None:
        if self.conn is None or self.conn.closed:  # not (or no longer) authenticated
            return
        data = self.parse(message)
        if not (data is not None and self.is_work(data)) and not self._frame_allowed():
            log.info("closing a client sending more than %d messages per second", MESSAGE_RATE)
            self.services.hub.abort(self.conn, 1008, "Too many messages")
            return
        if data is None:
            return
        if data.get("type") == "ping":
            self.send({"type": "pong"})
            return
        self.handle(data, len(message))

    def is_work(self, data: dict) -> bool:
        """A message that asks for real work (a telemetry batch): bounded by the
        per-connection queue rather than by the message rate."""
        return False

    def handle(self, data: dict, size: int) -> None:
        raise NotImplementedError

    _allowance = float(MESSAGE_BURST)
    _allowance_at = 0.0

    def _frame_allowed(self) -> bool:
        """A token bucket per connection: MESSAGE_RATE frames a second, bursts of MESSAGE_BURST."""
        now = time.monotonic()
        self._allowance = min(MESSAGE_BURST, self._allowance + (now - self._allowance_at) * MESSAGE_RATE)
        self._allowance_at = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    def abandon_batches(self) -> None:
        """Answer what was read and not stored (telemetry only)."""

    def parse(self, message: str | bytes) -> dict | None:
        """The frame as a JSON object, or None after answering an error (counted against
        the message rate like any frame that is not a batch)."""
        try:
            data = jsoncodec.loads(message)
        except (ValueError, UnicodeDecodeError):
            self.error("Invalid JSON: message must be a JSON object")
            return None
        except RecursionError:
            self.error("Invalid JSON: nested too deeply")
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

    def is_work(self, data: dict) -> bool:
        return data.get("type") != "ping" and "datapoints" in data

    def initialize(self) -> None:
        # [datapoints, batch_id, frame size, answered, read at]; the first one is being accepted
        self._queue: deque[list] = deque()
        self._queued_bytes = 0
        self._queued_points = 0
        self._worker: asyncio.Future | None = None
        # accepted batches waiting for their answer, in arrival order: [item, durable future or None,
        # result or IngestError]; answered strictly in this order
        self._answers: deque[list] = deque()

    def handle(self, data: dict, size: int) -> None:
        """The frame's shape only; the batch and its datapoints are the pipeline's to check."""
        batch_id = data.get("batch_id")
        bad_id = check_batch_id(batch_id)
        if bad_id:  # not an id we can answer with: a plain error
            self.error(bad_id)
            return
        points = data.get("datapoints")
        if points is None:
            self.reject("Invalid message: missing 'datapoints' array", batch_id)
            return
        if not isinstance(points, list):
            self.reject("Invalid message: 'datapoints' must be an array", batch_id)
            return
        services = self.services
        if not services.accepting:
            self.reject(SHUTTING_DOWN, batch_id, retry=True)
            return
        too_large = check_batch_size(points)
        if too_large:
            metrics.DATAPOINTS_REJECTED.inc(len(points))
            self.reject(too_large, batch_id)
            return
        if self._queue and (self._queued_bytes + size > MAX_QUEUED_BYTES
                            or self._queued_points + len(points) > MAX_QUEUED_POINTS):
            self.reject(OVERLOADED, batch_id, retry=True)
            return
        self._queue.append([points, batch_id, size, False, time.perf_counter()])
        self._queued_bytes += size
        self._queued_points += len(points)
        services.batch_queued()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        """Accept the queued batches one after the other into the ingest queue; each is
        answered once durable there (:meth:`_answer`), in arrival order."""
        services = self.services
        while self._queue:
            item = self._queue[0]
            points, batch_id = item[0], item[1]
            entry: list = [item, None, None]
            try:
                entry[2], entry[1] = await services.pipeline.enqueue(points, batch_id=batch_id,
                                                                     sender=self.conn.sender)
            except IngestError as exc:
                entry[2] = exc
            finally:
                self._queue.popleft()
                self._queued_bytes -= item[2]
                self._queued_points -= len(item[0])
            self._answers.append(entry)
            if entry[1] is not None and not entry[1].done():
                entry[1].add_done_callback(self._answer)
            else:
                self._answer()

    def _answer(self, _future: Any = None) -> None:
        """Answer the accepted batches whose turn it is: durable (or refused) ones, oldest first."""
        while self._answers and (self._answers[0][1] is None or self._answers[0][1].done()):
            item, durable, result = self._answers.popleft()
            batch_id = item[1]
            if durable is not None and durable.exception() is not None:
                result = IngestError(QUEUE_WRITE_FAILED, retry=True)
            if not item[3]:
                item[3] = True
                if isinstance(result, IngestError):
                    self.reject(result.message, batch_id, result.retry, result.errors)
                elif batch_id is not None:
                    self.send(_ack(batch_id, result))
            metrics.BATCH_DURATION.observe(time.perf_counter() - item[4])
            self.services.batch_done()

    def abandon_batches(self) -> None:
        """Shutdown ran out of time: answer every batch read but not accepted with
        "retry" (one being accepted may still get in; its resend is then a duplicate)."""
        for item in self._queue:
            if not item[3]:
                item[3] = True
                self.reject(SHUTTING_DOWN, item[1], retry=True)
        while len(self._queue) > 1:  # the first is with the pipeline; its task finishes it
            item = self._queue.pop()
            self._queued_bytes -= item[2]
            self._queued_points -= len(item[0])
            self.services.batch_done()


def _ack(batch_id: str, result) -> dict:
    ack = {"type": "ack", "batch_id": batch_id, "accepted": result.accepted, "rejected": result.rejected}
    if result.queued:
        ack["durable"] = "queue"
    if result.duplicate:
        ack["duplicate"] = True
    if result.errors:
        ack["errors"] = result.errors
    return ack


# permessage-deflate parameters (RFC 7692 7.1) and what each may carry.
_DEFLATE_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_DEFLATE_BITS = ("server_max_window_bits", "client_max_window_bits")
# The LZ77 window we ask a client for when it lets us choose: a dashboard only sends
# pings, and the server keeps 2^bits bytes of window per socket to read what it sends.
CLIENT_WINDOW_BITS = "9"


def negotiate_deflate(offer: dict) -> dict | None:
    """The answer to one permessage-deflate offer, or None to decline it (an unknown or
    malformed parameter; a server window of 8 bits, which zlib cannot make). The answer
    always has ``server_no_context_takeover`` (RFC 7692 7.1.1.1 lets the server add it):
    every message we send is compressed alone, so one compressed copy of a broadcast frame
    fits every socket with the same window."""
    answer: dict = {"server_no_context_takeover": None}
    for key, value in offer.items():
        if key in _DEFLATE_FLAGS:
            if value is not None:
                return None
            answer[key] = None
        elif key in _DEFLATE_BITS:
            if value is None and key == "client_max_window_bits":  # "you may choose"
                answer[key] = CLIENT_WINDOW_BITS
                continue
            lowest = 9 if key == "server_max_window_bits" else 8  # zlib makes no 8-bit raw deflate
            if (value is None or not (value.isascii() and value.isdigit()) or value.startswith("0")
                    or not lowest <= int(value) <= 15):
                return None
            answer[key] = value
        else:
            return None
    return answer


class _CompressEachAlone(WebSocketProtocol13):
    """Tornado's protocol with permessage-deflate negotiated by :func:`negotiate_deflate`
    (the first acceptable offer; none: no compression). ``wbits`` is the server window
    agreed, the connection's variant for :class:`webmacs.broadcast.Frames`."""

    wbits: int | None = None

    def _parse_extensions_header(self, headers):
        for name, offer in parse_extensions(headers.get("Sec-WebSocket-Extensions", "")):
            answer = negotiate_deflate(offer) if name == "permessage-deflate" and offer is not None else None
            if answer is not None:
                self.wbits = int(answer.get("server_max_window_bits") or 15)
                return [(name, answer)]
        return []


def parse_extensions(header: str) -> list[tuple[str, dict | None]]:
    """``Sec-WebSocket-Extensions`` as offers (RFC 6455 9.1): (name, {param: value or None});
    the parameters are None for an offer naming one twice. (Tornado's own parser drops
    parameters without a value, which are most of permessage-deflate's.)"""
    offers: list[tuple[str, dict | None]] = []
    for offer in header.split(","):
        name, *params = [part.strip() for part in offer.split(";")]
        parsed: dict | None = {}
        for param in params:
            key, eq, value = (x.strip() for x in param.partition("="))
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if key in parsed:
                parsed = None
                break
            parsed[key] = value if eq else None
        offers.append((name.lower(), parsed))
    return offers


class StreamHandler(_Socket):
    group = FRONTEND
    role = "viewer"
    connected_message = "Subscribed to live datapoint stream."

    def get_compression_options(self) -> dict | None:
        level = self.services.config.stream_compression_level
        return {"compression_level": level} if level else None

    def get_websocket_protocol(self):
        proto = super().get_websocket_protocol()
        if proto is None or proto.params.compression_options is None:
            return proto
        return _CompressEachAlone(self, False, proto.params)

    def handle(self, data: dict, size: int) -> None:
        self.error("Unsupported message: this stream is read-only (send {\"type\": \"ping\"})")


default_handlers = [
    (r"/ws/controller/telemetry", TelemetryHandler),
    (r"/ws/datapoints/stream", StreamHandler),
]
