"""The OpenAPI document (webmacs/openapi.py): complete, built from the handlers' specs,
served publicly; and schemathesis run from it against a live server.

The schemathesis run is a real ``schemathesis`` process against the ``server``
fixture (a real port, SQLite and TimescaleDB), with an admin API token: every
operation, positive and negative cases, the stateful phase following the
document's links. It fails on any 5xx, any status code the document does not
list, any response body or content type that does not match it, and any
ERROR the server logged meanwhile. Deterministic: ``--generation-deterministic``
(no random seed) and no example database.

Destructive operations: the bearer is an API token, so ``POST /auth/logout``
cannot end it (400, documented), and deleting or demoting one's own user is
refused (400). Only ``DELETE /tokens/{id}`` could end it (schemathesis finds its
id in ``GET /tokens``), so the token routes run last, in a second pass of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import pytest
from tornado.web import RequestHandler

from tests.conftest import make_settings
from webmacs import openapi
from webmacs.handlers import auth, datapoints, resources
from webmacs.validation import spec_schema

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")
EXAMPLES_PER_OPERATION = 12
TOKEN_ROUTES = "^/api/v1/tokens"


def test_every_route_has_an_operation_description():
    assert openapi.missing_operations() == []


def test_an_undescribed_route_is_reported(monkeypatch):
    class NewHandler(RequestHandler):
        async def get(self) -> None: ...

        async def delete(self) -> None: ...

    monkeypatch.setattr(auth, "default_handlers", [*auth.default_handlers, (r"/api/v1/new", NewHandler)])
    assert openapi.missing_operations() == ["GET /api/v1/new", "DELETE /api/v1/new"]
    with pytest.raises(ValueError, match="GET /api/v1/new"):
        openapi.build()


def test_request_bodies_are_the_handlers_specs():
    paths = openapi.build()["paths"]

    def body(path: str, method: str) -> dict:
        return paths[path][method]["requestBody"]["content"]["application/json"]["schema"]

    assert body("/api/v1/users", "post") == spec_schema(auth.USER_SPEC)
    assert body("/api/v1/users/{public_id}", "put") == spec_schema(auth.USER_SPEC, partial=True)
    assert "required" not in body("/api/v1/users/{public_id}", "put")
    events = body("/api/v1/events", "post")
    assert events["required"] == list(resources.EVENT_SPEC)
    assert events["properties"]["type"]["enum"] == list(resources.EVENT_SPEC["type"].choices)
    batch = body("/api/v1/datapoints/batch", "post")["properties"]["datapoints"]
    assert batch["maxItems"] == 500 and batch["items"] == spec_schema(datapoints.DATAPOINT_SPEC)
    # a change to a spec changes the document
    assert body("/api/v1/events", "post")["properties"]["name"]["maxLength"] == resources.EVENT_SPEC["name"].max_len


def test_every_rest_path_of_the_route_table_is_in_the_document():
    doc = openapi.build()
    described = {(path, method) for path, item in doc["paths"].items() for method in item}
    for _module, pattern, handler in openapi.routes():
        for method in openapi.handler_methods(handler):
            op = openapi.OPERATIONS[handler][method]
            assert (openapi.path_template(pattern, op.params), method) in described
    assert {s["path"] for s in doc["x-webmacs-websockets"]} == {"/ws/controller/telemetry", "/ws/datapoints/stream"}
    assert set(doc["components"]["securitySchemes"]) >= {"bearerJWT", "apiToken"}


async def test_the_document_is_served_without_a_token(server):
    resp = await server.request("GET", "/api/v1/openapi.json", token=None)
    assert resp.code == 200, resp
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json == json.loads(json.dumps(openapi.build()))


def test_the_cli_prints_the_document():
    import subprocess

    proc = subprocess.run([str(Path(sys.executable).with_name("webmacs")), "openapi"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["openapi"] == "3.1.0"


# --- schemathesis against a live server -------------------------------------------------

@pytest.fixture
def server_settings(database_url, tmp_path):
    return make_settings(database_url, WEBMACS_OTA_STORAGE_DIR=tmp_path / "ota",
                         WEBMACS_PLUGIN_PACKAGES_DIR=tmp_path / "packages")


async def _schemathesis(server, token: str, tmp_path: Path, *selection: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "run", f"{server.base_url}/api/v1/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", CHECKS, "--generation-deterministic",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--workers", "1", "--request-timeout", "30",
        "--no-color", "--suppress-health-check", "all", *selection,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_schemathesis_finds_nothing(server, tmp_path, caplog):
    resp = await server.request("POST", "/api/v1/tokens", {"name": "schemathesis"})
    assert resp.code == 201, resp
    token = resp.json["token"]
    caplog.set_level(logging.WARNING)

    code, out = await _schemathesis(server, token, tmp_path, "--exclude-path-regex", TOKEN_ROUTES)
    assert code == 0, out[-20000:]
    assert "Tested: " in out and " passed" in out, out[-3000:]
    code, out = await _schemathesis(server, token, tmp_path, "--include-path-regex", TOKEN_ROUTES)
    assert code == 0, out[-20000:]

    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
