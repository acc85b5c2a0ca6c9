"""The web app's page (``GET /``, ``/index.html``): the shell in ``webmacs/static``
that loads the app's ES modules (docs/webapp.md).

Asset URLs carry a content hash (``static_url``), so they can be cached for long
while the page itself is never cached. The data it shows comes from the REST API
and the stream (see :mod:`webmacs.handlers.datapoints`, :mod:`webmacs.handlers.ws`).

Module scripts run only when served with a JavaScript MIME type. The static handler
takes the type from :mod:`mimetypes`, which reads the host's tables (``/etc/mime.types``,
the Windows registry), and some hosts map ``.js`` to ``text/plain``: the app's types are
registered here, so they do not depend on the host.
"""

from __future__ import annotations

import mimetypes

from tornado.template import Loader
from tornado.web import RequestHandler

from webmacs import STATIC_DIR

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/css", ".css")


class IndexHandler(RequestHandler):
    _loader: Loader | None = None

    def get(self) -> None:
        if IndexHandler._loader is None:
            IndexHandler._loader = Loader(str(STATIC_DIR))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            # 'self' covers same-origin ws:/wss: (CSP 3); never built from request headers.
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'",
        )
        self.finish(IndexHandler._loader.load("index.html").generate(static_url=self.static_url))

    head = get

    def write_error(self, status_code: int, **kwargs) -> None:
        if status_code == 405:  # RFC 9110: a 405 lists what is allowed
            self.set_header("Allow", "GET, HEAD")
        super().write_error(status_code, **kwargs)


default_handlers = [
    (r"/", IndexHandler),
    (r"/index\.html", IndexHandler),
]
