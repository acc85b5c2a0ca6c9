"""Single sign-on against a real OIDC provider (tests/oidc_provider.py, its own process).

The whole Authorization Code + PKCE flow goes over real HTTP: our /authorize, the
provider's login form, its redirect to our /callback (with the flow cookie, as a
browser would send it), our redirect to /sso-callback?code=..., /exchange, /me.
Every refusal of issue 14 has a test here; the browser flow is in
tests/test_sso_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import inspect, update
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.testing import bind_unused_port

from tests.conftest import ADMIN_EMAIL, Response, make_settings, start_server, stop_server
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET
from webmacs.config import ConfigError, Settings
from webmacs.db import alembic_config, make_engine, upgrade
from webmacs.handlers.auth import NO_PASSWORD
from webmacs.models import SsoCode, User, utcnow

ROOT = Path(__file__).resolve().parent.parent
CALLBACK = "/api/v1/auth/sso/callback"
INVALID = {"detail": "Invalid or expired code."}


class Provider:
    def __init__(self, port: int) -> None:
        self.issuer = f"http://127.0.0.1:{port}"
        self.http = AsyncHTTPClient(force_instance=True)

    async def control(self, body: dict | None = None) -> dict:
        req = HTTPRequest(self.issuer + "/control", method="POST" if body is not None else "GET",
                          body=json.dumps(body) if body is not None else None, request_timeout=10)
        resp = await self.http.fetch(req)
        return json.loads(resp.body)


@pytest.fixture(scope="session")
def provider_process():
    proc = subprocess.Popen([sys.executable, "-m", "tests.oidc_provider"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), line
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


@pytest.fixture
async def provider(provider_process):
    p = Provider(provider_process)
    try:
        yield p
    finally:
        p.http.close()


def sso_env(issuer: str) -> dict:
    # Both spellings on purpose: WEBMACS_OIDC_* for some, the WebMACS OIDC_* for others.
    return {
        "WEBMACS_OIDC_ENABLED": "true",
        "OIDC_PROVIDER_NAME": "Test IdP",
        "OIDC_ISSUER_URL": issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "WEBMACS_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        # the real port is known once the server listens; the `sso` fixture sets it
        "OIDC_REDIRECT_URI": "http://127.0.0.1:9" + CALLBACK,
        "WEBMACS_OIDC_JWKS_REFRESH_COOLDOWN": "0",
        "OIDC_HTTP_TIMEOUT": "3",
    }


@pytest.fixture
def server_settings(database_url, provider_process) -> Settings:
    return make_settings(database_url, **sso_env(f"http://127.0.0.1:{provider_process}"))


ALICE = {"sub": "alice-sub-1", "email": "alice@lab.example", "email_verified": True,
         "preferred_username": "Alice Ü.Smith!", "name": "Alice Smith"}


class Sso:
    """Drives the flow like a browser: no automatic redirects, the flow cookie by hand."""

    def __init__(self, server, provider: Provider) -> None:
        self.server = server
        self.provider = provider

    async def get(self, url: str, cookie: str | None = None, accept: str = "application/json") -> Response:
        headers = {"Accept": accept}
        if cookie:
            headers["Cookie"] = f"webmacs_sso={cookie}"
        req = HTTPRequest(url, follow_redirects=False, headers=headers, request_timeout=20)
        resp = await self.server.http.fetch(req, raise_error=False)
        return Response(resp.code, resp.body or b"", resp.headers)

    async def authorize(self) -> tuple[str, str]:
        """Our /authorize: (the IdP URL, the flow cookie)."""
        resp = await self.get(self.server.base_url + "/api/v1/auth/sso/authorize")
        assert resp.code == 307, resp
        cookie = SimpleCookie(resp.headers["Set-Cookie"])["webmacs_sso"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/api/v1/auth/sso"
        return resp.headers["Location"], cookie.value

    async def idp_login(self, idp_url: str, login: str = "alice") -> str:
        """Fill the provider's login form; the callback URL it redirects to."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(idp_url).query).items()}
        form = await self.get(idp_url, accept="text/html")
        assert form.code == 200 and b"Sign in to Test IdP" in form.body, form
        req = HTTPRequest(self.provider.issuer + "/authorize", method="POST", follow_redirects=False,
                          body=urlencode({**query, "login": login}), request_timeout=10)
        resp = await self.server.http.fetch(req, raise_error=False)
        assert resp.code == 302, resp.body
        return resp.headers["Location"]

    async def callback(self, login: str = "alice") -> tuple[Response, str, str]:
        """authorize + IdP login + our callback: (callback response, callback URL, cookie)."""
        idp_url, cookie = await self.authorize()
        url = await self.idp_login(idp_url, login)
        assert url.startswith(self.server.base_url + CALLBACK + "?"), url
        return await self.get(url, cookie), url, cookie

    async def one_time_code(self, login: str = "alice") -> str:
        resp, _, _ = await self.callback(login)
        assert resp.code == 307, resp
        location = resp.headers["Location"]
        assert location.startswith("/sso-callback?code="), location
        return parse_qs(urlsplit(location).query)["code"][0]

    async def exchange(self, code) -> Response:
        return await self.server.request("POST", "/api/v1/auth/sso/exchange", {"code": code}, token=None)

    async def login(self, login: str = "alice") -> tuple[str, dict]:
        resp = await self.exchange(await self.one_time_code(login))
        assert resp.code == 200, resp
        token = resp.json["access_token"]
        me = await self.server.request("GET", "/api/v1/auth/me", token=token)
        assert me.code == 200, me
        return token, me.json


