"""OTA firmware updates (REST contract §OTA Updates; docs/ota.md).

Admin only, every method. A record has a semantic ``version``, an optional
changelog and an optional firmware file. The file is uploaded to
``POST /api/v1/ota/{id}/firmware`` (raw ``application/octet-stream`` body or
``multipart/form-data`` field ``file``), streamed to ``WEBMACS_OTA_STORAGE_DIR``
chunk by chunk while its SHA-256 is computed (never held whole in memory),
bounded by ``WEBMACS_OTA_MAX_FILE_MB`` (413 beyond). Controllers download it from
``GET /api/v1/ota/{id}/firmware``. Update bundles (``.tar.gz``) for the device's
updater go to ``POST /api/v1/ota/upload`` (WebMACS's route; same folder).

Statuses, as in WebMACS::

    pending --apply--> completed --rollback--> rolled_back       (the file, if any, verified first)
    pending --apply--> failed                                    (its SHA-256 no longer matches)
    pending --deploy--> downloading -> verifying -> applying -> completed
                        downloading / verifying / applying -> failed

``apply`` is the contract's bookkeeping step; ``deploy`` (ours) hands the update to
the controller, which reports the steps in between with ``PUT /api/v1/ota/{id}/status``.
Any other move is a 409.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from pathlib import Path

from sqlalchemy import select
from tornado.ioloop import IOLoop
from tornado.web import stream_request_body

import webmacs
from webmacs.accounts import AuthError, authenticate
from webmacs.handlers.base import (DEFAULT_MAX_BODY, ApiError, BaseHandler, Owner, ROLE_MESSAGES, authenticated, flush_or_409,
                                   get_or_404, owner_public_id, paginate)
from webmacs.jsoncodec import dumps
from webmacs.models import UPDATE_STATUSES, FirmwareUpdate, utcnow
from webmacs.timefmt import api as iso
from webmacs.semver import SEMVER, is_semver, semver_key
from webmacs.uploads import MultipartError, boundary_of
from webmacs.uploads import MultipartFile as FormFile
from webmacs.validation import Field, Str, ValidationError

log = logging.getLogger("webmacs.ota")

ACTIVE = ("downloading", "verifying", "applying")
# statuses that count for "the newest update" in /ota/check
CANDIDATES = ("pending", *ACTIVE, "completed")
# what a controller may report, from each status
PROGRESS = {
    "downloading": ("verifying", "failed"),
    "verifying": ("applying", "failed"),
    "applying": ("completed", "failed"),
}
CHUNK = 256 * 1024
MULTIPART_SLACK = 64 * 1024  # part headers and boundaries around the file in a multipart body
REPORTED_KEY = "webmacs_ota_reported_version"


class SemVer(Field):
    MAX_LEN = 64  # the version column

    def clean(self, name, value):
        if not is_semver(value):
            raise ValidationError(name, "must be a semantic version X.Y.Z (e.g. 2.1.0)")
        if len(value) > self.MAX_LEN:  # on PostgreSQL a longer one failed the insert (a 503)
            raise ValidationError(name, f"must be at most {self.MAX_LEN} characters")
        return value

    def schema(self):
        return {"type": "string", "pattern": SEMVER.pattern, "maxLength": self.MAX_LEN}


CURRENT_VERSION = SemVer(description="The version the controller runs.")  # ?current_version= of /ota/check
CREATE_SPEC = {"version": SemVer(required=True, example="2.1.0"), "changelog": Str(0, 100_000, nullable=True, strip=False)}
STATUS_SPEC = {"status": Str(choices=UPDATE_STATUSES, required=True),
               "error_message": Str(0, 10_000, nullable=True)}


def update_dict(fw: FirmwareUpdate, user_public_id: str | None) -> dict:
    return {
        "public_id": fw.public_id,
        "version": fw.version,
        "changelog": fw.changelog,
        "file_hash_sha256": fw.file_hash_sha256,
        "file_size_bytes": fw.file_size_bytes,
        "has_firmware_file": fw.file_name is not None,
        "download_url": f"/api/v1/ota/{fw.public_id}/firmware" if fw.file_name else None,
        "status": fw.status,
        "error_message": fw.error_message,
        "created_on": iso(fw.created_on),
        "started_on": iso(fw.started_on),
        "completed_on": iso(fw.completed_on),
        "user_public_id": user_public_id,
    }


def _dict(session, fw: FirmwareUpdate) -> dict:
    return update_dict(fw, owner_public_id(session, fw.user_id))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _loosen_chunked_cap(handler: BaseHandler) -> None:
    """A chunked upload is counted by the handler, which answers 413 past its limit;
    tornado's own cap on the connection (which would just close it, mid-chunk) stays
    as a backstop well above that."""
    handler.request.connection.set_max_body_size(2 * handler.max_body_bytes)


class _OtaBase(BaseHandler):
    @property
    def storage(self) -> Path:
        return Path(self.config.ota_storage_dir)

    @property
    def max_bytes(self) -> int:
        return self.config.ota_max_file_mb * 1024 * 1024

    def transition(self, public_id: str, allowed: dict[str, str], action: str):
        def change(session):
            fw = get_or_404(session, FirmwareUpdate, public_id, "Firmware update")
            target = allowed.get(fw.status)
            if target is None:
                raise ApiError(409, f"Cannot {action} an update whose status is '{fw.status}'.")
            return fw, target

        return change


class UpdatesHandler(_OtaBase):
    # the changelog may hold its full length even as \uXXXX escapes (6 bytes a character)
    max_body_bytes = 6 * CREATE_SPEC["changelog"].max_len + DEFAULT_MAX_BODY

    @authenticated("admin")
    async def get(self) -> None:
        page, size = self.page_args()
        stmt = (select(FirmwareUpdate, Owner.public_id).outerjoin(Owner, Owner.id == FirmwareUpdate.user_id)
                .order_by(FirmwareUpdate.id.desc()))
        self.send(await self.db.session(paginate, stmt, page, size, update_dict))

    @authenticated("admin")
    async def post(self) -> None:
        body = self.validated(CREATE_SPEC)

        def create(session):
            fw = FirmwareUpdate(version=body["version"], changelog=body.get("changelog"),
                                user_id=self.principal.user_id)
            session.add(fw)
            flush_or_409(session, f"Firmware update {body['version']} already exists.")
            return update_dict(fw, self.principal.public_id)

        self.success("Firmware update successfully registered.", 201, await self.db.session(create))


class UpdateHandler(_OtaBase):
    @authenticated("admin")
    async def get(self, public_id: str) -> None:
        self.send(await self.db.session(
            lambda s: _dict(s, get_or_404(s, FirmwareUpdate, public_id, "Firmware update"))))

    @authenticated("admin")
    async def delete(self, public_id: str) -> None:
        def remove(session):
            fw = get_or_404(session, FirmwareUpdate, public_id, "Firmware update")
            if fw.status in ACTIVE:
                raise ApiError(409, f"Cannot delete an update while it is '{fw.status}'.")
            session.delete(fw)
            return fw.file_name

        file_name = await self.db.session(remove)
        if file_name:
            await IOLoop.current().run_in_executor(None, _remove, self.storage / file_name)
        self.success("Firmware update successfully deleted.")


def _verify(path: Path, sha256: str | None, size: int | None) -> str | None:
    """Why the stored file no longer is what was uploaded, or None (runs on a thread)."""
    digest, seen = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                seen += len(chunk)
    except FileNotFoundError:
        return "The firmware file is missing from the OTA storage."
    if digest.hexdigest() != sha256 or (size is not None and seen != size):
        return "SHA-256 hash verification failed"
    return None


class _StartBase(_OtaBase):
    """apply / deploy: a ``pending`` update, its stored file (if any) verified first."""

    action = ""  # the verb of the 409 for another status
    started = ""  # the message when the update moved on

    def allowed(self, session, fw: FirmwareUpdate) -> None:
        """More conditions on the pending update (an ApiError when not met)."""

    def change(self, fw: FirmwareUpdate, now) -> None:
        """The update's move once its file (if any) is verified."""
        raise NotImplementedError

    def _pending(self, session, public_id: str) -> FirmwareUpdate:
        fw, _ = self.transition(public_id, {"pending": "pending"}, self.action)(session)
        return fw

    async def start(self, public_id: str) -> None:
        """Check, verify the file on a thread, then move the record (still ``pending``, else 409)
        and answer."""
        def load(session):
            fw = self._pending(session, public_id)
            self.allowed(session, fw)
            return fw.file_name, fw.file_hash_sha256, fw.file_size_bytes

        file_name, sha256, size = await self.db.session(load)
        failure = None
        if file_name is not None:
            failure = await IOLoop.current().run_in_executor(None, _verify, self.storage / file_name, sha256, size)

        def record(session):
            fw = self._pending(session, public_id)
            now = utcnow()
            if failure is not None:
                fw.status, fw.error_message = "failed", failure
                fw.started_on, fw.completed_on = fw.started_on or now, now
            else:
                self.change(fw, now)
            session.flush()
            return _dict(session, fw)

        update = await self.db.session(record)
        self.success(self.started if failure is None else f"Firmware update failed: {failure}.", resource=update)


