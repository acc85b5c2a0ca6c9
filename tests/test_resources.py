"""Events, experiments, plugins and channel mappings over real HTTP."""

from __future__ import annotations

import pytest


async def test_events_crud(server):
    created = await server.request("POST", "/api/v1/events", {"name": "Inlet Temperature", "type": "sensor",
                                                              "unit": "°C", "min_value": 0.0, "max_value": 200.0})
    assert created.code == 201
    assert created.json["status"] == "success" and created.json["message"] == "Event successfully created."
    ev = created.json["data"]
    assert ev["name"] == "Inlet Temperature" and ev["unit"] == "°C" and ev["min_value"] == 0.0
    assert ev["type"] == "sensor" and ev["public_id"] and ev["user_public_id"]
    dup = await server.request("POST", "/api/v1/events", {"name": "Inlet Temperature", "type": "sensor",
                                                          "unit": "°C", "min_value": 0, "max_value": 1})
    assert dup.code == 409
    got = await server.request("GET", f"/api/v1/events/{ev['public_id']}")
    assert got.code == 200 and got.json == ev
    upd = await server.request("PUT", f"/api/v1/events/{ev['public_id']}", {"unit": "K"})
    assert upd.code == 200 and upd.json["data"]["unit"] == "K" and upd.json["data"]["name"] == "Inlet Temperature"
    listing = await server.request("GET", "/api/v1/events")
    assert listing.json["total"] == 1 and listing.json["data"][0]["unit"] == "K"
    assert (await server.request("DELETE", f"/api/v1/events/{ev['public_id']}")).code == 200
    assert (await server.request("GET", f"/api/v1/events/{ev['public_id']}")).code == 404
    assert (await server.request("DELETE", f"/api/v1/events/{ev['public_id']}")).code == 404


EV = {"name": "x", "type": "sensor", "unit": "°C", "min_value": 0, "max_value": 1}


@pytest.mark.parametrize("body, field", [
    ({**EV, "name": None}, "name"),
    ({k: v for k, v in EV.items() if k != "name"}, "name"),
    ({**EV, "name": ""}, "name"),
    ({**EV, "type": "thermometer"}, "type"),
    ({**EV, "min_value": "0"}, "min_value"),
    ({**EV, "max_value": True}, "max_value"),
    ({**EV, "min_value": 5, "max_value": 1}, "max_value"),
    ({**EV, "name": 12}, "name"),
    # EventCreate (schemas.md): min_value, max_value, unit and type are required
    ({k: v for k, v in EV.items() if k != "min_value"}, "min_value"),
    ({k: v for k, v in EV.items() if k != "max_value"}, "max_value"),
    ({k: v for k, v in EV.items() if k != "unit"}, "unit"),
    ({**EV, "unit": ""}, "unit"),
    ({k: v for k, v in EV.items() if k != "type"}, "type"),
])
async def test_event_validation(server, body, field):
    resp = await server.request("POST", "/api/v1/events", body)
    assert resp.code == 422 and resp.json["detail"].startswith(field + ":"), resp


async def test_event_update_is_partial(server):
    ev = (await server.request("POST", "/api/v1/events", EV)).json["data"]
    upd = await server.request("PUT", f"/api/v1/events/{ev['public_id']}", {"max_value": 9})
    assert upd.code == 200 and upd.json["data"]["max_value"] == 9 and upd.json["data"]["unit"] == "°C"
    bad = await server.request("PUT", f"/api/v1/events/{ev['public_id']}", {"unit": ""})
    assert bad.code == 422 and bad.json["detail"].startswith("unit:")


async def test_pagination_bounds(server):
    for query in ("page=0", "page_size=0", "page_size=101", "page=abc"):
        resp = await server.request("GET", f"/api/v1/events?{query}")
        assert resp.code == 422, query
    for i in range(3):
        await server.request("POST", "/api/v1/events", {**EV, "name": f"e{i}"})
    page = (await server.request("GET", "/api/v1/events?page=2&page_size=2")).json
    assert page["page"] == 2 and page["total"] == 3 and len(page["data"]) == 1


async def test_experiment_lifecycle(server):
    first = await server.request("POST", "/api/v1/experiments", {"name": "Fluidised Bed Run 07"})
    assert first.code == 201
    assert first.json["status"] == "success"
    exp = first.json["data"]
    assert exp["status"] == "running" and exp["started_on"] and exp["stopped_on"] is None and exp["name"] == "Fluidised Bed Run 07"
    second = await server.request("POST", "/api/v1/experiments", {"name": "Run 08"})
    assert second.code == 409
    upd = await server.request("PUT", f"/api/v1/experiments/{exp['public_id']}", {"name": "Run 07b"})
    assert upd.code == 200 and upd.json["data"]["name"] == "Run 07b" and upd.json["data"]["status"] == "running"
    stop = await server.request("PUT", f"/api/v1/experiments/{exp['public_id']}/stop")
    assert stop.code == 200 and stop.json["data"]["stopped_on"] and stop.json["data"]["status"] == "stopped"
    assert stop.json["status"] == "success" and stop.json["message"] == "Experiment successfully stopped."
    assert (await server.request("PUT", f"/api/v1/experiments/{exp['public_id']}/stop")).code == 409
    assert (await server.request("POST", "/api/v1/experiments", {"name": "Run 08"})).code == 201
    listing = (await server.request("GET", "/api/v1/experiments")).json
    assert listing["total"] == 2
    assert (await server.request("DELETE", f"/api/v1/experiments/{exp['public_id']}")).code == 200
    assert (await server.request("GET", f"/api/v1/experiments/{exp['public_id']}")).code == 404
    assert (await server.request("POST", "/api/v1/experiments", {"name": 3})).code == 422
    viewer = await server.create_user("viewer", "expviewer")
    assert (await server.request("POST", "/api/v1/experiments", {"name": "x"}, token=viewer)).code == 403


