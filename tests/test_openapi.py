"""The OpenAPI document (webmacs/openapi.py): complete, built from the handlers' specs,
served publicly; and schemathesis run from it against a live server.

The schemathesis run is a real ``schemathesis`` process against the ``server``
fixture (a real port, SQLite and TimescaleDB), with an admin API token: every
operation, positive and negative cases, the stateful phase following the
document's links, and every path id of the seeded resources pointing at real
ones. It fails on any 5xx, any status code the document does not list, any
response body, header or content type that does not match it, a 405 without
``Allow``, invalid input that is not refused with a 4xx, and any ERROR the
server logged meanwhile. Deterministic: ``--generation-deterministic``
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
import os
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
          "response_schema_conformance,response_headers_conformance,unsupported_method,negative_data_rejection")
# per operation and phase; raise it for a deeper local run (the suite's run takes about a minute)
EXAMPLES_PER_OPERATION = int(os.environ.get("WEBMACS_TEST_SCHEMATHESIS_EXAMPLES", "12"))
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
    # a method the route does not have: 405 naming those it has (RFC 9110), here and on the web app
    resp = await server.request("DELETE", "/api/v1/openapi.json")
    assert resp.code == 405 and resp.headers["Allow"] == "GET" and resp.json == {"detail": "Method Not Allowed"}
    resp = await server.request("PATCH", "/api/v1/users/x", body={})
    assert resp.code == 405 and resp.headers["Allow"] == "GET, DELETE, PUT", resp
    resp = await server.request("POST", "/", body={}, token=None)
    assert resp.code == 405 and resp.headers["Allow"] == "GET, HEAD", resp


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


async def seed(server) -> dict[str, dict[str, str]]:
    """Real resources of every kind, and which path's ids name them: schemathesis then reaches
    past the 404 of a random id into the handlers (reads, updates, the CSV export, OTA moves;
    a path's DELETE comes after its GET and PUT in the document)."""

    async def make(path: str, body: dict) -> dict:
        resp = await server.request("POST", path, body)
        assert resp.code == 201, (path, resp)
        return resp.json.get("data", resp.json)

    event = (await server.linked_events(1, "Seeded"))[0]
    instance = (await server.request("GET", "/api/v1/plugins")).json["data"][0]
    mapping = instance["channel_mappings"][0]["public_id"]
    experiment = (await make("/api/v1/experiments", {"name": "Seeded run"}))["public_id"]
    await make("/api/v1/datapoints", {"event_public_id": event, "value": 21.5})
    hook = (await make("/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["sensor.reading"]}))
    rule = await make("/api/v1/rules", {"name": "Seeded rule", "event_public_id": event, "operator": "gt",
                                        "threshold": 90, "action_type": "log"})
    entry = await make("/api/v1/logging", {"content": "Seeded entry"})
    board = await make("/api/v1/dashboards", {"name": "Seeded board"})
    widget = await make(f"/api/v1/dashboards/{board['public_id']}/widgets",
                        {"widget_type": "gauge", "title": "Seeded gauge", "event_public_id": event})
    update = await make("/api/v1/ota", {"version": "9.0.0"})
    upload = await server.request("POST", f"/api/v1/ota/{update['public_id']}/firmware", raw=b"\x7fELF firmware",
                                  headers={"Content-Type": "application/octet-stream"})
    assert upload.code == 201, upload
    user = await make("/api/v1/users", {"email": "seeded@example.com", "username": "seeded",
                                        "password": "password-123"})
    ids = {
        "/api/v1/events/{public_id}": event, "/api/v1/experiments/{public_id}": experiment,
        "/api/v1/experiments/{public_id}/stop": experiment, "/api/v1/experiments/{public_id}/export/csv": experiment,
        "/api/v1/plugins/{public_id}": instance["public_id"],
        "/api/v1/plugins/{public_id}/channels": instance["public_id"],
        "/api/v1/webhooks/{public_id}": hook["public_id"], "/api/v1/webhooks/{public_id}/deliveries": hook["public_id"],
        "/api/v1/rules/{public_id}": rule["public_id"], "/api/v1/logging/{public_id}": entry["public_id"],
        "/api/v1/dashboards/{public_id}": board["public_id"],
        "/api/v1/dashboards/{public_id}/widgets": board["public_id"], "/api/v1/users/{public_id}": user["public_id"],
        **{f"/api/v1/ota/{{public_id}}{tail}": update["public_id"]
           for tail in ("", "/apply", "/deploy", "/rollback", "/status", "/firmware")},
    }
    out = {path: {"path.public_id": value} for path, value in ids.items()}
    out["/api/v1/plugins/{public_id}/channels/{mapping_id}"] = {"path.public_id": instance["public_id"],
                                                               "path.mapping_id": mapping}
    out["/api/v1/dashboards/{public_id}/widgets/{widget_id}"] = {"path.public_id": board["public_id"],
                                                                "path.widget_id": widget["public_id"]}
    return out


def write_config(path: Path, seeded: dict[str, dict[str, str]]) -> Path:
    lines = []
    for template, params in seeded.items():
        values = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in params.items())
        lines += ["[[operations]]", f"include-path = {json.dumps(template)}", f"parameters = {{ {values} }}", ""]
    path.write_text("\n".join(lines))
    return path


async def _schemathesis(server, token: str, tmp_path: Path, *selection: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        SCHEMATHESIS, "--config-file", str(tmp_path / "schemathesis.toml"),
        "run", f"{server.base_url}/api/v1/openapi.json",
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
    seeded = await seed(server)
    write_config(tmp_path / "schemathesis.toml", seeded)
    caplog.set_level(logging.WARNING)

    code, out = await _schemathesis(server, token, tmp_path, "--exclude-path-regex", TOKEN_ROUTES)
    assert code == 0, out[-20000:]
    assert "Tested: " in out and " passed" in out, out[-3000:]
    code, out = await _schemathesis(server, token, tmp_path, "--include-path-regex", TOKEN_ROUTES)
    assert code == 0, out[-20000:]

    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_documented_lengths_fit_in_the_body_limit(server):
    """Found by schemathesis: a config_json or changelog of its documented maximum length
    was refused with 413 (the route's body limit was smaller than the field's)."""
    board = await server.request("POST", "/api/v1/dashboards", {"name": "Limits"})
    assert board.code == 201, board
    config = json.dumps({"note": "é" * 65_000}, ensure_ascii=False)  # 65,012 characters, ~390 kB as \u escapes
    assert len(config) <= 65_536
    raw = json.dumps({"widget_type": "gauge", "title": "Big", "config_json": config}).encode()  # ensure_ascii
    assert len(raw) > 64 * 1024
    widget = await server.request("POST", f"/api/v1/dashboards/{board.json['public_id']}/widgets", raw=raw)
    assert widget.code == 201 and widget.json["config_json"] == config, widget
    update = await server.request("POST", "/api/v1/ota", {"version": "3.0.0", "changelog": "ü" * 100_000})
    assert update.code == 201 and len(update.json["data"]["changelog"]) == 100_000, update
    too_long = await server.request("POST", "/api/v1/ota", {"version": "3.0.1", "changelog": "ü" * 100_001})
    assert too_long.code == 422 and too_long.json["detail"].startswith("changelog:"), too_long
    # a valid semantic version longer than the column (PostgreSQL refused the insert: a 503)
    long_version = await server.request("POST", "/api/v1/ota", {"version": "3.0.2-" + "a" * 60})
    assert long_version.code == 422, long_version
    assert long_version.json["detail"] == "version: must be at most 64 characters", long_version


async def test_datapoint_filters_are_checked(server):
    resp = await server.request("GET", "/api/v1/datapoints?event_public_id=" + "e" * 256)
    assert resp.code == 422 and resp.json["detail"] == "event_public_id: length must be between 0 and 255", resp
    resp = await server.request("GET", "/api/v1/datapoints?event_public_id=&experiment_public_id=")
    assert resp.code == 200 and resp.json["total"] == 0, resp


async def test_a_date_time_beyond_the_calendar_in_utc_is_a_422(server):
    # year 9999 at -05:00 is year 10000 in UTC: Python cannot represent it (was an OverflowError: a 500)
    for value in ("9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"):
        resp = await server.request("POST", "/api/v1/tokens", {"name": "far", "expires_at": value})
        assert resp.code == 422, resp
        assert resp.json["detail"] == "expires_at: must be an ISO 8601 date-time string", resp


async def test_a_datapoint_id_past_bigint_is_a_404(server):
    for public_id in ("99999999999999999999-1-1", "1-1-99999999999999999999"):
        for method in ("GET", "DELETE"):
            resp = await server.request(method, f"/api/v1/datapoints/{public_id}")
            assert resp.code == 404 and resp.json == {"detail": "Datapoint not found."}, (method, resp)


async def test_an_instance_name_of_full_length_makes_its_events(server):
    """Found by schemathesis on TimescaleDB: the events made for a 255-character instance
    name got longer names than their column takes (a 503 there; SQLite does not check)."""
    names = []
    for _ in range(2):
        resp = await server.request("POST", "/api/v1/plugins", {"plugin_id": "simulated", "instance_name": "r" * 255})
        assert resp.code == 201, resp
        for mapping in resp.json["data"]["channel_mappings"]:
            event = await server.request("GET", f"/api/v1/events/{mapping['event_public_id']}")
            names.append(event.json["name"])
    assert names and all(len(n) <= 255 for n in names) and len(set(names)) == len(names), names
