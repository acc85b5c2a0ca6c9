"""Log entries: the API (list for everyone, write for operators), validation, and the
entries the server writes itself (start, stop; rule triggers and dead-lettered webhooks
are checked in test_rules.py and test_webhooks.py)."""

from __future__ import annotations

from tests.conftest import make_settings, start_server, stop_server, wait_for
from webmacs.app import shutdown

API = "/api/v1/logging"


async def test_create_list_update(server):
    operator = await server.create_user("operator")
    viewer = await server.create_user("viewer")
    op_me = (await server.request("GET", "/api/v1/auth/me", token=operator)).json

    first = await server.request("POST", API, {"content": "Valve V1 serviced"}, token=operator)
    assert first.code == 201, first
    entry = first.json["data"]
    assert set(entry) == {"public_id", "content", "logging_type", "status_type", "created_on", "user_public_id"}
    assert entry["content"] == "Valve V1 serviced" and entry["logging_type"] == "info"
    assert entry["status_type"] == "unread" and entry["user_public_id"] == op_me["public_id"]
    second = (await server.request("POST", API, {"content": "Pump P2 tripped", "logging_type": "error"})).json["data"]
    third = (await server.request("POST", API, {"content": "x" * 500, "logging_type": "warning"},
                                  token=operator)).json["data"]

    listed = await server.request("GET", f"{API}?page_size=100", token=viewer)
    assert listed.code == 200 and set(listed.json) == {"page", "page_size", "total", "data"}
    mine = [e for e in listed.json["data"] if e["public_id"] in {entry["public_id"], second["public_id"],
                                                                  third["public_id"]}]
    assert [e["public_id"] for e in mine] == [third["public_id"], second["public_id"], entry["public_id"]]
    errors = (await server.request("GET", f"{API}?logging_type=error", token=viewer)).json["data"]
    assert [e["public_id"] for e in errors] == [second["public_id"]]
    paged = (await server.request("GET", f"{API}?page=1&page_size=1", token=viewer)).json
    assert paged["page_size"] == 1 and len(paged["data"]) == 1 and paged["total"] == listed.json["total"]
    assert paged["data"][0]["public_id"] == third["public_id"]

    read = await server.request("PUT", f"{API}/{entry['public_id']}", {"status_type": "read"}, token=operator)
    assert read.code == 200 and read.json["data"]["status_type"] == "read" and read.json["data"]["content"] == entry["content"]
    edited = await server.request("PUT", f"{API}/{entry['public_id']}", {"content": "Valve V1 serviced (ok)"})
    assert edited.code == 200 and edited.json["data"]["content"] == "Valve V1 serviced (ok)"
    assert edited.json["data"]["status_type"] == "read" and edited.json["data"]["user_public_id"] == op_me["public_id"]
    unread = (await server.request("GET", f"{API}?status_type=unread&page_size=100")).json["data"]
    assert entry["public_id"] not in {e["public_id"] for e in unread}
    got = await server.request("GET", f"{API}/{entry['public_id']}", token=viewer)
    assert got.code == 200 and got.json == edited.json["data"]


async def test_validation_and_roles(server):
    viewer = await server.create_user("viewer")
    operator = await server.create_user("operator")
    entry = (await server.request("POST", API, {"content": "hello"}, token=operator)).json["data"]
    one = f"{API}/{entry['public_id']}"

    assert (await server.request("POST", API, {"content": "no"}, token=viewer)).json == {
        "detail": "Operator access required."}
    assert (await server.request("POST", API, {"content": "no"}, token=viewer)).code == 403
    assert (await server.request("PUT", one, {"status_type": "read"}, token=viewer)).code == 403
    assert (await server.request("GET", API, token=None)).code == 401
    assert (await server.request("POST", API, {"content": "no"}, token=None)).code == 401

    bad = [
        ({}, "content: field required"),
        ({"content": ""}, "content:"),
        ({"content": "   "}, "content:"),
        ({"content": "x" * 501}, "content:"),
        ({"content": 42}, "content:"),
        ({"content": "nul\u0000byte"}, "content: must not contain NUL"),
        ({"content": "ok", "logging_type": "debug"}, "logging_type:"),
        ({"content": "ok", "logging_type": None}, "logging_type:"),
    ]
    for body, detail in bad:
        resp = await server.request("POST", API, body, token=operator)
        assert resp.code == 422 and resp.json["detail"].startswith(detail), (body, resp)
    for body, detail in [({"status_type": "seen"}, "status_type:"), ({"content": ""}, "content:"),
                         ({"status_type": 1}, "status_type:")]:
        resp = await server.request("PUT", one, body, token=operator)
        assert resp.code == 422 and resp.json["detail"].startswith(detail), (body, resp)
    assert (await server.request("POST", API, raw=b"not json", token=operator)).code == 400
    assert (await server.request("PUT", one, raw=b"[]", token=operator)).code == 400
    assert (await server.request("PUT", f"{API}/missing", {"status_type": "read"}, token=operator)).code == 404
    assert (await server.request("GET", f"{API}/missing")).code == 404
    assert (await server.request("GET", f"{API}/%00")).code == 404  # never a 500 on PostgreSQL
    assert (await server.request("GET", f"{API}?logging_type=loud")).code == 422
    assert (await server.request("GET", f"{API}?page=0")).code == 422
    assert (await server.request("GET", one)).json["content"] == "hello"  # unchanged


async def test_server_start_and_stop_are_logged(database_url):
    settings = make_settings(database_url)
    srv, http = await start_server(settings)
    entries = (await srv.request("GET", API)).json["data"]
    assert [e["content"] for e in entries] == ["Server started"]
    assert entries[0]["logging_type"] == "info" and entries[0]["user_public_id"] is None

    await srv.close()
    await shutdown(http, srv.services)  # the real SIGTERM path
    srv.services.db.close()

    srv2, http2 = await start_server(settings)
    try:
        async def logged():
            data = (await srv2.request("GET", API)).json["data"]
            return [e["content"] for e in data] == ["Server started", "Server stopped", "Server started"]

        await wait_for(logged, message="start/stop entries")
    finally:
        await stop_server(srv2, http2)
