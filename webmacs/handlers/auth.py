"""Accounts: login/logout/me, users (admin), API tokens, and /health."""

from __future__ import annotations

import time

from sqlalchemy import select, update

from webmacs import __version__, metrics
from webmacs.accounts import TOKEN_REVOKED, USER_NOT_FOUND, end_sessions, revoke
from webmacs.handlers.base import (ApiError, BaseHandler, authenticated, flush_or_409, get_or_404, paginate,
                                   too_many)
from webmacs.models import ROLES, ApiToken, User, utcnow
from webmacs.security import HashBusy, create_jwt, needs_rehash, new_api_token
from webmacs.timefmt import api as iso
from webmacs.validation import Bool, DateTimeField, Email, Str

NO_PASSWORD = ("This account signs in with single sign-on and has no password: use the single sign-on "
               "button, or ask an administrator to set a password.")
LOGIN_SPEC = {"email": Email(required=True), "password": Str(1, 1024, strip=False, required=True)}
USER_SPEC = {
    "email": Email(required=True),
    "username": Str(2, 50, required=True),
    "password": Str(8, 1024, strip=False, required=True),
    "role": Str(choices=ROLES, default="viewer"),
    "admin": Bool(),
}
TOKEN_SPEC = {"name": Str(1, 255, required=True), "expires_at": DateTimeField(nullable=True)}


def user_dict(user: User) -> dict:
    return {
        "public_id": user.public_id,
        "email": user.email,
        "username": user.username,
        "role": user.role,
        "admin": user.role == "admin",
        "sso_provider": user.sso_provider,
        "created_on": iso(user.created_on),
        "registered_on": iso(user.created_on),
    }


def token_dict(token: ApiToken, user_public_id: str) -> dict:
    return {
        "public_id": token.public_id,
        "name": token.name,
        "last_used_at": iso(token.last_used_at),
        "expires_at": iso(token.expires_at),
        "created_at": iso(token.created_at),
        "user_public_id": user_public_id,
    }


class LoginHandler(BaseHandler):
    """Load the user in one short session, verify the password on the hash pool (no
    database connection held meanwhile), then issue the token. Failed logins are
    limited per account (any address); requests per address by BaseHandler."""

    async def post(self) -> None:
        body = self.validated(LOGIN_SPEC)
        guards = self.services.guards
        email = body["email"]
        wait = guards.logins.blocked_for(email)
        if wait:
            metrics.LOGIN_RATE_LIMITED.inc()
            raise too_many("Too many failed logins for this account, try again later.", wait)

        def load(session):
            row = session.execute(select(User.public_id, User.username, User.password_hash)
                                  .where(User.email == email)).first()
            return tuple(row) if row is not None else None

        user = await self.db.session(load)
        try:
            ok = await guards.hasher.verify(user[2] if user else None, body["password"])
        except HashBusy:
            raise ApiError(503, "Too many logins in progress, retry.", {"Retry-After": "1"}) from None
        if not ok:
            metrics.LOGIN_FAILURES.inc()
            if user is not None and user[2] is None:  # created by single sign-on: no password to check
                raise ApiError(401, NO_PASSWORD)
            guards.logins.failed(email)
            raise ApiError(401, "Invalid email or password.")
        guards.logins.succeeded(email)
        public_id, username, old_hash = user
        if needs_rehash(old_hash):  # made with older parameters: store a current hash
            new_hash = await _hash(self, body["password"])
            await self.db.session(lambda s: s.execute(
                update(User).where(User.public_id == public_id, User.password_hash == old_hash)
                .values(password_hash=new_hash)))
        token, _claims = create_jwt(self.config.secret_key, public_id, self.config.token_ttl_minutes)
        self.send({
            "status": "success",
            "message": "Successfully logged in.",
            "access_token": token,
            "token_type": "bearer",
            "public_id": public_id,
            "username": username,
        })


async def _hash(handler: BaseHandler, password: str) -> str:
    try:
        return await handler.services.guards.hasher.hash(password)
    except HashBusy:
        raise ApiError(503, "Server busy hashing passwords, retry.", {"Retry-After": "1"}) from None


class LogoutHandler(BaseHandler):
    @authenticated()
    async def post(self) -> None:
        p = self.principal
        if p.jti is None:  # an API token: logging out would not end it, so say how to
            raise ApiError(400, "API tokens are not ended by logging out: delete the token with "
                                "DELETE /api/v1/tokens/{public_id}.")
        await self.db.session(revoke, p.jti, p.expires_at)
        self.services.revoke("jti", p.jti, TOKEN_REVOKED)
        self.success("Successfully logged out.")


class MeHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        user = await self.db.session(lambda s: s.get(User, self.principal.user_id))
        self.send(user_dict(user))


def _role_from(body: dict) -> str | None:
    if "role" in body:
        return body["role"]
    if "admin" in body:
        return "admin" if body["admin"] else "viewer"
    return None


class UsersHandler(BaseHandler):
    @authenticated("admin")
    async def get(self) -> None:
        page, size = self.page_args()
        stmt = select(User).order_by(User.id)
        self.send(await self.db.session(paginate, stmt, page, size, user_dict))

    @authenticated("admin")
    async def post(self) -> None:
        body = self.validated(USER_SPEC)
        password_hash = await _hash(self, body["password"])

        def create(session):
            user = User(email=body["email"], username=body["username"], password_hash=password_hash,
                        role=_role_from(body) or "viewer")
            session.add(user)
            flush_or_409(session, "A user with this email or username already exists.")
            return user_dict(user)

        self.success("User successfully created.", 201, await self.db.session(create))


