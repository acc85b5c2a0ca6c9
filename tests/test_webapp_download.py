"""POST /api/v1/experiments/{id}/export/ticket: the web app's CSV download URL
(signed, short-lived, single-use, bound to one experiment), on both backends."""

from __future__ import annotations

import csv
import io
import logging

import pytest


async def _experiment_with_rows(server) -> tuple[str, str]:
    [event] = await server.linked_events(1, prefix="Probe")
    exp = await server.request("POST", "/api/v1/experiments", {"name": "Ticket Run"})
    assert exp.code == 201, exp
    exp_id = exp.json["data"]["public_id"]
    resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": [
        {"event_public_id": event, "value": v} for v in (1.5, 2.5, 3.5)]})
    assert resp.code == 201, resp
    return exp_id, event


async def test_ticket_downloads_once_without_a_bearer_token(server, caplog):
    exp_id, _ = await _experiment_with_rows(server)
    resp = await server.request("POST", f"/api/v1/experiments/{exp_id}/export/ticket")
    assert resp.code == 201, resp
    url, expires = resp.json["url"], resp.json["expires_in"]
    assert url.startswith(f"/api/v1/experiments/{exp_id}/export/csv?token=") and expires == 60
    assert server.admin_token not in url  # the session's own token never goes into a URL

    with caplog.at_level(logging.INFO):
        got = await server.request("GET", url, token=None)
    assert got.code == 200, got
    assert got.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in got.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(got.body.decode())))
    assert len(rows) == 4 and sorted(float(r[3]) for r in rows[1:]) == [1.5, 2.5, 3.5], rows
    token = url.split("token=", 1)[1]
    assert token not in caplog.text  # access log lines are redacted

    again = await server.request("GET", url, token=None)
    assert again.code == 401 and "already used" in again.json["detail"]


async def test_ticket_is_bound_to_its_experiment_and_signed(server):
    exp_id, _ = await _experiment_with_rows(server)
    await server.request("PUT", f"/api/v1/experiments/{exp_id}/stop")
    other = await server.request("POST", "/api/v1/experiments", {"name": "Other Run"})
    other_id = other.json["data"]["public_id"]
    url = (await server.request("POST", f"/api/v1/experiments/{exp_id}/export/ticket")).json["url"]
    token = url.split("token=", 1)[1]
    wrong = await server.request("GET", f"/api/v1/experiments/{other_id}/export/csv?token={token}", token=None)
    assert wrong.code == 401
    forged = await server.request("GET", f"/api/v1/experiments/{exp_id}/export/csv?token={token[:-4]}AAAA",
                                  token=None)
    assert forged.code == 401
    # the ticket was not spent by the refused tries
    assert (await server.request("GET", url, token=None)).code == 200


@pytest.mark.parametrize("who", ["nobody", "viewer"])
async def test_ticket_needs_a_session_and_a_real_experiment(server, who):
    exp_id, _ = await _experiment_with_rows(server)
    token = None if who == "nobody" else await server.create_user("viewer")
    resp = await server.request("POST", f"/api/v1/experiments/{exp_id}/export/ticket", token=token)
    if who == "nobody":
        assert resp.code == 401
    else:
        assert resp.code == 201  # viewers may export, as with the bearer download
    missing = await server.request("POST", "/api/v1/experiments/no-such-id/export/ticket")
    assert missing.code == 404 and missing.json["detail"] == "Experiment not found."
