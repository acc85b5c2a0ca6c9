"""One format per context (webmacs.timefmt), and the SQL that renders the API's format."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from webmacs import timefmt
from webmacs.db import make_engine
from webmacs.storage.series import _iso_sql

WHEN = datetime(2026, 1, 5, 11, 0, 0, 500000, tzinfo=timezone.utc)
WHOLE = datetime(2026, 1, 5, 11, 0, 0, tzinfo=timezone.utc)
CET = timezone(timedelta(hours=1))


@pytest.mark.parametrize("fn, dt, expected", [
    (timefmt.api, WHEN, "2026-01-05T11:00:00.500000+00:00"),
    (timefmt.api, WHOLE, "2026-01-05T11:00:00.000000+00:00"),  # always microseconds
    (timefmt.api, WHEN.astimezone(CET), "2026-01-05T11:00:00.500000+00:00"),  # always UTC
    (timefmt.api, WHEN.replace(tzinfo=None), "2026-01-05T11:00:00.500000+00:00"),  # naive is UTC
    (timefmt.webhook, WHEN, "2026-01-05T11:00:00.500Z"),
    (timefmt.csv, WHEN.astimezone(CET), "2026-01-05T11:00:00.500000"),
    (timefmt.sqlite_text, WHEN, "2026-01-05 11:00:00.500000"),
])
def test_formats(fn, dt, expected):
    assert fn(dt) == expected


def test_api_none_and_text_order():
    assert timefmt.api(None) is None
    earlier, later = timefmt.api(WHEN), timefmt.api(WHEN + timedelta(microseconds=1))
    assert earlier < later  # same-width UTC text sorts like the times (broadcast relies on it)


@pytest.mark.parametrize("raw, expected", [
    ("2026-01-05T11:00:00.5Z", WHEN),
    ("2026-01-05T12:00:00.5+01:00", WHEN),
    ("2026-01-05T11:00:00.5", WHEN),  # no offset: UTC
    (WHEN.timestamp(), WHEN),
])
def test_parse(raw, expected):
    assert timefmt.parse(raw) == expected


@pytest.mark.parametrize("raw", [True, None, "yesterday", float("nan"), [1]])
def test_parse_refuses(raw):
    with pytest.raises(ValueError):
        timefmt.parse(raw)


def test_from_db():
    assert timefmt.from_db("2026-01-05 11:00:00.500000") == WHEN
    assert timefmt.from_db(WHEN.astimezone(CET)) == WHEN and timefmt.from_db(None) is None


def test_series_sql_renders_the_api_format(database_url):
    """The series query formats times in the database: exactly timefmt.api's text."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            dialect = conn.dialect.name
            if dialect == "sqlite":  # stored as naive UTC text
                column, stored = "CAST(:t AS TEXT)", timefmt.sqlite_text(WHEN)
            else:
                column, stored = "CAST(:t AS timestamptz)", WHEN
            rendered = conn.execute(text(f"SELECT {_iso_sql(dialect, column)}"), {"t": stored}).scalar()
    finally:
        engine.dispose()
    assert rendered == timefmt.api(WHEN)
