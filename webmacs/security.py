"""Passwords, JWTs and API tokens.

- Passwords: Argon2id (argon2-cffi), never stored or logged in clear.
- JWT: HS256 only (the algorithm list passed to ``decode`` is pinned, so
  ``alg: none`` and RS/HS confusion are rejected), ``exp`` required and
  enforced, and a random ``jti`` per token so logout revokes one session.
- API tokens: ``wm_`` + 43 URL-safe characters; only the SHA-256 is stored.
- CSV download tokens: signed, bound to one experiment and user, 60 s, single use.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ALGORITHM = "HS256"
API_TOKEN_PREFIX = "wm_"

# OWASP's Argon2id baseline (19 MiB, 2 passes, 1 lane) rather than argon2-cffi's default
# (64 MiB, 3 passes, 4 lanes): a login costs a quarter of the CPU and memory, so a login
# flood cannot take the memory or the cores ingest needs. Older hashes still verify with
# their own parameters and are rehashed at the next successful login (needs_rehash).
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
# A real hash of a random password: verifying against it when the user does not
# exist keeps login timing the same for unknown emails.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def needs_rehash(password_hash: str) -> bool:
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class HashBusy(Exception):
    """Too many password checks are waiting already."""


class PasswordHasherPool:
    """Argon2 on threads of its own: never on the IOLoop, never holding a pooled
    database connection, and never more than ``workers`` at once (each costs ~50 ms
    of CPU and 64 MiB). At most ``max_waiting`` calls queue; more raise HashBusy."""

    def __init__(self, workers: int = 1, max_waiting: int = 32) -> None:
        self.workers = workers
        self.max_waiting = max_waiting
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.pending = 0

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="webmacs-hash")
            return self._executor

    async def _run(self, fn, *args):
        if self.pending >= self.max_waiting:
            raise HashBusy()
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)
        finally:
            self.pending -= 1

    async def hash(self, password: str) -> str:
        return await self._run(hash_password, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._run(verify_password, password_hash, password)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


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


DOWNLOAD_SECONDS = 60
DOWNLOAD_TYPE = "csv-download"


class DownloadTickets:
    """Signed, short-lived, single-use download tokens for CSV exports (a browser's plain
    navigation carries no Authorization header, and a bearer token must not go into a URL).
    HMAC-SHA256 (pinned) with a key derived from the server secret; "used" is remembered
    by the token's hash until it expires, in this process."""

    def __init__(self, secret_key: str) -> None:
        self._key = hmac.new(secret_key.encode(), b"webmacs-csv-download", hashlib.sha256).hexdigest()
        self._spent: dict[str, float] = {}  # sha256 of a used token -> its expiry (epoch seconds)

    def issue(self, experiment_public_id: str, user_public_id: str) -> str:
        now = int(time.time())
        return jwt.encode({"typ": DOWNLOAD_TYPE, "exp": now + DOWNLOAD_SECONDS, "iat": now, "sub": user_public_id,
                           "experiment": experiment_public_id, "jti": secrets.token_urlsafe(16)},
                          self._key, algorithm=ALGORITHM)

    def redeem(self, token: str, experiment_public_id: str) -> bool:
        """True once for a valid token of this experiment; False for anything else."""
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM],
                                options={"require": ["exp", "jti", "sub", "experiment"]})
        except jwt.PyJWTError:
            return False
        if claims.get("typ") != DOWNLOAD_TYPE or claims.get("experiment") != experiment_public_id:
            return False
        now = time.time()
        for digest, until in list(self._spent.items()):
            if until < now:
                del self._spent[digest]
        digest = hashlib.sha256(token.encode()).hexdigest()
        if digest in self._spent:
            return False
        self._spent[digest] = float(claims["exp"])
        return True
