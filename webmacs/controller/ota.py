"""OTA on the controller: report the running version, follow an applied update.

Every sync interval the controller asks ``GET /api/v1/ota/check?current_version=V``
(so the server knows what it runs). When an admin applies an update (status
``downloading``) and this controller has a flash hook, it:

1. downloads ``GET /api/v1/ota/{id}/firmware`` to ``WEBMACS_OTA_DOWNLOAD_DIR``
   (streamed to disk), then reports ``verifying``;
2. hashes the downloaded file and compares it with the record's
   ``file_hash_sha256`` and size: a mismatch reports ``failed`` and stops;
3. reports ``applying`` and calls the hook with a :class:`FirmwareImage`;
4. reports ``completed`` when the hook returns (``failed`` with the error when it
   raises), and from then on reports the new version.

Flashing is the device's business: the hook is a callable named by
``WEBMACS_OTA_HOOK=package.module:function``, or the first entry point in the
``webmacs.ota`` group. Without a hook the controller only reports its version and
leaves updates alone. The hook runs on a worker thread and may block.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
import urllib.parse
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from webmacs.semver import is_semver

log = logging.getLogger("webmacs.controller.ota")

VERSION_META = "ota_version"
HOOK_GROUP = "webmacs.ota"


@dataclass(frozen=True)
class FirmwareImage:
    """What the flash hook gets: a verified file on local disk."""

    path: str
    version: str
    sha256: str
    size: int
    update_public_id: str


class HookError(Exception):
    """WEBMACS_OTA_HOOK does not name a callable."""


def load_hook(spec: str | None) -> Callable[[FirmwareImage], Any] | None:
    if spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise HookError(f"WEBMACS_OTA_HOOK must be module:function, got {spec!r}")
        try:
            hook = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise HookError(f"WEBMACS_OTA_HOOK {spec!r} cannot be loaded: {exc}") from None
        if not callable(hook):
            raise HookError(f"WEBMACS_OTA_HOOK {spec!r} is not callable")
        return hook
    for ep in entry_points(group=HOOK_GROUP):
        return ep.load()
    return None


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class OtaAgent:
    def __init__(self, client: Any, version: str, hook: Callable[[FirmwareImage], Any] | None,
                 download_dir: str) -> None:
        self.client = client
        self.version = version
        self.hook = hook
        self.download_dir = Path(download_dir)
        self._attempted: set[str] = set()
        self._failing = False

    async def check(self) -> dict | None:
        query = urllib.parse.urlencode({"current_version": self.version})
        try:
            answer = await self.client.api("GET", f"/api/v1/ota/check?{query}")
        except Exception as exc:  # noqa: BLE001 - OTA must never stop telemetry
            if not self._failing:
                log.warning("OTA check failed (%s); retrying every sync interval", exc)
            self._failing = True
            return None
        self._failing = False
        active = (answer or {}).get("active_update")
        if (self.hook is not None and active and active.get("status") == "downloading"
                and active.get("public_id") not in self._attempted):
            self._attempted.add(active["public_id"])
            await self.install(active)
        return answer

    async def report(self, public_id: str, status: str, error: str | None = None) -> None:
        body: dict = {"status": status}
        if error:
            body["error_message"] = error[:2000]
        await self.client.api("PUT", f"/api/v1/ota/{public_id}/status", body)
        log.info("OTA update %s: %s%s", public_id, status, f" ({error})" if error else "")

    async def install(self, update: dict) -> bool:
        public_id, version = update["public_id"], update["version"]
        self.download_dir.mkdir(parents=True, exist_ok=True)
        path = self.download_dir / f"firmware-{public_id}.bin"
        log.info("OTA update %s: downloading version %s", public_id, version)
        try:
            await self.client.download(f"/api/v1/ota/{public_id}/firmware", str(path))
        except Exception as exc:  # noqa: BLE001
            await self.report(public_id, "failed", f"download failed: {exc}")
            return False
        await self.report(public_id, "verifying")
        digest, size = await asyncio.to_thread(_sha256, path)
        expected = update.get("file_hash_sha256")
        if digest != expected or size != update.get("file_size_bytes"):
            await asyncio.to_thread(path.unlink)
            await self.report(public_id, "failed",
                              f"SHA-256 mismatch: expected {expected}, got {digest} ({size} bytes)")
            return False
        await self.report(public_id, "applying")
        try:
            await asyncio.to_thread(self.hook, FirmwareImage(str(path), version, digest, size, public_id))
        except Exception as exc:  # noqa: BLE001 - the device said no
            await self.report(public_id, "failed", f"flash hook failed: {type(exc).__name__}: {exc}")
            return False
        self.version = version
        try:
            self.client.spool.set_meta(VERSION_META, version)
        except Exception:  # noqa: BLE001 - the spool is a convenience here
            log.debug("cannot store the new version in the spool", exc_info=True)
        await self.report(public_id, "completed")
        return True

    async def loop(self, interval: float) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - e.g. a progress report lost to the network
                log.warning("OTA update step failed: %s", exc)
            await asyncio.sleep(interval)


def initial_version(configured: str | None, client: Any) -> str:
    """WEBMACS_CONTROLLER_VERSION, else the version the last completed update installed,
    else this package's version."""
    if configured:
        return configured
    try:
        stored = client.spool.get_meta(VERSION_META)
    except Exception:  # noqa: BLE001
        stored = None
    if stored and is_semver(stored):
        return stored
    from webmacs import __version__

    return __version__


def default_download_dir(spool_path: str) -> str:
    return str(Path(os.path.abspath(spool_path)).parent / "ota")
