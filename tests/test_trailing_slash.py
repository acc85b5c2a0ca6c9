"""Every /api/v1 route answers the same with and without a trailing slash, for every method.

The cases come from the route table the server is built from (``collect_handlers``),
so a route added later is covered without editing this file.
"""

from __future__ import annotations

import re

from tornado.web import RequestHandler

from webmacs.handlers import collect_handlers, optional_trailing_slash

METHODS = ("get", "post", "put", "delete", "patch")
DUMMY_ID = "00000000-0000-0000-0000-000000000000"


def api_routes() -> list[tuple[str, list[str], bool]]:
    """(concrete path without slash, HTTP methods the handler implements, has path arguments)."""
    out = []
    for pattern, handler, *_ in collect_handlers():
        if not pattern.startswith("/api/v1/"):
            continue
        assert pattern.endswith("/?"), pattern  # every /api/v1 route takes the optional slash
        body = pattern[:-2]
        has_args = "(" in body
        path = re.sub(r"\([^)]*\)", DUMMY_ID, body).replace("\\", "")
        methods = [m.upper() for m in METHODS if getattr(handler, m) is not getattr(RequestHandler, m)]
        out.append((path, methods, has_args))
    return out


def test_route_table_is_rewritten():
    routes = api_routes()
    assert len(routes) > 30
    assert optional_trailing_slash((r"/api/v1/things", object)) == (r"/api/v1/things/?", object)
    assert optional_trailing_slash((r"/api/v1/things/?", object)) == (r"/api/v1/things/?", object)
    assert optional_trailing_slash((r"/health", object)) == (r"/health", object)  # outside /api/v1: unchanged


async def test_every_route_and_method_with_and_without_slash(server):
    checked = 0
    for path, methods, _ in api_routes():
        for method in methods:
            plain = await server.request(method, path, token=None)
            slashed = await server.request(method, path + "/", token=None)
            assert plain.code == slashed.code, (method, path, plain, slashed)
            if plain.code == 404:  # a handler's own 404 (e.g. no such id), not the catch-all's
                assert plain.json != {"detail": "Not Found"}, (method, path, plain)
            checked += 1
    assert checked > 50


async def test_collection_routes_as_admin_with_and_without_slash(server):
    checked = 0
    for path, methods, has_args in api_routes():
        if has_args or "GET" not in methods:
            continue
        plain = await server.request("GET", path)
        slashed = await server.request("GET", path + "/")
        assert plain.code == slashed.code, (path, plain, slashed)
        assert plain.code < 500, (path, plain)
        if plain.code == 200 and isinstance(plain.json, dict) and "total" in plain.json:
            assert plain.json["total"] == slashed.json["total"], path
        checked += 1
    assert checked >= 15


async def test_the_old_frontend_paths(server):
    users = await server.request("GET", "/api/v1/users/")
    assert users.code == 200 and users.json["total"] == 1
    logs = await server.request("GET", "/api/v1/logging/?page=1&page_size=10")
    assert logs.code == 200 and "data" in logs.json
    # a write with a body through the slashed path: served, not redirected
    created = await server.request("POST", "/api/v1/experiments/", {"name": "Slashed"})
    assert created.code == 201 and created.json["data"]["name"] == "Slashed"
    exp = created.json["data"]["public_id"]
    renamed = await server.request("PUT", f"/api/v1/experiments/{exp}/", {"name": "Slashed 2"})
    assert renamed.code == 200 and renamed.json["data"]["name"] == "Slashed 2"
    assert (await server.request("GET", "/api/v1/no-such-thing/")).code == 404
    assert (await server.request("GET", "/api/v1/users//")).code == 404  # one optional slash, not any number
