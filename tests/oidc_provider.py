"""A real OpenID Connect provider for the SSO tests, run as its own process.

    python -m tests.oidc_provider            # prints "LISTENING <port>", serves until killed

A small Tornado server that signs real RS256 ID tokens (pyjwt + cryptography):
discovery, an authorization endpoint with a login form, a token endpoint
(client_secret_basic or _post, single-use codes bound to client, redirect URI and
PKCE S256 challenge), userinfo and JWKS. The issuer is ``http://127.0.0.1:<port>``.

Tests steer it over HTTP (``POST /control``, JSON) to register users and redirect
URIs and to misbehave for negative tests:

    {"reset": true}                              forget users, codes, misbehaviour
    {"users": {"alice": {"sub": ..., "email": ..., "email_verified": true, ...}}}
    {"redirect_uris": ["http://.../api/v1/auth/sso/callback"]}
    {"rotate": true}                             new signing key (new kid); JWKS serves only it
    {"misbehave": {...}}                         for the next ID tokens:
        iss, aud, nonce: override the claim       exp_offset / iat_offset: seconds from now
        drop: [claim, ...]                         email_verified: override
        sign: "other_key" (bad signature, real kid) | "none" | "hs256_client_secret"
        token_status: answer /token with this HTTP status and an error body
        token_delay: seconds /token waits before answering (a hanging IdP)

``GET /control`` returns counters (token requests, JWKS fetches, the last token
request's form without secrets) for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import sys
import time
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado.escape import xhtml_escape
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

CLIENT_ID = "webmacs-test-client"
CLIENT_SECRET = "test-client-secret-0123456789abcdef"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)

    def jwk(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}


class State:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = Key()
        self.reset()

    def reset(self) -> None:
        self.users: dict[str, dict] = {}
        self.redirect_uris: list[str] = []
        self.codes: dict[str, dict] = {}
        self.access_tokens: dict[str, dict] = {}
        self.misbehave: dict = {}
        self.stats = {"token_requests": 0, "jwks_fetches": 0, "discovery_fetches": 0, "last_token_form": None,
                      "auth_method": None}

    def id_token(self, grant: dict) -> str:
        m = self.misbehave
        user = grant["user"]
        now = int(time.time())
        claims = {
            "iss": m.get("iss", self.issuer),
            "sub": user["sub"],
            "aud": m.get("aud", CLIENT_ID),
            "iat": now + int(m.get("iat_offset", 0)),
            "exp": now + int(m.get("exp_offset", 300)),
            "nonce": m.get("nonce", grant["nonce"]),
            "email": user.get("email"),
            "email_verified": m.get("email_verified", user.get("email_verified", True)),
            "preferred_username": user.get("preferred_username"),
            "name": user.get("name"),
        }
        claims = {k: v for k, v in claims.items() if v is not None and k not in m.get("drop", [])}
        sign = m.get("sign")
        if sign == "none":
            return jwt.encode(claims, None, algorithm="none", headers={"kid": self.key.kid})
        if sign == "hs256_client_secret":
            return jwt.encode(claims, CLIENT_SECRET, algorithm="HS256", headers={"kid": self.key.kid})
        private = Key().private if sign == "other_key" else self.key.private
        return jwt.encode(claims, private, algorithm="RS256", headers={"kid": self.key.kid})


class Base(RequestHandler):
    @property
    def state(self) -> State:
        return self.settings["state"]

    def page(self, status: int, title: str, body: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>"
                    f"{body}</body></html>")

    def json(self, obj, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(obj))


class Discovery(Base):
    def get(self) -> None:
        self.state.stats["discovery_fetches"] += 1
        iss = self.state.issuer
        self.json({
            "issuer": iss,
            "authorization_endpoint": iss + "/authorize",
            "token_endpoint": iss + "/token",
            "userinfo_endpoint": iss + "/userinfo",
            "jwks_uri": iss + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile"],
        })


AUTH_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
               "code_challenge_method")


class Authorize(Base):
    def params(self) -> dict:
        return {k: self.get_argument(k, "") for k in AUTH_PARAMS}

    def check(self, p: dict) -> str | None:
        if p["client_id"] != CLIENT_ID:
            return "Invalid parameter: client_id"
        if p["redirect_uri"] not in self.state.redirect_uris:
            return "Invalid parameter: redirect_uri"
        if p["response_type"] != "code" or "openid" not in p["scope"].split():
            return "Invalid parameter: response_type or scope"
        if p["code_challenge_method"] != "S256" or len(p["code_challenge"]) < 43:
            return "Missing parameter: code_challenge (PKCE S256 is required)"
        return None

    def get(self) -> None:
        p = self.params()
        problem = self.check(p)
        if problem:
            return self.page(400, "We are sorry...", f'<p id="idp-error">{xhtml_escape(problem)}</p>')
        hidden = "".join(f'<input type="hidden" name="{k}" value="{xhtml_escape(v)}">' for k, v in p.items())
        self.page(200, "Sign in to Test IdP",
                  '<form method="post" action="/authorize">' + hidden +
                  '<label for="idp-login">Username</label><input id="idp-login" name="login">'
                  '<button id="idp-submit" type="submit">Sign in</button></form>')

    def post(self) -> None:
        p = self.params()
        problem = self.check(p)
        if problem:
            return self.page(400, "We are sorry...", f'<p id="idp-error">{xhtml_escape(problem)}</p>')
        user = self.state.users.get(self.get_argument("login", ""))
        if user is None:
            return self.page(401, "Invalid username", '<p id="idp-error">Invalid username.</p>')
        code = secrets.token_urlsafe(24)
        self.state.codes[code] = {"client_id": p["client_id"], "redirect_uri": p["redirect_uri"],
                                  "challenge": p["code_challenge"], "nonce": p["nonce"], "user": user,
                                  "expires": time.time() + 60}
        self.redirect(p["redirect_uri"] + "?" + urlencode({"code": code, "state": p["state"]}))


class Token(Base):
    def error(self, status: int, error: str, description: str) -> None:
        self.json({"error": error, "error_description": description}, status)

    async def post(self) -> None:
        st = self.state
        st.stats["token_requests"] += 1
        if st.misbehave.get("token_delay"):
            await asyncio.sleep(float(st.misbehave["token_delay"]))
        form = {k: self.get_body_argument(k, "") for k in ("grant_type", "code", "redirect_uri", "code_verifier",
                                                            "client_id")}
        st.stats["last_token_form"] = {k: bool(v) for k, v in form.items()}
        status = st.misbehave.get("token_status")
        if status:
            return self.error(int(status), "server_error" if int(status) >= 500 else "invalid_request",
                              "misbehaving on purpose")
        auth = self.request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            st.stats["auth_method"] = "client_secret_basic"
        else:
            cid, secret = form["client_id"], self.get_body_argument("client_secret", "")
            st.stats["auth_method"] = "client_secret_post"
        if cid != CLIENT_ID or not secrets.compare_digest(secret, CLIENT_SECRET):
            return self.error(401, "invalid_client", "Invalid client credentials")
        if form["grant_type"] != "authorization_code":
            return self.error(400, "unsupported_grant_type", form["grant_type"])
        grant = st.codes.pop(form["code"], None)  # single use
        if grant is None or grant["expires"] < time.time() or grant["client_id"] != cid:
            return self.error(400, "invalid_grant", "Code not valid")
        if grant["redirect_uri"] != form["redirect_uri"]:
            return self.error(400, "invalid_grant", "Incorrect redirect_uri")
        expected = _b64url(hashlib.sha256(form["code_verifier"].encode()).digest())
        if not form["code_verifier"] or not secrets.compare_digest(expected, grant["challenge"]):
            return self.error(400, "invalid_grant", "PKCE verification failed: code_verifier does not match")
        access = secrets.token_urlsafe(24)
        st.access_tokens[access] = grant["user"]
        self.json({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                   "id_token": st.id_token(grant)})


class UserInfo(Base):
    def get(self) -> None:
        token = self.request.headers.get("Authorization", "")[len("Bearer "):]
        user = self.state.access_tokens.get(token)
        if user is None:
            return self.json({"error": "invalid_token"}, 401)
        self.json({k: v for k, v in user.items() if k in ("sub", "email", "email_verified", "preferred_username",
                                                          "name")})


class Jwks(Base):
    def get(self) -> None:
        self.state.stats["jwks_fetches"] += 1
        self.json({"keys": [self.state.key.jwk()]})


class Control(Base):
    def get(self) -> None:
        self.json({**self.state.stats, "kid": self.state.key.kid})

    def post(self) -> None:
        st = self.state
        body = json.loads(self.request.body or b"{}")
        if body.get("reset"):
            st.reset()
        st.users.update(body.get("users", {}))
        st.redirect_uris.extend(body.get("redirect_uris", []))
        if "misbehave" in body:
            st.misbehave = body["misbehave"]
        if body.get("rotate"):
            st.key = Key()
        self.json({"ok": True, "kid": st.key.kid})


def make_app(issuer: str) -> Application:
    return Application([
        (r"/\.well-known/openid-configuration", Discovery),
        (r"/authorize", Authorize),
        (r"/token", Token),
        (r"/userinfo", UserInfo),
        (r"/jwks", Jwks),
        (r"/control", Control),
    ], state=State(issuer))


def main() -> None:
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(f"http://127.0.0.1:{port}"))
    server.add_sockets([sock])
    print(f"LISTENING {port}", flush=True)
    IOLoop.current().start()


if __name__ == "__main__":
    sys.exit(main())
