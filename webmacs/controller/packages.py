"""Uploaded plugin packages on the controller: download, verify, ``pip install --target``.

At start, ``webmacs controller`` asks the server for its plugin packages
(``GET /api/v1/plugins/packages``). Each uploaded wheel is downloaded once,
checked against the SHA-256 the server recorded, and installed with
``python -m pip install --no-deps --no-index --target DIR`` into its own
directory under ``WEBMACS_PLUGIN_DIR`` (one per package version). Those
directories are put at the front of ``sys.path``, so the package's
``webmacs.plugins`` entry points are discovered like any installed plugin;
the controller's own environment is never modified. A package no longer listed
by the server is removed. When the server cannot be reached, the packages
already installed are used as they are. Dependencies are not installed
(``--no-deps``): a plugin that needs more must have it in the controller's
environment already.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path

log = logging.getLogger("webmacs.controller")

MARKER = ".webmacs-installed"


def _dir_name(pkg: dict) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{pkg['package_name']}-{pkg['version']}")
    return f"{safe}-{pkg['sha256'][:12]}"


def _activate(dirs: list[Path]) -> None:
    for d in dirs:
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))
    importlib.invalidate_caches()


async def _install(client, pkg: dict, root: Path) -> Path:
    dest = root / _dir_name(pkg)
    if (dest / MARKER).exists():
        return dest
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / os.path.basename(pkg["file_name"])
    await client.download(f"/api/v1/plugins/packages/{pkg['public_id']}/download", str(wheel))
    digest = hashlib.sha256()
    with open(wheel, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != pkg["sha256"]:
        wheel.unlink(missing_ok=True)
        raise RuntimeError(f"downloaded {wheel.name} does not match the server's SHA-256")
    staging = root / (dest.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
        "--quiet", "--target", str(staging), str(wheel),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"pip install of {wheel.name} failed: {out.decode(errors='replace').strip()[-500:]}")
    (staging / MARKER).write_text(pkg["sha256"] + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    wheel.unlink(missing_ok=True)
    return dest


async def sync_packages(client, plugin_dir: str) -> list[Path]:
    """Install the server's uploaded packages; return the directories now on sys.path."""
    root = Path(plugin_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    installed = sorted(p for p in root.iterdir() if (p / MARKER).exists())
    try:
        listing = await client.api("GET", "/api/v1/plugins/packages")
    except Exception as exc:  # noqa: BLE001 - keep what is installed
        log.warning("cannot list plugin packages on the server (%s); using the %d installed here",
                    exc, len(installed))
        _activate(installed)
        return installed
    keep: list[Path] = []
    for pkg in listing or []:
        if pkg.get("source") != "uploaded" or not pkg.get("sha256"):
            continue
        try:
            dest = await _install(client, pkg, root)
        except Exception as exc:  # noqa: BLE001 - one bad package must not stop the controller
            log.error("plugin package %s %s not installed: %s", pkg.get("package_name"), pkg.get("version"), exc)
            continue
        log.info("plugin package %s %s installed (plugins: %s)", pkg["package_name"], pkg["version"],
                 ", ".join(pkg.get("plugin_ids") or []))
        keep.append(dest)
    for old in installed:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)
            log.info("plugin package removed: %s (no longer on the server)", old.name)
    _activate(keep)
    return keep
