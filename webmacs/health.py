"""``/health``'s database probe: its own thread and connection, bounded in time.

The probe must answer while the database hangs (a frozen server, a saturated
pool), so it never queues behind the shared database executor: one thread of its
own, one connection of its own (PostgreSQL), and an answer after ``timeout``
seconds at most. While a probe is still stuck, the next ones answer "error" at
once instead of piling up threads.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import create_engine, text

# Seconds /health waits for the database before answering "error".
PROBE_TIMEOUT = 1.5


class HealthProbe:
    def __init__(self, db, timeout: float = PROBE_TIMEOUT) -> None:
        self.db = db
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webmacs-health")
        self._engine = None
        self._running: asyncio.Future | None = None

    def _engine_for_probe(self):
        if not self.db.is_postgres:
            return self.db.engine  # SQLite: no server to hang; its own thread is enough
        if self._engine is None:
            self._engine = create_engine(
                self.db.engine.url, pool_size=1, max_overflow=0, pool_pre_ping=False, pool_recycle=600,
                connect_args={"connect_timeout": max(1, int(self.timeout)), "application_name": "webmacs-health"})
        return self._engine

    def _ping(self) -> bool:
        try:
            with self._engine_for_probe().connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            if self._engine is not None:
                self._engine.dispose()
            return False

    async def check(self) -> bool:
        if self._running is not None and not self._running.done():
            return False  # the previous probe is still hanging
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(self._executor, self._ping)
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), self.timeout)
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None:
            self._engine.dispose()
