#!/usr/bin/env python
"""EXPERIMENT ONLY: run the unchanged ``webmacs serve`` with proposed changes patched in at
start, to measure them before anyone edits the server. Nothing in ``webmacs/`` is modified.

    ingest_bench.py --server-wrapper benchmarks/experiments/patched_server.py \
        --server-env BENCH_NO_PREPING=1 --server-env BENCH_COPY_ONE_CHUNK=1 ...

BENCH_NO_PREPING=1      the engine's pool without ``pool_pre_ping`` (one SELECT 1 round trip,
                        and one GIL hand-off, less per batch)
BENCH_COPY_ONE_CHUNK=1  the COPY text built before the transaction opens, and handed to
                        psycopg2 in one piece (``copy_expert(size=...)``) instead of 8 kB reads,
                        each of which needs the GIL while the session waits (ClientRead)
"""

from __future__ import annotations

import io
import os
import sys
from datetime import datetime

from webmacs import db as wdb
from webmacs import ingest

if os.environ.get("BENCH_NO_PREPING"):
    _make_engine = wdb.make_engine

    def make_engine(url, pool_size=8):
        engine = _make_engine(url, pool_size)
        engine.pool._pre_ping = False
        return engine

    wdb.make_engine = make_engine

if os.environ.get("BENCH_COPY_ONE_CHUNK"):
    _write = ingest.IngestPipeline._write
    _copy = ingest.IngestPipeline._copy_postgresql

    def _prebuilt(rows, exp_id):
        exp = "\\N" if exp_id is None else str(exp_id)
        text_of = ingest._TimeText(datetime.isoformat)
        return "".join([f"{text_of[ts]}\t{info.id}\t{value!r}\t{exp}\n" for ts, info, value in rows])

    def write(self, rows, experiment, batch_id, accepted, rejected, want_ids):
        if self.db.is_postgres and not want_ids:
            self._bench_text = _prebuilt(rows, experiment[0] if experiment else None)
        try:
            return _write(self, rows, experiment, batch_id, accepted, rejected, want_ids)
        finally:
            self._bench_text = None

    def copy_postgresql(self, conn, rows, exp_id, want_ids):
        data = getattr(self, "_bench_text", None)
        if want_ids or data is None:
            return _copy(self, conn, rows, exp_id, want_ids)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.copy_expert("COPY datapoints (time, event_id, value, experiment_id) FROM STDIN",
                               io.StringIO(data), size=max(8192, len(data) + 1))
        finally:
            cursor.close()
        return []

    ingest.IngestPipeline._write = write
    ingest.IngestPipeline._copy_postgresql = copy_postgresql

if __name__ == "__main__":
    from webmacs.cli import main

    raise SystemExit(main(sys.argv[1:]))
