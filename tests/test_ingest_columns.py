"""The ingest hot path's bulk code against the one-by-one definitions it replaces:
accept_points vs validate_point + the linkage filter, pack_columns vs pack_rows,
copy_payload vs a struct.pack per row. The fast code must give the same answers and
bytes for every input, odd ones included (the end-to-end tests cover the wire)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from webmacs.ingest import MAX_ERRORS, _Accepted, _Invalid, accept_points, validate_point
from webmacs.storage.datapoints import (_COPY_HEADER, _COPY_ROW, _COPY_ROW_NULL, _COPY_TRAILER, _PG_EPOCH_US,
                                        copy_payload)
from webmacs.storage.linkage import EventInfo, Linkage
from webmacs.storage.queue import EPOCH, ONE_US, Record, column, pack_columns, pack_rows

NOW = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=timezone.utc)
LINKED = {f"ev-{i}": EventInfo(100 + i, f"ev-{i}", f"Sensor {i}", "°C") for i in range(20)}


def reference(raw_points, linked, now, strict=False):
    """The two passes the server made before accept_points: validate all, then filter."""
    valid, errors = [], []
    for i, raw in enumerate(raw_points):
        try:
            valid.append(validate_point(raw, now))
        except ValueError as exc:
            if strict:
                raise _Invalid(f"datapoints[{i}]: {exc}") from None
            if len(errors) < MAX_ERRORS:
                errors.append(f"datapoints[{i}]: {exc}")
    rows = []
    for event, value, ts in valid:
        info = linked.get(event)
        if info is None:
            if len(errors) < MAX_ERRORS:
                errors.append(f"event {event}: unknown or not linked to an enabled plugin")
            continue
        rows.append((ts or now, info.id, value))
    return rows, errors


ODD_POINTS = [
    {"event_public_id": "ev-1", "value": 1.5},
    {"event_public_id": "ev-2", "value": 3},  # an int
    {"event_public_id": "ev-3", "value": True},
    {"event_public_id": "ev-4", "value": float("nan")},
    {"event_public_id": "ev-5", "value": float("inf")},
    {"event_public_id": "ev-5", "value": -float("inf")},
    {"event_public_id": "ev-6", "value": 10 ** 400},
    {"event_public_id": "ev-7", "value": "1.0"},
    {"event_public_id": "ev-8", "value": None},
    {"event_public_id": "", "value": 1.0},
    {"event_public_id": ["ev-1"], "value": 1.0},
    {"event_public_id": {"a": 1}, "value": 1.0},
    {"event_public_id": 5, "value": 1.0},
    {"event_public_id": "nope", "value": 2.0},
    {"event_public_id": "ev-\ud800", "value": 2.0},
    {"event_public_id": "ev-9\x00", "value": 2.0},
    {"value": 1.0},
    {"event_public_id": "ev-10"},
    {"event_public_id": "ev-11", "value": 1.0, "timestamp": "2026-12-06T11:59:00Z"},
    {"event_public_id": "ev-11", "value": 2.0, "timestamp": 1_765_000_000.25},
    {"event_public_id": "ev-11", "value": 3.0, "timestamp": "yesterday"},
    {"event_public_id": "ev-12", "value": 4.0, "timestamp": "2027-01-01T00:00:00Z"},  # in the future
    {"event_public_id": "ev-12", "value": 5.0, "timestamp": None},
    {"event_public_id": "ev-13", "value": -0.0, "extra": [1, 2]},
    [1, 2],
    "ev-1",
    None,
    7,
]


def batches(seed: int, n: int = 300):
    rng = random.Random(seed)
    for _ in range(n):
        size = rng.choice([0, 1, 2, 5, 50, 500])
        points = []
        for _ in range(size):
            if rng.random() < 0.8:
                points.append({"event_public_id": f"ev-{rng.randrange(25)}", "value": rng.uniform(-1e12, 1e12)})
            else:
                points.append(rng.choice(ODD_POINTS))
        yield points


def as_rows(ids, values, stamps, now):
    return list(zip(stamps or [now] * len(ids), ids, values))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_accept_points_answers_as_validate_point_and_the_filter_did(seed):
    for points in batches(seed):
        want_rows, want_errors = reference(points, LINKED, NOW)
        ids, values, stamps, errors = accept_points(points, LINKED, NOW)
        assert as_rows(ids, values, stamps, NOW) == want_rows
        assert [type(v) for v in values] == [float] * len(values)
        assert errors == want_errors
        try:
            want = reference(points, LINKED, NOW, strict=True)
        except _Invalid as exc:
            with pytest.raises(_Invalid) as got:
                accept_points(points, LINKED, NOW, strict=True)
            assert str(got.value) == str(exc)
        else:
            ids, values, stamps, errors = accept_points(points, LINKED, NOW, strict=True)
            assert (as_rows(ids, values, stamps, NOW), errors) == want


def test_every_odd_point_alone_and_all_together():
    for points in [[p] for p in ODD_POINTS] + [ODD_POINTS, ODD_POINTS * 3]:
        ids, values, stamps, errors = accept_points(points, LINKED, NOW)
        assert (as_rows(ids, values, stamps, NOW), errors) == reference(points, LINKED, NOW)


def test_newest_value_per_event_with_and_without_timestamps():
    linkage = Linkage(LINKED, None)
    points = [{"event_public_id": "ev-1", "value": float(v)} for v in range(5)]
    acc = _Accepted(*accept_points(points, LINKED, NOW)[:3], NOW, linkage.by_id, [], 0, None)
    assert [(lv.event.public_id, lv.value, lv.time) for lv in acc.newest(None)] == [("ev-1", 4.0, NOW)]
    early = (NOW - timedelta(seconds=5)).isoformat()
    points = [{"event_public_id": "ev-1", "value": 1.0},
              {"event_public_id": "ev-1", "value": 2.0, "timestamp": early},
              {"event_public_id": "ev-2", "value": 3.0, "timestamp": early},
              {"event_public_id": "ev-2", "value": 4.0, "timestamp": early}]
    acc = _Accepted(*accept_points(points, LINKED, NOW)[:3], NOW, linkage.by_id, [], 0, "exp")
    assert sorted((lv.event.public_id, lv.value, lv.experiment_public_id) for lv in acc.newest("exp")) == [
        ("ev-1", 1.0, "exp"), ("ev-2", 4.0, "exp")]


def test_pack_columns_is_pack_rows():
    rng = random.Random(7)
    for n in (0, 1, 3, 500):
        ids = [rng.randrange(1, 2 ** 31) for _ in range(n)]
        values = [rng.uniform(-1e300, 1e300) for _ in range(n)]
        times = [NOW + timedelta(microseconds=rng.randrange(-10 ** 15, 10 ** 15)) for _ in range(n)]
        micros = [(t - EPOCH) // ONE_US for t in times]
        assert pack_columns(micros, ids, values) == pack_rows(zip(times, ids, values))
        assert pack_columns((NOW - EPOCH) // ONE_US, ids, values) == pack_rows((NOW, i, v) for i, v in zip(ids, values))
        packed = pack_columns(micros, ids, values)
        assert (list(column(packed, "time")), list(column(packed, "event_id")), list(column(packed, "value"))) == (
            micros, ids, values)


def reference_payload(records):
    parts = [_COPY_HEADER]
    for rec in records:
        for us, event_id, value in rec.unpacked():
            if rec.experiment_id is None:
                parts.append(_COPY_ROW_NULL.pack(4, 8, us - _PG_EPOCH_US, 4, event_id, 8, value, -1))
            else:
                parts.append(_COPY_ROW.pack(4, 8, us - _PG_EPOCH_US, 4, event_id, 8, value, 4, rec.experiment_id))
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def test_copy_payload_is_a_pack_per_row():
    rng = random.Random(11)
    now_us = (NOW - EPOCH) // ONE_US
    records = []
    for seq in range(1, 40):
        n = rng.choice([1, 2, 500])
        ids = [rng.randrange(1, 2 ** 31) for _ in range(n)]
        values = [rng.uniform(-1e12, 1e12) for _ in range(n)]
        times = now_us if seq % 3 else [now_us + rng.randrange(-10 ** 12, 10 ** 12) for _ in range(n)]
        experiment = rng.choice([None, 1, 2, 2 ** 31 - 1])
        records.append(Record(seq, experiment, n, 0, 0.0, "token:1", None, pack_columns(times, ids, values)))
    assert copy_payload(records) == reference_payload(records)
    assert copy_payload(records[:1]) == reference_payload(records[:1])
    assert copy_payload([]) == reference_payload([])