class ApplyHandler(_StartBase):
    """The contract's apply: a ``pending`` update is marked ``completed`` (with a
    firmware file: once its SHA-256 is verified, else ``failed``)."""

    action = "apply"
    started = "Firmware update applied successfully."

    @authenticated("admin")
    async def post(self, public_id: str) -> None:
        body = self.json_body() if self.body.strip() else {}
        if isinstance(body, dict) and body.get("download_url") is not None:
            raise ApiError(422, "download_url: the server does not fetch firmware from URLs; upload the file "
                                "to POST /api/v1/ota/{id}/firmware")
        await self.start(public_id)

    def change(self, fw: FirmwareUpdate, now) -> None:
        fw.status, fw.error_message = "completed", None
        fw.started_on, fw.completed_on = fw.started_on or now, now


class DeployHandler(_StartBase):
    """Ours: hand a ``pending`` update with a firmware file to the controller
    (``downloading``); one update in progress at a time."""

    action = "deploy"
    started = "Firmware update started; the controller downloads and applies it."

    @authenticated("admin")
    async def post(self, public_id: str) -> None:
        await self.start(public_id)

    def allowed(self, session, fw: FirmwareUpdate) -> None:
        if fw.file_name is None:
            raise ApiError(409, "Upload a firmware file before deploying this update.")
        busy = session.execute(select(FirmwareUpdate.version).where(
            FirmwareUpdate.status.in_(ACTIVE), FirmwareUpdate.id != fw.id)).scalar()
        if busy is not None:
            raise ApiError(409, f"Update {busy} is still being applied.")

    def change(self, fw: FirmwareUpdate, now) -> None:
        fw.status, fw.started_on, fw.completed_on, fw.error_message = "downloading", now, None, None


