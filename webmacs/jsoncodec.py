"""JSON in and out, one way for the whole server.

:func:`dumps` is compact, refuses NaN/Infinity (not JSON) and writes datetimes as
:func:`webmacs.timefmt.api` text; :func:`encode` is the same as UTF-8 bytes (what
goes on a socket), made by orjson (the broadcast frames and every WebSocket reply).
:func:`loads` parses a WebSocket frame with orjson; anything orjson refuses is parsed
again by the standard library, so every error message, and what counts as valid, is
exactly the standard parser's (``NaN``/``Infinity`` literals included: they parse
and are refused per datapoint as "value: must be a finite number").
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import orjson

from webmacs import timefmt

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME  # datetimes through _default: timefmt.api text


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return timefmt.api(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, separators=(",", ":"), allow_nan=False)


def _check_finite(obj: Any) -> None:
    """orjson writes NaN/Infinity as null; refuse them as :func:`dumps` does."""
    if type(obj) is float:
        if not math.isfinite(obj):
            raise ValueError("Out of range float values are not JSON compliant")
    elif type(obj) is dict:
        for value in obj.values():
            if type(value) is not str:
                _check_finite(value)
    elif type(obj) in (list, tuple):
        for value in obj:
            if type(value) is not str:
                _check_finite(value)


def encode(obj: Any) -> bytes:
    _check_finite(obj)
    try:
        return orjson.dumps(obj, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:  # what orjson cannot write (an int beyond 64 bits, ...): the standard way
        return dumps(obj).encode()


def loads(data: str | bytes) -> Any:
    """Parse JSON text; raises what :func:`json.loads` raises for it (ValueError,
    UnicodeDecodeError, RecursionError)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
