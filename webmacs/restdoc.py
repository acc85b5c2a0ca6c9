"""docs/rest.md, written from the OpenAPI document (:mod:`webmacs.openapi`).

Every operation gets its summary, role, parameters, a request example and a
response example. The examples are made from the schemas (their ``examples``,
defaults, bounds and choices, and a few names this API uses), so the page shows
what the server validates and answers, and ``tests/test_rest_docs.py`` fails
when the page in the repository is not what this module writes.

    python -m webmacs.openapi --markdown > docs/rest.md
"""

from __future__ import annotations

import json
from typing import Any

TIME = "2026-01-05T11:00:00.500000+00:00"
PUBLIC_ID = "8c1f4d2e-6b7a-4e59-9d03-2a5b7c9e1f40"

# example values of fields that carry the same meaning wherever they appear
BY_NAME: dict[str, Any] = {
    "email": "ada@example.com", "username": "ada", "password": "correct-horse-battery", "name": "Reactor temperature",
    "unit": "°C", "content": "Heater switched to manual.", "title": "Reactor", "instance_name": "Bench rig",
    "plugin_id": "simulated", "channel_id": "temp_1", "channel_name": "Temperature 1", "version": "2.1.0",
    "changelog": "Faster sampling.", "code": "Zq3m0f7N2bYwK8sVd1cP", "token": "wm_pat_3l8Qm0yZ4f2...",
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9...", "message": "Done.", "detail": "Not Found",
    "secret": "whsec-2f9a...", "url": "https://hooks.example.com/webmacs", "min_value": 0, "max_value": 100,
    "threshold": 80, "threshold_high": 90, "value": 21.5, "total": 1, "uptime_seconds": 3600.5,
    "file_hash_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "package_name": "webmacs-plugin-example", "file_name": "webmacs_plugin_example-1.0.0-py3-none-any.whl",
    "config_json": None, "batch_id": "ctl-1-000042", "current_version": "2.0.0", "latest_version": "2.1.0",
    "event_name": "Reactor temperature", "provider_name": "Lab SSO", "file_size_bytes": 1048576,
    "download_url": f"/api/v1/ota/{PUBLIC_ID}/firmware", "accepted": 2, "rejected": 0, "attempts": 1,
    "response_code": 200, "last_error": None, "error_message": None, "sso_provider": None, "command": None,
    "id": "simulated", "vendor": "WebMACS", "description": "Simulated sensors.", "instance": PUBLIC_ID,
    "admin": False, "duplicate": False, "page": 1, "page_size": 25, "users_exist": True,
}


class Examples:
    def __init__(self, doc: dict) -> None:
        self.schemas = doc["components"]["schemas"]

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def of(self, schema: dict, name: str = "", *, partial: bool = False) -> Any:
        schema = self.resolve(schema)
        if "examples" in schema:
            return schema["examples"][0]
        if "anyOf" in schema:
            return self.of(next(s for s in schema["anyOf"] if s.get("type") != "null"), name)
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type", "object")
        if isinstance(kind, list):
            if name in BY_NAME and BY_NAME[name] is None and "null" in kind:
                return None
            kind = next(k for k in kind if k != "null")
        if "default" in schema and not (name == "config_json"):
            return schema["default"]
        if kind == "object":
            return self._object(schema, partial)
        if kind == "array":
            return [self.of(schema.get("items", {}), name.rstrip("s"))]
        if kind == "boolean":
            return BY_NAME.get(name, True)
        if kind in ("integer", "number"):
            value = BY_NAME.get(name)
            if not isinstance(value, (int, float)):
                value = 1 if schema.get("minimum", 1) <= 1 <= schema.get("maximum", 1) else schema["minimum"]
            return value
        return self._string(schema, name)

    def _object(self, schema: dict, partial: bool) -> dict:
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties")
            return {PUBLIC_ID: self.of(extra)} if isinstance(extra, dict) else {}
        names = list(props)
        if partial:  # an update: show a change of one or two fields
            names = names[:2]
        return {k: self.of(props[k], k) for k in names}

    def _string(self, schema: dict, name: str) -> Any:
        fmt = schema.get("format")
        if fmt == "date-time":
            return TIME
        if fmt == "binary":
            return "<file bytes>"
        if name in BY_NAME and BY_NAME[name] is not None:
            return BY_NAME[name]
        if name == "public_id" or name.endswith("_id"):
            return PUBLIC_ID
        text = "text"
        return text + "x" * max(0, schema.get("minLength", 0) - len(text))


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _role(op: dict) -> str:
    if not op.get("security"):
        return "public"
    if any("metricsToken" in s for s in op["security"]):
        return "bearer WEBMACS_METRICS_TOKEN"
    return f"{op.get('x-webmacs-role', 'viewer')} (bearer JWT or API token)"


def _anchor(method: str, path: str) -> str:
    text = f"{method} {path}".lower()
    return "".join(ch for ch in text.replace(" ", "-") if ch.isalnum() or ch in "-_")


