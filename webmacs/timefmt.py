"""Every timestamp the server writes or reads, in one place: one format per context.

==============  =======================================  ==========================================
context         format                                   function
==============  =======================================  ==========================================
REST API, the   ISO 8601 in UTC, always microseconds,    :func:`api` (``None`` stays ``None``)
WebSocket       offset ``+00:00``:
broadcast, logs ``2026-01-05T11:00:00.500000+00:00``
webhooks        ISO 8601 in UTC, milliseconds, ``Z``:    :func:`webhook`
(payload and    ``2026-01-05T11:00:00.500Z``
``time``)
CSV export      ISO 8601 UTC without offset (the column  :func:`csv`
                is documented as UTC), microseconds:
                ``2026-01-05T11:00:00.500000``
SQLite storage  the text SQLAlchemy's SQLite DateTime    :func:`sqlite_text`
                stores (naive UTC):
                ``2026-01-05 11:00:00.500000``
==============  =======================================  ==========================================

Readings may carry a ``timestamp`` in ISO 8601 (with an offset; none means UTC,
``Z`` accepted) or as epoch seconds: :func:`parse`.

SQL that formats times itself (the series query renders :func:`api`'s text in the
database) is in :mod:`webmacs.storage.series` and tested against :func:`api`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

UTC = timezone.utc
# A reading may be stamped up to this far ahead of the server's clock (clock skew);
# later ones are refused. Series and exports look this far past "now".
FUTURE_TOLERANCE = timedelta(minutes=5)


def utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime (naive values are taken as UTC)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def api(dt: datetime | None) -> str | None:
    """REST and WebSocket text: ``2026-01-05T11:00:00.500000+00:00``."""
    if dt is None:
        return None
    return utc(dt).isoformat(timespec="microseconds")


def webhook(dt: datetime) -> str:
    """Webhook text: ``2026-01-05T11:00:00.500Z``."""
    return utc(dt).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def csv(dt: datetime) -> str:
    """CSV export text (UTC, no offset): ``2026-01-05T11:00:00.500000``."""
    return utc(dt).replace(tzinfo=None).isoformat(timespec="microseconds")


def sqlite_text(dt: datetime) -> str:
    """The text SQLite stores for a UTC time: ``2026-01-05 11:00:00.500000``."""
    return utc(dt).strftime("%Y-%m-%d %H:%M:%S.%f")


def from_db(value: datetime | str | None) -> datetime | None:
    """A time read back from either backend (SQLite may hand back text) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return utc(value)


def parse(raw: Any) -> datetime:
    """A reading's time: ISO 8601 (an offset, or UTC when none; ``Z`` accepted) or
    epoch seconds. Raises ValueError (or OverflowError/OSError for absurd epochs)."""
    if isinstance(raw, bool):
        raise ValueError("timestamp must be an ISO 8601 string or epoch seconds")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise ValueError("timestamp must be finite")
        return datetime.fromtimestamp(raw, UTC)
    if isinstance(raw, str):
        return utc(datetime.fromisoformat(raw.strip().replace("Z", "+00:00")))
    raise ValueError("timestamp must be an ISO 8601 string or epoch seconds")