@pytest.fixture
async def sso(server, provider):
    server.services.config.oidc_redirect_uri = server.base_url + CALLBACK
    await provider.control({"reset": True, "users": {"alice": ALICE}, "redirect_uris": [server.base_url + CALLBACK]})
    return Sso(server, provider)


async def add_user(provider: Provider, login: str, **claims) -> None:
    await provider.control({"users": {login: {"sub": f"{login}-sub", "email": f"{login}@lab.example",
                                              "email_verified": True, "preferred_username": login, **claims}}})


# --- the happy paths ------------------------------------------------------------------------

async def test_config_endpoint(sso):
    resp = await sso.server.request("GET", "/api/v1/auth/sso/config", token=None)
    assert resp.code == 200 and resp.json == {"enabled": True, "provider_name": "Test IdP"}


async def test_config_disabled_and_endpoints_off(database_url):
    srv, http_server = await start_server(make_settings(database_url))
    try:
        resp = await srv.request("GET", "/api/v1/auth/sso/config", token=None)
        assert resp.code == 200 and resp.json == {"enabled": False, "provider_name": None}
        off = await srv.request("GET", "/api/v1/auth/sso/authorize", token=None)
        assert off.code == 404 and off.json == {"detail": "Single sign-on is not enabled on this server."}
    finally:
        await stop_server(srv, http_server)


async def test_full_flow_creates_user(sso):
    idp_url, _cookie = await sso.authorize()
    q = {k: v[0] for k, v in parse_qs(urlsplit(idp_url).query).items()}
    assert idp_url.startswith(sso.provider.issuer + "/authorize?")
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["client_id"] == CLIENT_ID and q["redirect_uri"] == sso.server.base_url + CALLBACK
    assert q["scope"] == "openid email profile" and q["nonce"] and q["state"].count(".") == 2
    assert q["nonce"] not in q["state"]  # the nonce and verifier live in the cookie, not the URL

    token, me = await sso.login()
    assert me["username"] == "Alice.Smith"  # sanitized preferred_username
    assert me["email"] == "alice@lab.example" and me["role"] == "viewer"
    assert me["sso_provider"] == sso.provider.issuer
    stats = await sso.provider.control()
    assert stats["auth_method"] == "client_secret_basic" and stats["last_token_form"]["code_verifier"]

    # no password: password login is refused with a clear message
    resp = await sso.server.request("POST", "/api/v1/auth/login", {"email": "alice@lab.example",
                                                                  "password": "anything-123"}, token=None)
    assert resp.code == 401 and resp.json == {"detail": NO_PASSWORD}
    # until an admin sets one
    users = await sso.server.request("GET", "/api/v1/users?page_size=100")
    alice = next(u for u in users.json["data"] if u["email"] == "alice@lab.example")
    put = await sso.server.request("PUT", f"/api/v1/users/{alice['public_id']}", {"password": "now-a-password"})
    assert put.code == 200, put
    assert await sso.server.login("alice@lab.example", "now-a-password")


