"""The connection manager: named groups, the per-event throttle, and slow clients.

The ingest pipeline never writes to a socket. Its listener
:meth:`ConnectionManager.publish_readings` (registered at start) calls
:meth:`ConnectionManager.publish`, which only overwrites ``pending[event] = newest
point`` — and ignores a point older than the one already shown for its event, so a
late batch never moves a dashboard backwards — and makes sure a flush is due.

When flushes run (the spec's "throttled to ≥ 200 ms per event"): time is cut into
ticks of :data:`TICK_MS`; an event goes out at the first tick after its newest point
arrived, unless it went out less than ``interval_ms`` (default 200 ms, counted in whole
ticks) before, in which case it waits for the tick where its interval ends and goes out
with its newest point then. So a dashboard gets each event at most once per interval,
always ends on the latest value, and sees a reading that arrives after a quiet spell
within one tick, not up to a whole interval later. Counting in ticks keeps an event's
sends exactly one interval apart while readings keep coming (no drift: the value sent
is as fresh as its controller's rhythm allows). The timer only runs while something is
pending: an idle server does nothing here.

A flush encodes one ``datapoints_batch`` frame **once** for the ``"frontend"`` group and
writes the same bytes to every subscriber (per compression variant, one compressed
copy: see :func:`deflate_frame`), with the least per-socket work: straight to the
kernel with ``socket.send`` when nothing is queued on the connection's Tornado stream
(no future, no callback, no coroutine per socket), else appended to the stream
(``IOStream.write``), which sends it in order as the socket takes it. The sockets are
written :data:`SLICE_SECONDS` at a time, one slice per loop turn, so a flush to thousands of
dashboards never holds the IOLoop for more than a few ms; a tick that comes while a
flush is still being written waits for it. After a flush that cost ``t`` seconds of
loop time no other starts for ``t / LOOP_SHARE``: with very many dashboards the frames
grow fewer and fuller instead of the fan-out taking the loop from the controllers.

Slow subscribers: a connection's unsent bytes are read from its stream's counters
(bytes handed to Tornado that the socket has not yet taken). Above
``max_pending_bytes`` a connection is *behind*: it is skipped and the events it
missed are remembered (a set, bounded by the number of events). When its backlog has
drained (checked by :meth:`housekeep`, every interval, and at the next frame) it is
sent the current latest value of each missed event, so it may skip intermediate values
but never the latest. A connection behind for longer than ``stall_timeout`` seconds is
closed. Memory per client is therefore bounded by ``max_pending_bytes`` plus one frame,
whatever the client does.

Threading: everything here runs on the IOLoop thread (publish, ticks, write slices,
housekeeping); nothing is locked because nothing else touches it.
"""

from __future__ import annotations

import logging
import math
import struct
import time
import zlib
from typing import Any, Callable, Iterable

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from webmacs import metrics, timefmt
from webmacs.jsoncodec import encode

log = logging.getLogger("webmacs.broadcast")

FRONTEND = "frontend"
CONTROLLER = "controller"

# The flush grid (ms): a reading after a quiet spell waits at most this long for its
# frame; an event's interval is counted in these ticks.
TICK_MS = 20
# A flush writes to sockets for this long (s) before it lets the IOLoop run other work
# (a socket costs 5-20 µs, nearly all of it in the kernel's send).
SLICE_SECONDS = 0.002
SLICE_CHECK = 32  # sockets between two looks at the clock
# The most of the IOLoop's time the dashboard fan-out may take: after a flush that
# took t seconds, the next one waits at least t / LOOP_SHARE.
LOOP_SHARE = 0.6


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


