"""The connection manager: named groups, the per-event coalescing buffer, and slow clients.

The ingest pipeline never writes to a socket. Its listener
:meth:`ConnectionManager.publish_readings` (registered at start) calls
:meth:`ConnectionManager.publish`, which only overwrites ``buffer[event] = latest
point`` — and ignores a point older than the one already shown for its event, so a
late batch never moves a dashboard backwards. Every
``broadcast_interval_ms`` one ``PeriodicCallback`` calls :meth:`flush`, which
encodes one ``datapoints_batch`` frame **once** and hands the same bytes to
every subscriber of the ``"frontend"`` group. So an event is broadcast at most
once per interval and the last value of a burst is always the one delivered.

Writing: the frame (WebSocket header and payload) is built once per flush and the
same bytes go to every subscriber with the least per-socket work: straight to the
kernel with ``socket.send`` when nothing is queued on the connection's Tornado
stream (no future, no callback, no coroutine per socket), else appended to the
stream (``IOStream.write``), which sends it in order as the socket takes it.

Slow subscribers: a connection's unsent bytes are read from its stream's counters
(bytes handed to Tornado that the socket has not yet taken). Above
``max_pending_bytes`` a connection is *behind*: it is skipped and the events it
missed are remembered (a set, bounded by the number of events). When its
backlog has drained (checked at every flush tick and broadcast) it is sent the
current latest value of each missed event, so it may skip intermediate values
but never the latest. A connection behind for
longer than ``stall_timeout`` seconds is closed. Memory per client is therefore
bounded by ``max_pending_bytes`` plus one frame, whatever the client does.

Threading: everything here runs on the IOLoop thread (publish, flush, broadcast); nothing is locked because nothing else touches it.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any, Callable, Iterable

from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from webmacs import metrics, timefmt
from webmacs.jsoncodec import encode

log = logging.getLogger("webmacs.broadcast")

FRONTEND = "frontend"
CONTROLLER = "controller"


def broadcast_points(last_values: Iterable) -> list[dict]:
    """:class:`webmacs.ingest.LastValue` s in the spec's broadcast shape. The points of a
    batch mostly share one time: each distinct time is formatted once."""
    times: dict = {}
    return [{
        "value": lv.value,
        "event_public_id": lv.event.public_id,
        "timestamp": times[lv.time] if lv.time in times else times.setdefault(lv.time, timefmt.api(lv.time)),
        "experiment_public_id": lv.experiment_public_id,
    } for lv in last_values]


# Revocation kind -> which sockets it closes (plain data, so it can cross the cluster bus).
REVOCATIONS: dict[str, Callable[["Connection", Any], bool]] = {
    "jti": lambda c, v: c.jti is not None and c.jti == v,  # one login session (logout)
    "user": lambda c, v: c.user_id == v,  # every socket of a user (deleted, role changed)
    "user_logins": lambda c, v: c.user_id == v and c.jti is not None,  # its login sessions (password changed)
    "api_token": lambda c, v: c.api_token_id is not None and c.api_token_id == v,  # one API token (deleted)
}


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (RFC 6455 5.2): what the server
    sends, built once per flush and written as is to every subscriber's stream."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


def _unsent(stream) -> int:
    """Bytes handed to a Tornado stream that its socket has not taken yet."""
    return stream._total_write_index - stream._total_write_done_index


class Connection:
    """What the manager knows of one socket; the handler owns one of these.

    ``pending_bytes`` is read from the socket's Tornado stream (bytes handed to it
    and not yet taken by the kernel), so no write needs a callback to keep count;
    assigning it shifts what it reads by the difference (tests pretend a full socket)."""

    __slots__ = ("handler", "group", "user_id", "jti", "api_token_id", "sender", "expires_at",
                 "_extra_pending", "behind_since", "missed", "closed")

    def __init__(self, handler: WebSocketHandler, group: str, principal) -> None:
        self.handler = handler
        self.group = group
        self.user_id = principal.user_id
        self.jti = principal.jti
        self.sender = principal.sender  # telemetry batch ids are this principal's
        self.api_token_id = principal.api_token_id
        self.expires_at = principal.expires_at
        self._extra_pending = 0
        self.behind_since: float | None = None
        self.missed: set[str] = set()
        self.closed = False

    def _stream(self):
        ws = self.handler.ws_connection
        return None if ws is None else ws.stream

    @property
    def pending_bytes(self) -> int:
        stream = self._stream()
        return self._extra_pending + (0 if stream is None else _unsent(stream))

    @pending_bytes.setter
    def pending_bytes(self, value: int) -> None:
        self._extra_pending += value - self.pending_bytes

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.handler.close(code, reason)
            except Exception:  # noqa: BLE001 - a dying socket must not break the caller
                log.debug("close failed", exc_info=True)


class ConnectionManager:
    def __init__(self, max_pending_bytes: int = 256 * 1024, stall_timeout: float = 10.0) -> None:
        self.groups: dict[str, set[Connection]] = {FRONTEND: set(), CONTROLLER: set()}
        self.max_pending_bytes = max_pending_bytes
        self.stall_timeout = stall_timeout
        # event_public_id -> broadcast point, since the last flush
        self.buffer: dict[str, dict] = {}
        # event_public_id -> the latest point ever seen (for clients catching up)
        self.latest: dict[str, dict] = {}

    # --- membership -----------------------------------------------------------
    def add(self, conn: Connection) -> None:
        self.groups.setdefault(conn.group, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        conn.closed = True
        self.groups.get(conn.group, set()).discard(conn)

    def connections(self) -> Iterable[Connection]:
        for members in self.groups.values():
            yield from list(members)

    def count(self, group: str) -> int:
        return len(self.groups.get(group, ()))

    def disconnect(self, predicate: Callable[[Connection], bool], reason: str, code: int = 1008) -> int:
        """Close every socket matching ``predicate`` (token revoked, user deleted, ...)."""
        n = 0
        for conn in self.connections():
            if predicate(conn):
                conn.close(code, reason)
                n += 1
        return n

    def close_all(self, code: int = 1001, reason: str = "Server shutting down") -> None:
        for conn in self.connections():
            conn.close(code, reason)

    # --- data -------------------------------------------------------------------
    def publish_readings(self, last_values: Iterable) -> list[dict]:
        """Ingest listener: the last value per event of an accepted batch
        (:class:`webmacs.ingest.LastValue`), in the spec's broadcast shape; returns
        those points (the cluster relay sends the same ones on)."""
        points = broadcast_points(last_values)
        self.publish(points)
        return points

    def merge_remote(self, points: Iterable) -> None:
        """Points another server process accepted (cluster bus): into the same buffer,
        under the same "never older than shown" rule, so a dashboard still gets at most
        one frame per flush interval whichever process took the telemetry."""
        self.publish([p for p in points if isinstance(p, dict) and isinstance(p.get("event_public_id"), str)
                      and isinstance(p.get("timestamp"), str) and "value" in p])

    def publish(self, points: Iterable[dict]) -> None:
        """Keep only the newest point per event until the next flush; a point older
        than the latest already seen for its event is dropped (timestamps are
        :func:`webmacs.timefmt.api` text, which compares like the times)."""
        buffer, latest = self.buffer, self.latest
        for point in points:
            key = point["event_public_id"]
            shown = latest.get(key)
            if shown is not None and shown["timestamp"] > point["timestamp"]:
                continue
            buffer[key] = point
            latest[key] = point

    def flush(self) -> None:
        """Send one coalesced frame to the frontend group (PeriodicCallback target)."""
        now = time.monotonic()
        self._close_stalled(now)
        if not self.buffer:
            return
        started = time.perf_counter()
        points = self.buffer
        self.buffer = {}
        payload = encode({"type": "datapoints_batch", "datapoints": list(points.values())})
        frame = text_frame(payload)
        limit = self.max_pending_bytes
        sent = skipped = 0
        for conn in list(self.groups.get(FRONTEND, ())):
            if conn.behind_since is not None:
                if conn.pending_bytes >= limit:
                    conn.missed.update(points)
                    skipped += 1
                    continue
                self._catch_up(conn)
            elif conn.pending_bytes >= limit:
                conn.behind_since = now
                conn.missed.update(points)
                skipped += 1
                continue
            if self._write(conn, frame, payload):
                sent += 1
        metrics.FRAMES_SENT.inc(sent)
        metrics.FRAMES_SKIPPED.inc(skipped)
        metrics.FLUSH_DURATION.observe(time.perf_counter() - started)

    def broadcast(self, group: str, payload: Any) -> None:
        """Send ``payload`` (a dict, encoded once, or ready bytes) to every member of ``group``."""
        payload = payload if isinstance(payload, bytes) else encode(payload)
        frame = text_frame(payload)
        for conn in list(self.groups.get(group, ())):
            if conn.pending_bytes < self.max_pending_bytes:
                if conn.behind_since is not None:
                    self._catch_up(conn)
                self._write(conn, frame, payload)

    def reply(self, conn: Connection, payload: Any) -> None:
        """An answer to one client (pong, error, ack), through the same bounded path
        as broadcasts. A client whose unsent bytes pass twice the broadcast bound is
        sending without reading: it is closed (1013), never buffered without limit."""
        if conn.closed:
            return
        if conn.pending_bytes >= 2 * self.max_pending_bytes:
            log.info("closing a client that does not read its replies (%d bytes unsent)", conn.pending_bytes)
            self.abort(conn, 1013, "Client not reading replies")
            return
        payload = encode(payload)
        self._write(conn, text_frame(payload), payload)

    def _write(self, conn: Connection, frame: bytes, payload: bytes) -> bool:
        """The prebuilt ``frame`` onto the socket: straight to the kernel when nothing is
        queued before it (no future, no callback: the usual case), else appended to the
        Tornado stream, which sends it in order; a connection that negotiated compression
        goes through ``write_message`` (``payload``). False (and the connection removed)
        when the socket is gone."""
        ws = conn.handler.ws_connection
        if ws is None or ws.is_closing():
            self.remove(conn)
            return False
        try:
            if getattr(ws, "_compressor", None) is not None:
                ws.write_message(payload)
                return True
            stream = ws.stream
            if stream._write_buffer or type(stream) is not IOStream or stream.closed():
                stream.write(frame)
                return True
            try:
                n = stream.socket.send(frame)
            except BlockingIOError:
                n = 0
            except OSError as exc:  # reset or broken pipe: Tornado's close, as its own write would
                stream.close(exc_info=exc)
                self.remove(conn)
                return False
            if n < len(frame):
                stream.write(memoryview(frame)[n:])  # the rest, sent by Tornado as the socket takes it
            return True
        except (WebSocketClosedError, StreamClosedError):
            self.remove(conn)
            return False
        except Exception:  # noqa: BLE001 - never let one socket break the flush
            log.warning("dropping subscriber after send failure", exc_info=True)
            self.remove(conn)
            return False

    def _catch_up(self, conn: Connection) -> None:
        """A connection that was behind is under the bound again: the latest value of
        each event it missed, before anything newer."""
        conn.behind_since = None
        missed, conn.missed = conn.missed, set()
        points = [self.latest[k] for k in missed if k in self.latest]
        if points and not conn.closed:
            payload = encode({"type": "datapoints_batch", "datapoints": points})
            if self._write(conn, text_frame(payload), payload):
                metrics.FRAMES_SENT.inc()

    def _close_stalled(self, now: float) -> None:
        """Close connections behind for too long; catch up those whose backlog drained."""
        limit = self.max_pending_bytes
        for conn in list(self.groups.get(FRONTEND, ())):
            if conn.behind_since is None:
                continue
            if now - conn.behind_since > self.stall_timeout:
                log.warning("closing subscriber stalled for %.1f s", now - conn.behind_since)
                self._drop(conn, 1013, "Subscriber too slow")
            elif conn.pending_bytes < limit:
                self._catch_up(conn)

    def _drop(self, conn: Connection, code: int, reason: str) -> None:
        """Out of its group now (no more frames queued for it), then the close frame."""
        self.groups.get(conn.group, set()).discard(conn)
        conn.close(code, reason)

    def abort(self, conn: Connection, code: int, reason: str) -> None:
        """Close a client that is flooding us: the close frame goes out if it can, and the
        connection is cut at once instead of reading on until the peer answers it."""
        self._drop(conn, code, reason)
        stream = getattr(conn.handler.ws_connection, "stream", None)
        if stream is not None:
            stream.close()

    def revoke(self, kind: str, ident, reason: str) -> int:
        """Close the sockets of a revocation (:data:`REVOCATIONS`); also run for revocations
        published by other server processes."""
        match = REVOCATIONS.get(kind)
        return 0 if match is None else self.disconnect(lambda c: match(c, ident), reason)

    def expire_tokens(self, now_utc) -> None:
        """Close sockets whose token has expired since they connected."""
        self.disconnect(lambda c: c.expires_at is not None and c.expires_at <= now_utc,
                        "Invalid or expired token")