async def test_second_login_finds_user_by_subject(sso):
    _, first = await sso.login()
    # the IdP changes the user's email and name: still the same local user (by sub)
    await sso.provider.control({"users": {"alice": {**ALICE, "email": "a.smith@lab.example",
                                                    "preferred_username": "asmith"}}})
    _, second = await sso.login()
    assert second["public_id"] == first["public_id"] and second["username"] == "Alice.Smith"


async def test_links_existing_user_by_verified_email(sso):
    resp = await sso.server.request("POST", "/api/v1/users", {"email": "bob@lab.example", "username": "bob",
                                                              "password": "password-123", "role": "operator"})
    assert resp.code == 201, resp
    await add_user(sso.provider, "bob", preferred_username="robert")
    _, me = await sso.login("bob")
    assert me["username"] == "bob" and me["role"] == "operator" and me["sso_provider"] == sso.provider.issuer
    assert await sso.server.login("bob@lab.example", "password-123")  # the password still works


async def test_username_collisions_and_default_role(sso):
    sso.server.services.config.oidc_default_role = "operator"
    resp = await sso.server.request("POST", "/api/v1/users", {"email": "other@lab.example", "username": "carol",
                                                              "password": "password-123"})
    assert resp.code == 201
    await add_user(sso.provider, "carol")
    await add_user(sso.provider, "x", preferred_username="!!", email="dave.d@lab.example")
    _, carol = await sso.login("carol")
    assert carol["username"] == "carol-2" and carol["role"] == "operator"
    _, dave = await sso.login("x")
    assert dave["username"] == "dave.d"  # from the email when preferred_username sanitizes to nothing


async def test_roles_and_deletion_end_sessions(sso):
    token, me = await sso.login()
    put = await sso.server.request("PUT", f"/api/v1/users/{me['public_id']}", {"role": "operator"})
    assert put.code == 200
    again = await sso.server.request("GET", "/api/v1/auth/me", token=token)
    assert again.code == 401 and again.json == {"detail": "Token has been revoked"}  # the role change ended it
    token, me = await sso.login()
    assert me["role"] == "operator"
    gone = await sso.server.request("DELETE", f"/api/v1/users/{me['public_id']}")
    assert gone.code == 200
    after = await sso.server.request("GET", "/api/v1/auth/me", token=token)
    assert after.code == 401 and after.json == {"detail": "User not found"}


async def test_key_rotation_refreshes_keys(sso):
    await sso.login()
    before = await sso.provider.control()
    rotated = await sso.provider.control({"rotate": True})
    assert rotated["kid"] != before["kid"]
    await sso.login()
    after = await sso.provider.control()
    assert after["jwks_fetches"] > before["jwks_fetches"]
    assert after["discovery_fetches"] == 1  # cached (TTL 1 h); the key set refresh was enough


async def test_claims_missing_from_id_token_come_from_userinfo(sso):
    await sso.provider.control({"misbehave": {"drop": ["email", "email_verified"]}})
    _, me = await sso.login()
    assert me["email"] == ALICE["email"]


# --- refusals: the one-time code --------------------------------------------------------------

async def test_one_time_code_single_use_unknown_and_expired(sso):
    code = await sso.one_time_code()
    assert (await sso.exchange(code)).code == 200
    replay = await sso.exchange(code)
    assert replay.code == 400 and replay.json == INVALID
    unknown = await sso.exchange("not-a-code")
    assert unknown.code == 400 and unknown.json == INVALID
    missing = await sso.server.request("POST", "/api/v1/auth/sso/exchange", {}, token=None)
    assert missing.code == 422 and "code" in missing.json["detail"]

    late = await sso.one_time_code()
    await sso.server.services.db.session(
        lambda s: s.execute(update(SsoCode).where(SsoCode.purpose == "login")
                            .values(expires_at=utcnow() - timedelta(seconds=1))))
    expired = await sso.exchange(late)
    assert expired.code == 400 and expired.json == INVALID


