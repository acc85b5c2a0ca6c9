"""Custom dashboards and widgets over real HTTP (REST §Dashboards), on both backends."""

from __future__ import annotations

import pytest

API = "/api/v1/dashboards"
EVENT = {"name": "Inlet Temperature", "type": "sensor", "unit": "°C", "min_value": 0, "max_value": 200}


async def make_event(server, **overrides) -> str:
    resp = await server.request("POST", "/api/v1/events", {**EVENT, **overrides})
    assert resp.code == 201, resp
    return resp.json["data"]["public_id"]


async def make_dashboard(server, token="admin", **body) -> dict:
    resp = await server.request("POST", API, {"name": "Reactor Zone A", **body}, token=token)
    assert resp.code == 201, resp
    return resp.json


async def test_dashboard_crud_with_widgets(server):
    event = await make_event(server)
    dash = await make_dashboard(server)
    me = (await server.request("GET", "/api/v1/auth/me")).json
    assert dash["name"] == "Reactor Zone A" and dash["is_global"] is False and dash["widgets"] == []
    assert dash["user_public_id"] == me["public_id"] and dash["public_id"] and dash["created_on"]
    one = f"{API}/{dash['public_id']}"

    specs = [
        {"widget_type": "line_chart", "title": "Inlet trend", "event_public_id": event, "x": 0, "y": 0, "w": 12,
         "h": 4},
        {"widget_type": "gauge", "title": "Inlet gauge", "event_public_id": event, "w": 4, "h": 3},
        {"widget_type": "stat_card", "title": "Inlet now", "event_public_id": event, "x": 4, "w": 3, "h": 2,
         "config_json": '{"decimals": 1}'},
        {"widget_type": "actuator_toggle", "title": "Emergency valve"},
    ]
    widgets = []
    for spec in specs:
        resp = await server.request("POST", f"{one}/widgets", spec)
        assert resp.code == 201, resp
        widgets.append(resp.json)
    line, gauge, stat, toggle = widgets
    assert line["widget_type"] == "line_chart" and (line["x"], line["y"], line["w"], line["h"]) == (0, 0, 12, 4)
    assert (gauge["x"], gauge["y"]) == (0, 0)  # defaults
    assert toggle["event_public_id"] is None and (toggle["w"], toggle["h"]) == (4, 3)  # default size
    assert stat["config_json"] == '{"decimals": 1}'
    assert set(line) >= {"public_id", "widget_type", "title", "event_public_id", "x", "y", "w", "h", "config_json"}

    got = await server.request("GET", one)
    assert got.code == 200 and [w["public_id"] for w in got.json["widgets"]] == [w["public_id"] for w in widgets]
    listing = await server.request("GET", API)
    assert listing.code == 200 and listing.json["total"] == 1 and listing.json["data"][0] == got.json

    upd = await server.request("PUT", one, {"name": "Reactor Zone B", "is_global": True})
    assert upd.code == 200 and upd.json["status"] == "success" and upd.json["message"] == "Dashboard successfully updated."
    assert upd.json["data"]["name"] == "Reactor Zone B" and upd.json["data"]["is_global"] is True
    wupd = await server.request("PUT", f"{one}/widgets/{gauge['public_id']}", {"x": 8, "title": "Gauge 2",
                                                                            "event_public_id": None})
    assert wupd.code == 200 and wupd.json["data"]["x"] == 8 and wupd.json["data"]["title"] == "Gauge 2"
    assert wupd.json["data"]["event_public_id"] is None and wupd.json["data"]["w"] == 4  # the rest unchanged

    assert (await server.request("DELETE", f"{one}/widgets/{toggle['public_id']}")).code == 200
    assert (await server.request("DELETE", f"{one}/widgets/{toggle['public_id']}")).code == 404
    assert len((await server.request("GET", one)).json["widgets"]) == 3

    deleted = await server.request("DELETE", one)
    assert deleted.code == 200 and deleted.json == {"status": "success", "message": "Dashboard successfully deleted."}
    assert (await server.request("GET", one)).code == 404
    assert (await server.request("PUT", f"{one}/widgets/{line['public_id']}", {"x": 1})).code == 404
    # its widgets went with it
    from sqlalchemy import func, select

    from webmacs.models import DashboardWidget

    left = await server.services.db.session(
        lambda s: s.execute(select(func.count()).select_from(DashboardWidget)).scalar_one())
    assert left == 0


async def test_deleting_an_event_leaves_the_widget_unbound(server):
    event = await make_event(server)
    other = await make_event(server, name="Outlet Temperature")
    dash = await make_dashboard(server)
    one = f"{API}/{dash['public_id']}"
    w = (await server.request("POST", f"{one}/widgets", {"widget_type": "gauge", "title": "T",
                                                         "event_public_id": event})).json
    keep = (await server.request("POST", f"{one}/widgets", {"widget_type": "stat_card", "title": "U",
                                                            "event_public_id": other})).json
    assert (await server.request("DELETE", f"/api/v1/events/{event}")).code == 200
    got = await server.request("GET", one)
    assert got.code == 200
    by_id = {x["public_id"]: x for x in got.json["widgets"]}
    assert by_id[w["public_id"]]["event_public_id"] is None and by_id[w["public_id"]]["title"] == "T"
    assert by_id[keep["public_id"]]["event_public_id"] == other
    # and it can be pointed at another event again
    rebind = await server.request("PUT", f"{one}/widgets/{w['public_id']}", {"event_public_id": other})
    assert rebind.code == 200 and rebind.json["data"]["event_public_id"] == other


