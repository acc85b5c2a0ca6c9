"""The contract table: our OpenAPI document, operation by operation and field by field,
set against a machine-readable copy of the WebMACS REST contract.

:func:`table` flattens an OpenAPI document (ours: :func:`webmacs.openapi.build`) into
one :class:`Operation` per ``METHOD /path`` (path parameters written ``{}``, since the
contract says ``{id}`` where we say ``{public_id}``): who may call it, its success
status, the error statuses it declares, the fields of its JSON request body with
their constraints, and the fields of its response. :func:`differences` compares that
with the contract (``tests/contract/webmacs_contract.json``, written by hand from the
WebMACS ``rest.md`` and ``schemas.md``; its ``about`` says how it is written) and
names every difference by a stable key, e.g.::

    POST /api/v1/plugins/{}/channels request.unit.minLength     contract 1, ours none
    POST /api/v1/ota/{}/deploy                                   extra: not in the contract
    PUT /api/v1/events/{} request.name.maxLength+                ours adds 255 (the contract states none)

A key ending in ``+`` is a bound we add where the contract states none. The
differences we keep on purpose are listed, with their reasons, in
``docs/rest-notes.md`` (section "Contract table"); :func:`documented` reads those keys
(``fnmatch`` patterns allowed) and ``tests/test_contract.py`` fails on any difference
not listed there, and on any listed one that no longer exists.

``python -m webmacs.contract [CONTRACT.json]`` prints the table's differences.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUEST_ATTRS = ("type", "required", "nullable", "minLength", "maxLength", "minimum", "maximum",
                 "minItems", "maxItems", "enum", "format", "pattern")
BOUNDS = ("minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems")
RESPONSE_ATTRS = ("type", "nullable", "enum", "format")
PATH_PARAM = re.compile(r"\{[^}]*\}")
ENVELOPE = {"status", "message"}


@dataclass
class Operation:
    auth: str  # public | user | admin | other
    ok: int
    errors: set[int] = field(default_factory=set)
    upload: str | None = None
    request: dict[str, dict] | None = None  # field -> attributes (items: nested)
    response: str | None = None  # StatusResponse | Page | list | object | csv | other media
    response_fields: dict[str, dict] | None = None  # of the resource (Page / list: of one item)
    envelope_extra: set[str] = field(default_factory=set)  # fields beside status/message


def _resolve(doc: dict, schema: dict | None) -> dict:
    while schema and "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema or {}


def _attrs(doc: dict, schema: dict, required: bool | None = None) -> dict:
    schema = _resolve(doc, schema)
    kind = schema.get("type")
    nullable = False
    if isinstance(kind, list):
        nullable = "null" in kind
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else kinds or None
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        alt = _resolve(doc, alt)
        if alt.get("type") == "null":
            nullable = True
        elif kind is None:
            kind = alt.get("type")
    out: dict[str, Any] = {"type": kind, "nullable": nullable}
    if required is not None:
        out["required"] = required
    for name in BOUNDS:
        if name in schema:
            out[name] = schema[name]
    for name in ("minLength", "minItems"):
        if out.get(name) == 0:
            del out[name]  # no bound at all
    if "enum" in schema:
        out["enum"] = sorted(v for v in schema["enum"] if v is not None)
    if "format" in schema:
        out["format"] = schema["format"]
    if "pattern" in schema:
        out["pattern"] = True
    if kind == "array" and "items" in schema:
        item = _resolve(doc, schema["items"])
        out["items"] = _fields(doc, item) if item.get("type") == "object" else _attrs(doc, item)
    return out


def _fields(doc: dict, schema: dict) -> dict[str, dict]:
    schema = _resolve(doc, schema)
    required = set(schema.get("required", ()))
    return {name: _attrs(doc, prop, name in required) for name, prop in schema.get("properties", {}).items()}


def _success(op: dict) -> tuple[int, dict]:
    for code, resp in op.get("responses", {}).items():
        if code[0] in "23":
            return int(code), resp
    return 0, {}


def _operation(doc: dict, op: dict) -> Operation:
    role = op.get("x-webmacs-role")
    auth = {None: "public", "admin": "admin", "viewer": "user", "operator": "user"}.get(role, "other")
    ok, success = _success(op)
    result = Operation(auth=auth, ok=ok, errors={int(c) for c in op.get("responses", {}) if c[0] in "45"})
    body = op.get("requestBody", {}).get("content", {})
    if "application/json" in body:
        result.request = _fields(doc, body["application/json"].get("schema", {}))
    elif body:
        result.upload = ",".join(sorted(body))
    content = success.get("content", {})
    if "application/json" not in content:
        result.response = next(iter(content), None)
        if result.response == "text/csv":
            result.response = "csv"
        return result
    schema = _resolve(doc, content["application/json"].get("schema", {}))
    props = schema.get("properties", {})
    if schema.get("type") == "array":
        result.response, result.response_fields = "list", _fields(doc, schema.get("items", {}))
    elif {"page", "page_size", "total", "data"} <= set(props):
        result.response = "Page"
        result.response_fields = _fields(doc, _resolve(doc, props["data"]).get("items", {}))
    elif ENVELOPE <= set(props) and _resolve(doc, props["status"]).get("enum") == ["success"]:
        result.response = "StatusResponse"
        result.envelope_extra = set(props) - ENVELOPE
        result.response_fields = {n: _attrs(doc, p) for n, p in props.items()}
    else:
        result.response, result.response_fields = "object", _fields(doc, schema)
    return result


def table(doc: dict | None = None) -> dict[str, Operation]:
    """``METHOD /path`` (parameters as ``{}``) -> :class:`Operation`, from an OpenAPI document."""
    if doc is None:
        from webmacs import openapi

        doc = openapi.build()
    out = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                out[f"{method.upper()} {PATH_PARAM.sub('{}', path)}"] = _operation(doc, op)
    return out


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value, ensure_ascii=False)


def _compare_fields(key: str, side: str, theirs: dict[str, dict], ours: dict[str, dict], schemas: dict,
                    attrs: tuple[str, ...], out: list) -> None:
    for name, want in theirs.items():
        where = f"{key} {side}.{name}"
        have = ours.get(name)
        if have is None:
            out.append((where, "missing: the contract has this field"))
            continue
        _compare_attrs(where, want, have, schemas, attrs, out)
    for name in ours.keys() - theirs.keys():
        out.append((f"{key} {side}.{name}", "extra: not in the contract"))


def _compare_attrs(where: str, want: dict, have: dict, schemas: dict, attrs: tuple[str, ...], out: list) -> None:
    request = "required" in attrs
    for attr in attrs:
        theirs, ours = want.get(attr), have.get(attr)
        if attr == "required":
            theirs, ours = bool(theirs), bool(ours)
        elif attr == "nullable":
            if request and theirs is None:
                continue  # the contract does not say whether null is accepted
            theirs, ours = bool(theirs), bool(ours)
            if not request and theirs and not ours:
                continue  # never null where the contract allows null: every client of it copes
        elif attr == "format" and theirs is None:
            continue  # a format we name (date-time, uri) where the contract names none is no constraint of its
        elif attr == "pattern":
            ours = bool(ours or have.get("format") or have.get("enum"))
            if not theirs:
                continue
        elif attr == "enum":
            if theirs is None and not request:
                continue  # an answer that names its few values is no difference
            theirs = sorted(theirs) if theirs is not None else None
        if attr in BOUNDS and theirs is None and ours is not None:
            out.append((f"{where}.{attr}+", f"ours adds {_show(ours)} (the contract states none)"))
        elif theirs != ours:
            out.append((f"{where}.{attr}", f"contract {_show(theirs)}, ours {_show(ours)}"))
    items = want.get("items")
    if items is not None and request:
        got = have.get("items") or {}
        if isinstance(items, str):
            _compare_fields(where.rsplit(" ", 1)[0], f"{where.rsplit(' ', 1)[1]}[]", schemas[items], got, schemas,
                            REQUEST_ATTRS, out)
        else:
            _compare_attrs(f"{where}[]", items, got, schemas, REQUEST_ATTRS, out)


def differences(contract: dict, ours: dict[str, Operation] | None = None) -> list[tuple[str, str]]:
    """Every difference between the contract and our table: ``(key, what)``, sorted."""
    ours = table() if ours is None else ours
    schemas = contract["schemas"]
    out: list[tuple[str, str]] = []
    for key, want in contract["operations"].items():
        have = ours.get(key)
        if have is None:
            out.append((key, "missing: the contract has this operation"))
            continue
        if have.auth != want["auth"]:
            out.append((f"{key} auth", f"contract {want['auth']}, ours {have.auth}"))
        if have.ok != want["ok"]:
            out.append((f"{key} ok", f"contract {want['ok']}, ours {have.ok}"))
        for code in sorted(set(want.get("errors", ())) - have.errors):
            out.append((f"{key} errors.{code}", "the contract answers it, our document does not declare it"))
        if want.get("upload") and want["upload"] not in (have.upload or ""):
            out.append((f"{key} upload", f"contract {want['upload']}, ours {have.upload}"))
        if "request" in want:
            _compare_fields(key, "request", schemas[want["request"]], have.request or {}, schemas, REQUEST_ATTRS, out)
        elif have.request:
            out.append((f"{key} request", "extra: the contract describes no body"))
        _compare_response(key, want.get("response"), have, schemas, out)
    for key in ours.keys() - contract["operations"].keys():
        out.append((key, "extra: not in the contract"))
    return sorted(out)


def _compare_response(key: str, want: str | None, have: Operation, schemas: dict, out: list) -> None:
    if want is None:
        return
    if want == "csv":
        if have.response != "csv":
            out.append((f"{key} response", f"contract text/csv, ours {have.response}"))
        return
    if want == "StatusResponse":
        if have.response != "StatusResponse":
            out.append((f"{key} response", f"contract StatusResponse, ours {have.response}"))
        for name in sorted(have.envelope_extra):
            out.append((f"{key} response.{name}", "extra: beside the StatusResponse"))
        return
    shape, name = "object", want
    if want.startswith("Page["):
        shape, name = "Page", want[5:-1]
    elif want.startswith("["):
        shape, name = "list", want[1:-1]
    if shape == "object" and have.response == "StatusResponse":
        shape = "StatusResponse"  # an object that happens to carry status and message (the login answer)
    if have.response != shape:
        out.append((f"{key} response", f"contract {shape} of {name}, ours {have.response}"))
        return
    _compare_fields(key, "response", schemas[name], have.response_fields or {}, schemas, RESPONSE_ATTRS, out)


NOTES_SECTION = "## Contract table"
_KEY = re.compile(r"`([A-Z]+ /[^`]*|\* [^`]*)`")


def documented(notes: str) -> list[str]:
    """The difference keys (``fnmatch`` patterns) that the "Contract table" section of
    docs/rest-notes.md lists: every backticked ``METHOD /path ...`` in its bullets."""
    start = notes.index(NOTES_SECTION)
    end = notes.find("\n## ", start + len(NOTES_SECTION))
    section = notes[start:end if end > 0 else None]
    keys = []
    for line in section.splitlines():
        if line.startswith("- "):
            head = line[2:].split(":", 1)[0] if line[2:].startswith("`") else ""
            keys += _KEY.findall(head) if head else []
    return keys


def undocumented(diffs: list[tuple[str, str]], keys: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(differences no key matches, keys that match no difference)."""
    missing = [d for d in diffs if not any(fnmatch.fnmatchcase(d[0], k) for k in keys)]
    stale = [k for k in keys if not any(fnmatch.fnmatchcase(d[0], k) for d in diffs)]
    return missing, stale


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "tests" / "contract" / "webmacs_contract.json"
    diffs = differences(json.loads(path.read_text()))
    width = max((len(k) for k, _ in diffs), default=0)
    for key, what in diffs:
        print(f"{key:<{width}}  {what}")
    print(f"{len(diffs)} differences", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