async def test_concurrent_redemptions_only_one_wins(sso):
    code = await sso.one_time_code()
    results = await asyncio.gather(*(sso.exchange(code) for _ in range(4)))
    assert sorted(r.code for r in results) == [200, 400, 400, 400]


async def test_codes_and_states_are_shared_between_server_processes(sso, server_settings):
    """A second server on the same database: it redeems the first one's code, and
    refuses a state the first one used."""
    other, http_server = await start_server(server_settings)
    try:
        other.services.config.oidc_redirect_uri = sso.server.services.config.oidc_redirect_uri
        resp, url, cookie = await sso.callback()
        code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
        elsewhere = Sso(other, sso.provider)
        assert (await elsewhere.exchange(code)).code == 200
        assert (await sso.exchange(code)).json == INVALID
        replay = await elsewhere.get(other.base_url + url[len(sso.server.base_url):], cookie)
        assert replay.code == 400 and "already used" in replay.json["detail"]
    finally:
        await stop_server(other, http_server)


# --- refusals: state and PKCE ------------------------------------------------------------------

async def test_missing_wrong_and_foreign_state(sso):
    idp_url, cookie = await sso.authorize()
    url = await sso.idp_login(idp_url)
    parts = parse_qs(urlsplit(url).query)
    base = sso.server.base_url + CALLBACK
    code, state = parts["code"][0], parts["state"][0]

    missing = await sso.get(f"{base}?{urlencode({'code': code})}", cookie)
    assert missing.code == 400 and "no state" in missing.json["detail"]
    forged = await sso.get(f"{base}?{urlencode({'code': code, 'state': state[:-4] + 'AAAA'})}", cookie)
    assert forged.code == 400 and "invalid or has expired" in forged.json["detail"]
    no_cookie = await sso.get(url)
    assert no_cookie.code == 400 and "another browser" in no_cookie.json["detail"]
    _, other_cookie = await sso.authorize()
    foreign = await sso.get(url, other_cookie)
    assert foreign.code == 400 and "another browser" in foreign.json["detail"]
    # none of these used the code: the real pair still signs in
    ok = await sso.get(url, cookie)
    assert ok.code == 307, ok


async def test_expired_state(sso):
    client = sso.server.services.sso
    stale = client._sign({"typ": "sso-state", "sid": "x", "iat": 1, "exp": 2})
    resp = await sso.get(f"{sso.server.base_url}{CALLBACK}?code=c&state={stale}")
    assert resp.code == 400 and "expired" in resp.json["detail"]


async def test_reused_state(sso):
    resp, url, cookie = await sso.callback()
    assert resp.code == 307
    replay = await sso.get(url, cookie)
    assert replay.code == 400 and "already used" in replay.json["detail"]


async def test_pkce_verifier_mismatch(sso):
    """A code obtained in one flow, injected into another (its own state, cookie and
    verifier): the IdP's PKCE check refuses it."""
    idp_a, _cookie_a = await sso.authorize()
    stolen = parse_qs(urlsplit(await sso.idp_login(idp_a)).query)["code"][0]
    idp_b, cookie_b = await sso.authorize()
    state_b = parse_qs(urlsplit(idp_b).query)["state"][0]
    resp = await sso.get(f"{sso.server.base_url}{CALLBACK}?{urlencode({'code': stolen, 'state': state_b})}",
                         cookie_b)
    assert resp.code == 400 and "PKCE verification failed" in resp.json["detail"], resp


# --- refusals: the ID token --------------------------------------------------------------------

ID_TOKEN_CASES = {
    "wrong_iss": ({"iss": "http://evil.example"}, "not issued by"),
    "wrong_aud": ({"aud": "someone-else"}, "not meant for client"),
    "expired": ({"exp_offset": -600}, "has expired"),
    "future_iat": ({"iat_offset": 3600}, "issued in the future"),
    "no_iat": ({"drop": ["iat"]}, "lacks the 'iat' claim"),
    "bad_signature": ({"sign": "other_key"}, "signature does not verify"),
    "alg_none": ({"sign": "none"}, "algorithm 'none' is not allowed"),
    "hs256_client_secret": ({"sign": "hs256_client_secret"}, "algorithm 'HS256' is not allowed"),
    "wrong_nonce": ({"nonce": "replayed-nonce"}, "nonce does not match"),
}


