"""GET /api/v1/experiments/{id}/export/csv?bom=true: a UTF-8 byte order mark for spreadsheets."""

from __future__ import annotations

import codecs
import csv
import io

from tests.test_csv import HEADER, export_path, push, start_experiment, stop_experiment


async def exported(server) -> str:
    (temp,) = await server.linked_events(1)  # unit °C: what a spreadsheet misreads without the mark
    exp = await start_experiment(server, "Kalibrierung Öfen")
    await push(server, [{"event_public_id": temp, "value": 21.5}, {"event_public_id": temp, "value": 22.0}])
    await stop_experiment(server, exp)
    return exp


async def test_bom_true_prefixes_the_mark_and_nothing_else_changes(server):
    exp = await exported(server)
    plain = await server.request("GET", export_path(exp))
    marked = await server.request("GET", export_path(exp) + "?bom=true")
    assert plain.code == marked.code == 200, (plain, marked)
    assert not plain.body.startswith(codecs.BOM_UTF8)
    assert marked.body.startswith(codecs.BOM_UTF8)
    assert marked.body[len(codecs.BOM_UTF8):] == plain.body
    assert marked.headers["Content-Type"] == "text/csv; charset=utf-8"
    text = marked.body.decode("utf-8-sig")
    assert text.startswith(HEADER + "\r\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["value"] for r in rows] == ["21.5", "22.0"] and {r["unit"] for r in rows} == {"°C"}


async def test_bom_false_and_1_0_spellings(server):
    exp = await exported(server)
    for value, has_bom in (("false", False), ("0", False), ("TRUE", True), ("1", True), ("", False)):
        resp = await server.request("GET", export_path(exp) + f"?bom={value}")
        assert resp.code == 200, (value, resp)
        assert resp.body.startswith(codecs.BOM_UTF8) is has_bom, value


async def test_bad_bom_value_is_a_clear_422(server):
    exp = await exported(server)
    resp = await server.request("GET", export_path(exp) + "?bom=yes-please")
    assert resp.code == 422 and resp.json == {"detail": "bom: must be true or false"}, resp
    missing = await server.request("GET", export_path("no-such-experiment") + "?bom=true")
    assert missing.code == 404, missing
