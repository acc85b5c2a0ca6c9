"""Accounts and auth over real HTTP: login, logout/revocation, JWT checks, roles, API tokens, users."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import jwt
import pytest

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, SECRET

EVENT = {"name": "x", "type": "sensor", "unit": "V", "min_value": 0, "max_value": 1}


async def test_login_me_logout_revokes(server):
    token = await server.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    me = await server.request("GET", "/api/v1/auth/me", token=token)
    assert me.code == 200
    assert me.json["email"] == ADMIN_EMAIL and me.json["role"] == "admin" and me.json["username"] == "admin"
    out = await server.request("POST", "/api/v1/auth/logout", token=token)
    assert out.code == 200 and out.json == {"status": "success", "message": "Successfully logged out."}
    again = await server.request("GET", "/api/v1/auth/me", token=token)
    assert again.code == 401 and again.json == {"detail": "Token has been revoked"}


async def test_login_response_shape_and_failures(server):
    resp = await server.request("POST", "/api/v1/auth/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                                token=None)
    body = resp.json
    assert resp.code == 200
    assert body["status"] == "success" and body["message"] == "Successfully logged in."
    assert body["username"] == "admin" and body["public_id"] and body["access_token"]
    wrong = await server.request("POST", "/api/v1/auth/login", {"email": ADMIN_EMAIL, "password": "nope-nope"},
                                 token=None)
    assert wrong.code == 401 and "detail" in wrong.json
    unknown = await server.request("POST", "/api/v1/auth/login", {"email": "x@example.com", "password": "whatever1"},
                                   token=None)
    assert unknown.code == 401


async def test_two_logins_same_second_are_independent_sessions(server):
    a = await server.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    b = await server.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    assert a != b
    assert (await server.request("POST", "/api/v1/auth/logout", token=a)).code == 200
    assert (await server.request("GET", "/api/v1/auth/me", token=a)).code == 401
    assert (await server.request("GET", "/api/v1/auth/me", token=b)).code == 200


async def test_revocation_survives_restart(server_settings):
    from tests.conftest import start_server, stop_server

    srv, http = await start_server(server_settings)
    token = srv.admin_token
    assert (await srv.request("POST", "/api/v1/auth/logout", token=token)).code == 200
    await stop_server(srv, http)
    srv2, http2 = await start_server(server_settings)
    try:
        resp = await srv2.request("GET", "/api/v1/auth/me", token=token)
        assert resp.code == 401 and resp.json["detail"] == "Token has been revoked"
    finally:
        await stop_server(srv2, http2)


def _forge(payload: dict, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


async def test_expired_forged_and_alg_none_tokens_rejected(server):
    me = (await server.request("GET", "/api/v1/auth/me")).json
    now = datetime.now(timezone.utc)
    expired = _forge({"sub": me["public_id"], "jti": "a" * 32, "iat": now - timedelta(hours=2),
                      "exp": now - timedelta(hours=1)})
    other_key = _forge({"sub": me["public_id"], "jti": "b" * 32, "exp": now + timedelta(hours=1)},
                       key="another-key-another-key-another-key!")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"sub": me["public_id"], "jti": "c" * 32,
                                                "exp": int((now + timedelta(hours=1)).timestamp())}).encode()
                                    ).rstrip(b"=")
    alg_none = (header + b"." + body + b".").decode()
    no_exp = _forge({"sub": me["public_id"], "jti": "d" * 32})
    for token in (expired, other_key, alg_none, no_exp, "garbage"):
        resp = await server.request("GET", "/api/v1/auth/me", token=token)
        assert resp.code == 401, token
        assert resp.json == {"detail": "Invalid or expired token"}
    missing = await server.request("GET", "/api/v1/auth/me", token=None)
    assert missing.code == 401 and missing.json == {"detail": "Authentication required"}


async def test_deleted_user_token_stops_working(server):
    token = await server.create_user("operator", "gone")
    users = (await server.request("GET", "/api/v1/users")).json["data"]
    gone = next(u for u in users if u["username"] == "gone")
    assert (await server.request("DELETE", f"/api/v1/users/{gone['public_id']}")).code == 200
    resp = await server.request("GET", "/api/v1/auth/me", token=token)
    assert resp.code == 401 and resp.json["detail"] == "User not found"


async def test_roles_enforced(server):
    viewer = await server.create_user("viewer", "vera")
    operator = await server.create_user("operator", "otto")
    assert (await server.request("GET", "/api/v1/users", token=viewer)).code == 403
    assert (await server.request("GET", "/api/v1/users", token=operator)).json == {"detail": "Admin access required."}
    assert (await server.request("GET", "/api/v1/events", token=viewer)).code == 200
    denied = await server.request("POST", "/api/v1/events", EVENT, token=viewer)
    assert denied.code == 403
    allowed = await server.request("POST", "/api/v1/events", EVENT, token=operator)
    assert allowed.code == 201


async def test_users_crud_and_validation(server):
    created = await server.request("POST", "/api/v1/users", {"email": "Op@Example.com", "username": "op1",
                                                             "password": "password-123", "role": "operator"})
    assert created.code == 201
    user = created.json["data"]
    assert user["email"] == "op@example.com" and user["role"] == "operator" and user["admin"] is False
    assert "password" not in json.dumps(user) and "hash" not in json.dumps(user)
    dup = await server.request("POST", "/api/v1/users", {"email": "op@example.com", "username": "op2",
                                                         "password": "password-123"})
    assert dup.code == 409
    got = await server.request("GET", f"/api/v1/users/{user['public_id']}")
    assert got.code == 200 and got.json["username"] == "op1"
    upd = await server.request("PUT", f"/api/v1/users/{user['public_id']}", {"username": "op-renamed",
                                                                             "password": "new-password-1"})
    assert upd.code == 200 and upd.json["data"]["username"] == "op-renamed"
    assert await server.login("op@example.com", "new-password-1")
    assert (await server.request("DELETE", f"/api/v1/users/{user['public_id']}")).code == 200
    assert (await server.request("GET", f"/api/v1/users/{user['public_id']}")).code == 404
    listing = await server.request("GET", "/api/v1/users?page=1&page_size=10")
    assert listing.json["total"] == 1 and listing.json["page_size"] == 10


@pytest.mark.parametrize("body, field", [
    ({"email": "not-an-email", "username": "ab", "password": "password-123"}, "email"),
    ({"email": "a@example.com", "username": "a", "password": "password-123"}, "username"),
    ({"email": "a@example.com", "username": "abc", "password": "short"}, "password"),
    ({"email": "a@example.com", "username": 5, "password": "password-123"}, "username"),
    ({"email": "a@example.com", "username": "abc", "password": "password-123", "role": "god"}, "role"),
    ({"username": "abc", "password": "password-123"}, "email"),
])
async def test_user_create_rejects_bad_fields(server, body, field):
    resp = await server.request("POST", "/api/v1/users", body)
    assert resp.code == 422 and resp.json["detail"].startswith(field)


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/v1/auth/login"), ("POST", "/api/v1/users"), ("POST", "/api/v1/tokens"),
    ("PUT", "/api/v1/users/x"), ("POST", "/api/v1/events"), ("POST", "/api/v1/experiments"),
    ("POST", "/api/v1/plugins"), ("POST", "/api/v1/datapoints"), ("POST", "/api/v1/datapoints/batch"),
])
async def test_malformed_json_is_400_never_500(server, method, path):
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        resp = await server.request(method, path, raw=raw)
        assert resp.code == 400, (path, raw, resp)
        assert isinstance(resp.json["detail"], str) and "Traceback" not in resp.body.decode()


async def test_login_wrong_types_422(server):
    resp = await server.request("POST", "/api/v1/auth/login", {"email": ADMIN_EMAIL, "password": 123}, token=None)
    assert resp.code == 422 and resp.json["detail"].startswith("password")


async def test_api_tokens(server):
    created = await server.request("POST", "/api/v1/tokens", {"name": "CI", "expires_at": "2099-12-31T23:59:59Z"})
    assert created.code == 201
    tok = created.json
    assert tok["token"].startswith("wm_") and len(tok["token"]) == 46 and tok["name"] == "CI"
    me = await server.request("GET", "/api/v1/auth/me", token=tok["token"])
    assert me.code == 200 and me.json["email"] == ADMIN_EMAIL
    listing = (await server.request("GET", "/api/v1/tokens")).json
    assert listing["total"] == 1 and "token" not in listing["data"][0]
    assert listing["data"][0]["last_used_at"] is not None
    # another user sees only their own
    viewer = await server.create_user("viewer", "tokview")
    assert (await server.request("GET", "/api/v1/tokens", token=viewer)).json["total"] == 0
    assert (await server.request("DELETE", f"/api/v1/tokens/{tok['public_id']}", token=viewer)).code == 404
    assert (await server.request("DELETE", f"/api/v1/tokens/{tok['public_id']}")).code == 200
    assert (await server.request("GET", "/api/v1/auth/me", token=tok["token"])).code == 401
    past = await server.request("POST", "/api/v1/tokens", {"name": "old", "expires_at": "2000-01-01T00:00:00Z"})
    assert past.code == 422
    bad = await server.request("POST", "/api/v1/tokens", {"name": 7})
    assert bad.code == 422 and bad.json["detail"].startswith("name")


async def test_health_is_public(server):
    resp = await server.request("GET", "/health", token=None)
    assert resp.code == 200
    body = resp.json
    assert body["status"] == "ok" and body["database"] == "ok" and body["version"]
    assert body["last_datapoint"] is None and body["uptime_seconds"] >= 0


async def test_unknown_api_path_is_json_404(server):
    resp = await server.request("GET", "/api/v1/nothing-here")
    assert resp.code == 404 and resp.json == {"detail": "Not Found"}


async def test_logout_with_an_api_token_says_how_to_end_it(server):
    """Logging out cannot end an API token: the answer says so, and the token still works
    (an honest refusal, not a 'Successfully logged out.' that changes nothing)."""
    token = (await server.request("POST", "/api/v1/tokens", {"name": "rig"})).json["token"]
    out = await server.request("POST", "/api/v1/auth/logout", token=token)
    assert out.code == 400 and "DELETE /api/v1/tokens/" in out.json["detail"]
    assert (await server.request("GET", "/api/v1/auth/me", token=token)).code == 200


async def _user_id(server, email: str) -> str:
    users = (await server.request("GET", "/api/v1/users?page_size=100")).json["data"]
    return next(u["public_id"] for u in users if u["email"] == email)


@pytest.mark.parametrize("change", [{"role": "viewer"}, {"password": "another-password-9"}])
async def test_role_or_password_change_ends_sessions(server, change):
    """The user's login tokens stop working and their open sockets close (1008) at once;
    a fresh login afterwards works."""
    token = await server.create_user("operator", name="changed")
    public_id = await _user_id(server, "changed@example.com")
    stream = await server.ws("/ws/datapoints/stream", token=token)
    telemetry = await server.ws("/ws/controller/telemetry", token=token)
    assert (await server.request("PUT", f"/api/v1/users/{public_id}", change)).code == 200
    for sock in (stream, telemetry):
        code, reason = await sock.closed(timeout=1.5)
        assert (code, reason) == (1008, "Token has been revoked")
    me = await server.request("GET", "/api/v1/auth/me", token=token)
    assert me.code == 401 and me.json["detail"] == "Token has been revoked"
    fresh = await server.login("changed@example.com", change.get("password", "password-123"))
    assert (await server.request("GET", "/api/v1/auth/me", token=fresh)).code == 200


async def test_unchanged_role_keeps_sessions(server):
    token = await server.create_user("operator", name="same")
    public_id = await _user_id(server, "same@example.com")
    assert (await server.request("PUT", f"/api/v1/users/{public_id}", {"role": "operator"})).code == 200
    assert (await server.request("GET", "/api/v1/auth/me", token=token)).code == 200