@pytest.mark.parametrize("case", list(ID_TOKEN_CASES))
async def test_id_token_refused(sso, case):
    misbehave, message = ID_TOKEN_CASES[case]
    await sso.provider.control({"misbehave": misbehave})
    resp, _, _ = await sso.callback()
    assert resp.code == 401 and message in resp.json["detail"], resp
    users = await sso.server.request("GET", "/api/v1/users?page_size=100")
    assert all(u["email"] != ALICE["email"] for u in users.json["data"])


# --- refusals: linking -------------------------------------------------------------------------

async def test_unverified_email_refused(sso):
    await add_user(sso.provider, "eve", email_verified=False)
    resp, _, _ = await sso.callback("eve")
    assert resp.code == 403 and resp.json["detail"].startswith("Email not verified"), resp


async def test_never_links_to_admin(sso):
    await add_user(sso.provider, "mallory", email=ADMIN_EMAIL)
    resp, _, _ = await sso.callback("mallory")
    assert resp.code == 403 and "administrator account" in resp.json["detail"], resp
    users = await sso.server.request("GET", "/api/v1/users?page_size=100")
    admin = next(u for u in users.json["data"] if u["email"] == ADMIN_EMAIL)
    assert admin["sso_provider"] is None


async def test_admin_linked_by_hand_signs_in(sso):
    await add_user(sso.provider, "root", email=ADMIN_EMAIL)
    await sso.server.services.db.session(lambda s: s.execute(
        update(User).where(User.email == ADMIN_EMAIL).values(sso_provider=sso.provider.issuer,
                                                             sso_subject_id="root-sub")))
    _, me = await sso.login("root")
    assert me["email"] == ADMIN_EMAIL and me["role"] == "admin"


async def test_auto_creation_disabled(sso):
    sso.server.services.config.oidc_auto_create_users = False
    resp, _, _ = await sso.callback()
    assert resp.code == 403 and resp.json["detail"].startswith("Auto-creation disabled"), resp
    assert "OIDC_AUTO_CREATE_USERS" in resp.json["detail"]


# --- refusals: the IdP and the redirect URI ----------------------------------------------------

async def test_idp_down_is_502_naming_the_issuer(database_url, provider_process):
    sock, port = bind_unused_port()
    sock.close()  # nothing listens there
    issuer = f"http://127.0.0.1:{port}"
    srv, http_server = await start_server(make_settings(database_url, **{**sso_env(issuer)}))
    try:
        resp = await srv.request("GET", "/api/v1/auth/sso/authorize", token=None)
        assert resp.code == 502 and issuer in resp.json["detail"], resp
    finally:
        await stop_server(srv, http_server)


async def test_token_endpoint_failing_is_502(sso):
    await sso.provider.control({"misbehave": {"token_status": 503}})
    resp, _, _ = await sso.callback()
    assert resp.code == 502 and sso.provider.issuer in resp.json["detail"], resp


async def test_hanging_token_endpoint_times_out_as_502(sso):
    sso.server.services.config.oidc_http_timeout = 0.5
    await sso.provider.control({"misbehave": {"token_delay": 3}})
    resp, _, _ = await sso.callback()
    assert resp.code == 502 and sso.provider.issuer in resp.json["detail"], resp


