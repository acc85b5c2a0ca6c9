"""Single sign-on endpoints (rest.md §SSO), all public:

- ``GET /api/v1/auth/sso/config``: ``{"enabled", "provider_name"}``.
- ``GET /api/v1/auth/sso/authorize``: 307 to the IdP (PKCE S256, signed state,
  nonce; the verifier and nonce in an HttpOnly cookie).
- ``GET /api/v1/auth/sso/callback``: exchange the IdP's code, verify the ID token,
  find/link/create the user, 307 to ``<frontend>/sso-callback?code=<one-time code>``.
  Refusals answer an HTML page to a browser (``Accept: text/html``) and
  ``{"detail": ...}`` otherwise, with the same status.
- ``POST /api/v1/auth/sso/exchange``: the one-time code for a JWT.
- ``GET /sso-callback``: the dashboard page, which finishes the sign-in.

The webmacs.sso module does the protocol work; see there for the checks.
"""

from __future__ import annotations

import logging
from typing import Any

from tornado.escape import xhtml_escape
from tornado.web import HTTPError

from webmacs.handlers.base import ApiError, BaseHandler
from webmacs.handlers.dashboard import IndexHandler
from webmacs.security import create_jwt
from webmacs.sso import (
    COOKIE_PATH,
    FLOW_COOKIE,
    INVALID_CODE,
    SsoError,
    issue_login_code,
    link_user,
    redeem_login_code,
    use_state,
)
from webmacs.validation import Str

log = logging.getLogger("webmacs.sso")

NOT_ENABLED = "Single sign-on is not enabled on this server."
EXCHANGE_SPEC = {"code": Str(1, 200, strip=False, required=True)}

ERROR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in failed · WebMACS</title>
<style>body{{font-family:system-ui,sans-serif;background:#0f1720;color:#e6edf3;display:grid;place-items:center;
min-height:100vh;margin:0}}main{{max-width:36rem;padding:2rem;background:#17212c;border-radius:8px}}
a{{color:#6cc4f5}}</style></head>
<body><main><h1>Single sign-on failed</h1><p id="sso-error">{detail}</p>
<p><a href="/">Back to the login page</a></p></main></body></html>
"""


class SsoBaseHandler(BaseHandler):
    def client(self):
        client = self.services.sso
        if client is None:
            raise ApiError(404, NOT_ENABLED)
        return client

    def refuse(self, exc: SsoError) -> None:
        log.warning("sso %s refused (%d): %s", self.request.path.rsplit("/", 1)[-1], exc.status, exc.detail)
        raise ApiError(exc.status, exc.detail) from None


class SsoConfigHandler(BaseHandler):
    async def get(self) -> None:
        cfg = self.config
        self.send({"enabled": bool(cfg.oidc_enabled),
                   "provider_name": cfg.oidc_provider_name if cfg.oidc_enabled else None})


class SsoAuthorizeHandler(SsoBaseHandler):
    async def get(self) -> None:
        client = self.client()
        try:
            flow = await client.start()
        except SsoError as exc:
            self.refuse(exc)
        self.set_cookie(FLOW_COOKIE, flow.cookie, path=COOKIE_PATH, httponly=True, samesite="Lax",
                        secure=self.config.oidc_redirect_uri.startswith("https://"), max_age=600)
        self.set_header("Referrer-Policy", "no-referrer")
        self.redirect(flow.url, status=307)


class SsoCallbackHandler(SsoBaseHandler):
    async def get(self) -> None:
        client = self.client()
        self.set_header("Referrer-Policy", "no-referrer")
        try:
            await self._complete(client)
        except SsoError as exc:
            self.clear_cookie(FLOW_COOKIE, path=COOKIE_PATH)
            self.refuse(exc)

    async def _complete(self, client) -> None:
        error = self.get_query_argument("error", None)
        if error:
            described = self.get_query_argument("error_description", "")[:300]
            raise SsoError(400, f"The identity provider refused the sign-in ({error[:100]}"
                                f"{': ' + described if described else ''}).")
        flow = client.check_state(self.get_query_argument("state", None), self.get_cookie(FLOW_COOKIE))
        code = self.get_query_argument("code", None)
        if not code:
            raise SsoError(400, "The identity provider sent no authorization code; start the sign-in again.")
        if not await self.db.session(use_state, flow["sid"], flow["state_exp"]):
            raise SsoError(400, "This sign-in state was already used; start the sign-in again from the login page.")
        claims = await client.redeem(code, flow)
        user_id, username, how = await self.db.session(link_user, self.config, claims["iss"], claims)
        one_time = await self.db.session(issue_login_code, user_id)
        log.info("sso: %s signed in (%s)", username, how)
        self.clear_cookie(FLOW_COOKIE, path=COOKIE_PATH)
        self.redirect(f"{self.config.oidc_frontend_url}/sso-callback?code={one_time}", status=307)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, HTTPError):  # an answered refusal (ours, or tornado's 405), not a failure
            return
        # not Tornado's default: its line carries the request URI (the IdP's code and our state)
        log.error("sso callback failed: %s", typ.__name__, exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if "text/html" not in self.request.headers.get("Accept", "") or not isinstance(exc, ApiError):
            return super().write_error(status_code, **kwargs)
        detail = exc.detail
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(ERROR_PAGE.format(detail=xhtml_escape(detail)))


class SsoExchangeHandler(BaseHandler):
    async def post(self) -> None:
        body = self.validated(EXCHANGE_SPEC)
        public_id = await self.db.session(redeem_login_code, body["code"])
        if public_id is None:
            raise ApiError(400, INVALID_CODE)
        token, _claims = create_jwt(self.config.secret_key, public_id, self.config.token_ttl_minutes)
        self.send({"access_token": token, "token_type": "bearer"})


default_handlers = [
    (r"/api/v1/auth/sso/config", SsoConfigHandler),
    (r"/api/v1/auth/sso/authorize", SsoAuthorizeHandler),
    (r"/api/v1/auth/sso/callback", SsoCallbackHandler),
    (r"/api/v1/auth/sso/exchange", SsoExchangeHandler),
    (r"/sso-callback", IndexHandler),
]
