"""JSON in and out, one way for the whole server.

:func:`dumps` is compact, refuses NaN/Infinity (not JSON) and writes datetimes as
:func:`webmacs.timefmt.api` text; :func:`encode` is the same as UTF-8 bytes (what
goes on a socket).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from webmacs import timefmt


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return timefmt.api(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, separators=(",", ":"), allow_nan=False)


def encode(obj: Any) -> bytes:
    return dumps(obj).encode()
