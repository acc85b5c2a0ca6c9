"""Threshold rules: the comparison at every boundary, end to end through real ingest,
webhook and log actions, cooldowns across restarts and across two server processes,
live rule changes, CRUD/validation/roles."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import make_settings, start_server, stop_server, wait_for
from tests.webhook_receiver import receiver  # noqa: F401 - fixture
from webmacs.rules import compare

API = "/api/v1/rules"


# --- the comparison ---------------------------------------------------------------------------

@pytest.mark.parametrize("operator, value, expected", [
    ("gt", 10.0, False), ("gt", 10.000001, True), ("gt", 9.999999, False),
    ("lt", 10.0, False), ("lt", 9.999999, True), ("lt", 10.000001, False),
    ("gte", 10.0, True), ("gte", 9.999999, False), ("gte", 10.000001, True),
    ("lte", 10.0, True), ("lte", 10.000001, False), ("lte", 9.999999, True),
    ("eq", 10.0, True), ("eq", 10.0 + 5e-10, True), ("eq", 10.0 - 5e-10, True),
    ("eq", 10.0 + 2e-9, False), ("eq", 10.0 - 2e-9, False),
    ("between", 10.0, True), ("between", 20.0, True), ("between", 15.0, True),
    ("between", 9.999999, False), ("between", 20.000001, False),
    ("not_between", 10.0, False), ("not_between", 20.0, False), ("not_between", 15.0, False),
    ("not_between", 9.999999, True), ("not_between", 20.000001, True),
])
def test_compare_at_boundaries(operator, value, expected):
    assert compare(operator, value, 10.0, 20.0) is expected


def test_compare_degenerate_range_and_unknown():
    assert compare("between", 5.0, 5.0, 5.0) and not compare("not_between", 5.0, 5.0, 5.0)
    assert not compare("between", 5.0, 5.0, None)
    with pytest.raises(ValueError):
        compare("approx", 1.0, 1.0)


# --- helpers ----------------------------------------------------------------------------------

async def create_rule(server, event: str, **fields) -> dict:
    body = {"name": fields.pop("name", "rule"), "event_public_id": event, "operator": "gt", "threshold": 10,
            "action_type": "log", **fields}
    resp = await server.request("POST", API, body)
    assert resp.code == 201, resp
    assert resp.json["status"] == "success"
    return resp.json["data"]


async def send(server, event: str, value: float) -> None:
    resp = await server.request("POST", "/api/v1/datapoints/batch",
                                {"datapoints": [{"value": value, "event_public_id": event}]})
    assert resp.code == 201, resp


async def rule_log_counts(server) -> dict[str, int]:
    resp = await server.request("GET", "/api/v1/logging?page_size=100&logging_type=warning")
    counts: dict[str, int] = {}
    for entry in resp.json["data"]:
        if entry["content"].startswith("Rule '"):
            name = entry["content"].split("'")[1]
            counts[name] = counts.get(name, 0) + 1
    return counts


# --- end to end -------------------------------------------------------------------------------

async def test_every_operator_end_to_end(server):
    operators = ["gt", "lt", "gte", "lte", "eq", "between", "not_between"]
    events = await server.linked_events(len(operators), prefix="Op")
    for op, event in zip(operators, events):
        await create_rule(server, event, name=op, operator=op, threshold=10, threshold_high=20, cooldown_seconds=0)
    expected = {op: 0 for op in operators}
    rounds = [
        (10.0, {"gte", "lte", "eq", "between"}),
        (20.0, {"gt", "gte", "between"}),
        (9.999999, {"lt", "lte", "not_between"}),
        (10.0 + 5e-10, {"gt", "gte", "eq", "between"}),
        (20.000001, {"gt", "gte", "not_between"}),
        (15.0, {"gt", "gte", "between"}),
    ]
    for value, fires in rounds:
        resp = await server.request("POST", "/api/v1/datapoints/batch", {
            "datapoints": [{"value": value, "event_public_id": e} for e in events]})
        assert resp.code == 201
        for op in fires:
            expected[op] += 1
        want = {op: n for op, n in expected.items() if n}

        async def counts_match():
            return await rule_log_counts(server) == want

        await wait_for(counts_match, message=f"triggers after value {value}")

    entries = (await server.request("GET", "/api/v1/logging?page_size=100&logging_type=warning")).json["data"]
    gt_text = [e["content"] for e in entries if e["content"].startswith("Rule 'gt'")]
    assert "Rule 'gt' triggered: Op 0 value 15 °C > 10" in gt_text
    between_text = [e["content"] for e in entries if e["content"].startswith("Rule 'not_between'")]
    assert any(t.endswith("value 9.999999 °C not between 10 and 20") for t in between_text)
    rules = (await server.request("GET", API)).json["data"]
    assert all(r["last_triggered_at"] for r in rules)


async def test_last_value_per_event_in_a_batch(server):
    (event,) = await server.linked_events(1)
    await create_rule(server, event, name="high", operator="gt", threshold=50, cooldown_seconds=0)
    await create_rule(server, event, name="witness", operator="lt", threshold=1000, cooldown_seconds=0)
    # a spike inside the batch is not the last value: only the last value per event is evaluated
    resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": [
        {"value": 99, "event_public_id": event, "timestamp": time.time() - 2},
        {"value": 5, "event_public_id": event, "timestamp": time.time() - 1}]})
    assert resp.code == 201

    async def witnessed():
        return await rule_log_counts(server) == {"witness": 1}

    await wait_for(witnessed, message="witness only")


async def test_webhook_action(server, receiver):
    (event,) = await server.linked_events(1, prefix="Reactor")
    hook = await server.request("POST", "/api/v1/webhooks", {"url": receiver.url("/ok/alerts"),
                                                             "events": ["sensor.threshold_exceeded"],
                                                             "secret": "alert-secret"})
    assert hook.code == 201
    rule = await create_rule(server, event, name="Reactor hot", operator="not_between", threshold=0.8,
                             threshold_high=1.2, action_type="webhook")
    assert rule["webhook_event_type"] == "sensor.threshold_exceeded" and rule["cooldown_seconds"] == 60
    await send(server, event, 1.0)  # inside the range: no trigger
    await send(server, event, 1.5)
    await send(server, event, 1.6)  # within the cooldown
    await wait_for(lambda: receiver.hits_for("/ok/alerts"), message="threshold webhook")
    hit = receiver.hits_for("/ok/alerts")[0]
    assert hit.signature_ok("alert-secret")
    body = hit.json
    assert body["type"] == "sensor.threshold_exceeded" and body["rule"] == "Reactor hot"
    assert body["operator"] == "not_between" and body["threshold"] == 0.8 and body["threshold_high"] == 1.2
    assert body["sensor"] == "Reactor 0" and body["event_public_id"] == event
    assert body["value"] == 1.5 and body["unit"] == "°C" and body["time"].endswith("Z")
    got = (await server.request("GET", f"{API}/{rule['public_id']}")).json
    assert got["last_triggered_at"] is not None
    assert await rule_log_counts(server) == {}  # a webhook action writes no log entry
    await send(server, event, 1.7)
    rows = (await server.request("GET", f"/api/v1/webhooks/{hook.json['data']['public_id']}/deliveries")).json
    assert rows["total"] == 1 and len(receiver.hits_for("/ok/alerts")) == 1


async def test_rule_changes_apply_without_restart(server):
    (event,) = await server.linked_events(1)
    await create_rule(server, event, name="witness", operator="gte", threshold=0, cooldown_seconds=0)
    rule = await create_rule(server, event, name="main", operator="gt", threshold=10, cooldown_seconds=0)
    rounds = 0

    async def step(value: float, main: int) -> None:
        nonlocal rounds
        rounds += 1
        await send(server, event, value)
        want = {"witness": rounds, **({"main": main} if main else {})}

        async def match():
            return await rule_log_counts(server) == want

        await wait_for(match, message=f"round {rounds}")

    await step(11, 1)
    assert (await server.request("PUT", f"{API}/{rule['public_id']}", {"enabled": False})).code == 200
    await step(12, 1)
    assert (await server.request("PUT", f"{API}/{rule['public_id']}", {"enabled": True, "threshold": 100})).code == 200
    await step(50, 1)
    await step(150, 2)
    assert (await server.request("DELETE", f"{API}/{rule['public_id']}")).code == 200
    await step(200, 2)


async def test_cooldown_across_restart_and_processes(database_url):
    settings = make_settings(database_url)
    a, http_a = await start_server(settings)
    b, http_b = await start_server(settings)  # a second server process on the same database
    try:
        (event,) = await a.linked_events(1)
        rule = await create_rule(a, event, name="cool", operator="gt", threshold=10, cooldown_seconds=3600)
        await create_rule(a, event, name="witness", operator="gt", threshold=10, cooldown_seconds=0)
        await b.services.changes.changed("linkage", "rules")  # b learns of them as its refresh would
        await asyncio.gather(send(a, event, 11), send(b, event, 12))

        async def both_processed():
            return await rule_log_counts(a) == {"cool": 1, "witness": 2}

        await wait_for(both_processed, message="exactly one trigger from two processes")
        first = (await a.request("GET", f"{API}/{rule['public_id']}")).json["last_triggered_at"]
        assert first
    finally:
        await stop_server(b, http_b)
        await stop_server(a, http_a)

    c, http_c = await start_server(settings)
    try:
        await send(c, event, 13)

        async def witnessed():
            return await rule_log_counts(c) == {"cool": 1, "witness": 3}

        await wait_for(witnessed, message="cooldown held across the restart")
        assert (await c.request("GET", f"{API}/{rule['public_id']}")).json["last_triggered_at"] == first
    finally:
        await stop_server(c, http_c)


async def test_short_cooldown_expires(server):
    (event,) = await server.linked_events(1)
    await create_rule(server, event, name="blink", operator="gt", threshold=0, cooldown_seconds=1)
    started = time.monotonic()
    await send(server, event, 1)
    await wait_for(lambda: _count(server, "blink", 1), message="first trigger")

    async def fires_again():
        await send(server, event, 1)
        return await rule_log_counts(server) == {"blink": 2}

    await wait_for(fires_again, timeout=5, interval=0.2, message="trigger after the cooldown")
    assert time.monotonic() - started >= 1.0


async def _count(server, name: str, n: int) -> bool:
    return (await rule_log_counts(server)).get(name, 0) == n


# --- CRUD, validation, roles --------------------------------------------------------------------

async def test_rule_crud_and_validation(server):
    (event,) = await server.linked_events(1)
    rule = await create_rule(server, event, name="High Temp", operator="gt", threshold=200)
    assert set(rule) >= {"public_id", "name", "event_public_id", "operator", "threshold", "threshold_high",
                         "action_type", "webhook_event_type", "enabled", "cooldown_seconds", "last_triggered_at",
                         "created_on", "user_public_id"}
    assert rule["event_public_id"] == event and rule["threshold"] == 200 and rule["threshold_high"] is None
    assert rule["action_type"] == "log" and rule["webhook_event_type"] is None and rule["enabled"] is True
    assert rule["cooldown_seconds"] == 60 and rule["last_triggered_at"] is None
    one = f"{API}/{rule['public_id']}"
    assert (await server.request("GET", one)).json == rule
    listed = (await server.request("GET", API)).json
    assert listed["total"] == 1 and listed["data"] == [rule]

    put = await server.request("PUT", one, {"operator": "between", "threshold_high": 300, "action_type": "webhook",
                                            "cooldown_seconds": 0})
    assert put.code == 200, put
    assert put.json["data"]["operator"] == "between" and put.json["data"]["threshold_high"] == 300
    assert put.json["data"]["webhook_event_type"] == "sensor.threshold_exceeded" and put.json["data"]["cooldown_seconds"] == 0
    put = await server.request("PUT", one, {"webhook_event_type": "experiment.stopped"})
    assert put.code == 200 and put.json["data"]["webhook_event_type"] == "experiment.stopped"
    bad_put = await server.request("PUT", one, {"threshold_high": 100})  # below threshold 200
    assert bad_put.code == 422 and bad_put.json["detail"] == "threshold_high: must be >= threshold"
    assert (await server.request("GET", one)).json["threshold_high"] == 300  # unchanged

    base = {"name": "r", "event_public_id": event, "operator": "gt", "threshold": 1, "action_type": "log"}
    bad = [
        ({"event_public_id": "no-such-event"}, "event_public_id: unknown event"),
        ({"operator": "approx"}, "operator:"),
        ({"operator": "between"}, "threshold_high: required"),
        ({"operator": "not_between", "threshold_high": 0}, "threshold_high: must be >= threshold"),
        ({"threshold": "12"}, "threshold:"),
        ({"threshold": True}, "threshold:"),
        ({"threshold_high": "x"}, "threshold_high:"),
        ({"action_type": "email"}, "action_type:"),
        ({"webhook_event_type": "sensor.bogus", "action_type": "webhook"}, "webhook_event_type:"),
        ({"cooldown_seconds": -1}, "cooldown_seconds:"),
        ({"cooldown_seconds": 1.5}, "cooldown_seconds:"),
        ({"enabled": "true"}, "enabled:"),
        ({"name": ""}, "name:"),
        ({"name": "n" * 256}, "name:"),
    ]
    for change, detail in bad:
        resp = await server.request("POST", API, {**base, **change})
        assert resp.code == 422, (change, resp)
        assert resp.json["detail"].startswith(detail), (change, resp.json)
    for missing in ("name", "event_public_id", "operator", "threshold", "action_type"):
        resp = await server.request("POST", API, {k: v for k, v in base.items() if k != missing})
        assert resp.code == 422 and resp.json["detail"] == f"{missing}: field required"
    assert (await server.request("POST", API, raw=b"{")).code == 400
    assert (await server.request("GET", f"{API}/nope")).code == 404
    assert (await server.request("GET", f"{API}/%00")).code == 404  # never a 500 on PostgreSQL
    nul = await server.request("POST", API, {**base, "name": "a\u0000b"})
    assert nul.code == 422 and nul.json["detail"].startswith("name:")
    assert (await server.request("PUT", f"{API}/nope", {"threshold": 1})).code == 404
    assert (await server.request("DELETE", one)).code == 200
    assert (await server.request("GET", one)).code == 404

    # deleting the event deletes its rules
    rule2 = await create_rule(server, event, name="gone with the event")
    assert (await server.request("DELETE", f"/api/v1/events/{event}")).code == 200
    assert (await server.request("GET", f"{API}/{rule2['public_id']}")).code == 404


async def test_rules_are_admin_only(server):
    (event,) = await server.linked_events(1)
    rule = await create_rule(server, event)
    one = f"{API}/{rule['public_id']}"
    calls = [("GET", API, None), ("POST", API, {"name": "x", "event_public_id": event, "operator": "gt",
                                                "threshold": 1, "action_type": "log"}),
             ("GET", one, None), ("PUT", one, {"threshold": 5}), ("DELETE", one, None)]
    for role in ("viewer", "operator"):
        token = await server.create_user(role)
        for method, path, body in calls:
            resp = await server.request(method, path, body, token=token)
            assert resp.code == 403 and resp.json == {"detail": "Admin access required."}, (role, method, resp)
    for method, path, body in calls:
        assert (await server.request(method, path, body, token=None)).code == 401
    assert (await server.request("GET", one)).json == rule