class UserHandler(BaseHandler):
    @authenticated("admin")
    async def get(self, public_id: str) -> None:
        self.send(await self.db.session(lambda s: user_dict(get_or_404(s, User, public_id, "User"))))

    @authenticated("admin")
    async def put(self, public_id: str) -> None:
        body = self.validated(USER_SPEC, partial=True)
        password_hash = await _hash(self, body["password"]) if "password" in body else None

        def update(session):
            user = get_or_404(session, User, public_id, "User")
            for key in ("email", "username"):
                if key in body:
                    setattr(user, key, body[key])
            role = _role_from(body)
            role_changed = role is not None and role != user.role
            if role_changed:
                if user.id == self.principal.user_id and role != "admin":
                    raise ApiError(400, "You cannot remove your own admin role.")
                user.role = role
            if password_hash:
                user.password_hash = password_hash
            if role_changed or password_hash:
                end_sessions(user)
            flush_or_409(session, "A user with this email or username already exists.")
            return user_dict(user), user.id, role_changed

        resource, user_id, role_changed = await self.db.session(update)
        if role_changed:  # every socket of the user holds the old role, API-token ones too
            self.services.revoke("user", user_id, TOKEN_REVOKED)
        elif password_hash:  # the login tokens are ended; API tokens stay valid
            self.services.revoke("user_logins", user_id, TOKEN_REVOKED)
        self.success("User successfully updated.", resource=resource)

    @authenticated("admin")
    async def delete(self, public_id: str) -> None:
        def remove(session):
            user = get_or_404(session, User, public_id, "User")
            if user.id == self.principal.user_id:
                raise ApiError(400, "You cannot delete your own account.")
            session.delete(user)
            return user.id

        user_id = await self.db.session(remove)
        self.services.revoke("user", user_id, USER_NOT_FOUND)
        self.success("User successfully deleted.")


class TokensHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()
        stmt = select(ApiToken, User.public_id).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
        if not self.principal.has_role("admin"):
            stmt = stmt.where(ApiToken.user_id == self.principal.user_id)
        self.send(await self.db.session(paginate, stmt, page, size, token_dict))

    @authenticated()
    async def post(self) -> None:
        body = self.validated(TOKEN_SPEC)
        if body.get("expires_at") is not None and body["expires_at"] <= utcnow():
            raise ApiError(422, "expires_at: must be in the future")
        plaintext, digest = new_api_token()

        def create(session):
            token = ApiToken(name=body["name"], token_hash=digest, user_id=self.principal.user_id,
                             expires_at=body.get("expires_at"))
            session.add(token)
            session.flush()
            return {
                "public_id": token.public_id,
                "name": token.name,
                "token": plaintext,
                "expires_at": iso(token.expires_at),
                "created_at": iso(token.created_at),
                "user_public_id": self.principal.public_id,
            }

        self.send(await self.db.session(create), 201)


class TokenHandler(BaseHandler):
    @authenticated()
    async def delete(self, public_id: str) -> None:
        def remove(session):
            token = get_or_404(session, ApiToken, public_id, "API token")
            if token.user_id != self.principal.user_id and not self.principal.has_role("admin"):
                raise ApiError(404, "API token not found.")
            session.delete(token)
            return token.id

        token_id = await self.db.session(remove)
        self.services.revoke("api_token", token_id, TOKEN_REVOKED)
        self.success("API token deleted.")


class HealthHandler(BaseHandler):
    rate_limited = False  # probes (security.md: /health is exempt)

    async def get(self) -> None:
        services = self.services
        db_ok = await self.services.health.check()
        services.note_health(db_ok)
        self.send({
            "status": "ok" if db_ok else "degraded",
            "version": __version__,
            "database": "ok" if db_ok else "error",
            "last_datapoint": iso(services.last_datapoint_time()),
            "uptime_seconds": round(time.monotonic() - services.started_monotonic, 3),
            "ingest_queue": services.pipeline.queue_depth(),  # docs/ingest-queue.md
        })


CREATE_ADMIN_COMMAND = "webmacs create-user --role admin --email <email> --username <name>"


class LoginHintHandler(BaseHandler):
    """For the login form: whether any user exists, and how to create the first one."""

    async def get(self) -> None:
        has_user = await self.db.session(lambda s: s.execute(select(User.id).limit(1)).first() is not None)
        self.send({"users_exist": has_user,
                   "message": None if has_user else "No user exists yet: create an admin with "
                   f"`{CREATE_ADMIN_COMMAND}` (or set WEBMACS_INITIAL_ADMIN_EMAIL and "
                   "WEBMACS_INITIAL_ADMIN_PASSWORD) and restart.",
                   "command": None if has_user else CREATE_ADMIN_COMMAND})


default_handlers = [
    (r"/api/v1/auth/login-hint", LoginHintHandler),
    (r"/api/v1/auth/login", LoginHandler),
    (r"/api/v1/auth/logout", LogoutHandler),
    (r"/api/v1/auth/me", MeHandler),
    (r"/api/v1/users", UsersHandler),
    (r"/api/v1/users/([^/]+)", UserHandler),
    (r"/api/v1/tokens", TokensHandler),
    (r"/api/v1/tokens/([^/]+)", TokenHandler),
    (r"/health", HealthHandler),
    (r"/api/v1/health", HealthHandler),
]
