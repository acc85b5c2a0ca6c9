#!/usr/bin/env python
"""EXPERIMENT ONLY: run the unchanged ``webmacs serve`` with a change patched in at start, to
measure something the server cannot be asked to do. Nothing in ``webmacs/`` is modified.

    ingest_bench.py --server-wrapper benchmarks/experiments/patched_server.py \
        --server-env BENCH_WRITER_PAUSED=1 ...

BENCH_WRITER_PAUSED=1  the ingest queue's writer never starts: readings are accepted, made
                       durable and acknowledged, and stay in the queue (``ingest_bench.py
                       --accept-only``: the accept path alone, queue on tmpfs)
BENCH_NO_PREPING=1     the engine's pool without ``pool_pre_ping`` (one SELECT 1 round trip
                       less per checkout)

(Earlier experiments, a COPY handed to psycopg2 in one piece and the text of a COPY built
before the transaction, were measured here and are now how the writer works:
``webmacs.storage.datapoints.copy_payload``.)
"""

from __future__ import annotations

import asyncio
import os
import sys

from webmacs import db as wdb
from webmacs import ingest

if os.environ.get("BENCH_NO_PREPING"):
    _make_engine = wdb.make_engine

    def make_engine(url, pool_size=8):
        engine = _make_engine(url, pool_size)
        engine.pool._pre_ping = False
        return engine

    wdb.make_engine = make_engine

if os.environ.get("BENCH_WRITER_PAUSED"):
    async def paused_writer(self) -> None:
        await asyncio.Event().wait()  # until stop() cancels it; the queue keeps every record

    ingest.IngestPipeline._write_loop = paused_writer

if __name__ == "__main__":
    from webmacs.cli import main

    raise SystemExit(main(sys.argv[1:]))
