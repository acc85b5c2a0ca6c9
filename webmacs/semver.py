"""Semantic versions (https://semver.org, 2.0.0): validation and ordering."""

from __future__ import annotations

import re

_ID = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    rf"(?:-({_ID}(?:\.{_ID})*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


def is_semver(text: str) -> bool:
    return isinstance(text, str) and SEMVER.match(text) is not None


def semver_key(text: str) -> tuple:
    """Sort key: 1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0 < 1.0.1; build metadata ignored."""
    m = SEMVER.match(text)
    if m is None:
        raise ValueError(f"not a semantic version: {text!r}")
    major, minor, patch, pre, _build = m.groups()
    if pre is None:
        tail: tuple = (1,)
    else:
        tail = (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (int(major), int(minor), int(patch), tail)
