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
    "webmacs.handlers.dashboards",
    "webmacs.handlers.ota",
    "webmacs.handlers.ws",
    "webmacs.handlers.metrics",
    "webmacs.openapi",  # GET /api/v1/openapi.json, made from all of the above
)


def optional_trailing_slash(route: tuple) -> tuple:
    """Let an /api/v1 route match with or without one trailing slash.

    Clients written for the old backend call e.g. ``GET /api/v1/users/``; both
    forms are served by the same handler (no redirect, so POST/PUT bodies work
    in every client). Tornado anchors every pattern with ``$``.
    """
    pattern, *rest = route
    if pattern.startswith("/api/v1/") and not pattern.endswith("/?"):
        pattern = pattern.rstrip("$").rstrip("/") + "/?"
    return (pattern, *rest)


def collect_handlers() -> list:
    routes: list = []
    for name in MODULES:
        routes.extend(optional_trailing_slash(route) for route in importlib.import_module(name).default_handlers)
    routes.append((r"/api/.*", NotFoundHandler))
    return routes