class RollbackHandler(_OtaBase):
    @authenticated("admin")
    async def post(self, public_id: str) -> None:
        def rollback(session):
            fw, target = self.transition(public_id, {"completed": "rolled_back"}, "roll back")(session)
            fw.status = target
            session.flush()
            return _dict(session, fw)

        self.success("Firmware update rolled back.", resource=await self.db.session(rollback))


class StatusHandler(_OtaBase):
    """The controller's progress report (not in the contract's table; see docs/ota.md)."""

    @authenticated("admin")
    async def put(self, public_id: str) -> None:
        body = self.validated(STATUS_SPEC)

        def report(session):
            fw = get_or_404(session, FirmwareUpdate, public_id, "Firmware update")
            if body["status"] not in PROGRESS.get(fw.status, ()):
                raise ApiError(409, f"Cannot move an update from '{fw.status}' to '{body['status']}'.")
            fw.status = body["status"]
            if fw.status == "failed":
                fw.error_message = body.get("error_message") or "Update failed."
            if fw.status in ("completed", "failed"):
                fw.completed_on = utcnow()
            session.flush()
            return _dict(session, fw)

        self.success(f"Update status set to '{body['status']}'.", resource=await self.db.session(report))


class CheckHandler(_OtaBase):
    """``?current_version=X.Y.Z`` is the version a controller reports it runs; the last
    reported one is remembered (until restart) for calls without it."""

    @authenticated("admin")
    async def get(self) -> None:
        reported = self.get_query_argument("current_version", None)
        if reported is not None:
            try:
                CURRENT_VERSION.clean("current_version", reported)
            except ValidationError as exc:
                raise ApiError(422, str(exc)) from None
            self.settings[REPORTED_KEY] = reported
        current = reported or self.settings.get(REPORTED_KEY) or webmacs.__version__

        def load(session):
            rows = session.execute(select(FirmwareUpdate).where(FirmwareUpdate.status.in_(CANDIDATES))).scalars()
            return [_dict(session, fw) for fw in rows]

        candidates = await self.db.session(load)
        latest = max(candidates, key=lambda u: semver_key(u["version"]), default=None)
        active = [u for u in candidates if u["status"] in ACTIVE]
        self.send({
            "current_version": current,
            "latest_version": latest["version"] if latest else None,
            "update_available": bool(latest) and semver_key(latest["version"]) > semver_key(current),
            "github_latest_version": None,
            "github_download_url": None,
            "github_release_url": None,
            "github_error": None,
            "active_update": active[0] if active else None,
        })


