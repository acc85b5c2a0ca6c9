"""Serving: one process, or ``--workers N`` pre-forked processes on one port.

:func:`serve_one` is one server process (its own IOLoop, database pool, executor and
cluster bus connection). :func:`serve_workers` is the parent of N of them:

1. refuses SQLite (one process only: its live state is not shared), checks that the
   port is free and prepares the database once (schema check, first admin), so a
   wrong setting is one clear line instead of N;
2. forks N children *before* any thread, loop or connection exists; each binds the
   port with ``SO_REUSEPORT`` (the kernel spreads new connections over the workers)
   and runs :func:`serve_one`;
3. supervises: a worker that dies is started again (unless workers keep dying right
   after starting: then everything stops, exit code 1); SIGTERM/SIGINT are forwarded
   to every worker, and the parent exits when the last one has stopped gracefully.

The workers share everything through the database: see docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time

log = logging.getLogger("webmacs.workers")

# A worker that dies within this many seconds of starting, this many times in a row,
# is not started again: the configuration or the database is wrong.
FAST_FAILURE_SECONDS = 10.0
FAST_FAILURES_MAX = 3


def worker_count(requested: int) -> int:
    """``0``: one per CPU core."""
    return (os.cpu_count() or 1) if requested == 0 else requested


def serve_one(config, host: str, port: int, demo: bool = False, reuse_port: bool = False) -> int:
    """One server process until SIGTERM/SIGINT; 0 when it stopped gracefully."""
    from webmacs.app import run_server

    asyncio.run(run_server(config, host, port, demo=demo, reuse_port=reuse_port))
    # Everything acknowledged is committed by now. A database call that still hangs
    # (database unreachable) must not hold the exit past the shutdown bound: the
    # interpreter would join its thread. Leave without waiting for it.
    deadline = time.monotonic() + 1.0
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in stuck:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in stuck if t.is_alive()]
    if stuck:
        logging.getLogger("webmacs").warning("exiting with %d database call(s) still blocked", len(stuck))
        logging.shutdown()
        os._exit(0)
    return 0


def _check_port(host: str, port: int) -> None:
    from webmacs.config import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _prepare(config) -> None:
    """Schema check and first admin, once, in the parent (no thread or connection survives it)."""
    from webmacs.services import Services

    services = Services(config)
    try:
        services.prepare_database()
    finally:
        services.db.close()
        services.db.engine.dispose()


def serve_workers(config, host: str, port: int, workers: int, demo: bool = False) -> int:
    from webmacs.config import ConfigError

    if config.is_sqlite:
        raise ConfigError(f"--workers {workers}: more than one server process needs PostgreSQL/TimescaleDB "
                          "(WEBMACS_DATABASE_URL is SQLite, which one process owns); use --workers 1")
    _check_port(host, port)
    _prepare(config)
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, started at)
    state = {"stopping": False}

    def spawn(index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                log.info("worker %d started (pid %d)", index, os.getpid())
                code = serve_one(config, host, port, demo=demo and index == 0, reuse_port=True)
            except ConfigError as exc:
                print(f"webmacs: error: worker {index}: {exc}", file=sys.stderr)
                code = 2
            except BaseException:  # noqa: BLE001 - logged, then the parent decides
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = (index, time.monotonic())

    def forward(signum, _frame) -> None:
        state["stopping"] = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(workers):
        spawn(index)
    log.info("webmacs: %d workers on http://%s:%d", workers, host, port)
    worst = 0
    fast_failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if state["stopping"]:
            worst = max(worst, code if code > 0 else 0)
            continue
        fast_failures = fast_failures + 1 if time.monotonic() - started < FAST_FAILURE_SECONDS else 0
        if fast_failures >= FAST_FAILURES_MAX:
            log.error("worker %d exited with %d right after starting, %d times in a row: stopping",
                      index, code, fast_failures)
            forward(signal.SIGTERM, None)
            worst = 1
            continue
        log.warning("worker %d (pid %d) exited with %d; starting it again", index, pid, code)
        spawn(index)
    log.info("all workers stopped")
    return worst
