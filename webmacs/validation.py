"""Request-body validation: small declarative field specs, errors that name the field.

``validate(body, {"name": Str(1, 255), ...})`` returns the cleaned dict or
raises :class:`ValidationError` ("name: must be a string") which handlers turn
into a 422 ``{"detail": ...}``. Missing optional fields are left out of the
result unless they have a default, so updates can tell "absent" from "null".

Each field also describes itself as JSON Schema (:meth:`Field.json_schema`):
the OpenAPI document (:mod:`webmacs.openapi`) is built from the very specs the
handlers validate with, so the two cannot disagree.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Iterable

_MISSING = object()
INT64_MAX = 2**63 - 1


class ValidationError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Field:
    def __init__(self, *, required: bool = False, default: Any = _MISSING, nullable: bool = False,
                 description: str | None = None, example: Any = _MISSING):
        self.required = required
        self.default = default
        self.nullable = nullable
        self.description = description
        self.example = example

    def clean(self, name: str, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of a non-null value (subclasses describe their own checks)."""
        return {}

    def json_schema(self) -> dict[str, Any]:
        """:meth:`schema` plus null (when nullable), the default, a description and an example."""
        out = dict(self.schema())
        if self.nullable:
            if "type" in out:
                kinds = out["type"] if isinstance(out["type"], list) else [out["type"]]
                out["type"] = [*kinds, "null"]
            else:
                out = {"anyOf": [out, {"type": "null"}]} if out else {}
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        if self.default is not _MISSING and not callable(self.default):
            out["default"] = self.default
        if self.description:
            out["description"] = self.description
        if self.example is not _MISSING:
            out["examples"] = [self.example]
        return out


