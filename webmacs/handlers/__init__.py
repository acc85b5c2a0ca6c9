"""Collects every resource module's ``default_handlers`` in one place."""

from __future__ import annotations

import importlib

# Order matters where paths overlap: literal paths (e.g. /datapoints/series)
# must come before the /datapoints/{id} pattern, so modules with literal
# sub-paths are listed first.
MODULES = (
    "webmacs.handlers.auth",
    "webmacs.handlers.dashboard",
    "webmacs.handlers.datapoints",
    "webmacs.handlers.packages",  # /plugins/packages before /plugins/{id}
    "webmacs.handlers.resources",
    "webmacs.handlers.integrations",
    "webmacs.handlers.ws",
)


def collect_handlers() -> list:
    from webmacs.handlers.base import NotFoundHandler

    routes: list = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a module not written yet
        routes.extend(module.default_handlers)
    routes.append((r"/api/.*", NotFoundHandler))
    return routes
