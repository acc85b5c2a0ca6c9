"""``GET /metrics``: the Prometheus exposition (see :mod:`webmacs.metrics`, docs/metrics.md).

Not a user endpoint: Prometheus has no login, so access is a separate bearer token
(``WEBMACS_METRICS_TOKEN``, compared in constant time) or, with
``WEBMACS_METRICS_PUBLIC=true`` and no token, open to whoever reaches the port
(keep it behind a firewall or the proxy). With neither, metrics are off and the
path answers 404 like any unknown one.
"""

from __future__ import annotations

import asyncio
import hmac

from webmacs import metrics
from webmacs.handlers.base import ApiError, BaseHandler

UNAUTHORIZED = "Metrics require Authorization: Bearer <WEBMACS_METRICS_TOKEN>."


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        cfg = self.config
        if cfg.metrics_token:
            given = self.bearer_token() or ""
            if not hmac.compare_digest(given.encode(), cfg.metrics_token.encode()):
                self.set_header("WWW-Authenticate", 'Bearer realm="metrics"')  # (an ApiError drops headers)
                self.send({"detail": UNAUTHORIZED}, 401)
                return
        elif not cfg.metrics_public:
            raise ApiError(404, "Not Found")
        self.services.refresh_metrics()  # the state gauges, on the IOLoop where that state lives
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
        self.set_header("Content-Type", content_type)
        self.finish(body)


default_handlers = [(r"/metrics", MetricsHandler)]
