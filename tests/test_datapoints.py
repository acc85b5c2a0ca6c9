"""REST datapoint endpoints; they share the ingest pipeline with the WebSocket."""

from __future__ import annotations

import pytest


async def test_create_get_delete_datapoint(server):
    [event] = await server.linked_events(1)
    created = await server.request("POST", "/api/v1/datapoints", {"value": 23.45, "event_public_id": event})
    assert created.code == 201
    assert created.json["status"] == "success" and created.json["message"] == "Datapoint successfully created."
    dp = created.json["data"]
    assert dp["value"] == 23.45 and dp["event_public_id"] == event and dp["experiment_public_id"] is None
    assert dp["public_id"] and dp["timestamp"]
    got = await server.request("GET", f"/api/v1/datapoints/{dp['public_id']}")
    assert got.code == 200 and got.json == dp
    assert (await server.request("DELETE", f"/api/v1/datapoints/{dp['public_id']}")).code == 200
    assert (await server.request("GET", f"/api/v1/datapoints/{dp['public_id']}")).code == 404
    assert (await server.request("GET", "/api/v1/datapoints/not-an-id")).code == 404
    assert (await server.request("DELETE", "/api/v1/datapoints/1-2-3")).code == 404


@pytest.mark.parametrize("body, fragment", [
    ({"value": "1.0", "event_public_id": "e"}, "value: must be a number"),
    ({"value": True, "event_public_id": "e"}, "value"),
    ({"value": 1.0}, "event_public_id"),
    ({"event_public_id": "e"}, "value"),
])
async def test_create_validation(server, body, fragment):
    resp = await server.request("POST", "/api/v1/datapoints", body)
    assert resp.code == 422 and fragment in resp.json["detail"]
    assert not resp.json["detail"].startswith("datapoints["), resp.json  # one reading, not a list


async def test_unknown_event_is_404(server):
    resp = await server.request("POST", "/api/v1/datapoints", {"value": 1.0, "event_public_id": "no-such-event"})
    assert resp.code == 404 and resp.json == {"detail": "Event not found."}


async def test_unlinked_event_is_409(server):
    ev = (await server.request("POST", "/api/v1/events", {"name": "Loose", "type": "sensor", "unit": "V",
                                                          "min_value": 0, "max_value": 1})).json["data"]
    resp = await server.request("POST", "/api/v1/datapoints", {"value": 1.0, "event_public_id": ev["public_id"]})
    assert resp.code == 409 and resp.json == {"detail": "Event is not linked to an enabled plugin instance."}
    # linked to a disabled instance: still 409
    [linked] = await server.linked_events(1)
    plugin = (await server.request("GET", "/api/v1/plugins")).json["data"][0]
    assert (await server.request("PUT", f"/api/v1/plugins/{plugin['public_id']}", {"enabled": False})).code == 200
    resp = await server.request("POST", "/api/v1/datapoints", {"value": 1.0, "event_public_id": linked})
    assert resp.code == 409
    # a bad timestamp on a linked event stays a 422 naming the field
    assert (await server.request("PUT", f"/api/v1/plugins/{plugin['public_id']}", {"enabled": True})).code == 200
    resp = await server.request("POST", "/api/v1/datapoints", {"value": 1.0, "event_public_id": linked,
                                                               "timestamp": "yesterday"})
    assert resp.code == 422 and "timestamp" in resp.json["detail"], resp


async def test_batch(server):
    events = await server.linked_events(2)
    body = {"datapoints": [{"value": float(i), "event_public_id": events[i % 2]} for i in range(10)]}
    resp = await server.request("POST", "/api/v1/datapoints/batch", body)
    assert resp.code == 201 and resp.json["accepted"] == 10
    too_many = {"datapoints": [{"value": 1.0, "event_public_id": events[0]}] * 501}
    assert (await server.request("POST", "/api/v1/datapoints/batch", too_many)).code == 422
    bad = await server.request("POST", "/api/v1/datapoints/batch",
                               {"datapoints": [{"value": 1.0, "event_public_id": events[0]}, {"value": "x"}]})
    assert bad.code == 422 and bad.json["detail"].startswith("datapoints[1]")
    assert (await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": "x"})).code == 422
    listing = (await server.request("GET", "/api/v1/datapoints?page_size=5")).json
    assert listing["total"] == 10 and len(listing["data"]) == 5
    assert listing["data"][0]["timestamp"] >= listing["data"][-1]["timestamp"]  # newest first


async def test_latest_per_event(server):
    events = await server.linked_events(3)
    assert (await server.request("GET", "/api/v1/datapoints/latest")).json == []
    for round_no in range(3):
        for i, e in enumerate(events[:2]):
            await server.request("POST", "/api/v1/datapoints", {"value": round_no * 10.0 + i, "event_public_id": e})
    latest = (await server.request("GET", "/api/v1/datapoints/latest")).json
    assert {p["event_public_id"]: p["value"] for p in latest} == {events[0]: 20.0, events[1]: 21.0}
    assert all(set(p) == {"public_id", "value", "timestamp", "event_public_id", "experiment_public_id"}
               for p in latest)


async def test_roles_on_datapoints(server):
    [event] = await server.linked_events(1)
    viewer = await server.create_user("viewer", "dpviewer")
    assert (await server.request("GET", "/api/v1/datapoints", token=viewer)).code == 200
    assert (await server.request("GET", "/api/v1/datapoints/latest", token=viewer)).code == 200
    assert (await server.request("POST", "/api/v1/datapoints", {"value": 1.0, "event_public_id": event},
                                 token=viewer)).code == 403
    assert (await server.request("GET", "/api/v1/datapoints", token=None)).code == 401


async def test_health_reports_last_datapoint(server):
    [event] = await server.linked_events(1)
    created = (await server.request("POST", "/api/v1/datapoints", {"value": 1.0, "event_public_id": event})).json
    assert created["status"] == "success"
    dp = created["data"]
    health = (await server.request("GET", "/health", token=None)).json
    assert health["last_datapoint"] == dp["timestamp"]