class Str(Field):
    def __init__(self, min_len: int = 0, max_len: int = 255, choices: Iterable[str] | None = None,
                 strip: bool = True, **kw):
        super().__init__(**kw)
        self.min_len, self.max_len = min_len, max_len
        self.choices = tuple(choices) if choices is not None else None
        self.strip = strip

    def clean(self, name, value):
        if not isinstance(value, str):
            raise ValidationError(name, "must be a string")
        if "\x00" in value:  # PostgreSQL text cannot hold NUL (psycopg2 raises ValueError: a 500)
            raise ValidationError(name, "must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): not storable text
            raise ValidationError(name, "must not contain unpaired UTF-16 surrogates") from None
        if self.strip:
            value = value.strip()
        if self.choices is not None and value not in self.choices:
            raise ValidationError(name, "must be one of " + ", ".join(self.choices))
        if not self.min_len <= len(value) <= self.max_len:
            raise ValidationError(name, f"length must be between {self.min_len} and {self.max_len}")
        return value

    def schema(self):
        if self.choices is not None:
            return {"type": "string", "enum": list(self.choices)}
        return {"type": "string", "minLength": self.min_len, "maxLength": self.max_len}


class Email(Str):
    def __init__(self, **kw):
        super().__init__(3, 255, **kw)

    def clean(self, name, value):
        value = super().clean(name, value)
        local, _, domain = value.partition("@")
        if not local or "." not in domain or " " in value or domain.startswith(".") or domain.endswith("."):
            raise ValidationError(name, "must be a valid email address")
        return value.lower()

    def schema(self):
        return {**super().schema(), "format": "email"}


class Num(Field):
    """A finite JSON number; booleans and numeric strings are rejected."""

    def __init__(self, lo: float | None = None, hi: float | None = None, **kw):
        super().__init__(**kw)
        self.lo, self.hi = lo, hi

    def clean(self, name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(name, "must be a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range (hundreds of digits)
            raise ValidationError(name, "must be a finite number") from None
        if not math.isfinite(value):
            raise ValidationError(name, "must be a finite number")
        if self.lo is not None and value < self.lo:
            raise ValidationError(name, f"must be >= {self.lo:g}")
        if self.hi is not None and value > self.hi:
            raise ValidationError(name, f"must be <= {self.hi:g}")
        return value

    def schema(self):
        return _bounds({"type": "number"}, self.lo, self.hi)


class Int(Field):
    def __init__(self, lo: int | None = None, hi: int | None = None, **kw):
        super().__init__(**kw)
        self.lo, self.hi = lo, hi

    def clean(self, name, value):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValidationError(name, "must be an integer")
        if not -INT64_MAX <= value <= INT64_MAX:  # the database's BIGINT; beyond it a 500
            raise ValidationError(name, "must be a 64-bit integer")
        if self.lo is not None and value < self.lo:
            raise ValidationError(name, f"must be >= {self.lo}")
        if self.hi is not None and value > self.hi:
            raise ValidationError(name, f"must be <= {self.hi}")
        return value

    def schema(self):
        return _bounds({"type": "integer"}, -INT64_MAX if self.lo is None else self.lo,
                       INT64_MAX if self.hi is None else self.hi)


class Bool(Field):
    def clean(self, name, value):
        if not isinstance(value, bool):
            raise ValidationError(name, "must be true or false")
        return value

    def schema(self):
        return {"type": "boolean"}


class List(Field):
    def __init__(self, item: Field, min_items: int = 0, max_items: int = 1000, **kw):
        super().__init__(**kw)
        self.item, self.min_items, self.max_items = item, min_items, max_items

    def clean(self, name, value):
        if not isinstance(value, list):
            raise ValidationError(name, "must be a list")
        if not self.min_items <= len(value) <= self.max_items:
            raise ValidationError(name, f"must have between {self.min_items} and {self.max_items} items")
        return [self.item.clean(f"{name}[{i}]", v) for i, v in enumerate(value)]

    def schema(self):
        return {"type": "array", "items": self.item.json_schema(), "minItems": self.min_items,
                "maxItems": self.max_items}


class Obj(Field):
    """Any JSON object (free-form configuration). ``shape`` (a spec) only describes the
    object in the OpenAPI document, where something else checks it (a datapoint in a
    batch is checked by the ingest pipeline)."""

    def __init__(self, shape: dict[str, Field] | None = None, **kw):
        super().__init__(**kw)
        self.shape = shape

    def clean(self, name, value):
        if not isinstance(value, dict):
            raise ValidationError(name, "must be an object")
        return value

    def schema(self):
        return spec_schema(self.shape) if self.shape else {"type": "object"}


class DateTimeField(Field):
    def clean(self, name, value):
        if not isinstance(value, str):
            raise ValidationError(name, "must be an ISO 8601 date-time string")
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(name, "must be an ISO 8601 date-time string") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        try:
            return dt.astimezone(timezone.utc)
        except OverflowError:  # e.g. 9999-12-31T23:00-05:00 is past year 9999 in UTC
            raise ValidationError(name, "must be an ISO 8601 date-time string") from None

    def schema(self):
        return {"type": "string", "format": "date-time"}


def _bounds(schema: dict, lo, hi) -> dict:
    if lo is not None:
        schema["minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    return schema


def spec_schema(spec: dict[str, Field], *, partial: bool = False) -> dict[str, Any]:
    """The JSON Schema of a request body that :func:`validate` accepts (unknown keys are ignored)."""
    out: dict[str, Any] = {"type": "object", "properties": {k: f.json_schema() for k, f in spec.items()}}
    required = [k for k, f in spec.items() if f.required and not partial]
    if required:
        out["required"] = required
    return out


def validate(body: Any, spec: dict[str, Field], *, partial: bool = False) -> dict[str, Any]:
    """Check ``body`` against ``spec``; unknown keys are ignored."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    out: dict[str, Any] = {}
    for name, field in spec.items():
        value = body.get(name, _MISSING)
        if value is _MISSING:
            if field.required and not partial:
                raise ValidationError(name, "field required")
            if field.default is not _MISSING and not partial:
                out[name] = field.default() if callable(field.default) else field.default
            continue
        if value is None:
            if field.nullable:
                out[name] = None
                continue
            raise ValidationError(name, "must not be null")
        out[name] = field.clean(name, value)
    return out
