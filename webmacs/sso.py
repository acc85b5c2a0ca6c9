"""OpenID Connect single sign-on: Authorization Code flow with PKCE (S256).

- Discovery (``<issuer>/.well-known/openid-configuration``) is fetched with
  Tornado's AsyncHTTPClient and cached for ``oidc_discovery_ttl`` seconds; an ID
  token whose key id is unknown even after the key set was refreshed refreshes
  the discovery document once (the IdP may have moved its ``jwks_uri``).
- Keys come from pyjwt's ``PyJWKClient`` (its own refresh on an unknown ``kid``,
  bounded by ``oidc_jwks_refresh_cooldown``); it uses blocking urllib, so it runs
  on the loop's default executor. Signatures are checked by ``jwt.decode`` with
  the asymmetric algorithms the IdP announces, never ``none`` or HMAC.
- ``state`` is an HS256 JWT (10 minutes) signed with a key derived from the
  server secret, so it cannot be used as, or made from, a login token. The PKCE
  verifier and the nonce travel in an HttpOnly cookie (also a signed JWT) bound to
  the state's id: a state from another browser, or a replayed one, is refused.
- Single-use values (the 60 s login code, used state ids) live in ``sso_codes``
  by their SHA-256, so several server processes share them.

Nothing here logs a token, a code or the client secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import jwt
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from webmacs.config import Settings
from webmacs.models import SsoCode, User, utcnow

log = logging.getLogger("webmacs.sso")

STATE_TTL = 600  # seconds (security.md: 10-minute state)
LOGIN_CODE_TTL = 60  # seconds (rest.md: one-time codes live 60 s)
CLOCK_SKEW = 60  # seconds of leeway on exp/iat between us and the IdP
FLOW_COOKIE = "webmacs_sso"
COOKIE_PATH = "/api/v1/auth/sso"
# Only public-key algorithms: "none" and HS* (a token "signed" with the client
# secret, or with the public key as an HMAC secret) are never accepted.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_USERNAME_CHARS = re.compile(r"[^a-zA-Z0-9._-]")

INVALID_CODE = "Invalid or expired code."


class SsoError(Exception):
    """A refusal with the status and the message a person can act on."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Flow:
    """What /authorize hands the browser: the IdP URL, and the flow cookie."""

    url: str
    cookie: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) per RFC 7636."""
    verifier = _b64url(secrets.token_bytes(32))
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def sanitize_username(raw: str | None) -> str:
    """``[a-zA-Z0-9._-]`` only, at most 50 characters (users.username)."""
    return _USERNAME_CHARS.sub("", raw if isinstance(raw, str) else "")[:50]


class OidcClient:
    """One per server; talks to the configured IdP."""

    def __init__(self, config: Settings):
        self.config = config
        self.issuer = config.oidc_issuer_url.rstrip("/")
        self._state_key = hmac.new(config.secret_key.encode(), b"webmacs-sso-state", hashlib.sha256).hexdigest()
        self._metadata: dict | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._jwks: jwt.PyJWKClient | None = None

    # --- talking to the IdP ---------------------------------------------------------
    def _unreachable(self, what: str, reason: str) -> SsoError:
        return SsoError(502, f"Cannot reach the identity provider at {self.issuer} ({what}): {reason}")

    async def _fetch(self, what: str, request: HTTPRequest) -> tuple[int, Any]:
        """Send ``request``; (status, parsed JSON). Transport failures are 502 naming the issuer."""
        request.connect_timeout = request.request_timeout = self.config.oidc_http_timeout
        request.follow_redirects = False
        request.headers["Accept"] = "application/json"
        try:
            resp = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:  # refused, DNS, TLS, timeout
            raise self._unreachable(what, str(exc) or type(exc).__name__) from None
        if resp.code == 599:
            raise self._unreachable(what, str(resp.error))
        try:
            body = json.loads(resp.body or b"")
        except (ValueError, UnicodeDecodeError):
            if resp.code >= 500:
                raise self._unreachable(what, f"HTTP {resp.code}") from None
            raise SsoError(502, f"The identity provider at {self.issuer} answered {what} with "
                                f"HTTP {resp.code} and no JSON") from None
        if resp.code >= 500:
            raise self._unreachable(what, f"HTTP {resp.code}")
        return resp.code, body

    async def metadata(self, refresh: bool = False) -> dict:
        """The discovery document, cached for ``oidc_discovery_ttl`` seconds."""
        async with self._lock:
            fresh = time.monotonic() - self._fetched_at < self.config.oidc_discovery_ttl
            if self._metadata is not None and fresh and not refresh:
                return self._metadata
            url = self.issuer + "/.well-known/openid-configuration"
            code, doc = await self._fetch("discovery", HTTPRequest(url))
            if code != 200 or not isinstance(doc, dict):
                raise SsoError(502, f"The identity provider at {self.issuer} has no OpenID discovery document "
                                    f"(HTTP {code} from {url}); check OIDC_ISSUER_URL")
            announced = str(doc.get("issuer", ""))
            if announced.rstrip("/") != self.issuer:
                raise SsoError(502, f"The identity provider at {self.issuer} announces issuer {announced!r}; "
                                    "OIDC_ISSUER_URL must be that issuer")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(key), str) or not doc[key].startswith(("https://", "http://")):
                    raise SsoError(502, f"The identity provider at {self.issuer} announces no valid {key}")
            if self._jwks is None or self._jwks.uri != doc["jwks_uri"]:
                self._jwks = jwt.PyJWKClient(
                    doc["jwks_uri"], cache_jwk_set=True, lifespan=max(self.config.oidc_discovery_ttl, 1.0),
                    timeout=self.config.oidc_http_timeout,
                    cooldown_duration=self.config.oidc_jwks_refresh_cooldown,
                )
            self._metadata, self._fetched_at = doc, time.monotonic()
            return doc

    def allowed_algorithms(self, doc: dict) -> list[str]:
        announced = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
        return [a for a in ASYMMETRIC_ALGORITHMS if a in announced] or ["RS256"]

    # --- state and the flow cookie ---------------------------------------------------
    def _sign(self, claims: dict) -> str:
        return jwt.encode(claims, self._state_key, algorithm="HS256")

    def _unsign(self, token: str, typ: str) -> dict | None:
        try:
            claims = jwt.decode(token, self._state_key, algorithms=["HS256"], options={"require": ["exp", "sid"]})
        except jwt.PyJWTError:
            return None
        return claims if claims.get("typ") == typ and isinstance(claims.get("sid"), str) else None

    async def start(self) -> Flow:
        doc = await self.metadata()
        now = int(time.time())
        sid, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        state = self._sign({"typ": "sso-state", "sid": sid, "iat": now, "exp": now + STATE_TTL})
        cookie = self._sign({"typ": "sso-flow", "sid": sid, "verifier": verifier, "nonce": nonce,
                             "iat": now, "exp": now + STATE_TTL})
        query = urlencode({
            "response_type": "code",
            "client_id": self.config.oidc_client_id,
            "redirect_uri": self.config.oidc_redirect_uri,
            "scope": self.config.oidc_scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        endpoint = doc["authorization_endpoint"]
        return Flow(endpoint + ("&" if "?" in endpoint else "?") + query, cookie)

    def check_state(self, state: str | None, cookie: str | None) -> dict:
        """The flow cookie's claims when ``state`` is ours, unexpired and from this browser."""
        if not state:
            raise SsoError(400, "The sign-in response has no state; start the sign-in again from the login page.")
        claims = self._unsign(state, "sso-state")
        if claims is None:
            raise SsoError(400, "The sign-in state is invalid or has expired (10 minutes); "
                                "start the sign-in again from the login page.")
        flow = self._unsign(cookie, "sso-flow") if cookie else None
        if flow is None or not hmac.compare_digest(flow["sid"], claims["sid"]):
            raise SsoError(400, "This sign-in was started in another browser or tab, or its cookie was lost; "
                                "start the sign-in again from the login page.")
        return {**flow, "state_exp": claims["exp"]}

    # --- the callback ----------------------------------------------------------------
    async def redeem(self, code: str, flow: dict) -> dict:
        """Exchange the authorization code; the verified ID token claims (with userinfo)."""
        doc = await self.metadata()
        cfg = self.config
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": cfg.oidc_redirect_uri,
                "code_verifier": flow["verifier"]}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods or "client_secret_post" not in methods:
            basic = f"{quote(cfg.oidc_client_id, safe='')}:{quote(cfg.oidc_client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
        else:
            form.update(client_id=cfg.oidc_client_id, client_secret=cfg.oidc_client_secret)
        status, body = await self._fetch("token endpoint", HTTPRequest(
            doc["token_endpoint"], method="POST", body=urlencode(form), headers=headers))
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            raise self._token_refusal(status, body)
        claims = await self._verify(body["id_token"], flow["nonce"])
        if ("email" not in claims or "email_verified" not in claims) and isinstance(body.get("access_token"), str):
            claims = await self._with_userinfo(doc, body["access_token"], claims)
        return claims

    def _token_refusal(self, status: int, body: Any) -> SsoError:
        error = body.get("error", "") if isinstance(body, dict) else ""
        described = body.get("error_description", "") if isinstance(body, dict) else ""
        reason = f"{error}: {described}".strip(": ")[:300] or f"HTTP {status}"
        if "redirect" in reason.lower():
            return SsoError(400, f"The identity provider refused the redirect URI ({reason}). OIDC_REDIRECT_URI "
                                 f"({self.config.oidc_redirect_uri}) must exactly match a redirect URI registered "
                                 f"for client {self.config.oidc_client_id} at {self.issuer}.")
        if error == "invalid_client" or status == 401:
            return SsoError(502, f"The identity provider at {self.issuer} refused our client credentials "
                                 f"({reason}); check OIDC_CLIENT_ID and OIDC_CLIENT_SECRET.")
        return SsoError(400, f"The identity provider refused the authorization code ({reason}); "
                             "start the sign-in again from the login page.")

    async def _verify(self, id_token: str, nonce: str) -> dict:
        loop = asyncio.get_running_loop()
        doc = await self.metadata()
        try:
            return await loop.run_in_executor(None, self._decode, id_token, nonce, doc, self._jwks)
        except _UnknownKey:
            doc = await self.metadata(refresh=True)  # rotated keys under a new jwks_uri
            try:
                return await loop.run_in_executor(None, self._decode, id_token, nonce, doc, self._jwks)
            except _UnknownKey as exc:
                raise SsoError(401, f"The ID token is signed with a key the identity provider does not "
                                    f"publish ({exc}).") from None

    def _decode(self, id_token: str, nonce: str, doc: dict, jwks: jwt.PyJWKClient) -> dict:
        """Blocking (key fetch): verify signature, iss, aud, exp, iat and nonce."""
        allowed = self.allowed_algorithms(doc)
        try:
            alg = jwt.get_unverified_header(id_token).get("alg")
        except jwt.PyJWTError:
            raise SsoError(401, "The identity provider returned a malformed ID token.") from None
        if alg not in allowed:
            raise SsoError(401, f"The ID token algorithm {alg!r} is not allowed (accepted: {', '.join(allowed)}).")
        try:
            key = jwks.get_signing_key_from_jwt(id_token)
        except jwt.PyJWKClientConnectionError:
            raise self._unreachable("keys", "the key set could not be fetched") from None
        except jwt.PyJWKClientError as exc:
            raise _UnknownKey(str(exc)) from None
        try:
            claims = jwt.decode(
                id_token, key, algorithms=allowed, audience=self.config.oidc_client_id, issuer=doc["issuer"],
                leeway=CLOCK_SKEW, options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise SsoError(401, "The ID token has expired; check the clocks of this server and the IdP.") from None
        except jwt.InvalidIssuerError:
            raise SsoError(401, f"The ID token was not issued by {doc['issuer']}.") from None
        except jwt.InvalidAudienceError:
            raise SsoError(401, f"The ID token is not meant for client {self.config.oidc_client_id}.") from None
        except jwt.ImmatureSignatureError:
            raise SsoError(401, "The ID token is issued in the future; check the clocks.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise SsoError(401, f"The ID token lacks the {exc.claim!r} claim.") from None
        except jwt.InvalidSignatureError:
            raise SsoError(401, "The ID token signature does not verify with the identity provider's keys.") from None
        except jwt.PyJWTError as exc:
            raise SsoError(401, f"The ID token was refused ({type(exc).__name__}).") from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.config.oidc_client_id:
            raise SsoError(401, "The ID token has several audiences and is not authorized for this client (azp).")
        if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], nonce):
            raise SsoError(401, "The ID token nonce does not match this sign-in; start the sign-in again.")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise SsoError(401, "The ID token has no subject.")
        return claims

    async def _with_userinfo(self, doc: dict, access_token: str, claims: dict) -> dict:
        endpoint = doc.get("userinfo_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            return claims
        status, info = await self._fetch("userinfo", HTTPRequest(
            endpoint, headers={"Authorization": f"Bearer {access_token}"}))
        if status != 200 or not isinstance(info, dict) or info.get("sub") != claims["sub"]:
            return claims  # userinfo must describe the same subject (OIDC Core 5.3.2)
        return {**info, **claims}


class _UnknownKey(Exception):
    pass


# --- the database side (each runs inside db.session) --------------------------------

def use_state(session: Session, sid: str, state_exp: int) -> bool:
    """Record a state id as used (its own transaction); False if it was used
    before, by this or any other server process."""
    session.add(SsoCode(code_hash=sha256_hex("state:" + sid), purpose="state",
                        expires_at=datetime.fromtimestamp(state_exp + CLOCK_SKEW, timezone.utc)))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        return False
    return True


def link_user(session: Session, config: Settings, issuer: str, claims: dict) -> tuple[int, str, str]:
    """Find the local user for these verified claims: (id, username, how)."""
    sub = claims["sub"]
    user = session.execute(select(User).where(User.sso_provider == issuer, User.sso_subject_id == sub)
                           ).scalar_one_or_none()
    if user is not None:
        return user.id, user.username, "subject"
    email = claims.get("email")
    email = email.strip().lower() if isinstance(email, str) else ""
    if claims.get("email_verified") is not True:
        raise SsoError(403, f"Email not verified: the identity provider has not confirmed the email address "
                            f"{email or '(none)'}. Verify it at the identity provider, then sign in again.")
    if "@" not in email or len(email) > 255:
        raise SsoError(403, "The identity provider sent no usable email address (the 'email' scope and claim "
                            "are needed to link or create an account).")
    user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
    if user is not None:
        if user.role == "admin":
            raise SsoError(403, f"{email} belongs to an administrator account, which single sign-on never links "
                                "automatically. An administrator must set sso_provider and sso_subject_id on "
                                "that account (see docs/sso.md), or sign in with the password.")
        if user.sso_subject_id is not None:
            raise SsoError(409, f"The account {email} is already linked to another single sign-on identity.")
        user.sso_provider, user.sso_subject_id = issuer, sub
        log.info("sso: linked user %s to its identity provider account by verified email", user.username)
        return user.id, user.username, "email"
    if not config.oidc_auto_create_users:
        raise SsoError(403, f"Auto-creation disabled: no WebMACS account exists for {email} and "
                            "OIDC_AUTO_CREATE_USERS is false. Ask an administrator to create the account first.")
    username = _free_username(session, claims, email)
    user = User(email=email, username=username, password_hash=None, role=config.oidc_default_role,
                sso_provider=issuer, sso_subject_id=sub)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise SsoError(409, "Another sign-in created this account at the same moment; sign in again.") from None
    log.info("sso: created user %s with role %s", username, user.role)
    return user.id, username, "created"


def _free_username(session: Session, claims: dict, email: str) -> str:
    base = sanitize_username(claims.get("preferred_username"))
    if len(base) < 2:
        base = sanitize_username(email.split("@")[0])
    if len(base) < 2:
        base = "user"
    taken = set(session.execute(select(User.username).where(User.username.like(base[:40] + "%"))).scalars())
    if base not in taken:
        return base
    for n in range(2, 1000):
        candidate = f"{base[:45]}-{n}"
        if candidate not in taken:
            return candidate
    return f"{base[:37]}-{secrets.token_hex(6)}"


def issue_login_code(session: Session, user_id: int) -> str:
    """A 60-second single-use code for ``user_id``; also drops expired codes."""
    now = utcnow()
    session.execute(delete(SsoCode).where(SsoCode.expires_at < now))
    code = secrets.token_urlsafe(32)
    session.add(SsoCode(code_hash=sha256_hex(code), purpose="login", user_id=user_id,
                        expires_at=now + timedelta(seconds=LOGIN_CODE_TTL)))
    return code


def redeem_login_code(session: Session, code: str) -> str | None:
    """The user's public id for a valid code, consumed; None if unknown, used or expired."""
    digest = sha256_hex(code)
    row = session.get(SsoCode, digest)
    if row is None or row.purpose != "login" or row.user_id is None:
        return None
    # The DELETE decides: of two concurrent redemptions only one removes the row.
    removed = session.execute(delete(SsoCode).where(SsoCode.code_hash == digest)).rowcount
    if removed != 1 or row.expires_at <= utcnow():
        return None
    user = session.get(User, row.user_id)
    return user.public_id if user is not None else None
