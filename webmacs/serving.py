"""The HTTP server in front of the application: connection limits, fd exhaustion,
trusted proxies, and log hygiene.

- :class:`GuardedHTTPServer` caps open connections (``WEBMACS_MAX_CONNECTIONS``:
  a connection beyond the cap is closed at once), and survives running out of
  file descriptors: tornado's accept loop lets ``EMFILE`` escape on every wake-up
  (a busy loop, one log line per accept); here the listening socket is paused for
  a moment instead and the condition is logged once per interval.
- Forwarded headers (``X-Real-IP``, ``X-Forwarded-For``, ``X-Forwarded-Proto``)
  are applied only when the peer is in ``WEBMACS_TRUSTED_PROXIES``.
- :class:`RedactTokens` removes ``token=...`` from every log record (tracebacks
  of a failing request log its URI, and WebSocket URIs carry tokens);
  :class:`Throttle` keeps per-connection noise (malformed requests, read
  timeouts) to one line per interval.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import time
from typing import Any, Iterable

from tornado import httputil, netutil
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.ioloop import IOLoop
from tornado.web import HTTPError, StaticFileHandler

log = logging.getLogger("webmacs.http")

# Seconds a connection answered before its request body was read (413 on an upload,
# 401 before it) stays open, reading and dropping what the client still sends, before
# it is closed. Closing with unread input makes the kernel reset the connection, and a
# client still sending may then lose the answer before it reads it (RFC 9112 9.6:
# close the write side first, go on reading for a while).
LINGER_SECONDS = 2.0
# How long the listening socket rests after accept() ran out of descriptors:
# long enough not to spin, short enough that a freed descriptor is used soon.
ACCEPT_PAUSE = 0.1
# Connections accepted per wake-up of the listening socket (tornado: 128). Small, so a
# connection flood is served in short bursts between other callbacks (acks).
ACCEPT_BATCH = 16
# At most one "out of file descriptors" / "connection cap" line per this many seconds.
LOG_INTERVAL = 10.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(raw: str, name: str) -> tuple[Network, ...]:
    """``"127.0.0.1/32, ::1, 10.0.0.0/8"`` -> networks; ValueError naming ``name``."""
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not an IP address or CIDR network") from None
    return tuple(out)


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


class _LogEvery:
    """Count occurrences; report the count at most once per ``interval``."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.last = float("-inf")
        self.suppressed = 0

    def due(self) -> int | None:
        """None while throttled; else the number suppressed since the last line."""
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return None
        self.last, n, self.suppressed = now, self.suppressed, 0
        return n


