"""webmacs.memory: freed heap pages go back to the kernel after a burst."""

from __future__ import annotations

from webmacs import memory


async def test_a_burst_freed_is_given_back_and_a_small_growth_is_left_alone():
    trimmer = memory.MemoryTrimmer()
    try:
        assert trimmer.enabled  # Linux with glibc, as on every machine we deploy to
        await trimmer.check()  # the first check takes the idle level
        start = memory.rss_bytes()
        burst = [bytes(1000) + bytes([i % 256]) for i in range(200_000)]  # ~200 MB of malloc'ed buffers
        survivors = burst[::1000]  # a few live objects scattered through the heap
        del burst
        held = memory.rss_bytes()
        assert held - start > 150e6  # glibc keeps what was freed
        await trimmer.check()
        assert memory.rss_bytes() < start + 30e6, (start, held, memory.rss_bytes())
        assert len(survivors) == 200 and survivors[7][-1] == 7000 % 256
        small = [bytes(1000) for _ in range(1000)]  # ~1 MB: below TRIM_GROWTH, no trim
        floor = trimmer._floor
        await trimmer.check()
        assert trimmer._floor == floor and small
    finally:
        trimmer.close()


async def test_a_trim_during_a_burst_is_tried_again_once_the_burst_is_freed():
    trimmer = memory.MemoryTrimmer()
    try:
        await trimmer.check()
        start = memory.rss_bytes()
        burst = [bytes(1000) + bytes([i % 256]) for i in range(200_000)]
        await trimmer.check()  # trims, but everything is still in use
        during = memory.rss_bytes()
        assert during - start > 150e6 and trimmer._floor == during
        del burst  # freed by Python; the RSS has not grown since that trim
        last = trimmer._last_trim
        await trimmer.check()
        assert trimmer._last_trim == last  # no trim yet: the last one is recent
        trimmer._last_trim -= memory.RETRY_INTERVAL
        await trimmer.check()
        assert memory.rss_bytes() < start + 30e6, (start, during, memory.rss_bytes())
    finally:
        trimmer.close()
