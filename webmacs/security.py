"""Passwords, JWTs and API tokens.

- Passwords: Argon2id (argon2-cffi), never stored or logged in clear.
- JWT: HS256 only (the algorithm list passed to ``decode`` is pinned, so
  ``alg: none`` and RS/HS confusion are rejected), ``exp`` required and
  enforced, and a random ``jti`` per token so logout revokes one session.
- API tokens: ``wm_`` + 43 URL-safe characters; only the SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ALGORITHM = "HS256"
API_TOKEN_PREFIX = "wm_"

_hasher = PasswordHasher()
# A real hash of a random password: verifying against it when the user does not
# exist keeps login timing the same for unknown emails.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class TokenClaims:
    user_public_id: str
    jti: str
    expires_at: datetime
    issued_at: float = 0.0  # epoch seconds with microseconds; 0 for tokens without iat


class TokenError(Exception):
    """The JWT could not be decoded or has expired."""


def create_jwt(secret: str, user_public_id: str, ttl_minutes: int) -> tuple[str, TokenClaims]:
    now = datetime.now(timezone.utc)
    exp = now + timedelta(minutes=ttl_minutes)
    jti = uuid.uuid4().hex
    issued = now.timestamp()  # a float: sessions ended at a time end the tokens issued before it, to the µs
    token = jwt.encode(
        {"sub": user_public_id, "iat": issued, "exp": exp, "jti": jti},
        secret,
        algorithm=ALGORITHM,
    )
    return token, TokenClaims(user_public_id, jti, exp, issued)


def decode_jwt(secret: str, token: str) -> TokenClaims:
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenError(str(exc)) from None
    if not isinstance(payload.get("sub"), str) or not isinstance(payload.get("jti"), str):
        raise TokenError("malformed claims")
    iat = payload.get("iat", 0.0)
    return TokenClaims(payload["sub"], payload["jti"], datetime.fromtimestamp(payload["exp"], timezone.utc),
                       float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else 0.0)


def new_api_token() -> tuple[str, str]:
    """Return (plaintext, sha256 hex)."""
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_api_token(token)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
