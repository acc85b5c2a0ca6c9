"""Plugin packages: the bundled ones, and admin-uploaded wheels kept for controllers.

``POST /api/v1/plugins/packages/upload`` streams the ``file`` field of a
multipart body to ``WEBMACS_PLUGIN_PACKAGES_DIR`` (bounded by
``WEBMACS_PLUGIN_MAX_UPLOAD_MB``), checks that it is a real wheel declaring at
least one ``webmacs.plugins`` entry point, and records it. The server never
imports an uploaded package: controllers download it
(``GET /api/v1/plugins/packages/{id}/download``) and install it at start. See
docs/plugins.md.
"""

from __future__ import annotations

import asyncio
import configparser
import email.parser
import json
import os
import re
import tempfile
import uuid
import zipfile
from datetime import datetime, timezone
from importlib.metadata import distributions

from sqlalchemy import select
from tornado.web import stream_request_body

from webmacs.handlers.base import ApiError, BaseHandler, authenticated, flush_or_409, get_or_404
from webmacs.models import PluginPackage
from webmacs.timefmt import api as iso
from webmacs.uploads import MultipartError, MultipartFile, boundary_of

_MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file
_MAX_META = 1024 * 1024       # METADATA / entry_points.txt read from the wheel
_WHEEL_NAME = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?)-([A-Za-z0-9_.!+]+)"
                         r"(?:-\d[A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class WheelError(ValueError):
    pass


def inspect_wheel(path: str, file_name: str) -> tuple[str, str, list[str]]:
    """(package name, version, plugin ids) of a wheel, or WheelError saying what is wrong."""
    match = _WHEEL_NAME.match(file_name)
    if not match:
        raise WheelError("not a wheel file name (name-version-python-abi-platform.whl)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise WheelError("not a valid wheel: not a ZIP archive") from None
    with archive:
        names = archive.namelist()
        dist_infos = {n.split("/", 1)[0] for n in names if re.match(r"^[^/]+\.dist-info/", n)}
        if len(dist_infos) != 1:
            raise WheelError("not a valid wheel: needs exactly one .dist-info directory")
        info = dist_infos.pop()

        def read(member: str) -> str:
            path_in = f"{info}/{member}"
            if path_in not in names:
                raise WheelError(f"not a valid wheel: {path_in} is missing")
            entry = archive.getinfo(path_in)
            if entry.file_size > _MAX_META:
                raise WheelError(f"not a valid wheel: {path_in} is too large")
            try:
                return archive.read(path_in).decode("utf-8")
            except (zipfile.BadZipFile, UnicodeDecodeError, OSError):
                raise WheelError(f"not a valid wheel: {path_in} cannot be read") from None

        meta = email.parser.Parser().parsestr(read("METADATA"), headersonly=True)
        name, version = (meta.get("Name") or "").strip(), (meta.get("Version") or "").strip()
        if not name or not version:
            raise WheelError("not a valid wheel: METADATA needs Name and Version")
        if normalise(name) != normalise(match.group(1)) or version.replace("-", "_") != match.group(2):
            raise WheelError("not a valid wheel: METADATA Name/Version do not match the file name")
        if "Wheel-Version" not in read("WHEEL"):
            raise WheelError("not a valid wheel: WHEEL has no Wheel-Version")
        if f"{info}/entry_points.txt" not in names:
            raise WheelError("no [webmacs.plugins] entry point: entry_points.txt is missing")
        parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
        parser.optionxform = str  # entry point names are case-sensitive
        try:
            parser.read_string(read("entry_points.txt"))
        except configparser.Error:
            raise WheelError("not a valid wheel: entry_points.txt cannot be parsed") from None
        if not parser.has_section("webmacs.plugins") or not parser.options("webmacs.plugins"):
            raise WheelError("no [webmacs.plugins] entry point declared in entry_points.txt")
        plugin_ids = parser.options("webmacs.plugins")
        for pid in plugin_ids:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}", pid):
                raise WheelError(f"plugin id {pid!r} in [webmacs.plugins] is not 1-100 letters, digits, - _ .")
        return name, version, plugin_ids


def package_dict(pkg: PluginPackage) -> dict:
    return {
        "public_id": pkg.public_id,
        "package_name": pkg.package_name,
        "version": pkg.version,
        "source": "uploaded",
        "plugin_ids": json.loads(pkg.plugin_ids),
        "file_size_bytes": pkg.file_size_bytes,
        "installed_on": iso(pkg.installed_on),
        "removable": True,
        "file_name": pkg.file_name,
        "sha256": pkg.sha256,
    }


