"""Everything handlers depend on, built once per server, and its life cycle.

:class:`Services` builds every component in ``__init__`` (no I/O) and wires them:
each gets only what it uses. :meth:`Services.prepare_database` (blocking, before
the server listens) and :meth:`Services.start` do the I/O; startup is a list of
named steps and :func:`webmacs.app.shutdown` undoes them in reverse.

Nothing built here imports this module, so there is no import circle: handlers
reach it through ``self.settings["webmacs"]`` and only name it for typing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator, Awaitable, Callable, Iterator

from sqlalchemy import delete, text
from sqlalchemy.exc import IntegrityError
from tornado.ioloop import PeriodicCallback

from webmacs import accounts, memory, metrics
from webmacs.broadcast import CONTROLLER, FRONTEND, ConnectionManager
from webmacs.bus import CHANGES, POINTS, POINTS_INTERVAL_MS, REVOKE, PointRelay, make_bus
from webmacs.cache import LINKAGE, RULES, WEBHOOKS, CachedView, Changes
from webmacs.config import ConfigError, Settings
from webmacs.db import Database, current_revision, head_revision, upgrade
from webmacs.health import HealthProbe
from webmacs.ingest import IngestPipeline
from webmacs.memory import MemoryTrimmer
from webmacs.models import IngestBatch, WebhookDelivery
from webmacs.ratelimit import Guards
from webmacs.rules import RuleEngine, server_log
from webmacs.security import DownloadTickets
from webmacs.storage import datapoints, retention
from webmacs.storage.linkage import load_linkage
from webmacs.storage.queue import IngestQueue
from webmacs.sso import OidcClient
from webmacs.webhooks import WebhookDispatcher

log = logging.getLogger("webmacs")

# Telemetry batch ids are remembered this long (a controller spool resends well within it).
BATCH_ID_RETENTION = timedelta(hours=48)
# Finished webhook deliveries (delivered, failed, dead_letter) are kept this long.
DELIVERY_RETENTION = timedelta(days=30)
# Seconds between background database checks (drives system.health_changed).
HEALTH_CHECK_INTERVAL = 10
HOUSEKEEPING_INTERVAL = 3600
# Seconds a stopping server lets the ingest writer commit what is queued (the rest is
# replayed at the next start).
QUEUE_DRAIN_TIMEOUT = 2.0
# PostgreSQL advisory lock key: of several server processes on one database, only
# the one holding it runs housekeeping (SQLite has one process anyway).
HOUSEKEEPING_LOCK = 0x7765626D  # "webm"


class Services:
    def __init__(self, config: Settings):
        self.config = config
        self.db = Database(config.database_url, config.db_pool_size)
        # What the other server processes on this database are told (webmacs.bus).
        self.bus = make_bus(config.database_url, self.db.is_postgres, self.db.run)
        self.hub = ConnectionManager(interval_ms=config.broadcast_interval_ms,
                                     compression_level=config.stream_compression_level)
        self.webhooks = WebhookDispatcher(self.db, config, owner=self.bus.process_id)
        self.rules = RuleEngine(self.db, self.webhooks)
        self.linkage = CachedView("linkage", self.db.session, load_linkage)
        self.pipeline = IngestPipeline(self.db, self.linkage, IngestQueue(
            config.ingest_queue_path, config.database_url, config.ingest_queue_max_mb * 1024 * 1024))
        self.sso = OidcClient(config) if config.oidc_enabled else None  # single sign-on, when configured
        self.guards = Guards(config)  # request and login rate limits, the password hasher
        self.downloads = DownloadTickets(config.secret_key)  # single-use CSV download URLs for browsers
        self.health = HealthProbe(self.db)  # /health's own database check
        self.memory = MemoryTrimmer()  # gives freed heap pages back after a burst
        # Consumers of accepted batches, in this order.
        self.pipeline.add_listener(self.webhooks.sensor_readings)
        self.pipeline.add_listener(self.rules.evaluate)
        self.relay = PointRelay(self.bus, self.hub) if self.bus.shared else None
        if self.relay is None:
            self.pipeline.add_listener(self.hub.publish_readings)
        else:  # the same points, encoded once, also to the other processes' dashboards
            relay = self.relay
            self.pipeline.add_listener(lambda last_values: relay.add(self.hub.publish_readings(last_values)))
            self.bus.subscribe(POINTS, self.relay.received)
        # Where "this changed, reload" enters (see webmacs.cache), here and on the bus.
        self.changes = Changes(self.bus)
        self.bus.subscribe(CHANGES, self.changes.remote)
        self.bus.subscribe(REVOKE, self._revoked_elsewhere)
        self.bus.on_resync(self.changes.reload_all)
        self.changes.register(LINKAGE, self.linkage)
        self.changes.register(WEBHOOKS, self.webhooks.view)
        self.changes.register(RULES, self.rules.view)
        self.started_monotonic = time.monotonic()
        self.health_ok: bool | None = None
        self.accepting = True
        self.inflight = 0  # telemetry batches being processed (SIGTERM waits for them)
        self._idle = asyncio.Event()
        self._idle.set()
        self._callbacks: list[PeriodicCallback] = []
        self.retention_progress: dict = {}  # how far retention got (webmacs.storage.retention.enforce)

    # --- start ------------------------------------------------------------------------
    def prepare_database(self) -> None:
        """Blocking, before the server listens: schema check, features, first admin."""
        cfg = self.config
        head = head_revision()
        current = current_revision(self.db.engine)
        if current != head:
            if cfg.is_sqlite:
                log.info("migrating embedded SQLite database to %s", head)
                upgrade(cfg.database_url, cfg.chunk_interval_hours)
            else:
                raise ConfigError(
                    f"database schema is at {current or 'nothing'}, expected {head}: run `webmacs migrate` first"
                )
        self.db.detect_features()
        with self.db.Session() as session:
            accounts.ensure_initial_admin(session, cfg.initial_admin_email, cfg.initial_admin_username,
                                          cfg.initial_admin_password)
            try:
                session.commit()
            except IntegrityError:  # another server process starting at the same time made it
                session.rollback()
            self.pipeline.last_time = datapoints.newest_time(session)
        accounts.warn_if_no_users(self.db)
        self.pipeline.open_queue()  # what the last run accepted and did not commit is replayed first

    async def start(self) -> None:
        """The I/O of starting, in order; :meth:`stop` undoes it in reverse."""
        await self.bus.start()
        self.pipeline.start()  # the ingest queue's writer
        await self.rules.view.current()
        await self.webhooks.start()
        await server_log(self.db, "Server started", "info")
        self.hub.start()  # dashboard frames: ticks scheduled by what is published
        self._every(self.config.broadcast_interval_ms, self.hub.housekeep)
        if self.relay is not None:
            self._every(POINTS_INTERVAL_MS, self.relay.flush)
        self._every(1000, lambda: self.hub.expire_tokens(datetime.now(timezone.utc)))
        self._every(HOUSEKEEPING_INTERVAL * 1000, self._housekeeping)
        # system.health_changed must fire when the database goes and comes back even
        # if nobody is polling /health.
        self._every(HEALTH_CHECK_INTERVAL * 1000, self._check_health)
        self._every(memory.CHECK_INTERVAL * 1000, self.memory.check)
        if metrics.multiprocess():  # each worker's share of the state gauges, for any worker's scrape
            self._every(metrics.MULTIPROCESS_REFRESH_MS, self.refresh_metrics)

    def _every(self, ms: float, fn: Callable[[], object | Awaitable[object]]) -> None:
        cb = PeriodicCallback(fn, ms)
        cb.start()
        self._callbacks.append(cb)

    def stop_callbacks(self) -> None:
        self.hub.stop()
        for cb in self._callbacks:
            cb.stop()
        self._callbacks.clear()

    async def stop(self) -> None:
        """After sockets are closed: the log entry, webhooks, caches, the ingest writer (reverse of start)."""
        await server_log(self.db, "Server stopped", "info")
        await self.webhooks.stop()
        await self.bus.stop()
        self.changes.close()
        self.health.close()
        self.guards.hasher.close()  # its idle thread would hold the interpreter's exit
        self.memory.close()
        # last, so a hung database cannot keep the others from stopping; what is left stays queued
        await self.pipeline.stop(min(QUEUE_DRAIN_TIMEOUT, self.config.shutdown_timeout / 4))
        metrics.process_exit()

    # --- revocations -------------------------------------------------------------------------
    def revoke(self, kind: str, ident, reason: str) -> None:
        """Close the sockets of a revocation (see webmacs.broadcast.REVOCATIONS) here and, through
        the bus, in every other server process."""
        self.hub.revoke(kind, ident, reason)
        self.bus.publish(REVOKE, {"kind": kind, "id": ident, "reason": reason})

    def _revoked_elsewhere(self, payload: dict) -> None:
        if isinstance(payload.get("kind"), str) and isinstance(payload.get("reason"), str):
            self.hub.revoke(payload["kind"], payload.get("id"), payload["reason"])

    # --- in-flight telemetry ---------------------------------------------------------------
    @contextmanager
    def batch_in_flight(self) -> Iterator[None]:
        """Around the storing of one telemetry batch: shutdown waits for these."""
        self.batch_queued()
        try:
            yield
        finally:
            self.batch_done()

    def batch_queued(self) -> None:
        """A telemetry batch was read and will be stored or answered: shutdown waits for it."""
        self.inflight += 1
        self._idle.clear()

    def batch_done(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Until no batch is in flight, at most ``timeout`` s; True if none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # --- background work -----------------------------------------------------------------
    async def _check_health(self) -> None:
        self.note_health(await self.health.check())

    async def _housekeeping(self) -> None:
        def prune(session):
            now = datetime.now(timezone.utc)
            accounts.prune_revoked(session)
            session.execute(delete(IngestBatch).where(IngestBatch.created_on < now - BATCH_ID_RETENTION))
            session.execute(delete(WebhookDelivery).where(
                WebhookDelivery.status != "pending", WebhookDelivery.created_on < now - DELIVERY_RETENTION))

        cfg = self.config
        try:
            async with self.housekeeping_lock() as mine:
                if not mine:
                    log.debug("housekeeping skipped: another server process runs it")
                    return
                await self.db.session(prune)
                await retention.enforce(self.db, cfg.retention_days, cfg.experiment_retention_days,
                                        progress=self.retention_progress)
        except Exception:  # noqa: BLE001 - retried next interval
            log.warning("housekeeping failed", exc_info=True)

    @asynccontextmanager
    async def housekeeping_lock(self) -> AsyncIterator[bool]:
        """True while this process holds the housekeeping lock (always on SQLite)."""
        if not self.db.is_postgres:
            yield True
            return
        conn = await self.db.run(_try_advisory_lock, self.db.engine, HOUSEKEEPING_LOCK)
        if conn is None:
            yield False
            return
        try:
            yield True
        finally:
            await self.db.run(_advisory_unlock, conn, HOUSEKEEPING_LOCK)

    # --- health ---------------------------------------------------------------------------
    def note_health(self, ok: bool) -> None:
        """Fire ``system.health_changed`` when the database comes or goes."""
        previous, self.health_ok = self.health_ok, ok
        if previous is not None and previous != ok:
            status = "ok" if ok else "degraded"
            self.webhooks.emit("system.health_changed", {"status": status, "database": "ok" if ok else "error"})

    def refresh_metrics(self) -> None:
        """Set the state gauges of :mod:`webmacs.metrics` (IOLoop thread: a few lengths and one
        sum over the telemetry connections' queues)."""
        controllers = self.hub.groups.get(CONTROLLER, ())
        metrics.INGEST_QUEUE.set(sum(getattr(c.handler, "_queued_points", 0) for c in controllers))
        metrics.BATCHES_IN_FLIGHT.set(self.inflight)
        queue = self.pipeline.queue_depth()
        metrics.QUEUE_RECORDS.set(queue["records"])
        metrics.QUEUE_BYTES.set(queue["bytes"])
        metrics.WRITER_LAG.set(queue["writer_lag_seconds"])
        metrics.SUBSCRIBERS.set(self.hub.count(FRONTEND))
        metrics.CONTROLLERS.set(len(controllers))
        checkedout = getattr(self.db.engine.pool, "checkedout", None)
        metrics.DB_POOL_IN_USE.set(checkedout() if checkedout else 0)

    def last_datapoint_time(self) -> datetime | None:
        return self.pipeline.last_time


def _try_advisory_lock(engine, key: int):
    """A connection holding session-level advisory lock ``key``, or None if another holds it."""
    conn = engine.connect()
    try:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()
    except BaseException:
        conn.close()
        raise
    if not got:
        conn.close()
        return None
    return conn


def _advisory_unlock(conn, key: int) -> None:
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except BaseException:
        conn.invalidate()  # never back into the pool still holding the lock
        raise
    finally:
        conn.close()
