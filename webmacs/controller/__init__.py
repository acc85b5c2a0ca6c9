"""The controller side of WebMACS: a store-and-forward telemetry client.

``webmacs controller`` (:mod:`webmacs.controller.main`) runs the plugin drivers
configured on the server and feeds their readings through a
:class:`TelemetryClient`. Write your own controller with the same client::

    from webmacs.controller import TelemetryClient

See ``docs/telemetry-acks.md``.
"""

from webmacs.controller.client import Backoff, Stats, TelemetryClient, format_timestamp
from webmacs.controller.spool import Spool, SpoolError

__all__ = ["Backoff", "Spool", "SpoolError", "Stats", "TelemetryClient", "format_timestamp"]
