"""Webhooks end to end: a real server, real HTTP receivers on 127.0.0.1, real ingest.

Covers CRUD/validation/roles, HMAC signatures, the sensor.reading throttle, retries with
backoff then dead_letter, redirects not followed, a hanging receiver not slowing ingest
(and overload recorded as failed), durability across a restart, and health events.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from datetime import datetime

import pytest

from tests.conftest import make_settings, start_server, stop_server, wait_for
from tests.webhook_receiver import Receiver, bound_socket, receiver  # noqa: F401 - fixture
from webmacs.webhooks import DROPPED, encode_payload, sign

API = "/api/v1/webhooks"


@pytest.fixture
def settings_overrides() -> dict:
    """Per test: ``@pytest.mark.parametrize("settings_overrides", [{...}])``."""
    return {"WEBMACS_WEBHOOK_RETRY_BASE": "0.1"}


@pytest.fixture
def server_settings(database_url, settings_overrides):
    return make_settings(database_url, **settings_overrides)


async def create_hook(server, url: str, events: list[str], **extra) -> dict:
    resp = await server.request("POST", API, {"url": url, "events": events, **extra})
    assert resp.code == 201, resp
    assert resp.json["status"] == "success"
    return resp.json["data"]


async def deliveries(server, hook: dict, status: str | None = None, page_size: int = 100) -> list[dict]:
    query = f"?page_size={page_size}" + (f"&status={status}" if status else "")
    resp = await server.request("GET", f"{API}/{hook['public_id']}/deliveries{query}")
    assert resp.code == 200, resp
    return resp.json["data"]


async def post_batch(server, points: list[dict]) -> float:
    started = time.perf_counter()
    resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": points})
    elapsed = time.perf_counter() - started
    assert resp.code == 201, resp
    return elapsed


# --- pure -----------------------------------------------------------------------------------

def test_signature_and_payload_shape():
    body = encode_payload("sensor.reading", {"sensor": "T", "value": 1.5})
    data = json.loads(body)
    assert data["type"] == "sensor.reading" and data["sensor"] == "T" and data["value"] == 1.5
    assert data["time"].endswith("Z") and datetime.fromisoformat(data["time"].replace("Z", "+00:00"))
    assert data["device"]
    signature = sign("s3cret", "1700000000", body)
    import hashlib
    import hmac

    assert signature == hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()


# --- CRUD, validation, roles ----------------------------------------------------------------------

async def test_webhook_crud_and_validation(server):
    hook = await create_hook(server, "https://hooks.example.com/a", ["sensor.reading", "experiment.started"],
                             secret="top-secret")
    assert set(hook) >= {"public_id", "url", "events", "enabled", "created_on", "user_public_id"}
    assert hook["url"] == "https://hooks.example.com/a" and hook["enabled"] is True
    assert hook["events"] == ["sensor.reading", "experiment.started"]
    assert "secret" not in hook and hook["has_secret"] is True
    me = (await server.request("GET", "/api/v1/auth/me")).json
    assert hook["user_public_id"] == me["public_id"]

    got = await server.request("GET", f"{API}/{hook['public_id']}")
    assert got.code == 200 and got.json == hook and "top-secret" not in got.body.decode()
    listed = await server.request("GET", API)
    assert listed.code == 200 and listed.json["total"] == 1 and listed.json["data"] == [hook]
    assert set(listed.json) == {"page", "page_size", "total", "data"}

    put = await server.request("PUT", f"{API}/{hook['public_id']}", {"enabled": False, "events": ["experiment.stopped"],
                                                                      "secret": None})
    assert put.code == 200, put
    assert put.json["data"]["enabled"] is False and put.json["data"]["events"] == ["experiment.stopped"]
    assert put.json["data"]["has_secret"] is False and put.json["data"]["url"] == hook["url"]

    dup = await server.request("POST", API, {"url": "https://hooks.example.com/a", "events": ["sensor.reading"]})
    assert dup.code == 409 and "detail" in dup.json
    other = await create_hook(server, "http://hooks.example.com/b", ["sensor.reading"])
    clash = await server.request("PUT", f"{API}/{other['public_id']}", {"url": "https://hooks.example.com/a"})
    assert clash.code == 409

    bad = [
        ({"url": "ftp://x.example.com", "events": ["sensor.reading"]}, "url"),
        ({"url": "not a url", "events": ["sensor.reading"]}, "url"),
        ({"url": "https://", "events": ["sensor.reading"]}, "url"),
        ({"url": 5, "events": ["sensor.reading"]}, "url"),
        ({"events": ["sensor.reading"]}, "url"),
        ({"url": "https://c.example.com", "events": ["sensor.bogus"]}, "events[0]"),
        ({"url": "https://c.example.com", "events": "sensor.reading"}, "events"),
        ({"url": "https://c.example.com", "events": []}, "events"),
        ({"url": "https://c.example.com"}, "events"),
        ({"url": "https://c.example.com", "events": ["sensor.reading"], "secret": "s" * 256}, "secret"),
        ({"url": "https://c.example.com", "events": ["sensor.reading"], "secret": 12}, "secret"),
        ({"url": "https://c.example.com", "events": ["sensor.reading"], "enabled": "yes"}, "enabled"),
    ]
    for body, fld in bad:
        resp = await server.request("POST", API, body)
        assert resp.code == 422, (body, resp)
        assert resp.json["detail"].startswith(fld + ":"), (body, resp.json)
    assert (await server.request("POST", API, raw=b"{not json")).code == 400
    assert (await server.request("POST", API, raw=b"[1]")).code == 400
    assert (await server.request("PUT", f"{API}/{hook['public_id']}", {"url": "gopher://x"})).code == 422
    assert (await server.request("GET", f"{API}/nope")).code == 404
    assert (await server.request("PUT", f"{API}/nope", {"enabled": True})).code == 404
    assert (await server.request("GET", f"{API}/nope/deliveries")).code == 404
    assert (await server.request("GET", f"{API}/%00/deliveries")).code == 404  # never a 500 on PostgreSQL
    bad_status = await server.request("GET", f"{API}/{hook['public_id']}/deliveries?status=weird")
    assert bad_status.code == 422 and bad_status.json["detail"].startswith("status:")

    deleted = await server.request("DELETE", f"{API}/{hook['public_id']}")
    assert deleted.code == 200 and deleted.json["status"] == "success"
    assert (await server.request("GET", f"{API}/{hook['public_id']}")).code == 404
    assert (await server.request("DELETE", f"{API}/{hook['public_id']}")).code == 404


async def test_webhooks_are_admin_only(server):
    hook = await create_hook(server, "https://hooks.example.com/roles", ["sensor.reading"])
    one = f"{API}/{hook['public_id']}"
    calls = [("GET", API, None), ("POST", API, {"url": "https://r.example.com", "events": ["sensor.reading"]}),
             ("GET", one, None), ("PUT", one, {"enabled": False}), ("DELETE", one, None),
             ("GET", one + "/deliveries", None)]
    for role in ("viewer", "operator"):
        token = await server.create_user(role)
        for method, path, body in calls:
            resp = await server.request(method, path, body, token=token)
            assert resp.code == 403, (role, method, path, resp)
            assert resp.json == {"detail": "Admin access required."}
    for method, path, body in calls:
        assert (await server.request(method, path, body, token=None)).code == 401
    assert (await server.request("GET", one)).json["enabled"] is True  # nothing changed


# --- delivery ------------------------------------------------------------------------------------

async def test_signed_experiment_events_and_delivery_log(server, receiver):
    signed = await create_hook(server, receiver.url("/ok/signed"), ["experiment.started", "experiment.stopped"],
                               secret="shh-its-a-secret")
    plain = await create_hook(server, receiver.url("/ok/plain"), ["experiment.stopped"])
    await create_hook(server, receiver.url("/ok/disabled"), ["experiment.started", "experiment.stopped"],
                      enabled=False)
    await create_hook(server, receiver.url("/ok/other"), ["system.health_changed"])

    exp = (await server.request("POST", "/api/v1/experiments", {"name": "Run 7"})).json["data"]
    stopped = await server.request("PUT", f"/api/v1/experiments/{exp['public_id']}/stop")
    assert stopped.code == 200

    await wait_for(lambda: len(receiver.hits_for("/ok/signed")) == 2 and len(receiver.hits_for("/ok/plain")) == 1,
                   message="experiment deliveries")
    started_hit, stopped_hit = sorted(receiver.hits_for("/ok/signed"), key=lambda h: h.json["type"])
    for hit in (started_hit, stopped_hit):
        assert hit.headers["Content-Type"] == "application/json"
        assert abs(int(hit.headers["X-Webhook-Timestamp"]) - time.time()) < 60
        assert hit.signature_ok("shh-its-a-secret")
        assert not hit.signature_ok("another-secret")
        assert hit.json["experiment_name"] == "Run 7" and hit.json["experiment_id"] == exp["public_id"]
        assert hit.json["time"].endswith("Z")
    assert started_hit.json["type"] == "experiment.started"
    assert stopped_hit.json["type"] == "experiment.stopped"
    plain_hit = receiver.hits_for("/ok/plain")[0]
    assert "X-Webhook-Signature" not in plain_hit.headers and plain_hit.json["type"] == "experiment.stopped"
    assert not receiver.hits_for("/ok/disabled") and not receiver.hits_for("/ok/other")

    async def both_delivered():
        return [d["status"] for d in await deliveries(server, signed)] == ["delivered", "delivered"]

    await wait_for(both_delivered, message="delivery rows updated")
    rows = await deliveries(server, signed)
    assert [r["event_type"] for r in rows] == ["experiment.stopped", "experiment.started"]  # newest first
    for row in rows:
        assert set(row) >= {"public_id", "event_type", "status", "attempts", "last_error", "response_code",
                            "created_on", "delivered_on"}
        assert row["attempts"] == 1 and row["response_code"] == 200 and row["last_error"] is None
        assert row["delivered_on"] is not None
    assert {h.headers["X-Webhook-Delivery"] for h in receiver.hits_for("/ok/signed")} == {r["public_id"] for r in rows}
    page = await server.request("GET", f"{API}/{signed['public_id']}/deliveries?page=2&page_size=1")
    assert page.json["total"] == 2 and page.json["page"] == 2 and len(page.json["data"]) == 1
    assert page.json["data"][0]["event_type"] == "experiment.started"
    assert await deliveries(server, signed, status="dead_letter") == []
    assert len(await deliveries(server, signed, status="delivered")) == 2
    assert len(await deliveries(server, plain)) == 1


async def test_sensor_reading_throttle_over_websocket(server, receiver):
    server.services.config.sensor_reading_throttle = 1.0
    a, b = await server.linked_events(2)
    hook = await create_hook(server, receiver.url("/ok/readings"), ["sensor.reading"])
    ws = await server.ws("/ws/controller/telemetry")
    started = time.monotonic()
    sent = 0
    while sent < 25:  # 10 batches per second for 2.5 s
        sent += 1
        await ws.send({"batch_id": f"b{sent}", "datapoints": [{"value": float(sent), "event_public_id": a},
                                                              {"value": -float(sent), "event_public_id": b}]})
        ack = await ws.recv_type("ack")
        assert ack["accepted"] == 2, ack
        await asyncio.sleep(max(0.0, started + sent * 0.1 - time.monotonic()))
    duration = time.monotonic() - started
    # events are fanned out in order: once the witness has its delivery, every reading has its row
    await create_hook(server, receiver.url("/ok/witness"), ["experiment.started"])
    await server.request("POST", "/api/v1/experiments", {"name": "Witness"})
    await wait_for(lambda: receiver.hits_for("/ok/witness"), message="witness delivery")

    async def all_delivered():
        rows = await deliveries(server, hook)
        return (all(r["status"] == "delivered" for r in rows)
                and len(rows) == len(receiver.hits_for("/ok/readings")))

    await wait_for(all_delivered, message="reading deliveries")
    per_event = {a: [], b: []}
    for hit in receiver.hits_for("/ok/readings"):
        per_event[hit.json["event_public_id"]].append(hit)
    for event, hits in per_event.items():
        # one per started second (t=0, 1, 2), never two within the throttle window
        assert 2 <= len(hits) <= int(duration) + 1, (event, len(hits))
        times = sorted(h.at for h in hits)
        assert all(t2 - t1 >= 0.9 for t1, t2 in zip(times, times[1:])), times
    first = sorted(per_event[a], key=lambda h: h.at)[0].json
    assert first["type"] == "sensor.reading" and first["sensor"] == "Sensor 0" and first["unit"] == "°C"
    assert first["value"] == 1.0 and first["event_public_id"] == a


async def test_retries_with_backoff_then_dead_letter(server, receiver):
    failing = await create_hook(server, receiver.url("/fail/x"), ["experiment.started"])
    redirecting = await create_hook(server, receiver.url("/redirect/x"), ["experiment.started"])
    await server.request("POST", "/api/v1/experiments", {"name": "Doomed"})

    async def dead():
        rows = await deliveries(server, failing) + await deliveries(server, redirecting)
        return len(rows) == 2 and all(r["status"] == "dead_letter" for r in rows) and rows

    rows = await wait_for(dead, message="dead_letter")
    fail_row, redirect_row = rows
    assert fail_row["attempts"] == 3 and fail_row["response_code"] == 500 and fail_row["delivered_on"] is None
    assert fail_row["last_error"].startswith("HTTP 500") and len(fail_row["last_error"]) <= 500
    assert redirect_row["attempts"] == 3 and redirect_row["response_code"] == 302
    assert "not followed" in redirect_row["last_error"]
    assert not receiver.hits_for("/ok/redirected")  # redirect never followed

    hits = sorted(h.at for h in receiver.hits_for("/fail/x"))
    assert len(hits) == 3
    assert hits[1] - hits[0] >= 0.09 and hits[2] - hits[1] >= 0.19  # base 0.1 s, then 2 x base
    assert len(receiver.hits_for("/redirect/x")) == 3
    assert len(await deliveries(server, failing, status="dead_letter")) == 1

    async def logged():
        entries = (await server.request("GET", "/api/v1/logging?logging_type=error")).json["data"]
        return [e for e in entries if "dead-lettered" in e["content"]]

    entries = await wait_for(logged, message="dead-letter log entries")
    assert len(entries) == 2 and all(e["logging_type"] == "error" for e in entries)
    contents = sorted(e["content"] for e in entries)
    assert "(last: HTTP 302)" in contents[0] or "(last: HTTP 302)" in contents[1]
    assert any("(last: HTTP 500)" in c for c in contents)
    # readable by every user: the host only, never the URL path (it often holds a token) or the body
    assert all(f"127.0.0.1:{receiver.port}" in c and "/fail/x" not in c and "/redirect/x" not in c
               and "EEEE" not in c for c in contents)


@pytest.mark.parametrize("settings_overrides", [{"WEBMACS_WEBHOOK_WORKERS": "2", "WEBMACS_WEBHOOK_QUEUE": "4",
                                                 "WEBMACS_SENSOR_READING_THROTTLE": "0"}])
async def test_hanging_receiver_does_not_delay_ingest(server_settings, receiver):
    srv, http = await start_server(server_settings)
    stopped = False
    try:
        (event,) = await srv.linked_events(1)
        for i in range(3):  # warm up
            await post_batch(srv, [{"value": i, "event_public_id": event}])
        baseline = [await post_batch(srv, [{"value": i, "event_public_id": event}]) for i in range(15)]

        hook = await create_hook(srv, receiver.url("/hang/x"), ["sensor.reading"])
        with_hang = [await post_batch(srv, [{"value": i, "event_public_id": event}]) for i in range(15)]
        await wait_for(lambda: receiver.hanging == 2, message="both workers stuck on the receiver")

        base_median, hang_median = statistics.median(baseline), statistics.median(with_hang)
        assert hang_median <= base_median * 2 + 0.02, (baseline, with_hang)
        assert max(with_hang) < 1.0, with_hang  # nothing waits for the 10 s receiver timeout

        async def all_recorded():
            rows = await deliveries(srv, hook)
            return len(rows) == 15 and rows

        rows = await wait_for(all_recorded, message="15 delivery rows")
        pending = [r for r in rows if r["status"] == "pending"]
        failed = [r for r in rows if r["status"] == "failed"]
        # 4 fit (2 in flight, 2 waiting for a worker); the rest are recorded, not queued
        assert len(pending) == 4 and all(r["attempts"] == 0 for r in pending)
        assert len(failed) == 11 and all(r["last_error"] == DROPPED and r["attempts"] == 0 for r in failed)
        assert len(receiver.hits_for("/hang/")) == 2

        t0 = time.monotonic()
        await stop_server(srv, http)
        stopped = True
        assert time.monotonic() - t0 < 3, "stop() waited for hung requests"
    finally:
        if not stopped:
            await stop_server(srv, http)


@pytest.mark.parametrize("settings_overrides", [{"WEBMACS_WEBHOOK_RETRY_BASE": "1"}])
async def test_pending_delivery_resumed_after_restart(server_settings):
    sock = bound_socket()  # the receiver's port: refused until it listens
    rec = Receiver()
    srv, http = await start_server(server_settings)
    try:
        hook = await create_hook(srv, f"http://127.0.0.1:{sock.getsockname()[1]}/ok/resume", ["experiment.started"],
                                 secret="resume-secret")

        async def first_attempt_failed():
            rows = await deliveries(srv, hook)
            return rows and rows[0]["attempts"] >= 1 and rows[0]

        await srv.request("POST", "/api/v1/experiments", {"name": "Resumed"})
        row = await wait_for(first_attempt_failed, message="first failed attempt")
        assert row["status"] == "pending" and row["last_error"] and "Connection" in row["last_error"]
    finally:
        await stop_server(srv, http)

    rec.start(sock)
    srv2, http2 = await start_server(server_settings)
    try:
        async def delivered():
            rows = await deliveries(srv2, hook)
            return rows and rows[0]["status"] == "delivered" and rows[0]

        row = await wait_for(delivered, timeout=10, message="resumed delivery")
        assert row["attempts"] >= 2 and row["response_code"] == 200 and row["last_error"] is None
        hits = rec.hits_for("/ok/resume")
        assert len(hits) == 1 and hits[0].signature_ok("resume-secret")
        assert hits[0].json["experiment_name"] == "Resumed" and hits[0].json["type"] == "experiment.started"
        assert hits[0].headers["X-Webhook-Delivery"] == row["public_id"]
    finally:
        await stop_server(srv2, http2)
        await rec.close()


async def test_health_changed_and_live_subscription_changes(server, receiver):
    hook = await create_hook(server, receiver.url("/ok/health"), ["experiment.started"])
    server.services.note_health(True)
    server.services.note_health(False)  # no subscriber at this moment: never delivered, even after the PUT
    put = await server.request("PUT", f"{API}/{hook['public_id']}", {"events": ["system.health_changed"]})
    assert put.code == 200
    server.services.note_health(True)  # recovered: subscribed now
    await wait_for(lambda: len(receiver.hits_for("/ok/health")) == 1, message="health delivery")
    body = receiver.hits_for("/ok/health")[0].json
    assert body["type"] == "system.health_changed" and body["status"] == "ok" and body["database"] == "ok"

    await server.request("PUT", f"{API}/{hook['public_id']}", {"enabled": False})
    witness = await create_hook(server, receiver.url("/ok/witness"), ["system.health_changed", "experiment.started"])
    server.services.note_health(False)
    await server.request("POST", "/api/v1/experiments", {"name": "Unheard"})
    # events are fanned out in order: once the witness has both, the disabled hook was passed over
    await wait_for(lambda: len(receiver.hits_for("/ok/witness")) == 2, message="witness deliveries")
    assert len(receiver.hits_for("/ok/health")) == 1
    assert len(await deliveries(server, hook)) == 1
    assert len(await deliveries(server, witness)) == 2