async def test_redirect_uri_mismatch(sso):
    # the IdP does not know our redirect URI: it shows its own error and never calls back
    await sso.provider.control({"reset": True, "users": {"alice": ALICE}})
    idp_url, _ = await sso.authorize()
    page = await sso.get(idp_url, accept="text/html")
    assert page.code == 400 and b"Invalid parameter: redirect_uri" in page.body
    # the setting changed between authorize and callback: the token endpoint refuses it
    await sso.provider.control({"redirect_uris": [sso.server.base_url + CALLBACK]})
    idp_url, cookie = await sso.authorize()
    url = await sso.idp_login(idp_url)
    sso.server.services.config.oidc_redirect_uri = sso.server.base_url + "/other" + CALLBACK
    resp = await sso.get(url, cookie)
    assert resp.code == 400 and "OIDC_REDIRECT_URI" in resp.json["detail"], resp
    # and a redirect URI that is not our callback is refused at start
    with pytest.raises(ConfigError, match="OIDC_REDIRECT_URI must end with /api/v1/auth/sso/callback"):
        Settings.from_env({**sso_env(sso.provider.issuer), "OIDC_REDIRECT_URI": "http://x/callback",
                           "WEBMACS_SECRET_KEY": "k"})


async def test_idp_error_answer_as_page_for_a_browser(sso):
    url = f"{sso.server.base_url}{CALLBACK}?error=access_denied&error_description=User+cancelled"
    resp = await sso.get(url)
    assert resp.code == 400 and resp.json == {"detail": "The identity provider refused the sign-in "
                                                        "(access_denied: User cancelled)."}
    page = await sso.get(url + "<script>", accept="text/html,application/xhtml+xml")
    assert page.code == 400 and page.headers["Content-Type"].startswith("text/html")
    assert b"access_denied: User cancelled&lt;script&gt;" in page.body and b"<script>" not in page.body


async def test_logs_carry_no_tokens_or_codes(sso, caplog):
    caplog.set_level(logging.INFO)
    idp_url, cookie = await sso.authorize()
    url = await sso.idp_login(idp_url)
    resp = await sso.get(url, cookie)
    code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    await sso.get(sso.server.base_url + "/sso-callback?code=" + code, accept="text/html")
    token = (await sso.exchange(code)).json["access_token"]
    await sso.exchange(code)  # a refused replay is logged too
    q = parse_qs(urlsplit(url).query)
    text = caplog.text
    assert "signed in (created)" in text
    for secret in (q["code"][0], q["state"][0], cookie, code, token, CLIENT_SECRET):
        assert secret not in text


# --- settings and the migration ----------------------------------------------------------------

def test_settings_names_and_precedence():
    base = {"WEBMACS_SECRET_KEY": "k", "OIDC_ENABLED": "true", "OIDC_ISSUER_URL": "https://idp.example/realms/x",
            "OIDC_CLIENT_ID": "c", "OIDC_CLIENT_SECRET": "s",
            "OIDC_REDIRECT_URI": "https://lab.example/api/v1/auth/sso/callback"}
    s = Settings.from_env(base)
    assert s.oidc_enabled and s.oidc_provider_name == "SSO" and s.oidc_default_role == "viewer"
    assert s.oidc_auto_create_users and s.oidc_scopes == "openid email profile" and "s" not in repr(s).split("'")
    s = Settings.from_env({**base, "OIDC_CLIENT_ID": "old", "WEBMACS_OIDC_CLIENT_ID": "new"})
    assert s.oidc_client_id == "new"
    with pytest.raises(ConfigError, match="OIDC_ISSUER_URL"):
        Settings.from_env({**base, "OIDC_ISSUER_URL": ""})
    with pytest.raises(ConfigError, match="OIDC_DEFAULT_ROLE"):
        Settings.from_env({**base, "OIDC_DEFAULT_ROLE": "root"})
    with pytest.raises(ConfigError, match="OIDC_AUTO_CREATE_USERS"):
        Settings.from_env({**base, "OIDC_AUTO_CREATE_USERS": "maybe"})
    assert not Settings.from_env({"WEBMACS_SECRET_KEY": "k"}).oidc_enabled


def test_migration_down_and_up(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "0001")
    engine = make_engine(url)
    insp = inspect(engine)
    assert "sso_codes" not in insp.get_table_names()
    assert {c["name"] for c in insp.get_columns("users")}.isdisjoint({"sso_provider", "sso_subject_id"})
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    insp = inspect(engine)
    cols = {c["name"]: c for c in insp.get_columns("users")}
    assert "sso_codes" in insp.get_table_names() and cols["password_hash"]["nullable"]
    assert "sso_subject_id" in cols
    engine.dispose()