def operation_md(ex: Examples, path: str, method: str, op: dict) -> list[str]:
    out = [f"### `{method.upper()} {path}`", "", f"{op['summary']}. Access: {_role(op)}.", ""]
    query = [p for p in op.get("parameters", []) if p["in"] == "query"]
    if query:
        out += ["| query parameter | type | |", "|---|---|---|"]
        for p in query:
            s = p["schema"]
            kind = " or ".join(s["enum"]) if "enum" in s else s.get("type", "string")
            bounds = f" {s['minimum']}–{s['maximum']}" if "minimum" in s and "maximum" in s else ""
            default = f", default {json.dumps(s['default'])}" if "default" in s else ""
            out.append(f"| `{p['name']}` | {kind}{bounds}{default} | {p.get('description', '')} |")
        out.append("")
    body = op.get("requestBody")
    if body:
        media, content = next(iter(body["content"].items()))
        if media == "application/json":
            schema = content["schema"]
            partial = "required" not in schema
            out += [f"Request{' (any subset of the fields)' if partial else ''}:", "", "```json",
                    _json(ex.of(schema, partial=partial)), "```", ""]
        else:
            out += ["Request: " + " or ".join(f"`{m}`" for m in body["content"])
                    + (" (the file in the field `file`)" if "multipart/form-data" in body["content"] else "")
                    + ".", ""]
    else:
        example_query = "&".join(f"{p['name']}={ex.of(p['schema'], p['name'])}".lower() for p in query[:2])
        out += ["Request: no body" + (f", e.g. `{method.upper()} {path}?{example_query}`" if query else "")
                + ".", ""]
    codes = sorted(op["responses"], key=int)
    ok = codes[0]
    response = op["responses"][ok]
    content = response.get("content")
    if content:
        media, body_schema = next(iter(content.items()))
        value = ex.of(body_schema.get("schema", {}))
        if media == "application/json":
            out += [f"Response `{ok}`:", "", "```json", _json(value), "```", ""]
        else:
            out += [f"Response `{ok}`: `{media}`" + (f", e.g.\n\n```\n{value}```" if isinstance(value, str) and
                                                       value.endswith("\n") else "."), ""]
    else:
        out += [f"Response `{ok}`: {response['description']}.", ""]
    errors = [c for c in codes[1:]]
    if errors:
        out += ["Errors (`{\"detail\": \"...\"}`): " + ", ".join(f"`{c}`" for c in errors) + ".", ""]
    return out


HEADER = """# REST API reference

<!-- Generated from the OpenAPI document: do not edit by hand. Regenerate with
     python -m webmacs.openapi --markdown > docs/rest.md
     (tests/test_rest_docs.py fails when this file is not what that writes). -->

Every endpoint the server answers, from the OpenAPI 3.1 document it serves at
`GET /api/v1/openapi.json` (public; `webmacs openapi` prints it). Request bodies
and query parameters there are built from the same field definitions the
handlers validate with, and the test suite runs schemathesis against a live
server from it, so this page, the document and the server agree.

Conventions (details and the choices behind them: [rest-notes.md](rest-notes.md)):

- **Authentication**: `Authorization: Bearer <token>`, either the JWT of
  `POST /api/v1/auth/login` (ended by `POST /api/v1/auth/logout`) or an API token
  made with `POST /api/v1/tokens` (ended by deleting it). Roles: viewer reads,
  operator also writes and pushes telemetry, admin also manages users,
  webhooks, rules, packages and OTA. A missing or bad token is `401`, too low a
  role `403`.
- **Errors** are always `{"detail": "..."}`; a field error starts with the
  field's name (`"unit: field required"`).
- **Writes** answer `{"status": "success", "message": "...", "data": <resource>}`
  (no `data` for deletes); the exceptions are marked by their response below.
- **Lists** take `?page=` (from 1) and `?page_size=` (1–100, default 25) and answer
  `{"page", "page_size", "total", "data": [...]}`.
- Every `/api/v1` path also answers with one trailing slash. `429` (with
  `Retry-After`) is the per-address rate limit; `503` means the database is
  unavailable, retry.
- The WebSocket endpoints are described in [websocket.md](websocket.md).

"""


def markdown(doc: dict) -> str:
    ex = Examples(doc)
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method, op))
    out = [HEADER.rstrip("\n"), "", "## Contents", ""]
    for tag, ops in by_tag.items():
        out.append(f"- **{tag}**: " + ", ".join(f"[`{m.upper()} {p}`](#{_anchor(m, p)})" for p, m, _ in ops))
    out.append("")
    for tag, ops in by_tag.items():
        out += [f"## {tag}", ""]
        for path, method, op in ops:
            out += operation_md(ex, path, method, op)
    sockets = doc.get("x-webmacs-websockets", [])
    if sockets:
        out += ["## WebSockets", ""] + [f"- `{s['path']}`: {s['description']}" for s in sockets] + [""]
    return "\n".join(out).replace("\r\n", "\n").rstrip("\n") + "\n"  # CSV rows end in CRLF