def bundled_packages() -> list[dict]:
    """Installed distributions with ``webmacs.plugins`` entry points (webmacs itself among them)."""
    from webmacs import __version__
    from webmacs.plugins import BUNDLED

    found: dict[str, dict] = {}
    for dist in distributions():
        ids = [ep.name for ep in dist.entry_points if ep.group == "webmacs.plugins"]
        name = dist.metadata.get("Name") or ""
        if not ids or not name or normalise(name) in found:
            continue
        try:
            installed = datetime.fromtimestamp(os.path.getmtime(str(dist.locate_file(""))), timezone.utc)
        except (OSError, TypeError, ValueError):
            installed = None
        found[normalise(name)] = _bundled(name, dist.version, ids, installed)
    if "webmacs" not in found:  # running from a source tree that is not installed
        found["webmacs"] = _bundled("webmacs", __version__, list(BUNDLED), None)
    return sorted(found.values(), key=lambda p: p["package_name"])


def _bundled(name: str, version: str, ids: list[str], installed: datetime | None) -> dict:
    return {"public_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"webmacs-bundled-package:{normalise(name)}")),
            "package_name": name, "version": version, "source": "bundled", "plugin_ids": sorted(ids),
            "file_size_bytes": None, "installed_on": iso(installed), "removable": False}


def uploaded_plugins(session) -> list[dict]:
    """The plugins of uploaded packages, as /plugins/available shows them (their code
    runs on controllers only, so their channels are not known to the server)."""
    out = []
    for pkg in session.execute(select(PluginPackage).order_by(PluginPackage.id)).scalars():
        for pid in json.loads(pkg.plugin_ids):
            out.append({"id": pid, "name": pid, "version": pkg.version, "vendor": "",
                        "description": f"From the uploaded package {pkg.package_name} {pkg.version}.",
                        "url": None, "channels": [], "dynamic_channels": True})
    return out


class PackagesHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        uploaded = await self.db.session(
            lambda s: [package_dict(p) for p in s.execute(select(PluginPackage).order_by(PluginPackage.id)).scalars()])
        bundled = await asyncio.get_running_loop().run_in_executor(None, bundled_packages)
        names = {p["package_name"] for p in uploaded}
        self.send([p for p in bundled if normalise(p["package_name"]) not in names] + uploaded)


