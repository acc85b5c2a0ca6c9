"""Giving memory back after a burst.

A flood of telemetry fills the per-connection queues and the ingest path with
short-lived buffers (frames, parsed batches, COPY payloads). Python frees them, but
glibc's ``malloc`` keeps the freed pages of its heaps (one per thread that
allocated) for reuse, so the process's RSS stays at its peak for good.
:class:`MemoryTrimmer` checks the RSS every :data:`CHECK_INTERVAL` seconds and calls
glibc's ``malloc_trim(0)``, which hands every free page of every heap back to the
kernel, when the RSS stands more than :data:`TRIM_GROWTH` bytes above the lowest it
has been (the idle level) and either it grew that much since the last trim or the
last trim is :data:`RETRY_INTERVAL` seconds old. The retry matters: a trim during a
burst frees little (the buffers are still in use), and once the burst ends Python
frees them without the RSS moving, so growth alone would never call for another. The call runs on a thread (``ctypes`` releases the GIL), never on the IOLoop;
it frees nothing in use, so at worst a page is faulted in again later.

Elsewhere than on Linux with glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("webmacs.memory")

CHECK_INTERVAL = 10.0  # seconds between RSS checks
TRIM_GROWTH = 32 * 1024 * 1024  # bytes above the idle RSS (and grown since the last trim) that call for a trim
RETRY_INTERVAL = 30.0  # seconds after a trim when, still above the idle RSS, another is tried


def rss_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


class MemoryTrimmer:
    """:meth:`check` (IOLoop, every :data:`CHECK_INTERVAL` s): trim when RSS stands above idle.

    The first check (made once the server has started) takes the idle RSS."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._idle: int | None = None  # the lowest RSS a check has seen: the process at rest
        self._floor = 0  # RSS after the last trim (or the first check's)
        self._last_trim = time.monotonic()
        self._running = False
        self._executor: ThreadPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        return self._trim is not None and rss_bytes() is not None

    async def check(self) -> None:
        rss = rss_bytes()
        if self._trim is None or rss is None or self._running:
            return
        if self._idle is None:
            self._idle = self._floor = rss
        self._idle = min(self._idle, rss)
        self._floor = min(self._floor, rss)
        if rss - self._idle < TRIM_GROWTH:
            return
        if rss - self._floor < TRIM_GROWTH and time.monotonic() - self._last_trim < RETRY_INTERVAL:
            return
        self._running = True
        try:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="webmacs-trim")
            await asyncio.get_running_loop().run_in_executor(self._executor, self._trim, 0)
        finally:
            self._running = False
        after = rss_bytes() or rss
        self._floor, self._last_trim = after, time.monotonic()
        log.debug("malloc_trim: RSS %.1f -> %.1f MB", rss / 1e6, after / 1e6)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
