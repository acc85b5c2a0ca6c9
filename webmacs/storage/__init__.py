"""Every statement on the hot tables (``datapoints``, ``ingest_batches``), one module per job.

- :mod:`.datapoints` — the write path (one bulk write per batch: ``COPY`` on
  PostgreSQL, ``executemany`` on SQLite, with the batch-id idempotency row), the
  datapoint public-id codec, latest-per-event, list / get / delete.
- :mod:`.linkage` — which events accept data, and the running experiment (what
  the ingest pipeline's cached view holds).
- :mod:`.series` — downsampled series for charts.
- :mod:`.export` — the experiment CSV export, page by page.

Functions taking a ``session`` run on the database executor
(``await db.session(fn, ...)``); none of them is ever called on the IOLoop.
"""

from sqlalchemy import bindparam, text

from webmacs.models import UTCDateTime


def typed_text(sql: str, *names: str):
    """A text() statement whose named time parameters bind through UTCDateTime."""
    return text(sql).bindparams(*(bindparam(n, type_=UTCDateTime()) for n in names))