@stream_request_body
class PackageUploadHandler(BaseHandler):
    tmp_path: str | None = None
    receiver: MultipartFile | None = None

    @authenticated("admin")
    async def _authorize(self) -> None:
        return None

    @property
    def max_body_bytes(self) -> int:  # the wheel, and the multipart envelope around it
        return self.config.plugin_max_upload_mb * 1024 * 1024 + _MULTIPART_SLACK

    def body_too_large(self) -> str:
        return f"file: larger than the {self.config.plugin_max_upload_mb} MB limit"

    async def prepare(self) -> None:
        super().prepare()  # NUL in the path, Content-Length against max_body_bytes, rate limit
        await self._authorize()
        limit = self.config.plugin_max_upload_mb * 1024 * 1024
        try:
            boundary = boundary_of(self.request.headers.get("Content-Type", ""))
        except MultipartError as exc:
            raise ApiError(400, f"file: {exc} with a .whl in the field 'file'") from None
        folder = self.config.plugin_packages_dir
        loop = asyncio.get_running_loop()
        fh = await loop.run_in_executor(None, _open_temp, folder)
        self.tmp_path = fh.name
        self.receiver = MultipartFile(boundary, "file", fh, limit)

    async def data_received(self, chunk: bytes) -> None:
        if self.receiver is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.receiver.feed, chunk)
            except MultipartError:
                self.receiver.state = "error"

    @authenticated("admin")
    async def post(self) -> None:
        rec = self.receiver
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, rec.sink.close)
        try:
            rec.finish()
        except MultipartError as exc:
            raise ApiError(400, f"file: {exc}") from None
        file_name = os.path.basename((rec.filename or "").replace("\\", "/"))
        if not file_name.lower().endswith(".whl"):
            raise ApiError(400, "file: must be a .whl (Python wheel)")
        if rec.too_large:
            raise ApiError(413, self.body_too_large())
        try:
            name, version, plugin_ids = await loop.run_in_executor(None, inspect_wheel, self.tmp_path, file_name)
        except WheelError as exc:
            raise ApiError(422, f"file: {exc}") from None
        sha256 = rec.sha256.hexdigest()
        final = os.path.join(self.config.plugin_packages_dir, file_name)

        def record(session):
            from webmacs.plugins import available

            clash = [pid for pid in plugin_ids if pid in available()]
            if normalise(name) in {normalise(p["package_name"]) for p in bundled_packages()}:
                raise ApiError(409, f"Package {name!r} is bundled with the server.")
            for pkg in session.execute(select(PluginPackage)).scalars():
                if pkg.package_name == normalise(name):
                    raise ApiError(409, f"Package {name!r} already exists; uninstall it first.")
                if pkg.sha256 == sha256:
                    raise ApiError(409, "This file was already uploaded.")
                clash += [pid for pid in plugin_ids if pid in json.loads(pkg.plugin_ids)]
            if clash:
                raise ApiError(409, f"plugin id {clash[0]!r} is already provided by another package.")
            pkg = PluginPackage(package_name=normalise(name), version=version, plugin_ids=json.dumps(plugin_ids),
                                file_name=file_name, file_size_bytes=rec.size, sha256=sha256,
                                user_id=self.principal.user_id)
            session.add(pkg)
            flush_or_409(session, f"Package {name!r} already exists; uninstall it first.")
            os.replace(self.tmp_path, final)  # before the commit: a failed move rolls the row back
            self.tmp_path = None
            return package_dict(pkg)

        pkg = await self.db.session(record)
        self.success(f"Plugin package '{name}' v{version} installed ({rec.size:,} bytes). "
                     "Restart the controller to activate.", 201, pkg)

    def on_finish(self) -> None:
        self._cleanup()

    def on_connection_close(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        rec, path = self.receiver, self.tmp_path
        self.tmp_path = None
        if rec is not None and not rec.sink.closed:
            rec.sink.close()
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _open_temp(folder: str):
    os.makedirs(folder, exist_ok=True)
    return tempfile.NamedTemporaryFile(dir=folder, prefix=".upload-", suffix=".part", delete=False)


class PackageHandler(BaseHandler):
    @authenticated("admin")
    async def delete(self, public_id: str) -> None:
        if any(p["public_id"] == public_id for p in bundled_packages()):
            raise ApiError(400, "Bundled plugin packages cannot be removed.")

        def remove(session):
            pkg = get_or_404(session, PluginPackage, public_id, "Plugin package")
            session.delete(pkg)
            return pkg.package_name, pkg.version, pkg.file_name

        name, version, file_name = await self.db.session(remove)
        try:
            os.unlink(os.path.join(self.config.plugin_packages_dir, file_name))
        except FileNotFoundError:
            pass
        self.success(f"Plugin package '{name}' v{version} uninstalled. Restart the controller to deactivate.")


class PackageDownloadHandler(BaseHandler):
    """The wheel itself, for controllers (operator or admin)."""

    @authenticated("operator")
    async def get(self, public_id: str) -> None:
        pkg = await self.db.session(lambda s: package_dict(get_or_404(s, PluginPackage, public_id,
                                                                      "Plugin package")))
        path = os.path.join(self.config.plugin_packages_dir, pkg["file_name"])
        loop = asyncio.get_running_loop()
        try:
            fh = await loop.run_in_executor(None, open, path, "rb")
        except FileNotFoundError:
            raise ApiError(404, "Plugin package file not found on the server.") from None
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", f'attachment; filename="{pkg["file_name"]}"')
            self.set_header("X-Checksum-SHA256", pkg["sha256"])
            while True:
                chunk = await loop.run_in_executor(None, fh.read, 256 * 1024)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()
        finally:
            fh.close()
        self.finish()


# Literal /plugins/packages paths: the module comes before the resources module,
# whose /plugins/{id} pattern would otherwise take them.
default_handlers = [
    (r"/api/v1/plugins/packages", PackagesHandler),
    (r"/api/v1/plugins/packages/upload", PackageUploadHandler),
    (r"/api/v1/plugins/packages/([^/]+)/download", PackageDownloadHandler),
    (r"/api/v1/plugins/packages/([^/]+)", PackageHandler),
]
