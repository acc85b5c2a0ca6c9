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
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import aliased
from tornado.web import HTTPError, RequestHandler

from webmacs.accounts import AuthError, Principal, authenticate
from webmacs.jsoncodec import dumps
from webmacs.models import User
from webmacs.validation import Field, ValidationError, validate

if TYPE_CHECKING:  # typing only: webmacs.services never imports the handlers
    from webmacs.broadcast import ConnectionManager
    from webmacs.config import Settings
    from webmacs.db import Database
    from webmacs.ingest import IngestPipeline
    from webmacs.services import Services

log = logging.getLogger("webmacs.api")

ROLE_MESSAGES = {"admin": "Admin access required.", "operator": "Operator access required."}


class ApiError(HTTPError):
    """An error with a client-facing ``detail`` message."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(status_code)
        self.detail = detail


class BaseHandler(RequestHandler):
    principal: Principal | None = None
    # Topics (webmacs.cache) a successful commit() announces as changed.
    changes: tuple[str, ...] = ()

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
        elif isinstance(exc, (OperationalError, DBAPIError)) and not isinstance(exc, HTTPError):
            status_code = 503
            self.set_status(503)
            detail = "Database unavailable, try again later."
        elif status_code == 500:
            detail = "Internal server error."
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps({"detail": detail}))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (OperationalError, DBAPIError)):
            log.error("%s %s: database error: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    # --- requests -----------------------------------------------------------
    def json_body(self) -> Any:
        if not self.request.body:
            raise ApiError(400, "Request body must be JSON.")
        try:
            return json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Invalid JSON body: {exc}") from None

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

    def page_args(self) -> tuple[int, int]:
        return self.int_arg("page", 1, 1, 10_000_000), self.int_arg("page_size", 25, 1, 100)

    def bearer_token(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None


def authenticated(role: str = "viewer") -> Callable:
    """Method decorator: resolve the bearer token, then require ``role`` or above."""

    def decorator(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def wrapper(self: BaseHandler, *args: Any, **kwargs: Any) -> Any:
            token = self.bearer_token()
            try:
                self.principal = await self.db.session(authenticate, self.config.secret_key, token)
            except AuthError as exc:
                self.set_header("WWW-Authenticate", "Bearer")
                raise ApiError(401, exc.reason) from None
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


def paginate(session, stmt, page: int, page_size: int, to_dict: Callable) -> dict[str, Any]:
    """Run ``stmt`` (a select of one entity) as one page, with the total count."""
    total = session.execute(select(func.count()).select_from(stmt.order_by(None).subquery())).scalar_one()
    rows = session.execute(stmt.limit(page_size).offset((page - 1) * page_size)).all()
    return {"page": page, "page_size": page_size, "total": total, "data": [to_dict(*row) for row in rows]}


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise ApiError(404, "Not Found")