class _TrustedProxyAdapter(httputil.HTTPMessageDelegate):
    """Apply forwarded headers for one request when the peer is a trusted proxy; tell
    the server when the request's header is complete (the connection is no longer idle)."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, request_conn: Any,
                 proxies: tuple[Network, ...], on_header=None) -> None:
        self.delegate = delegate
        self.context = request_conn.context
        self.proxies = proxies
        self.on_header = on_header

    def headers_received(self, start_line, headers):
        if self.on_header is not None:
            self.on_header()
        ctx = self.context
        peer = getattr(ctx, "_orig_remote_ip", None)
        if peer is not None and in_networks(peer, self.proxies):
            ip = peer
            # Right to left: the first address not added by one of our proxies is the client.
            for cand in reversed(headers.get("X-Forwarded-For", "").split(",")):
                cand = cand.strip()
                if cand and netutil.is_valid_ip(cand):
                    ip = cand
                    if not in_networks(cand, self.proxies):
                        break
            real = headers.get("X-Real-Ip", "").strip()
            if real and netutil.is_valid_ip(real):
                ip = real
            ctx.remote_ip = ip
            proto = headers.get("X-Forwarded-Proto", "").split(",")[-1].strip()
            if proto in ("http", "https"):
                ctx.protocol = proto
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk):
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()
        self._restore()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
        self._restore()

    def _restore(self) -> None:
        ctx = self.context
        if hasattr(ctx, "_orig_remote_ip"):
            ctx.remote_ip = ctx._orig_remote_ip
            ctx.protocol = ctx._orig_protocol


class GuardedHTTPServer(HTTPServer):
    """HTTPServer with a connection cap, an EMFILE-safe accept loop and trusted proxies.

    Construct with ``max_connections`` and ``trusted_proxies`` besides HTTPServer's
    own arguments (``xheaders`` is ignored: forwarded headers depend on the peer).
    """

    def initialize(self, *args: Any, max_connections: int = 0,
                   trusted_proxies: tuple[Network, ...] = (), **kwargs: Any) -> None:
        kwargs.pop("xheaders", None)
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.trusted_proxies = tuple(trusted_proxies)
        self._emfile_log = _LogEvery()
        self._cap_log = _LogEvery()
        # Connections waiting for a request header (new, half-sent, or idle keep-alive),
        # oldest first: at the cap, the oldest of them makes room for a new connection,
        # so half-open connections cannot lock everyone else out.
        self._waiting: dict[Any, None] = {}

    # --- accepting ---------------------------------------------------------------
    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock: socket.socket):
        io_loop = IOLoop.current()
        state = {"removed": False, "paused": False}

        def resume() -> None:
            if not state["removed"] and state["paused"]:
                state["paused"] = False
                io_loop.add_handler(sock, on_readable, IOLoop.READ)

        def on_readable(fd, events) -> None:
            for _ in range(ACCEPT_BATCH):  # bounded: let other callbacks (acks) run between bursts
                if state["removed"]:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self._out_of_descriptors(exc)
                        io_loop.remove_handler(sock)
                        state["paused"] = True
                        io_loop.call_later(ACCEPT_PAUSE, resume)
                        return
                    raise
                if self.max_connections and len(self._connections) >= self.max_connections:
                    if not self._evict_waiting():
                        self._refuse(connection)
                        continue
                self._handle_connection(connection, address)

        def remove() -> None:
            if not state["paused"] and not state["removed"]:
                io_loop.remove_handler(sock)
            state["removed"] = True

        io_loop.add_handler(sock, on_readable, IOLoop.READ)
        return remove

    def _out_of_descriptors(self, exc: OSError) -> None:
        suppressed = self._emfile_log.due()
        if suppressed is not None:
            log.error("cannot accept connections: %s (%d open HTTP connections; %d more refusals in the "
                      "last %.0f s); raise the open-file limit or lower WEBMACS_MAX_CONNECTIONS",
                      exc.strerror or exc, len(self._connections), suppressed, LOG_INTERVAL)

    def _evict_waiting(self) -> bool:
        while self._waiting:
            conn = next(iter(self._waiting))
            del self._waiting[conn]
            stream = getattr(conn, "stream", None)
            if stream is not None and not stream.closed():
                stream.close()
                self._note_cap("closing the longest-waiting connection without a request")
                return True
        return False

    def _note_cap(self, action: str) -> None:
        suppressed = self._cap_log.due()
        if suppressed is not None:
            log.warning("connection cap reached (WEBMACS_MAX_CONNECTIONS=%d): %s (%d more in the last %.0f s)",
                        self.max_connections, action, suppressed, LOG_INTERVAL)

    def _refuse(self, connection: socket.socket) -> None:
        try:
            connection.setblocking(False)
            connection.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nRetry-After: 1\r\nContent-Length: 44\r\n\r\n"
                            b'{"detail": "Too many connections, retry."}\r\n')
        except OSError:
            pass
        connection.close()
        self._note_cap("refusing new connections")

    # --- requests ------------------------------------------------------------------
    def handle_stream(self, stream, address) -> None:
        # HTTPServer.handle_stream, plus: a new connection waits for its header from now
        # (its request loop only starts on the next IOLoop turn).
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = HTTP1ServerConnection(stream, self.conn_params, context)
        self._connections.add(conn)
        self._waiting[conn] = None
        conn.start_serving(self)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection):
        delegate = super().start_request(server_conn, request_conn)
        self._waiting.pop(server_conn, None)
        self._waiting[server_conn] = None  # waiting for this request's header, from now
        return _TrustedProxyAdapter(delegate, request_conn, self.trusted_proxies,
                                    lambda: self._waiting.pop(server_conn, None))

    def on_close(self, server_conn: object) -> None:
        self._waiting.pop(server_conn, None)
        super().on_close(server_conn)


# --- logging -----------------------------------------------------------------------------

_TOKEN = re.compile(r"((?:[?&;]|\b)(?:access_)?token=)[^&\s'\"]+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    return _BEARER.sub(r"\1***", _TOKEN.sub(r"\1***", text))


class RedactTokens(logging.Filter):
    """Rewrite a record whose message or traceback carries ``token=...``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logged as it is
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class Throttle(logging.Filter):
    """Let through one record per ``interval`` among those whose message starts
    with one of ``prefixes`` (per-connection noise an attacker can trigger at will)."""

    def __init__(self, prefixes: tuple[str, ...], interval: float = LOG_INTERVAL) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.every = {p: _LogEvery(interval) for p in prefixes}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        for p in self.prefixes:
            if msg.startswith(p):
                suppressed = self.every[p].due()
                if suppressed is None:
                    return False
                if suppressed:
                    record.msg = f"{record.msg} (and {suppressed} more like it)"
                return True
        return True


_installed = False


def install_log_filters() -> None:
    """Once per process: redact tokens in every handler's output, throttle tornado's
    per-connection messages."""
    global _installed
    if _installed:
        return
    _installed = True
    redactor = RedactTokens()
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(redactor)
    # Records of loggers that propagate reach root's handlers (filtered above);
    # filters on the loggers themselves cover handlers added to them later.
    for name in ("tornado.access", "tornado.application", "tornado.general", "asyncio", "webmacs"):
        logging.getLogger(name).addFilter(redactor)
    logging.getLogger("tornado.general").addFilter(
        Throttle(("Malformed HTTP message", "Timeout reading body", "Uncaught exception, closing")))


# --- static files ------------------------------------------------------------------------


class SafeStaticFileHandler(StaticFileHandler):
    """StaticFileHandler that answers 404 for a path with NUL (``%00``) in it
    (the file system call would raise ValueError, a 500)."""

    def validate_absolute_path(self, root: str, absolute_path: str):
        if "\x00" in absolute_path:
            raise HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        if "\x00" in path:
            raise HTTPError(404)
        return super().get_absolute_path(root, path)


def linger_on_close(connection) -> None:
    """Make the next close of ``connection`` (a tornado ``HTTP1Connection`` whose request
    body is still arriving) a lingering one: the answer already written is followed by
    a FIN (``shutdown(SHUT_WR)``), and the socket itself is closed
    :data:`LINGER_SECONDS` later; meanwhile tornado goes on reading the body and dropping
    it (the handler has finished). Called before the answer is finished."""
    stream = getattr(connection, "stream", None)
    if stream is None or stream.closed() or getattr(stream, "_lingering", False):
        return
    close = stream.close
    stream._lingering = True

    def lingering_close(exc_info: Any = False) -> None:
        if exc_info or stream.closed():  # an error (a reset, the body cap): close now
            close(exc_info=exc_info)
            return
        try:
            stream.socket.shutdown(socket.SHUT_WR)
        except OSError:  # gone already
            close()
            return
        stream.close = close  # later calls close at once
        IOLoop.current().call_later(LINGER_SECONDS, close)

    stream.close = lingering_close
