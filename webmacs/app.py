"""The Tornado application and the server's life cycle.

:class:`webmacs.services.Services` is made once at start and handed to every
handler through ``self.settings["webmacs"]``. :func:`run_server` starts in named
steps; :func:`shutdown` stops in reverse (JupyterHub's order: stop accepting,
finish in-flight work, stop callbacks, close sockets, stop services; the caller
closes the database).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time

from tornado.httpserver import HTTPServer
from tornado.web import Application

from webmacs import STATIC_DIR
from webmacs import demo as demo_mod
from webmacs.broadcast import CONTROLLER
from webmacs.config import Settings
from webmacs.handlers import collect_handlers
from webmacs.serving import GuardedHTTPServer, SafeStaticFileHandler, _LogEvery, install_log_filters, parse_networks
from webmacs.services import Services

log = logging.getLogger("webmacs")

# Of WEBMACS_SHUTDOWN_TIMEOUT, at most this is kept for closing sockets and stopping
# the services (log entry, webhook writer) after waiting for in-flight batches.
SHUTDOWN_RESERVE = 3.0

# 500 datapoints of {"value": -1.2345678901234567e-300, "event_public_id": "<36-char uuid>",
# "timestamp": "2026-01-01T00:00:00.000000+00:00"} are about 55 kB; allow 4x for
# whitespace and longer ids, and refuse anything larger before parsing it.
WEBSOCKET_MAX_MESSAGE_SIZE = 256 * 1024
# Pings from the server find dead peers (a controller that lost power, a closed
# laptop) that TCP alone would keep "open" for hours; 30 s is well inside the
# nginx proxy_read_timeout and common NAT idle timeouts.
WEBSOCKET_PING_INTERVAL = 30
# A peer that has not answered a ping in 20 s is gone; its socket is closed and
# it leaves its group.
WEBSOCKET_PING_TIMEOUT = 20


# tokens, and SSO authorization codes, one-time codes and state (/sso-callback?code=...)
_TOKEN_IN_QUERY = re.compile(r"((?:token|[?&]code|[?&]state)=)[^&\s]+")
access_log = logging.getLogger("tornado.access")


_client_errors: dict[int, object] = {}


def log_request(handler) -> None:
    """Tornado's access log line, with ``?token=``, ``code=`` and ``state=`` redacted (WebSocket URLs carry JWTs).
    Client errors (4xx) are logged once per status per 10 s with a count: a flood of bad
    requests must not become a flood of log lines."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else (logging.WARNING if status < 500 else logging.ERROR)
    if not access_log.isEnabledFor(level):
        return
    more = ""
    if 400 <= status < 500:
        suppressed = _client_errors.setdefault(status, _LogEvery()).due()
        if suppressed is None:
            return
        more = f" (and {suppressed} more {status}s in the last 10 s)" if suppressed else ""
    req = handler.request
    uri = _TOKEN_IN_QUERY.sub(r"\1***", req.uri)
    access_log.log(level, "%d %s %s (%s) %.2fms%s", status, req.method, uri, req.remote_ip,
                   1000.0 * req.request_time(), more)


def make_app(services: Services) -> Application:
    return Application(
        collect_handlers(),
        webmacs=services,
        static_path=str(STATIC_DIR),
        static_handler_class=SafeStaticFileHandler,
        static_url_prefix="/static/",
        websocket_max_message_size=WEBSOCKET_MAX_MESSAGE_SIZE,
        websocket_ping_interval=WEBSOCKET_PING_INTERVAL,
        websocket_ping_timeout=WEBSOCKET_PING_TIMEOUT,
        compress_response=True,
        log_function=log_request,
    )


async def shutdown(server: HTTPServer, services: Services) -> None:
    """Graceful stop, bounded by ``shutdown_timeout`` in total: stop accepting, finish and
    acknowledge in-flight batches (what cannot be stored in time is answered "retry"),
    flush the broadcast buffer, close sockets (1001), stop the services."""
    deadline = time.monotonic() + services.config.shutdown_timeout
    reserve = min(SHUTDOWN_RESERVE, services.config.shutdown_timeout / 2)

    def left(keep: float = 0.0) -> float:
        return max(0.05, deadline - time.monotonic() - keep)

    services.accepting = False
    server.stop()
    if not await services.wait_idle(left(keep=reserve)):
        log.warning("%d telemetry batches not stored at the shutdown timeout: answered retry", services.inflight)
        for conn in list(services.hub.groups.get(CONTROLLER, ())):
            conn.handler.abandon_batches()
    services.stop_callbacks()
    services.hub.flush()
    services.hub.close_all(1001, "Server shutting down")
    try:
        await asyncio.wait_for(services.stop(), left(keep=0.3))
    except asyncio.TimeoutError:
        log.warning("services did not stop in time (database not answering)")
    await asyncio.sleep(0.1)  # let close frames go out
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=left())
    except asyncio.TimeoutError:
        log.warning("some connections did not close in time")


async def run_server(config: Settings, host: str, port: int, demo: bool = False, reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; ``demo`` runs the demo controller beside it (webmacs.demo);
    ``reuse_port``: one of several worker processes on this port (webmacs.workers)."""
    install_log_filters()
    services = Services(config)
    services.prepare_database()
    controller = None
    if demo:
        controller = demo_mod.DemoController(config, demo_mod.prepare(config, services.db))
    await services.start()
    app = make_app(services)
    server = GuardedHTTPServer(
        app,
        idle_connection_timeout=config.http_header_timeout,  # tornado: also the header timeout
        body_timeout=config.http_body_timeout,
        # Routes check their own (smaller) limit before reading; this bounds the rest.
        max_body_size=256 * 1024,
        max_connections=config.max_connections,
        trusted_proxies=parse_networks(config.trusted_proxies, "WEBMACS_TRUSTED_PROXIES"),
    )
    server.listen(port, host, reuse_port=reuse_port)
    log.info("webmacs listening on http://%s:%d (database: %s)", host, port,
             "sqlite" if config.is_sqlite else ("timescaledb" if services.db.has_timescale else "postgresql"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if controller is not None:
        await controller.start(demo_mod.server_url(host, port))
    await stop.wait()
    log.info("shutting down")
    if controller is not None:  # first, so it can still deliver what it holds
        await controller.stop()
    await shutdown(server, services)
    services.db.close(wait=False)
    log.info("stopped")
