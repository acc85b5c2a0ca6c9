"""``webmacs controller``: run the plugin drivers configured on the server, store and forward.

Every ``WEBMACS_SYNC_INTERVAL`` seconds the controller fetches the plugin instances and
their channel mappings (``GET /api/v1/plugins``) and keeps one driver per enabled
instance (``available()[plugin_id].create_driver(config_json, demo_mode)``). Every
``WEBMACS_POLL_INTERVAL`` seconds it reads every driver and spools, in one
transaction, the readings of the channels linked to an event, each stamped with its
reading time. A :class:`~webmacs.controller.TelemetryClient` sends them.

The last plugin listing is kept in the spool, so a controller started while the
server is unreachable still records readings for the channels it knew.

Environment (a bad value: one error line naming the variable, exit code 2):

- ``WEBMACS_SERVER_URL``        http(s)://host:port of the server (required)
- ``WEBMACS_API_TOKEN``         an API token (``wm_...``), or
- ``WEBMACS_ADMIN_EMAIL`` / ``WEBMACS_ADMIN_PASSWORD``  a user (operator or admin) to log in as
- ``WEBMACS_POLL_INTERVAL``     seconds between driver reads (>= 0.2, default 1.0)
- ``WEBMACS_MAX_BATCH_SIZE``    readings per batch (1-500, default 100)
- ``WEBMACS_TELEMETRY_MODE``    ``websocket`` (default) or ``http``
- ``WEBMACS_SPOOL_PATH``        the spool's SQLite file (default ``./webmacs-spool.db``)
- ``WEBMACS_SPOOL_MAX_MB``      spool size bound; beyond it the oldest readings are dropped (default 100)
- ``WEBMACS_SYNC_INTERVAL``     seconds between plugin/mapping re-syncs (1-3600, default 10)
- ``WEBMACS_FLUSH_TIMEOUT``     seconds SIGTERM/SIGINT waits for acks before exiting (0-300, default 5)
- ``WEBMACS_PLUGIN_DIR``        where uploaded plugin packages are installed at start
                                (default ``./webmacs-plugins``; see webmacs/controller/packages.py)
- ``WEBMACS_CONTROLLER_VERSION`` the firmware version this device runs, reported to ``/api/v1/ota/check``
  (semantic version; default: the version the last completed OTA update installed, else the package's)
- ``WEBMACS_OTA_HOOK``          ``module:function`` that flashes a verified firmware file (default: the first
  ``webmacs.ota`` entry point; none: updates are left alone), see :mod:`webmacs.controller.ota`
- ``WEBMACS_OTA_DOWNLOAD_DIR``  where firmware is downloaded (default: ``ota`` next to the spool file)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from webmacs.config import ConfigError, _float, _int
from webmacs.controller.client import MAX_BATCH, MODES, TelemetryClient
from webmacs.controller.packages import sync_packages
from webmacs.controller.ota import HookError, OtaAgent, default_download_dir, initial_version, load_hook
from webmacs.controller.spool import SpoolError
from webmacs.semver import is_semver

log = logging.getLogger("webmacs.controller")

PLUGINS_CACHE = "plugins"


@dataclass
class ControllerConfig:
    server_url: str
    token: str | None
    email: str | None
    password: str | None
    poll_interval: float = 1.0
    max_batch_size: int = 100
    mode: str = "websocket"
    spool_path: str = "./webmacs-spool.db"
    spool_max_mb: float = 100.0
    sync_interval: float = 10.0
    flush_timeout: float = 5.0
    plugin_dir: str = "./webmacs-plugins"
    version: str | None = None
    ota_hook: str | None = None
    ota_download_dir: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ControllerConfig":
        env = os.environ if env is None else env
        url = (env.get("WEBMACS_SERVER_URL") or "").strip()
        if not url:
            raise ConfigError("WEBMACS_SERVER_URL is required (http(s)://host:port of the webmacs server)")
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment:
            raise ConfigError(f"WEBMACS_SERVER_URL must be http(s)://host:port, got {url!r}")
        token = (env.get("WEBMACS_API_TOKEN") or "").strip() or None
        email = (env.get("WEBMACS_ADMIN_EMAIL") or "").strip() or None
        password = env.get("WEBMACS_ADMIN_PASSWORD") or None
        if token is None and not (email and password):
            if email or password:
                missing = "WEBMACS_ADMIN_PASSWORD" if email else "WEBMACS_ADMIN_EMAIL"
                raise ConfigError(f"{missing} is required together with "
                                  f"{'WEBMACS_ADMIN_EMAIL' if email else 'WEBMACS_ADMIN_PASSWORD'}")
            raise ConfigError("WEBMACS_API_TOKEN, or WEBMACS_ADMIN_EMAIL and WEBMACS_ADMIN_PASSWORD, must be set")
        mode = (env.get("WEBMACS_TELEMETRY_MODE") or "websocket").strip().lower()
        if mode not in MODES:
            raise ConfigError(f"WEBMACS_TELEMETRY_MODE must be websocket or http, got {mode!r}")
        spool_path = (env.get("WEBMACS_SPOOL_PATH") or "").strip() or "./webmacs-spool.db"
        version = (env.get("WEBMACS_CONTROLLER_VERSION") or "").strip() or None
        if version is not None and not is_semver(version):
            raise ConfigError(f"WEBMACS_CONTROLLER_VERSION must be a semantic version X.Y.Z, got {version!r}")
        return cls(
            server_url=url.rstrip("/"),
            token=token,
            email=email if token is None else None,
            password=password if token is None else None,
            poll_interval=_float(env, "WEBMACS_POLL_INTERVAL", 1.0, 0.2, 86400),
            max_batch_size=_int(env, "WEBMACS_MAX_BATCH_SIZE", 100, 1, MAX_BATCH),
            mode=mode,
            spool_path=spool_path,
            spool_max_mb=_float(env, "WEBMACS_SPOOL_MAX_MB", 100.0, 1, 1024 * 1024),
            sync_interval=_float(env, "WEBMACS_SYNC_INTERVAL", 10.0, 1, 3600),
            flush_timeout=_float(env, "WEBMACS_FLUSH_TIMEOUT", 5.0, 0, 300),
            plugin_dir=(env.get("WEBMACS_PLUGIN_DIR") or "").strip() or "./webmacs-plugins",
            version=version,
            ota_hook=(env.get("WEBMACS_OTA_HOOK") or "").strip() or None,
            ota_download_dir=(env.get("WEBMACS_OTA_DOWNLOAD_DIR") or "").strip() or default_download_dir(spool_path),
        )


@dataclass
class Source:
    """One running driver and the (channel_id, event_public_id) links it feeds."""

    instance_public_id: str
    name: str
    driver: Any
    links: list[tuple[str, str]]


class Controller:
    def __init__(self, client: TelemetryClient, config: ControllerConfig,
                 plugins: Mapping[str, type] | None = None) -> None:
        from webmacs.plugins import available

        self.client = client
        self.config = config
        self.plugins = dict(plugins) if plugins is not None else available()
        self.sources: list[Source] = []
        self._drivers: dict[str, tuple[str, Any]] = {}  # instance public_id -> (signature, driver)
        self._warned: set[str] = set()
        self._sync_failing = False
        self.synced = asyncio.Event()

    # --- mappings ------------------------------------------------------------------------
    async def fetch_instances(self) -> list[dict]:
        instances: list[dict] = []
        page = 1
        while True:
            body = await self.client.api("GET", f"/api/v1/plugins?page={page}&page_size=100")
            data = body.get("data") or []
            instances.extend(data)
            if not data or len(instances) >= int(body.get("total") or 0):
                return instances
            page += 1

    async def sync(self) -> bool:
        try:
            instances = await self.fetch_instances()
        except Exception as exc:  # noqa: BLE001 - keep the last known mappings
            if not self._sync_failing:
                log.warning("cannot fetch plugin instances from the server (%s); keeping the last known "
                            "channel mappings (%d sources)", exc, len(self.sources))
            self._sync_failing = True
            return False
        if self._sync_failing:
            log.info("plugin instances fetched again")
        self._sync_failing = False
        self.apply(instances)
        try:
            self.client.spool.set_meta(PLUGINS_CACHE, json.dumps(instances))
        except Exception:  # noqa: BLE001 - the cache is a convenience
            log.debug("cannot cache the plugin listing", exc_info=True)
        self.synced.set()
        return True

    def load_cached(self) -> None:
        raw = self.client.spool.get_meta(PLUGINS_CACHE)
        if raw:
            try:
                self.apply(json.loads(raw))
                log.info("using the cached channel mappings (%d sources) until the server answers",
                         len(self.sources))
            except (ValueError, TypeError, KeyError):
                log.warning("ignoring an unreadable plugin cache in the spool")

    def apply(self, instances: list[dict]) -> None:
        sources: list[Source] = []
        keep: dict[str, tuple[str, Any]] = {}
        for inst in instances:
            if not inst.get("enabled"):
                continue
            public_id = inst["public_id"]
            links = [(m["channel_id"], m["event_public_id"]) for m in inst.get("channel_mappings") or []
                     if m.get("event_public_id")]
            plugin = self.plugins.get(inst.get("plugin_id"))
            if plugin is None:
                self._warn_once(f"plugin:{inst.get('plugin_id')}",
                                "plugin %r of instance %r is not installed on this controller; skipping it",
                                inst.get("plugin_id"), inst.get("instance_name"))
                continue
            signature = json.dumps([inst.get("plugin_id"), inst.get("config_json"), bool(inst.get("demo_mode"))],
                                   sort_keys=True)
            current = self._drivers.get(public_id)
            if current is not None and current[0] == signature:
                driver = current[1]
            else:
                try:
                    driver = plugin.create_driver(inst.get("config_json"), bool(inst.get("demo_mode")))
                except Exception as exc:  # noqa: BLE001 - a broken driver must not stop the others
                    self._warn_once(f"driver:{public_id}:{signature}", "cannot start driver of %r: %s",
                                    inst.get("instance_name"), exc)
                    continue
                log.info("driver started for %r (%s%s)", inst.get("instance_name"), inst.get("plugin_id"),
                         ", demo mode" if inst.get("demo_mode") else "")
            keep[public_id] = (signature, driver)
            if links:
                sources.append(Source(public_id, inst.get("instance_name") or public_id, driver, links))
        for public_id in self._drivers.keys() - keep.keys():
            _close_driver(self._drivers[public_id][1])
        self._drivers = keep
        before = {(s.instance_public_id, c, e) for s in self.sources for c, e in s.links}
        after = {(s.instance_public_id, c, e) for s in sources for c, e in s.links}
        if before != after:
            log.info("channel mappings: %d linked channels on %d instances", len(after), len(sources))
        self.sources = sources

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # --- polling -------------------------------------------------------------------------
    def read_all(self) -> list[tuple[str, float, datetime]]:
        """One poll: read every driver (on a worker thread); readings of linked channels."""
        readings: list[tuple[str, float, datetime]] = []
        for src in list(self.sources):
            ts = datetime.now(timezone.utc)
            try:
                values = src.driver.read()
            except Exception as exc:  # noqa: BLE001 - one failing device must not stop the others
                self._warn_once(f"read:{src.instance_public_id}:{type(exc).__name__}",
                                "driver of %r failed to read: %s", src.name, exc)
                continue
            for channel_id, event in src.links:
                value = values.get(channel_id)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    self._warn_once(f"value:{src.instance_public_id}:{channel_id}",
                                    "driver of %r returned a non-finite or non-numeric value for %r: %r",
                                    src.name, channel_id, value)
                    continue
                readings.append((event, float(value), ts))
        return readings

    async def poll_loop(self) -> None:
        interval = self.config.poll_interval
        next_at = time.monotonic()
        while True:
            if self.sources:
                readings = await asyncio.to_thread(self.read_all)
                if readings:
                    self.client.submit_many(readings)  # one transaction per poll
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # a slow poll: skip the missed ticks instead of bursting
                next_at = now
            await asyncio.sleep(next_at - now)

    async def sync_loop(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.config.sync_interval)

    async def stats_loop(self, every: float = 60.0) -> None:
        last = None
        while True:
            await asyncio.sleep(every)
            s = self.client.stats.as_dict()
            if s != last:
                log.info("stats: %s", " ".join(f"{k}={v}" for k, v in s.items()))
                last = s

    def close(self) -> None:
        for _sig, driver in self._drivers.values():
            _close_driver(driver)
        self._drivers.clear()


def _close_driver(driver: Any) -> None:
    close = getattr(driver, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001
            log.debug("driver close failed", exc_info=True)


async def run(config: ControllerConfig) -> int:
    try:
        hook = load_hook(config.ota_hook)
    except HookError as exc:
        print(f"webmacs controller: error: {exc}", file=sys.stderr)
        return 2
    client = TelemetryClient(config.server_url, token=config.token, email=config.email, password=config.password,
                             spool_path=config.spool_path, spool_max_mb=config.spool_max_mb,
                             max_batch_size=config.max_batch_size, mode=config.mode)
    try:
        await client.start()
    except SpoolError as exc:
        print(f"webmacs controller: error: WEBMACS_SPOOL_PATH: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # a stop during the package install waits for it, then exits
    try:
        await sync_packages(client, config.plugin_dir)
    except OSError as exc:
        log.error("WEBMACS_PLUGIN_DIR %s unusable, uploaded plugin packages not installed: %s",
                  config.plugin_dir, exc)
    controller = Controller(client, config)
    controller.load_cached()
    ota = OtaAgent(client, initial_version(config.version, client), hook, config.ota_download_dir)
    log.info("firmware version %s; OTA updates %s", ota.version,
             "applied through the flash hook" if hook else "left alone (no WEBMACS_OTA_HOOK)")
    log.info("controller started: server %s (%s), poll every %.2fs, spool %s",
             config.server_url, config.mode, config.poll_interval, config.spool_path)
    tasks = [asyncio.create_task(controller.sync_loop()), asyncio.create_task(controller.poll_loop()),
             asyncio.create_task(controller.stats_loop()), asyncio.create_task(ota.loop(config.sync_interval))]
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        controller.close()
    log.info("stopping: sending what is left (up to %.1fs)", config.flush_timeout)
    flushed = await client.flush(config.flush_timeout)
    stats = client.stats
    await client.close()
    if flushed:
        log.info("stopped: every reading acknowledged (%d sent, %d acked, %d dropped)",
                 stats.sent, stats.acked, stats.dropped)
    else:
        log.warning("stopped: %d readings not yet acknowledged stay in %s and are sent at the next start",
                    stats.pending, config.spool_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        config = ControllerConfig.from_env()
    except ConfigError as exc:
        print(f"webmacs controller: error: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        level = os.environ.get("WEBMACS_LOG_LEVEL", "INFO").upper()
        logging.basicConfig(level=getattr(logging, level, logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(config))


if __name__ == "__main__":
    raise SystemExit(main())