class MultipartFile:
    """Incremental ``multipart/form-data`` reader that yields the bytes of one file
    field as they arrive, keeping only a boundary's length of look-behind."""

    def __init__(self, boundary: bytes, field: str = "file") -> None:
        self.delimiter = b"--" + boundary
        self.field = field
        self.buf = b""
        self.state = "preamble"
        self.found = False

    @property
    def complete(self) -> bool:
        return self.found and self.state == "done"

    def feed(self, chunk: bytes) -> bytes:
        self.buf += chunk
        out: list[bytes] = []
        while True:
            if self.state == "preamble":
                i = self.buf.find(self.delimiter)
                if i < 0:
                    self.buf = self.buf[-len(self.delimiter):]
                    break
                self.buf = self.buf[i + len(self.delimiter):]
                self.state = "boundary"
            elif self.state == "boundary":
                if len(self.buf) < 2:
                    break
                if self.buf.startswith(b"--"):
                    self.state, self.buf = "done", b""
                    break
                self.state = "headers"
            elif self.state == "headers":
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(self.buf) > 16 * 1024:
                        raise ValueError("multipart part headers are too long")
                    break
                headers = self.buf[:i].decode("latin-1").lower()
                self.buf = self.buf[i + 4:]
                wanted = not self.found and re.search(rf'name="?{re.escape(self.field)}"?(;|\s|$)', headers)
                self.found = self.found or bool(wanted)
                self.state = "data" if wanted else "skip"
            elif self.state in ("data", "skip"):
                end = b"\r\n" + self.delimiter
                i = self.buf.find(end)
                if i < 0:
                    keep = len(end) - 1
                    if len(self.buf) > keep:
                        if self.state == "data":
                            out.append(self.buf[:-keep])
                        self.buf = self.buf[-keep:]
                    break
                if self.state == "data":
                    out.append(self.buf[:i])
                self.buf = self.buf[i + len(end):]
                self.state = "boundary"
            else:  # done: ignore the epilogue
                self.buf = b""
                break
        return b"".join(out)


