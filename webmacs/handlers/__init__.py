"""Collects every resource module's ``default_handlers`` in one place."""

from __future__ import annotations

import importlib

from webmacs.handlers.base import NotFoundHandler

# Order matters where paths overlap: literal paths (e.g. /datapoints/series)
# must come before the /datapoints/{id} pattern, so modules with literal
# sub-paths are listed first.
MODULES = (
    "webmacs.handlers.auth",
    "webmacs.handlers.sso",
    "webmacs.handlers.dashboard",
    "webmacs.handlers.datapoints",
    "webmacs.handlers.export",
    "webmacs.handlers.packages",  # /plugins/packages before /plugins/{id}
    "webmacs.handlers.resources",
    "webmacs.handlers.integrations",
    "webmacs.handlers.ws",
)


def collect_handlers() -> list:
    routes: list = []
    for name in MODULES:
        routes.extend(importlib.import_module(name).default_handlers)
    routes.append((r"/api/.*", NotFoundHandler))
    return routes