async def test_delete_experiment_deletes_its_datapoints(server):
    [event] = await server.linked_events(1)
    exp = (await server.request("POST", "/api/v1/experiments", {"name": "Doomed"})).json["data"]
    resp = await server.request("POST", "/api/v1/datapoints/batch",
                                {"datapoints": [{"value": 1.0, "event_public_id": event}] * 3})
    assert resp.code == 201
    await server.request("PUT", f"/api/v1/experiments/{exp['public_id']}/stop")
    await server.request("POST", "/api/v1/datapoints", {"value": 2.0, "event_public_id": event})
    assert (await server.request("GET", "/api/v1/datapoints")).json["total"] == 4
    assert (await server.request("DELETE", f"/api/v1/experiments/{exp['public_id']}")).code == 200
    assert (await server.request("GET", "/api/v1/datapoints")).json["total"] == 1


async def test_plugins_available_and_instance_with_auto_events(server):
    avail = await server.request("GET", "/api/v1/plugins/available")
    assert avail.code == 200
    sim = next(p for p in avail.json if p["id"] == "simulated")
    assert {"id", "name", "version", "vendor", "description", "url"} <= set(sim)
    created = await server.request("POST", "/api/v1/plugins", {"plugin_id": "simulated", "instance_name": "Bench",
                                                               "demo_mode": True})  # auto_create_events: default
    assert created.code == 201
    assert created.json["status"] == "success"
    inst = created.json["data"]
    assert inst["status"] == "demo" and inst["enabled"] is True and inst["demo_mode"] is True
    channels = {m["channel_id"]: m for m in inst["channel_mappings"]}
    assert len(channels) == 9 and all(m["event_public_id"] for m in channels.values())
    events = {e["name"]: e for e in (await server.request("GET", "/api/v1/events")).json["data"]}
    assert len(events) == 9
    reactor = events["Bench Reactor Temperature"]
    assert (reactor["type"], reactor["unit"], reactor["min_value"], reactor["max_value"]) == ("sensor", "°C", 20, 500)
    assert events["Bench Heater Power"]["type"] == "actuator"
    # data to an auto-created event is accepted straight away
    accepted = await server.request("POST", "/api/v1/datapoints",
                                    {"value": 21.5, "event_public_id": channels["temp_reactor"]["event_public_id"]})
    assert accepted.code == 201


async def test_plugin_instance_crud_and_channels(server):
    created = await server.request("POST", "/api/v1/plugins", {"plugin_id": "revpi", "instance_name": "Rig",
                                                               "auto_create_events": False})
    assert created.code == 201 and created.json["data"]["enabled"] is True
    assert created.json["data"]["status"] == "connected"
    pid = created.json["data"]["public_id"]
    assert all(m["event_public_id"] is None for m in created.json["data"]["channel_mappings"])
    assert (await server.request("POST", "/api/v1/plugins", {"plugin_id": "nope", "instance_name": "x"})).code == 422
    upd = await server.request("PUT", f"/api/v1/plugins/{pid}", {"enabled": False, "config_json": {"a": 1}})
    assert upd.code == 200 and upd.json["data"]["enabled"] is False
    assert (await server.request("GET", f"/api/v1/plugins/{pid}")).json["status"] == "inactive"
    assert upd.json["data"]["config_json"] == {"a": 1}
    ev = (await server.request("POST", "/api/v1/events", {**EV, "name": "Custom"})).json["data"]
    ch = await server.request("POST", f"/api/v1/plugins/{pid}/channels", {
        "channel_id": "custom", "channel_name": "Custom", "direction": "input", "unit": "mV"})
    assert ch.code == 201 and ch.json["data"]["event_public_id"] is None
    mapping = ch.json["data"]["public_id"]
    link = await server.request("PUT", f"/api/v1/plugins/{pid}/channels/{mapping}",
                                {"event_public_id": ev["public_id"]})
    assert link.code == 200 and link.json["data"]["event_public_id"] == ev["public_id"]
    bad = await server.request("PUT", f"/api/v1/plugins/{pid}/channels/{mapping}",
                               {"event_public_id": "missing"})
    assert bad.code == 404
    listing = await server.request("GET", f"/api/v1/plugins/{pid}/channels")
    assert len(listing.json) == 1
    bad_dir = await server.request("POST", f"/api/v1/plugins/{pid}/channels", {
        "channel_id": "c", "channel_name": "C", "direction": "sideways", "unit": "mV"})
    assert bad_dir.code == 422 and bad_dir.json["detail"].startswith("direction")
    assert (await server.request("DELETE", f"/api/v1/plugins/{pid}/channels/{mapping}")).code == 200
    assert (await server.request("DELETE", f"/api/v1/plugins/{pid}")).code == 200
    assert (await server.request("GET", f"/api/v1/plugins/{pid}")).code == 404
