"""The one base class every REST handler derives from.

- Dependencies (config, database, hub, pipeline, ...) are typed properties read
  from ``self.settings["webmacs"]``, the :class:`webmacs.services.Services` made
  at start.
- :meth:`BaseHandler.commit` runs a write and then announces what it changed
  (``changes`` topics of :mod:`webmacs.cache`), so cached views reload before the
  response goes out.
- ``write_error`` always answers JSON ``{"detail": "..."}``; no traceback ever
  reaches a client (it is logged instead).
- Auth and roles are a decorator on each method: ``@authenticated("operator")``.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import re
from itertools import accumulate, repeat
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import aliased
from tornado.web import HTTPError, RequestHandler, stream_request_body

from webmacs.accounts import AuthError, Principal, authenticate
from webmacs import metrics
from webmacs.jsoncodec import dumps
from webmacs.models import User
from webmacs.ratelimit import retry_after
from webmacs.serving import linger_on_close
from webmacs.validation import Field, Int, ValidationError, validate

if TYPE_CHECKING:  # typing only: webmacs.services never imports the handlers
    from webmacs.broadcast import ConnectionManager
    from webmacs.config import Settings
    from webmacs.db import Database
    from webmacs.ingest import IngestPipeline
    from webmacs.services import Services

log = logging.getLogger("webmacs.api")

ROLE_MESSAGES = {"admin": "Admin access required.", "operator": "Operator access required."}


class ApiError(HTTPError):
    """An error with a client-facing ``detail`` message (and headers to send with it)."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code)
        self.detail = detail
        self.headers = headers or {}


def too_many(detail: str, seconds: float) -> ApiError:
    return ApiError(429, detail, {"Retry-After": retry_after(seconds)})


# ?page= and ?page_size= of every list (page_args; the OpenAPI document reads them too).
PAGE_ARGS = {"page": Int(1, 10_000_000, default=1), "page_size": Int(1, 100, default=25)}

# Request bodies: the default limit of a REST route (login, resources); routes that
# need more (batches, uploads) set ``max_body_bytes`` on their handler class.
DEFAULT_MAX_BODY = 64 * 1024
# JSON nested deeper than this is refused before parsing (the parser recurses).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
# Escapes that decode to text PostgreSQL and UTF-8 cannot hold: NUL and UTF-16 surrogates.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects nest deeper than ``limit`` (no recursion, C-speed scans)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    steps = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS).translate(_BRACKET_STEP)
    return max(accumulate(map(operator.sub, steps, repeat(1))), default=0) > limit