def _head(first: int, n: int) -> bytes:
    if n < 126:
        return struct.pack("!BB", first, n)
    if n < 65536:
        return struct.pack("!BBH", first, 126, n)
    return struct.pack("!BBQ", first, 127, n)


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (RFC 6455 5.2)."""
    return _head(0x81, len(payload)) + payload


def deflate_frame(payload: bytes, wbits: int, level: int) -> bytes:
    """One permessage-deflate text frame (RFC 7692: RSV1 set, the message compressed with
    a fresh LZ77 window of ``wbits`` and its closing empty block removed). Valid on every
    connection that negotiated ``server_no_context_takeover`` and a server window of at
    least ``wbits``, so one compressed copy serves them all."""
    c = zlib.compressobj(level, zlib.DEFLATED, -wbits, 8)
    data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    return _head(0xC1, len(data) - 4) + data[:-4]


class Frames:
    """One message as frames, built once per variant on first use: ``None`` is the plain
    frame, an int the deflated frame for that server window (see :meth:`Connection.variant`)."""

    __slots__ = ("payload", "level", "_built")

    def __init__(self, payload: bytes, level: int) -> None:
        self.payload = payload
        self.level = level
        self._built: dict[int | None, bytes] = {}

    def get(self, variant: int | None) -> bytes:
        frame = self._built.get(variant)
        if frame is None:
            frame = (text_frame(self.payload) if variant is None
                     else deflate_frame(self.payload, variant, self.level))
            self._built[variant] = frame
        return frame


class Connection:
    """What the manager knows of one socket; the handler owns one of these.

    ``pending_bytes`` is read from the socket's Tornado stream (bytes handed to it
    and not yet taken by the kernel), so no write needs a callback to keep count;
    assigning it shifts what it reads by the difference (tests pretend a full socket).
    ``variant`` is the server window of the compression the socket negotiated (every
    frame compressed alone, see webmacs.handlers.ws), or None for plain frames."""

    __slots__ = ("handler", "group", "user_id", "jti", "api_token_id", "sender", "expires_at", "ws", "stream",
                 "sock", "variant", "_extra_pending", "behind_since", "missed", "closed")

    def __init__(self, handler: WebSocketHandler, group: str, principal, variant: int | None = None) -> None:
        self.handler = handler
        self.group = group
        self.user_id = principal.user_id
        self.jti = principal.jti
        self.sender = principal.sender  # telemetry batch ids are this principal's
        self.api_token_id = principal.api_token_id
        self.expires_at = principal.expires_at
        self.ws = handler.ws_connection
        self.stream = getattr(self.ws, "stream", None)
        # raw writes for a plain TCP stream only (an SSL stream encrypts in Tornado)
        self.sock = self.stream.socket if type(self.stream) is IOStream else None
        self.variant = variant
        self._extra_pending = 0
        self.behind_since: float | None = None
        self.missed: set[str] = set()
        self.closed = False

    @property
    def pending_bytes(self) -> int:
        stream = self.stream
        if stream is None:
            return self._extra_pending
        return self._extra_pending + stream._total_write_index - stream._total_write_done_index

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


class _Flush:
    """A flush being written: its frames, the subscribers (a snapshot), how far it got."""

    __slots__ = ("points", "frames", "conns", "index", "spent", "tick", "sent", "skipped")

    def __init__(self, points: dict, frames: Frames, conns: list, tick: int) -> None:
        self.points, self.frames, self.conns, self.tick = points, frames, conns, tick
        self.index = self.sent = self.skipped = 0
        self.spent = 0.0


class ConnectionManager:
    def __init__(self, max_pending_bytes: int = 256 * 1024, stall_timeout: float = 10.0,
                 interval_ms: int = 200, tick_ms: int = TICK_MS, compression_level: int = 1) -> None:
        self.groups: dict[str, set[Connection]] = {FRONTEND: set(), CONTROLLER: set()}
        self.max_pending_bytes = max_pending_bytes
        self.stall_timeout = stall_timeout
        self.compression_level = compression_level
        self.tick = min(tick_ms, interval_ms) / 1000
        self.interval_ticks = math.ceil(interval_ms / 1000 / self.tick - 1e-9)
        # event_public_id -> its newest point not yet broadcast
        self.pending: dict[str, dict] = {}
        # event_public_id -> the tick it was last broadcast in
        self.sent_tick: dict[str, int] = {}
        # event_public_id -> the latest point ever seen (for clients catching up)
        self.latest: dict[str, dict] = {}
        self.ticking = False  # flushes run by themselves (start/stop); else only flush() by hand
        self._timer: object | None = None
        self._timer_tick = 0
        self._quiet_until = 0  # no flush before this tick (LOOP_SHARE)
        self._flush: _Flush | None = None  # being written

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

    # --- the clock ----------------------------------------------------------------
    def start(self) -> None:
        """Flush by itself from now on (publishes schedule the ticks)."""
        self.ticking = True
        if self.pending:
            self._wake(self._next_tick())

    def stop(self) -> None:
        """No more flushes by themselves (shutdown; tests that flush by hand)."""
        self.ticking = False
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._timer = None

    def _now_tick(self) -> int:
        return int(IOLoop.current().time() / self.tick)

    def _next_tick(self) -> int:
        return max(self._now_tick() + 1, self._quiet_until)

    def _wake(self, tick: int) -> None:
        """Make sure a tick runs at ``tick`` or before."""
        if self._timer is not None:
            if self._timer_tick <= tick:
                return
            IOLoop.current().remove_timeout(self._timer)
        self._timer_tick = tick
        self._timer = IOLoop.current().call_at(tick * self.tick, self._on_tick, tick)

    def _on_tick(self, tick: int) -> None:
        """Send every pending event whose interval has passed; wake again for the rest."""
        self._timer = None
        if not self.ticking or not self.pending:
            return
        if self._flush is not None or tick < self._quiet_until:  # the last flush is still being written
            self._wake(max(tick + 1, self._quiet_until))
            return
        tick = max(tick, self._now_tick())  # a late tick counts from when it ran: never under the interval
        due_before = tick - self.interval_ticks
        sent_tick = self.sent_tick
        due: dict[str, dict] = {}
        rest: dict[str, dict] = {}
        first_free = None  # the earliest tick a waiting event may go
        for key, point in self.pending.items():
            last = sent_tick.get(key)
            if last is None or last <= due_before:
                due[key] = point
                sent_tick[key] = tick
            else:
                rest[key] = point
                if first_free is None or last < first_free:
                    first_free = last
        self.pending = rest
        if due:
            self._begin(due, tick, sliced=True)
        if rest:
            self._wake(max(first_free + self.interval_ticks, tick + 1, self._quiet_until))

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
        under the same "never older than shown" rule and the same per-event throttle,
        whichever process took the telemetry."""
        self.publish([p for p in points if isinstance(p, dict) and isinstance(p.get("event_public_id"), str)
                      and isinstance(p.get("timestamp"), str) and "value" in p])

    def publish(self, points: Iterable[dict]) -> None:
        """Keep only the newest point per event until it is sent; a point older than the
        latest already seen for its event is dropped (timestamps are
        :func:`webmacs.timefmt.api` text, which compares like the times)."""
        pending, latest = self.pending, self.latest
        for point in points:
            key = point["event_public_id"]
            shown = latest.get(key)
            if shown is not None and shown["timestamp"] > point["timestamp"]:
                continue
            pending[key] = point
            latest[key] = point
        if self.ticking and pending:
            self._wake(self._next_tick())

    def flush(self) -> None:
        """Send everything pending now, whatever its interval, and finish writing it
        before returning (shutdown's last frame; tests that drive the flush by hand)."""
        if self._flush is not None:
            self._write_slices(self._flush, sliced=False)
        self.housekeep()
        if not self.pending:
            return
        points, self.pending = self.pending, {}
        tick = self._now_tick()
        for key in points:
            self.sent_tick[key] = tick
        self._begin(points, tick, sliced=False)

    def _begin(self, points: dict, tick: int, sliced: bool) -> None:
        started = time.perf_counter()
        frames = Frames(encode({"type": "datapoints_batch", "datapoints": list(points.values())}),
                        self.compression_level)
        flush = _Flush(points, frames, list(self.groups.get(FRONTEND, ())), tick)
        flush.spent = time.perf_counter() - started
        self._write_slices(flush, sliced)

    def _write_slices(self, flush: _Flush, sliced: bool) -> None:
        """Write the flush's frame to its subscribers, for :data:`SLICE_SECONDS` when
        ``sliced`` (the rest on the next loop turn), else to all of them."""
        started = time.perf_counter()
        conns = flush.conns
        total = len(conns)
        stop_at = started + SLICE_SECONDS if sliced else math.inf
        limit = self.max_pending_bytes
        now = time.monotonic()
        points, frames = flush.points, flush.frames
        sent = skipped = 0
        i = flush.index
        while i < total:
            if i % SLICE_CHECK == 0 and time.perf_counter() > stop_at:
                break
            conn = conns[i]
            i += 1
            if conn.closed:
                continue
            if conn.pending_bytes >= limit:
                if conn.behind_since is None:
                    conn.behind_since = now
                conn.missed.update(points)
                skipped += 1
                continue
            if self._write(conn, frames.get(conn.variant)):
                sent += 1
            if conn.behind_since is not None:  # drained: its missed events, newest values (after this frame)
                self._catch_up(conn)
        flush.index = i
        flush.sent += sent
        flush.skipped += skipped
        flush.spent += time.perf_counter() - started
        if i < total:
            self._flush = flush
            IOLoop.current().add_callback(self._continue, flush)
            return
        self._flush = None
        metrics.FRAMES_SENT.inc(flush.sent)
        metrics.FRAMES_SKIPPED.inc(flush.skipped)
        metrics.FLUSH_DURATION.observe(flush.spent)
        # the loop share: a flush that took t keeps the next one t / LOOP_SHARE away
        self._quiet_until = flush.tick + math.ceil(flush.spent / LOOP_SHARE / self.tick)

    def _continue(self, flush: _Flush) -> None:
        if self._flush is flush:
            self._write_slices(flush, sliced=True)

    def broadcast(self, group: str, payload: Any) -> None:
        """Send ``payload`` (a dict, encoded once, or ready bytes) to every member of ``group``
        now (not throttled, not sliced: for small groups and rare messages)."""
        frames = Frames(payload if isinstance(payload, bytes) else encode(payload), self.compression_level)
        for conn in list(self.groups.get(group, ())):
            if conn.pending_bytes < self.max_pending_bytes:
                self._write(conn, frames.get(conn.variant))
                if conn.behind_since is not None and self._flush is None:
                    self._catch_up(conn)

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
        self._write(conn, self._frame(encode(payload), conn))

    def _frame(self, payload: bytes, conn: Connection) -> bytes:
        """A message for one connection only (reply, catch-up), in its variant."""
        return Frames(payload, self.compression_level).get(conn.variant)

    def _write(self, conn: Connection, frame: bytes) -> bool:
        """The prebuilt ``frame`` onto the socket: straight to the kernel when nothing is
        queued before it (no future, no callback: the usual case), else appended to the
        Tornado stream, which sends it in order. False (and the connection removed)
        when the socket is gone or closing."""
        ws = conn.ws
        if ws is None or ws.server_terminated or ws.client_terminated:
            self.remove(conn)
            return False
        stream = conn.stream
        try:
            if stream._write_buffer or conn.sock is None or stream.closed():
                stream.write(frame)
                return True
            try:
                n = conn.sock.send(frame)
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
        each event it missed."""
        conn.behind_since = None
        missed, conn.missed = conn.missed, set()
        points = [self.latest[k] for k in missed if k in self.latest]
        if points and not conn.closed:
            payload = encode({"type": "datapoints_batch", "datapoints": points})
            if self._write(conn, self._frame(payload, conn)):
                metrics.FRAMES_SENT.inc()

    def housekeep(self) -> None:
        """Every interval: close subscribers behind for too long; catch up those whose
        backlog drained (not while a flush is being written: it catches them up itself,
        after its own frame, so nobody goes back in time)."""
        now = time.monotonic()
        limit = self.max_pending_bytes
        writing = self._flush is not None
        for conn in list(self.groups.get(FRONTEND, ())):
            if conn.behind_since is None:
                continue
            if now - conn.behind_since > self.stall_timeout:
                log.warning("closing subscriber stalled for %.1f s", now - conn.behind_since)
                self._drop(conn, 1013, "Subscriber too slow")
            elif not writing and conn.pending_bytes < limit:
                self._catch_up(conn)

    def _drop(self, conn: Connection, code: int, reason: str) -> None:
        """Out of its group now (no more frames queued for it), then the close frame."""
        self.groups.get(conn.group, set()).discard(conn)
        conn.close(code, reason)

    def abort(self, conn: Connection, code: int, reason: str) -> None:
        """Close a client that is flooding us: out of its group and marked closed at once
        (what it still sends is ignored, nothing more is queued for it), the close frame
        sent so that it learns why; Tornado cuts the connection if the peer does not
        answer the close within its timeout."""
        self._drop(conn, code, reason)

    def revoke(self, kind: str, ident, reason: str) -> int:
        """Close the sockets of a revocation (:data:`REVOCATIONS`); also run for revocations
        published by other server processes."""
        match = REVOCATIONS.get(kind)
        return 0 if match is None else self.disconnect(lambda c: match(c, ident), reason)

    def expire_tokens(self, now_utc) -> None:
        """Close sockets whose token has expired since they connected."""
        self.disconnect(lambda c: c.expires_at is not None and c.expires_at <= now_utc,
                        "Invalid or expired token")