@stream_request_body
class FirmwareHandler(_OtaBase):
    """POST: upload (streamed to disk, hashed on the way). GET: download."""

    _file = None
    _tmp: Path | None = None
    _multipart: MultipartFile | None = None

    @property
    def max_body_bytes(self) -> int:  # the file, and a multipart envelope around it
        return self.max_bytes + MULTIPART_SLACK

    def body_too_large(self) -> str:
        return self._too_large_detail()

    async def prepare(self) -> None:
        super().prepare()  # NUL in the path, Content-Length against max_body_bytes, rate limit
        if self.request.method != "POST":
            return
        _loosen_chunked_cap(self)
        # The body streams in before post() runs: check who asks and what is acceptable first.
        try:
            self.principal = await self.db.session(authenticate, self.config.secret_key, self.bearer_token())
        except AuthError as exc:
            self.set_header("WWW-Authenticate", "Bearer")
            raise ApiError(401, exc.reason) from None
        if not self.principal.has_role("admin"):
            raise ApiError(403, ROLE_MESSAGES["admin"])
        ctype = self.request.headers.get("Content-Type", "application/octet-stream")
        if ctype.lower().startswith("multipart/form-data"):
            m = re.search(r'boundary="?([^";]+)"?', ctype)
            if not m:
                raise ApiError(400, "multipart/form-data without a boundary.")
            self._multipart = MultipartFile(m.group(1).encode("latin-1"))
        elif not ctype.lower().startswith("application/octet-stream"):
            raise ApiError(415, "Send the firmware as application/octet-stream, or multipart/form-data "
                                "with the field 'file'.")
        public_id = self.path_args[0]

        await self.db.session(self._pending, public_id)
        self._hash = hashlib.sha256()
        self._size = 0
        self._tmp = self.storage / f".upload-{uuid.uuid4().hex}"
        self._file = await IOLoop.current().run_in_executor(None, self._open, self._tmp)

    @staticmethod
    def _pending(session, public_id: str) -> FirmwareUpdate:
        fw = get_or_404(session, FirmwareUpdate, public_id, "Firmware update")
        if fw.status != "pending":
            raise ApiError(409, f"Cannot replace the firmware of an update whose status is '{fw.status}'.")
        return fw

    @staticmethod
    def _open(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "wb")

    def _write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)

    async def data_received(self, chunk: bytes) -> None:
        if self._file is None:
            return
        if self._multipart is not None:
            try:
                chunk = self._multipart.feed(chunk)
            except ValueError:
                chunk = b""
        self._size += len(chunk)
        if self._size > self.max_bytes:
            # answer now: tornado stops handing us the rest and closes the connection after the reply
            await self._discard()
            self.set_status(413)
            self.finish(dumps({"detail": self._too_large_detail()}))
            return
        if chunk:
            await IOLoop.current().run_in_executor(None, self._write, chunk)

    async def _discard(self) -> None:
        f, tmp = self._file, self._tmp
        self._file = self._tmp = None
        if f is not None:
            await IOLoop.current().run_in_executor(None, f.close)
        if tmp is not None:
            await IOLoop.current().run_in_executor(None, _remove, tmp)

    @staticmethod
    def _finish_file(f, tmp: Path, final: Path) -> None:
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)

    def _too_large_detail(self) -> str:
        return f"Firmware file exceeds the {self.config.ota_max_file_mb} MB limit."

    @authenticated("admin")
    async def post(self, public_id: str) -> None:
        if self._finished:  # already answered 413 while the body streamed in
            return
        if self._multipart is not None and not self._multipart.complete:
            await self._discard()
            raise ApiError(422, "file: the multipart body has no complete 'file' field")
        if self._size == 0:
            await self._discard()
            raise ApiError(422, "file: the firmware file is empty")
        file_name = f"{public_id}.bin"
        try:  # again: an admin may have applied it while the body streamed in
            await self.db.session(self._pending, public_id)
        except ApiError:
            await self._discard()
            raise
        f, tmp = self._file, self._tmp
        self._file = self._tmp = None
        await IOLoop.current().run_in_executor(None, self._finish_file, f, tmp, self.storage / file_name)
        digest, size = self._hash.hexdigest(), self._size

        def record(session):
            fw = self._pending(session, public_id)
            fw.file_name, fw.file_hash_sha256, fw.file_size_bytes = file_name, digest, size
            session.flush()
            return _dict(session, fw)

        self.success(f"Firmware file uploaded ({size:,} bytes).", 201, await self.db.session(record))

    @authenticated("admin")
    async def get(self, public_id: str) -> None:
        fw = await self.db.session(lambda s: _dict(s, get_or_404(s, FirmwareUpdate, public_id, "Firmware update")))
        if not fw["has_firmware_file"]:
            raise ApiError(404, "This update has no firmware file.")
        loop = IOLoop.current()
        try:
            f = await loop.run_in_executor(None, open, self.storage / f"{public_id}.bin", "rb")
        except FileNotFoundError:
            raise ApiError(404, "The firmware file is missing from the OTA storage.") from None
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", f'attachment; filename="firmware-{fw["version"]}.bin"')
            self.set_header("Content-Length", str(fw["file_size_bytes"]))
            self.set_header("X-Firmware-SHA256", fw["file_hash_sha256"])
            while True:
                chunk = await loop.run_in_executor(None, f.read, CHUNK)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()
        finally:
            await loop.run_in_executor(None, f.close)
        self.finish()

    def on_finish(self) -> None:
        if self._file is not None:  # a failed upload: drop the partial file
            f, tmp = self._file, self._tmp
            self._file = self._tmp = None
            IOLoop.current().run_in_executor(None, self._drop, f, tmp)

    on_connection_close = on_finish

    @staticmethod
    def _drop(f, tmp: Path | None) -> None:
        f.close()
        if tmp is not None:
            _remove(tmp)


BUNDLE_SUFFIX = ".tar.gz"
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")


def bundle_name(raw: str | None) -> str:
    """The file name an update bundle is stored under, or a 400 (WebMACS's wording)."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not name.endswith(BUNDLE_SUFFIX) or len(name) == len(BUNDLE_SUFFIX):
        raise ApiError(400, "File must be a .tar.gz update bundle.")
    if not BUNDLE_NAME.fullmatch(name):
        raise ApiError(400, "File name of the bundle may hold only letters, digits and . _ + - "
                            "(at most 200 characters), and must start with a letter or digit.")
    return name


def _open_bundle_temp(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / f".upload-{uuid.uuid4().hex}.part", "xb")


def _place_bundle(fh, final: Path) -> bool:
    """fsync the upload and link it under its name; False when that name exists."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    try:
        os.link(fh.name, final)  # never replaces: a bundle of that name stays as it was
    except FileExistsError:
        return False
    finally:
        _remove(Path(fh.name))
    return True


