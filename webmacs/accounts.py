"""Who is calling: one token check shared by REST handlers and WebSockets.

The four failure reasons are the WebSocket spec's close reasons, word for word;
REST answers 401 with the same text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from webmacs.models import ROLE_LEVEL, ApiToken, RevokedToken, User, utcnow
from webmacs.security import API_TOKEN_PREFIX, TokenError, decode_jwt, hash_api_token, hash_password

log = logging.getLogger("webmacs.accounts")

AUTH_REQUIRED = "Authentication required"
INVALID_TOKEN = "Invalid or expired token"
TOKEN_REVOKED = "Token has been revoked"
USER_NOT_FOUND = "User not found"

# last_used_at of an API token is written at most this often (not per request).
_LAST_USED_RESOLUTION = timedelta(seconds=60)


class AuthError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    user_id: int
    public_id: str
    username: str
    email: str
    role: str
    jti: str | None = None  # set for a JWT
    api_token_id: int | None = None  # set for an API token
    expires_at: datetime | None = None

    @property
    def sender(self) -> str:
        """Whose telemetry batch ids these are: an API token's own, or its user's."""
        return f"token:{self.api_token_id}" if self.api_token_id is not None else f"user:{self.user_id}"

    def has_role(self, role: str) -> bool:
        return ROLE_LEVEL.get(self.role, 0) >= ROLE_LEVEL[role]


def _principal(user: User, **kw) -> Principal:
    return Principal(user.id, user.public_id, user.username, user.email, user.role, **kw)


def authenticate(session: Session, secret: str, token: str | None) -> Principal:
    """Resolve a bearer token (JWT or ``wm_`` API token) or raise AuthError."""
    if not token:
        raise AuthError(AUTH_REQUIRED)
    now = utcnow()
    if token.startswith(API_TOKEN_PREFIX):
        row = session.execute(
            select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(
                ApiToken.token_hash == hash_api_token(token)
            )
        ).first()
        if row is None:
            raise AuthError(INVALID_TOKEN)
        api_token, user = row
        if api_token.expires_at is not None and api_token.expires_at <= now:
            raise AuthError(INVALID_TOKEN)
        if api_token.last_used_at is None or now - api_token.last_used_at > _LAST_USED_RESOLUTION:
            session.execute(update(ApiToken).where(ApiToken.id == api_token.id).values(last_used_at=now))
        return _principal(user, api_token_id=api_token.id, expires_at=api_token.expires_at)
    try:
        claims = decode_jwt(secret, token)
    except TokenError:
        raise AuthError(INVALID_TOKEN) from None
    if session.get(RevokedToken, claims.jti) is not None:
        raise AuthError(TOKEN_REVOKED)
    user = session.execute(select(User).where(User.public_id == claims.user_public_id)).scalar_one_or_none()
    if user is None:
        raise AuthError(USER_NOT_FOUND)
    if user.sessions_valid_after is not None and claims.issued_at < user.sessions_valid_after.timestamp():
        raise AuthError(TOKEN_REVOKED)  # issued before a password or role change ended the user's sessions
    return _principal(user, jti=claims.jti, expires_at=claims.expires_at)


def end_sessions(user: User) -> None:
    """Every login token of ``user`` issued until now stops working (password or role
    changed). The caller closes the user's open sockets after the commit."""
    user.sessions_valid_after = utcnow()


def revoke(session: Session, jti: str, expires_at: datetime) -> None:
    if session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(jti=jti, expires_at=expires_at))


def prune_revoked(session: Session) -> int:
    """Drop revocations of tokens that have expired anyway."""
    return session.execute(delete(RevokedToken).where(RevokedToken.expires_at < utcnow())).rowcount or 0


def ensure_initial_admin(session: Session, email: str | None, username: str, password: str | None) -> bool:
    if not email or not password:
        return False
    if session.execute(select(User.id).limit(1)).first() is not None:
        return False
    session.add(User(email=email.lower(), username=username, password_hash=hash_password(password), role="admin"))
    log.info("created initial admin %s", email)
    return True


def warn_if_no_users(db) -> bool:
    """Log loudly when nobody can log in (no user, no initial admin configured)."""
    with db.Session() as session:
        if session.execute(select(User.id).limit(1)).first() is not None:
            return False
    log.warning("NO USER EXISTS and WEBMACS_INITIAL_ADMIN_EMAIL/WEBMACS_INITIAL_ADMIN_PASSWORD are not set: "
                "nobody can log in. Create an admin with: "
                "webmacs create-user --role admin --email <email> --username <name>")
    return True
