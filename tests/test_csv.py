"""GET /api/v1/experiments/{id}/export/csv: format, headers, ordering, auth, streaming."""

from __future__ import annotations

import asyncio
import csv
import io
import os
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text, update
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.simple_httpclient import HTTPStreamClosedError

from tests.conftest import wait_for
from webmacs.storage import export
from webmacs.storage.export import export_filename
from webmacs.timefmt import sqlite_text
from webmacs.models import Event

HEADER = "timestamp,event_name,event_public_id,value,unit,datapoint_public_id"


def export_path(exp_id: str) -> str:
    return f"/api/v1/experiments/{exp_id}/export/csv"


async def start_experiment(server, name: str = "Fluidised Bed Run 07") -> str:
    resp = await server.request("POST", "/api/v1/experiments", {"name": name})
    assert resp.code == 201, resp
    return resp.json["data"]["public_id"]


async def stop_experiment(server, exp_id: str) -> None:
    resp = await server.request("PUT", f"/api/v1/experiments/{exp_id}/stop")
    assert resp.code == 200, resp


async def push(server, points: list[dict]) -> None:
    resp = await server.request("POST", "/api/v1/datapoints/batch", {"datapoints": points})
    assert resp.code == 201 and resp.json["accepted"] == len(points), resp


def parse(body: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"))))


@pytest.fixture
def page_calls(monkeypatch):
    """Record every page the export fetches (rows held by the server at once)."""
    calls: list[int] = []
    original = export.CsvExport.next_page

    def counting(self):
        chunk = original(self)
        calls.append(chunk.count(b"\n"))
        return chunk

    monkeypatch.setattr(export.CsvExport, "next_page", counting)
    return calls


# --- format --------------------------------------------------------------------------------

async def test_header_rows_and_response_headers(server):
    temp, pres = await server.linked_events(2)
    before = datetime.now(timezone.utc) - timedelta(seconds=30)
    await push(server, [{"event_public_id": temp, "value": 1.0, "timestamp": before.isoformat()}])  # no experiment
    exp = await start_experiment(server)
    t0 = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
    await push(server, [
        {"event_public_id": pres, "value": 1013.25, "timestamp": (t0 + timedelta(seconds=1)).isoformat()},
        {"event_public_id": temp, "value": 23.45, "timestamp": t0.isoformat()},
        {"event_public_id": temp, "value": -0.5, "timestamp": (t0 + timedelta(seconds=2, microseconds=5)).isoformat()},
    ])
    await stop_experiment(server, exp)
    await push(server, [{"event_public_id": temp, "value": 9.0}])  # after the stop: not in the export

    resp = await server.request("GET", export_path(exp))
    assert resp.code == 200, resp
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="experiment_Fluidised_Bed_Run_07_{exp[:8]}.csv"')
    assert resp.headers.get("Content-Length") is None  # streamed (chunked)
    text_body = resp.body.decode()
    assert text_body.splitlines()[0] == HEADER
    rows = parse(resp.body)
    assert [(r["event_public_id"], r["value"]) for r in rows] == [
        (temp, "23.45"), (pres, "1013.25"), (temp, "-0.5")]
    assert rows[0]["timestamp"] == t0.replace(tzinfo=None).isoformat(timespec="microseconds")
    assert rows[2]["timestamp"].endswith(".000005")
    assert rows[0]["event_name"] == "Sensor 0" and rows[1]["event_name"] == "Sensor 1"
    assert {r["unit"] for r in rows} == {"°C"}
    # datapoint_public_id is the API's id: it resolves through GET /datapoints/{id}
    for row in rows:
        got = await server.request("GET", f"/api/v1/datapoints/{row['datapoint_public_id']}")
        assert got.code == 200, got
        assert got.json["value"] == float(row["value"]) and got.json["experiment_public_id"] == exp


async def test_quoting_and_empty_unit(server):
    resp = await server.request("POST", "/api/v1/events", {"name": 'Flow, "main" line', "type": "sensor",
                                                           "unit": "L/min", "min_value": 0, "max_value": 9})
    assert resp.code == 201, resp
    event = resp.json["data"]["public_id"]
    # an event stored without a unit (from before EventCreate required one)
    await server.services.db.session(lambda s: s.execute(
        update(Event).where(Event.public_id == event).values(unit=None)))
    plugin = await server.request("POST", "/api/v1/plugins", {"plugin_id": "revpi", "instance_name": "dev"})
    ch = await server.request("POST", f"/api/v1/plugins/{plugin.json['data']['public_id']}/channels", {
        "channel_id": "f", "channel_name": "Flow", "direction": "input", "unit": "L/min", "event_public_id": event})
    assert ch.code == 201, ch
    exp = await start_experiment(server, "Run 12 — Inlet 180°C, Flow 5 L/min")
    await push(server, [{"event_public_id": event, "value": 5}])
    resp = await server.request("GET", export_path(exp))
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="experiment_Run_12_Inlet_180C_Flow_5_L_min_{exp[:8]}.csv"')
    assert b'"Flow, ""main"" line"' in resp.body
    [row] = parse(resp.body)
    assert row["event_name"] == 'Flow, "main" line' and row["unit"] == "" and row["value"] == "5.0"


def test_export_filename():
    assert export_filename("Fluidised Bed Run 07", "a1b2c3d4-0000") == "experiment_Fluidised_Bed_Run_07_a1b2c3d4.csv"
    assert export_filename("Température ü/..\\x", "12345678") == "experiment_Temperature_u_x_12345678.csv"
    assert export_filename('"; rm -rf /', "12345678") == "experiment_rm_-rf_12345678.csv"
    assert export_filename("———", "12345678") == "experiment_export_12345678.csv"
    assert len(export_filename("x" * 255, "12345678")) <= 110


async def test_empty_experiment_is_header_only(server):
    exp = await start_experiment(server)
    await stop_experiment(server, exp)
    resp = await server.request("GET", export_path(exp))
    assert resp.code == 200 and resp.body == (HEADER + "\r\n").encode()


async def test_running_experiment_exports_what_is_stored(server):
    [event] = await server.linked_events(1)
    exp = await start_experiment(server)
    await push(server, [{"event_public_id": event, "value": float(i)} for i in range(5)])
    resp = await server.request("GET", export_path(exp))
    assert resp.code == 200
    assert [r["value"] for r in parse(resp.body)] == ["0.0", "1.0", "2.0", "3.0", "4.0"]


async def test_only_the_experiments_rows(server):
    [event] = await server.linked_events(1)
    first = await start_experiment(server, "first")
    await push(server, [{"event_public_id": event, "value": 1.0}])
    await stop_experiment(server, first)
    second = await start_experiment(server, "second")
    await push(server, [{"event_public_id": event, "value": 2.0}])
    await stop_experiment(server, second)
    assert [r["value"] for r in parse((await server.request("GET", export_path(first))).body)] == ["1.0"]
    assert [r["value"] for r in parse((await server.request("GET", export_path(second))).body)] == ["2.0"]


async def test_ties_on_time_are_paged_exactly_once(server, monkeypatch, page_calls):
    """A batch without timestamps shares one time: keyset (time, id) pages through it."""
    monkeypatch.setattr(export, "CSV_PAGE_ROWS", 7)
    a, b = await server.linked_events(2)
    exp = await start_experiment(server)
    expected = []
    for batch in range(3):
        points = [{"event_public_id": (a, b)[i % 2], "value": float(batch * 100 + i)} for i in range(23)]
        await push(server, points)
        expected += [p["value"] for p in points]
    await stop_experiment(server, exp)
    rows = parse((await server.request("GET", export_path(exp))).body)
    assert [float(r["value"]) for r in rows] == expected  # time order, then insertion order
    assert len({r["datapoint_public_id"] for r in rows}) == 69
    assert max(page_calls) <= 7 and sum(page_calls) == 69


# --- auth -------------------------------------------------------------------------------------

async def test_unknown_experiment_is_404(server):
    resp = await server.request("GET", export_path("00000000-0000-0000-0000-000000000000"))
    assert resp.code == 404 and resp.json == {"detail": "Experiment not found."}


async def test_auth(server):
    exp = await start_experiment(server)
    assert (await server.request("GET", export_path(exp), token=None)).code == 401
    assert (await server.request("GET", export_path(exp), token="nope")).code == 401
    viewer = await server.create_user("viewer")
    resp = await server.request("GET", export_path(exp), token=viewer)
    assert resp.code == 200 and resp.body.startswith(HEADER.encode())


# --- streaming ------------------------------------------------------------------------------------

LARGE = 200_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def large_experiment(server) -> tuple[str, list[int]]:
    """An experiment of LARGE rows over its last hour, 4 events, bulk-inserted in SQL."""
    events = await server.linked_events(4)
    exp = await start_experiment(server, "Large run")
    await stop_experiment(server, exp)
    stop = datetime.now(timezone.utc)
    start = stop - timedelta(hours=1)
    step = timedelta(hours=1) / LARGE

    def load(session):
        exp_id = session.execute(text("SELECT id FROM experiments WHERE public_id = :p"), {"p": exp}).scalar()
        session.execute(text("UPDATE experiments SET started_on = :s WHERE id = :i"),
                        {"s": start if session.bind.dialect.name != "sqlite" else sqlite_text(start), "i": exp_id})
        ids = [session.execute(text("SELECT id FROM events WHERE public_id = :p"), {"p": e}).scalar()
               for e in events]
        if session.bind.dialect.name == "sqlite":
            session.execute(text("INSERT INTO datapoints (time, event_id, value, experiment_id) "
                                 "VALUES (:t, :e, :v, :x)"),
                            [{"t": sqlite_text(start + k * step), "e": ids[k % 4], "v": k * 0.5, "x": exp_id}
                             for k in range(LARGE)])
        else:
            session.execute(text(
                "INSERT INTO datapoints (time, event_id, value, experiment_id) "
                "SELECT CAST(:s AS timestamptz) + k * CAST(:step AS interval), "
                "       (CAST(:ids AS integer[]))[k % 4 + 1], k * 0.5, :x FROM generate_series(0, :n - 1) AS k"),
                {"s": start, "step": step, "ids": ids, "x": exp_id, "n": LARGE})
        return ids

    await server.services.db.session(load)
    return exp, events


@pytest.mark.slow
async def test_large_export_streams_in_constant_memory(server, page_calls):
    exp, _events = await large_experiment(server)
    client = AsyncHTTPClient(force_instance=True)
    headers: list[str] = []
    got = {"bytes": 0, "lines": 0, "pages_at_first_row": None, "peak": 0, "tail": b""}
    baseline = rss_bytes()

    def on_chunk(chunk: bytes) -> None:
        got["bytes"] += len(chunk)
        got["lines"] += chunk.count(b"\n")
        got["tail"] = (got["tail"] + chunk)[-200:]
        if got["pages_at_first_row"] is None and got["lines"] > 1:
            got["pages_at_first_row"] = len(page_calls)
        got["peak"] = max(got["peak"], rss_bytes() - baseline)

    try:
        resp = await client.fetch(HTTPRequest(
            server.base_url + export_path(exp), headers={"Authorization": f"Bearer {server.admin_token}"},
            streaming_callback=on_chunk, header_callback=headers.append, request_timeout=100,
            decompress_response=False), raise_error=False)
    finally:
        client.close()
    assert resp.code == 200
    raw_headers = "".join(headers).lower()
    assert "transfer-encoding: chunked" in raw_headers and "content-length" not in raw_headers
    assert got["lines"] == LARGE + 1
    # Pages of at most CSV_PAGE_ROWS rows, and the first rows reached the client while
    # the server had fetched only the first few of them: the body was never built whole.
    assert max(page_calls) <= export.CSV_PAGE_ROWS and sum(page_calls) == LARGE
    assert len(page_calls) >= LARGE // export.CSV_PAGE_ROWS
    assert got["pages_at_first_row"] is not None and got["pages_at_first_row"] <= 3, got
    # ~21 MB of CSV went through; holding it (or its 200k rows) would be far more than this
    assert got["peak"] < 16 * 1024 * 1024, f"RSS grew by {got['peak'] / 2**20:.1f} MiB"
    last = got["tail"].decode().strip().splitlines()[-1].split(",")
    assert last[3] == repr((LARGE - 1) * 0.5)


@pytest.mark.slow
async def test_client_going_away_stops_the_export(server, page_calls):
    exp, _events = await large_experiment(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write((f"GET {export_path(exp)} HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {server.admin_token}\r\n\r\n").encode())
    await writer.drain()
    first = await reader.readuntil(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    await reader.readexactly(64 * 1024)
    writer.close()
    await writer.wait_closed()
    # The server notices on a following flush and stops fetching pages.
    await wait_for(lambda: len(page_calls) > 0, message="a page")
    seen = -1
    while seen != len(page_calls):  # settled: no more pages for 0.5 s
        seen = len(page_calls)
        await asyncio.sleep(0.5)
    assert sum(page_calls) < LARGE // 2, f"{sum(page_calls)} rows fetched after the client left"


async def test_failure_mid_stream_is_not_a_clean_end(server, monkeypatch):
    """After the headers are out, an error must not end the chunked body cleanly."""
    [event] = await server.linked_events(1)
    exp = await start_experiment(server)
    await push(server, [{"event_public_id": event, "value": float(i)} for i in range(30)])
    monkeypatch.setattr(export, "CSV_PAGE_ROWS", 10)
    original = export.CsvExport.next_page
    calls = []

    def failing(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return original(self)

    monkeypatch.setattr(export.CsvExport, "next_page", failing)
    with pytest.raises(HTTPStreamClosedError):  # closed before the terminating chunk
        await server.request("GET", export_path(exp))
    assert len(calls) == 2
