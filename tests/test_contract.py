"""The WebMACS contract, to the letter (webmacs/contract.py, docs/rest-notes.md "Contract table").

1. Our OpenAPI document, flattened into the contract table, differs from the
   machine-readable contract (tests/contract/webmacs_contract.json) only where
   docs/rest-notes.md says so and why; and every difference listed there still exists.
2. On both backends, through a real server: the document it serves is the one the
   table was made from, and every out-of-contract value of every request field the
   contract constrains (too short, too long, out of range, not a choice, wrong type,
   missing) is a 422 naming the field, and changes nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.test_openapi import seed
from webmacs import contract, openapi

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = json.loads((ROOT / "tests" / "contract" / "webmacs_contract.json").read_text())
NOTES = (ROOT / "docs" / "rest-notes.md").read_text()


def test_every_difference_from_the_contract_is_documented():
    diffs = contract.differences(CONTRACT)
    missing, stale = contract.undocumented(diffs, contract.documented(NOTES))
    assert not missing, "differences from the WebMACS contract not listed in docs/rest-notes.md " \
                        "(fix them, or list them with the reason):\n" + "\n".join(f"{k}  {w}" for k, w in missing)
    assert not stale, f"docs/rest-notes.md lists differences that no longer exist: {stale}"


def test_the_table_sees_a_difference():
    """The comparison can fail: a constraint changed in our document shows up by its key."""
    doc = openapi.build()
    body = doc["paths"]["/api/v1/plugins/{public_id}/channels"]["post"]["requestBody"]
    body["content"]["application/json"]["schema"]["properties"]["unit"]["minLength"] = 0
    del doc["paths"]["/api/v1/ota/{public_id}/apply"]
    keys = dict(contract.differences(CONTRACT, contract.table(doc)))
    assert keys["POST /api/v1/plugins/{}/channels request.unit.minLength"] == "contract 1, ours none"
    assert keys["POST /api/v1/ota/{}/apply"].startswith("missing")
    missing, _ = contract.undocumented(list(keys.items()), contract.documented(NOTES))
    assert {k for k, _ in missing} == {"POST /api/v1/plugins/{}/channels request.unit.minLength",
                                       "POST /api/v1/ota/{}/apply"}


def test_every_contract_operation_has_its_schema():
    for key, op in CONTRACT["operations"].items():
        for part in ("request", "response"):
            name = op.get(part)
            if name and name != "csv":
                assert re.sub(r"^Page\[|^\[|\]$", "", name) in CONTRACT["schemas"], (key, name)


# --- through a real server ------------------------------------------------------------


def _base_bodies(event: str) -> dict[str, dict]:
    """A valid body for every contract operation with a request (updates: empty, any subset
    is valid), so one broken field is the only thing wrong."""
    return {
        "POST /api/v1/auth/login": {"email": "nobody@example.com", "password": "not-the-password"},
        "POST /api/v1/auth/sso/exchange": {"code": "not-a-code"},
        "POST /api/v1/tokens": {"name": "contract"},
        "POST /api/v1/users": {"email": "contract@example.com", "username": "contract", "password": "password-123"},
        "POST /api/v1/experiments": {"name": "Contract run"},
        "POST /api/v1/events": {"name": "Contract", "type": "sensor", "unit": "V", "min_value": 0, "max_value": 1},
        "POST /api/v1/dashboards": {"name": "Contract board"},
        "POST /api/v1/dashboards/{}/widgets": {"widget_type": "gauge", "title": "Contract gauge"},
        "POST /api/v1/datapoints": {"value": 1.5, "event_public_id": event},
        "POST /api/v1/datapoints/batch": {"datapoints": [{"value": 1.5, "event_public_id": event}]},
        "POST /api/v1/datapoints/series": {"event_public_ids": [event]},
        "POST /api/v1/logging": {"content": "Contract entry"},
        "POST /api/v1/webhooks": {"url": "http://127.0.0.1:9/contract", "events": ["sensor.reading"]},
        "POST /api/v1/rules": {"name": "Contract rule", "event_public_id": event, "operator": "gt", "threshold": 1,
                               "action_type": "log"},
        "POST /api/v1/ota": {"version": "7.7.7"},
        "POST /api/v1/plugins": {"plugin_id": "simulated", "instance_name": "Contract"},
        "POST /api/v1/plugins/{}/channels": {"channel_id": "contract", "channel_name": "Contract", "direction": "input",
                                             "unit": "V"},
    }


WRONG_TYPE = {"string": 12345, "number": "abc", "integer": "abc", "array": "abc", "object": "abc"}


def violations(spec: dict) -> list[tuple[str, object]]:
    """(label, value) for each way a value breaks ``spec``; value ``...`` means "left out"."""
    out: list[tuple[str, object]] = []
    kind = spec.get("type")
    if spec.get("required"):
        out.append(("missing", ...))
    if kind in WRONG_TYPE:
        out.append(("type", WRONG_TYPE[kind]))
    if spec.get("minLength", 0) > 0:
        out.append(("minLength", "x" * (spec["minLength"] - 1)))
    if "maxLength" in spec:
        out.append(("maxLength", "x" * (spec["maxLength"] + 1)))
    if "minimum" in spec:
        out.append(("minimum", spec["minimum"] - 1))
    if "maximum" in spec:
        out.append(("maximum", spec["maximum"] + 1))
    if "enum" in spec:
        out.append(("enum", "not-a-choice"))
    if spec.get("format") == "email":
        out.append(("format", "not-an-email"))
    if spec.get("pattern"):
        out.append(("pattern", "ftp://example.com/x" if kind == "string" and "url" in spec.get("_name", "") else "2.1"))
    items = spec.get("items")
    if isinstance(items, dict) and "enum" in items:
        out.append(("items.enum", ["not-a-choice"]))
    return out


def _concrete(key: str, ids: dict[str, dict[str, str]]) -> str:
    method, path = key.split(" ", 1)
    for template in openapi.build()["paths"]:
        if contract.PATH_PARAM.sub("{}", template) == path:
            values = ids.get(template, {})
            return re.sub(r"\{([^}]+)\}", lambda m: values[f"path.{m.group(1)}"], template)
    raise AssertionError(f"{key}: no such path in our document")


async def test_out_of_contract_values_are_422_naming_the_field(server):
    served = await server.request("GET", "/api/v1/openapi.json", token=None)
    assert contract.table(served.json).keys() == contract.table().keys()
    ids = await seed(server)
    event = ids["/api/v1/events/{public_id}"]["path.public_id"]
    bases = _base_bodies(event)
    counts = {}
    for listing in ("events", "experiments", "users", "rules", "webhooks", "logging", "ota", "plugins", "tokens"):
        counts[listing] = (await server.request("GET", f"/api/v1/{listing}")).json["total"]
    tried = 0
    for key, op in CONTRACT["operations"].items():
        if "request" not in op:
            continue
        method = key.split(" ", 1)[0]
        base = bases.get(key, {}) if method == "POST" else {}
        assert method == "PUT" or key in bases, f"{key}: no valid base body in this test"
        path = _concrete(key, ids)
        for name, spec in CONTRACT["schemas"][op["request"]].items():
            for label, value in violations({**spec, "_name": name}):
                if label == "missing" and method == "PUT":
                    continue
                body = {k: v for k, v in base.items() if k != name}
                if value is not ...:
                    body[name] = value
                elif name not in base:
                    continue
                resp = await server.request(method, path, body)
                tried += 1
                assert resp.code == 422 and re.match(rf"{re.escape(name)}(\[\d+\])?:", resp.json["detail"]), \
                    (key, name, label, value if not isinstance(value, str) else value[:40], resp.code, resp.body[:200])
        if key == "POST /api/v1/datapoints/batch":  # its one list bound, past the contract's 500
            body = {"datapoints": [base["datapoints"][0]] * 501}
            resp = await server.request(method, path, body)
            assert resp.code == 422 and resp.json["detail"].startswith("datapoints"), resp
    assert tried > 150  # every constrained field of every schema was tried
    for listing, total in counts.items():
        assert (await server.request("GET", f"/api/v1/{listing}")).json["total"] == total, listing