async def test_visibility_and_ownership(server):
    alice = await server.create_user("operator", "alice")
    bob = await server.create_user("operator", "bob")
    viewer = await server.create_user("viewer", "vic")
    private = await make_dashboard(server, token=alice, name="Alice private")
    shared = await make_dashboard(server, token=alice, name="Alice shared", is_global=True)
    own_b = await make_dashboard(server, token=bob, name="Bob's")

    def names(resp):
        return {d["name"] for d in resp.json["data"]}

    assert names(await server.request("GET", API, token=alice)) == {"Alice private", "Alice shared"}
    assert names(await server.request("GET", API, token=bob)) == {"Alice shared", "Bob's"}
    assert names(await server.request("GET", API, token=viewer)) == {"Alice shared"}
    assert names(await server.request("GET", API)) == {"Alice shared"}  # admins too: own + global

    # someone else's private dashboard does not exist for you
    for token in (bob, viewer, "admin"):
        assert (await server.request("GET", f"{API}/{private['public_id']}", token=token)).code == 404
        assert (await server.request("PUT", f"{API}/{private['public_id']}", {"name": "x"}, token=token)).code \
            in (403, 404)
    # a global one is readable, but only its owner changes it (admins included)
    shared_one = f"{API}/{shared['public_id']}"
    assert (await server.request("GET", shared_one, token=viewer)).code == 200
    for token in (bob, "admin"):
        for method, path, body in (("PUT", shared_one, {"name": "hijacked"}), ("DELETE", shared_one, None),
                                   ("POST", f"{shared_one}/widgets", {"widget_type": "gauge", "title": "x"})):
            resp = await server.request(method, path, body, token=token)
            assert resp.code == 403 and resp.json == {"detail": "Only the dashboard owner can modify it."}, resp
    # viewers read but do not write
    assert (await server.request("POST", API, {"name": "v"}, token=viewer)).code == 403
    assert (await server.request("PUT", shared_one, {"name": "v"}, token=viewer)).code == 403
    assert (await server.request("GET", API, token=None)).code == 401
    # the owner can
    assert (await server.request("PUT", shared_one, {"name": "Alice shared 2"}, token=alice)).code == 200
    assert (await server.request("DELETE", f"{API}/{own_b['public_id']}", token=bob)).code == 200


async def test_an_ownerless_dashboard_is_the_admins(server):
    carol = await server.create_user("operator", "carol")
    dash = await make_dashboard(server, token=carol, name="Carol shared", is_global=True)
    carol_id = (await server.request("GET", "/api/v1/auth/me", token=carol)).json["public_id"]
    assert (await server.request("DELETE", f"/api/v1/users/{carol_id}")).code == 200
    got = await server.request("GET", f"{API}/{dash['public_id']}")
    assert got.code == 200 and got.json["user_public_id"] is None
    assert (await server.request("PUT", f"{API}/{dash['public_id']}", {"name": "Adopted"})).code == 200
    assert (await server.request("DELETE", f"{API}/{dash['public_id']}")).code == 200


@pytest.mark.parametrize("body, field", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 256}, "name"),
    ({"name": "ok", "is_global": "yes"}, "is_global"),
])
async def test_dashboard_validation(server, body, field):
    resp = await server.request("POST", API, body)
    assert resp.code == 422 and resp.json["detail"].startswith(field + ":"), resp


@pytest.mark.parametrize("body, field", [
    ({"title": "t"}, "widget_type"),
    ({"widget_type": "pie_chart", "title": "t"}, "widget_type"),
    ({"widget_type": "gauge"}, "title"),
    ({"widget_type": "gauge", "title": ""}, "title"),
    ({"widget_type": "gauge", "title": "t", "w": 0}, "w"),
    ({"widget_type": "gauge", "title": "t", "w": 13}, "w"),
    ({"widget_type": "gauge", "title": "t", "h": 0}, "h"),
    ({"widget_type": "gauge", "title": "t", "h": 13}, "h"),
    ({"widget_type": "gauge", "title": "t", "x": -1}, "x"),
    ({"widget_type": "gauge", "title": "t", "x": 12}, "x"),
    ({"widget_type": "gauge", "title": "t", "y": -1}, "y"),
    ({"widget_type": "gauge", "title": "t", "y": 1.5}, "y"),
    ({"widget_type": "gauge", "title": "t", "config_json": "{not json"}, "config_json"),
    ({"widget_type": "gauge", "title": "t", "config_json": {"a": 1}}, "config_json"),
    ({"widget_type": "gauge", "title": "t", "event_public_id": "no-such-event"}, "event_public_id"),
])
async def test_widget_validation(server, body, field):
    dash = await make_dashboard(server)
    resp = await server.request("POST", f"{API}/{dash['public_id']}/widgets", body)
    assert resp.code == 422 and resp.json["detail"].startswith(field + ":"), resp


async def test_not_found_cases(server):
    assert (await server.request("GET", f"{API}/nope")).code == 404
    assert (await server.request("GET", f"{API}/%00")).code == 404
    assert (await server.request("POST", f"{API}/nope/widgets", {"widget_type": "gauge", "title": "t"})).code == 404
    dash = await make_dashboard(server)
    assert (await server.request("PUT", f"{API}/{dash['public_id']}/widgets/nope", {"x": 1})).code == 404
    assert (await server.request("DELETE", f"{API}/{dash['public_id']}/widgets/nope")).code == 404
    other = await make_dashboard(server, name="Other")
    w = (await server.request("POST", f"{API}/{other['public_id']}/widgets",
                              {"widget_type": "gauge", "title": "t"})).json
    # a widget is only reachable through its own dashboard
    assert (await server.request("DELETE", f"{API}/{dash['public_id']}/widgets/{w['public_id']}")).code == 404
    assert (await server.request("PUT", f"{API}/{dash['public_id']}", raw=b"{bad")).code == 400