@stream_request_body
class BundleUploadHandler(_OtaBase):
    """``POST /api/v1/ota/upload``: a ``.tar.gz`` update bundle, multipart field
    ``file``, streamed to ``WEBMACS_OTA_STORAGE_DIR`` under its own name.

    400 for another extension, 409 when a bundle of that name is there, 413 past
    ``WEBMACS_OTA_MAX_BUNDLE_MB`` (``Content-Length`` checked before reading,
    chunked bodies while streaming). The name and the conflict are checked as soon
    as the part's headers arrive, so a refused upload is not read to its end. The
    bytes go to a temporary file that is linked under the bundle's name only when
    complete: an interrupted or refused upload leaves nothing behind.
    """

    receiver: FormFile | None = None
    _sink = None
    _checked = False

    @property
    def bundle_limit(self) -> int:
        return self.config.ota_max_bundle_mb * 1024 * 1024

    @property
    def max_body_bytes(self) -> int:  # the bundle, and the multipart envelope around it
        return self.bundle_limit + MULTIPART_SLACK

    def body_too_large(self) -> str:
        return f"Bundle exceeds maximum allowed size ({self.config.ota_max_bundle_mb} MB)."

    @authenticated("admin")
    async def _authorize(self) -> None:
        return None

    async def prepare(self) -> None:
        super().prepare()  # NUL in the path, Content-Length against max_body_bytes, rate limit
        if self.request.method != "POST":
            return  # 405, the body unread
        _loosen_chunked_cap(self)
        await self._authorize()
        try:
            boundary = boundary_of(self.request.headers.get("Content-Type", ""))
        except MultipartError as exc:
            raise ApiError(422, f"file: {exc} with the bundle in the field 'file'") from None
        self._sink = await IOLoop.current().run_in_executor(None, _open_bundle_temp, self.storage)
        self.receiver = FormFile(boundary, "file", self._sink, self.bundle_limit)

    async def data_received(self, chunk: bytes) -> None:
        rec = self.receiver
        if rec is None or self._finished:
            return
        try:
            await IOLoop.current().run_in_executor(None, rec.feed, chunk)
        except MultipartError:
            rec.state = "error"
            return
        try:
            if rec.found and not self._checked:  # the part's headers are in: refuse early
                self._checked = True
                name = bundle_name(rec.filename)
                if await IOLoop.current().run_in_executor(None, (self.storage / name).exists):
                    raise ApiError(409, f"Bundle '{name}' already exists.")
            if rec.too_large:
                raise ApiError(413, self.body_too_large())
        except ApiError as exc:
            # answer now: tornado stops handing us the rest and closes the connection after the reply
            self._cleanup()
            self.set_status(exc.status_code)
            self.finish(dumps({"detail": exc.detail}))

    @authenticated("admin")
    async def post(self) -> None:
        if self._finished:  # refused while the body streamed in
            return
        rec = self.receiver
        try:
            rec.finish()
        except MultipartError as exc:
            raise ApiError(422, f"file: {exc}") from None
        name = bundle_name(rec.filename)
        if rec.too_large:
            raise ApiError(413, self.body_too_large())
        sink, self._sink = self._sink, None
        placed = await IOLoop.current().run_in_executor(None, _place_bundle, sink, self.storage / name)
        if not placed:
            raise ApiError(409, f"Bundle '{name}' already exists.")
        log.info("OTA bundle %s uploaded (%d bytes)", name, rec.size)
        self.success(f"Bundle '{name}' uploaded ({rec.size:,} bytes).", 201)

    def on_finish(self) -> None:
        self._cleanup()

    on_connection_close = on_finish

    def _cleanup(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            IOLoop.current().run_in_executor(None, FirmwareHandler._drop, sink, Path(sink.name))


default_handlers = [
    (r"/api/v1/ota", UpdatesHandler),
    (r"/api/v1/ota/check", CheckHandler),
    (r"/api/v1/ota/upload", BundleUploadHandler),
    (r"/api/v1/ota/([^/]+)/apply", ApplyHandler),
    (r"/api/v1/ota/([^/]+)/deploy", DeployHandler),
    (r"/api/v1/ota/([^/]+)/rollback", RollbackHandler),
    (r"/api/v1/ota/([^/]+)/status", StatusHandler),
    (r"/api/v1/ota/([^/]+)/firmware", FirmwareHandler),
    (r"/api/v1/ota/([^/]+)", UpdateHandler),
]