def check_text(value: Any) -> str | None:
    """The path of the first string (or key) holding NUL or a lone surrogate, else None."""
    stack: list[tuple[str, Any]] = [("body", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                sub = k if path == "body" else f"{path}.{k}"
                if _bad_text(k):
                    return sub
                stack.append((sub, v))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, str) and _bad_text(item):
            return path
    return None


def _bad_text(s: str) -> bool:
    if "\x00" in s:
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False



@stream_request_body
class BaseHandler(RequestHandler):
    """Bodies are streamed in (tornado's ``stream_request_body``) so that
    :meth:`prepare` refuses an oversized one (413) from its ``Content-Length``
    before any of it is read; up to ``max_body_bytes`` is buffered for
    :meth:`json_body`. Upload handlers override ``max_body_bytes`` (and may
    override ``data_received`` to stream to disk)."""

    principal: Principal | None = None
    # Topics (webmacs.cache) a successful commit() announces as changed.
    changes: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY
    # Deeper JSON is refused before parsing (a scan about as costly as the parse); None
    # skips the scan where nothing walks the body recursively (too deep for the
    # parser itself is still a 400).
    max_json_depth: int | None = MAX_JSON_DEPTH
    # False for probes (/health); see also RATE_LIMIT_EXEMPT below.
    rate_limited: bool = True
    _body_chunks: list | None = None
    _body_size = 0

    def finish(self, chunk: Any = None) -> Awaitable[None]:
        # answered before its body was read (a 413 mid-upload, a 401 before it): the
        # connection lingers so that a client still sending reads the answer (webmacs.serving)
        if not getattr(self.request.connection, "_read_finished", True):
            linger_on_close(self.request.connection)
        return super().finish(chunk)

    # --- dependencies -----------------------------------------------------
    @property
    def services(self) -> "Services":
        return self.settings["webmacs"]

    @property
    def config(self) -> "Settings":
        return self.services.config

    @property
    def db(self) -> "Database":
        return self.services.db

    @property
    def hub(self) -> "ConnectionManager":
        return self.services.hub

    @property
    def pipeline(self) -> "IngestPipeline":
        return self.services.pipeline

    async def commit(self, fn: Callable[..., Any], *args: Any, changes: tuple[str, ...] | None = None) -> Any:
        """``await db.session(fn, *args)``, then reload the views of ``changes``
        (default: the class's ``changes``) before going on."""
        result = await self.db.session(fn, *args)
        topics = self.changes if changes is None else changes
        if topics:
            await self.services.changes.changed(*topics)
        return result

    # --- responses ----------------------------------------------------------
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def send(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(dumps(obj))

    def success(self, message: str, status: int = 200, resource: dict | list | None = None) -> None:
        """A write's answer: the contract's StatusResponse ``{"status": "success", "message": ...}``,
        with the resource the write made or changed (if any) apart, under ``"data"``.

        Envelope and resource never share a level, so a resource's own ``status``
        (an experiment's ``running``, a plugin's ``connected``, an update's
        ``pending``) is never overwritten. See docs/rest-notes.md.
        """
        body: dict = {"status": "success", "message": message}
        if resource is not None:
            body["data"] = resource
        self.send(body, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        detail = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            detail = exc.detail
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, (OperationalError, DBAPIError)) and not isinstance(exc, HTTPError):
            status_code = 503
            self.set_status(503)
            detail = "Database unavailable, try again later."
        elif status_code == 500:
            detail = "Internal server error."
        if status_code == 401:
            self.set_header("WWW-Authenticate", "Bearer")
        if status_code == 413:
            self.set_header("Connection", "close")  # the rest of the body is not read
        if status_code == 405:  # RFC 9110: a 405 lists what the resource does allow
            self.set_header("Allow", allowed_methods(type(self)))
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps({"detail": detail}))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (OperationalError, DBAPIError)):
            log.error("%s %s: database error: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    # --- requests -----------------------------------------------------------
    def prepare(self) -> None:
        """Before the body is read: NUL in the path, body size, rate limit."""
        if any("\x00" in arg for arg in self.path_args):  # %00: PostgreSQL text cannot hold it
            raise ApiError(404, "Not Found")
        for name, values in self.request.query_arguments.items():
            if any(b"\x00" in v for v in values):
                raise ApiError(400, f"{name}: must not contain NUL characters")
        limit = self.max_body_bytes
        self.request.connection.set_max_body_size(limit)  # chunked bodies too
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                raise ApiError(400, "Content-Length must be an integer.") from None
            if too_big:
                raise ApiError(413, self.body_too_large())
        if self.rate_limited and not self._rate_exempt():
            wait = self.services.guards.check_ip(self.request.remote_ip)
            if wait:
                metrics.RATE_LIMITED.inc()
                raise too_many("Too many requests, slow down.", wait)

    def body_too_large(self) -> str:
        """The 413 detail (upload routes name their own limit)."""
        return f"Request body too large: at most {self.max_body_bytes} bytes for this route."

    def _rate_exempt(self) -> bool:
        path = self.request.path
        return path.startswith("/api/v1/ota/") or (self.request.method == "POST" and path == "/api/v1/datapoints")

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._body_size += len(chunk)
        if self._body_size > self.max_body_bytes:
            self._body_chunks = None
            return
        if self._body_chunks is None:
            self._body_chunks = []
        self._body_chunks.append(chunk)

    @property
    def body(self) -> bytes:
        """The request body (buffered by :meth:`data_received`)."""
        if self._body_size > self.max_body_bytes:
            raise ApiError(413, self.body_too_large())
        if self._body_chunks is None:
            return self.request.body or b""
        if len(self._body_chunks) > 1:
            self._body_chunks = [b"".join(self._body_chunks)]
        return self._body_chunks[0] if self._body_chunks else b""

    def json_body(self) -> Any:
        raw = self.body
        if not raw:
            raise ApiError(400, "Request body must be JSON.")
        depth = self.max_json_depth
        if depth is not None and json_depth_exceeds(raw, depth):
            raise ApiError(400, f"Invalid JSON body: nested deeper than {depth} levels.")
        try:
            value = json.loads(raw)
        except RecursionError:
            raise ApiError(400, "Invalid JSON body: nested too deeply.") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Invalid JSON body: {exc}") from None
        if _SUSPECT_ESCAPE.search(raw):
            where = check_text(value)
            if where is not None:
                raise ApiError(422, f"{where}: must not contain NUL characters or unpaired UTF-16 surrogates")
        return value

    def validated(self, spec: dict[str, Field], *, partial: bool = False) -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        try:
            return validate(body, spec, partial=partial)
        except ValidationError as exc:
            raise ApiError(422, str(exc)) from None

    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(422, f"{name}: must be an integer") from None
        if not lo <= value <= hi:
            raise ApiError(422, f"{name}: must be between {lo} and {hi}")
        return value

    def bool_arg(self, name: str, default: bool) -> bool:
        raw = (self.get_query_argument(name, None) or "").strip().lower()
        if raw == "":
            return default
        if raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
        raise ApiError(422, f"{name}: must be true or false")

    def str_arg(self, name: str, field: Field) -> str | None:
        """A text query parameter checked by a validation field (422 naming it); None when absent or empty."""
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return None
        try:
            return field.clean(name, raw)
        except ValidationError as exc:
            raise ApiError(422, str(exc)) from None

    def page_args(self) -> tuple[int, int]:
        return tuple(self.int_arg(name, f.default, f.lo, f.hi) for name, f in PAGE_ARGS.items())

    def bearer_token(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None


def allowed_methods(handler: type) -> str:
    """``"GET, PUT"``: the methods a handler class implements (its 405's ``Allow`` header)."""
    return ", ".join(m for m in RequestHandler.SUPPORTED_METHODS
                     if getattr(handler, m.lower()) is not getattr(RequestHandler, m.lower()))


def authenticated(role: str = "viewer") -> Callable:
    """Method decorator: resolve the bearer token, then require ``role`` or above."""

    def decorator(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def wrapper(self: BaseHandler, *args: Any, **kwargs: Any) -> Any:
            token = self.bearer_token()
            try:
                self.principal = await self.db.session(authenticate, self.config.secret_key, token)
            except AuthError as exc:
                raise ApiError(401, exc.reason, {"WWW-Authenticate": "Bearer"}) from None
            if not self.principal.has_role(role):
                raise ApiError(403, ROLE_MESSAGES.get(role, "Insufficient permissions."))
            return await method(self, *args, **kwargs)

        return wrapper

    return decorator


def get_or_404(session, model, public_id: str, name: str):
    if "\x00" in public_id:  # from %00 in a path; PostgreSQL text cannot hold it (a 500)
        raise ApiError(404, f"{name} not found.")
    obj = session.execute(select(model).where(model.public_id == public_id)).scalar_one_or_none()
    if obj is None:
        raise ApiError(404, f"{name} not found.")
    return obj


# The user who made a resource, for joins that report its ``user_public_id``.
Owner = aliased(User)


def owner_public_id(session, user_id: int | None) -> str | None:
    return session.execute(select(User.public_id).where(User.id == user_id)).scalar() if user_id else None


def flush_or_409(session, detail: str) -> None:
    """Flush pending changes; a unique constraint they break is a 409 with ``detail``."""
    try:
        session.flush()
    except IntegrityError:
        raise ApiError(409, detail) from None


def paginate(session, stmt, page: int, page_size: int, to_dict: Callable) -> dict[str, Any]:
    """Run ``stmt`` (a select of one entity) as one page, with the total count."""
    total = session.execute(select(func.count()).select_from(stmt.order_by(None).subquery())).scalar_one()
    rows = session.execute(stmt.limit(page_size).offset((page - 1) * page_size)).all()
    return {"page": page, "page_size": page_size, "total": total, "data": [to_dict(*row) for row in rows]}


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise ApiError(404, "Not Found")
