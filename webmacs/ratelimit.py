"""In-memory rate limits (per process; several server processes each count on their own).

- :class:`IpRateLimiter`: ``limit`` requests per ``window`` seconds per client
  address, as a sliding window estimated from two fixed windows (two counters per
  address, however many requests it sends).
- :class:`LoginFailures`: at most ``max_failures`` failed logins per account in
  ``window`` seconds, whatever address they come from (loopback included); further
  attempts are refused without checking the password until the oldest failure
  leaves the window.

Both keep at most ``max_keys`` entries and forget the least recently used first, so
an attacker cycling addresses or email addresses cannot grow them without bound.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque


class IpRateLimiter:
    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        # key -> [window index, count in that window, count in the window before]
        self._counts: OrderedDict[str, list] = OrderedDict()

    def hit(self, key: str, now: float | None = None) -> float:
        """Count one request; return 0 when allowed, else seconds to wait."""
        if self.limit <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        index = int(now // self.window)
        entry = self._counts.get(key)
        if entry is None:
            entry = [index, 0, 0]
            self._counts[key] = entry
            if len(self._counts) > self.max_keys:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(key)
            if entry[0] != index:
                entry[2] = entry[1] if entry[0] == index - 1 else 0
                entry[0], entry[1] = index, 0
        elapsed = now / self.window - index  # fraction of the current window gone
        estimate = entry[2] * (1.0 - elapsed) + entry[1]
        if estimate >= self.limit:
            # Wait until the previous window's share has decayed enough (or the window turns).
            if entry[2]:
                need = (estimate - self.limit + 1) / entry[2] * self.window
                wait = min(need, (1.0 - elapsed) * self.window + self.window)
            else:
                wait = (1.0 - elapsed) * self.window
            return max(1.0, wait)
        entry[1] += 1
        return 0.0


class LoginFailures:
    def __init__(self, max_failures: int, window: float, max_keys: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def blocked_for(self, key: str, now: float | None = None) -> float:
        """0 when a login for ``key`` may be tried, else seconds until it may."""
        if self.max_failures <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        times = self._recent(key, now)
        if times is None or len(times) < self.max_failures:
            return 0.0
        return max(1.0, times[0] + self.window - now)

    def failed(self, key: str, now: float | None = None) -> None:
        if self.max_failures <= 0:
            return
        now = time.monotonic() if now is None else now
        times = self._recent(key, now)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.max_failures)
            if len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class Guards:
    """The per-process limiters and the password hasher pool, made once per application."""

    def __init__(self, config) -> None:
        from webmacs.security import PasswordHasherPool
        from webmacs.serving import parse_networks

        self.ip = IpRateLimiter(config.rate_limit)
        self.exempt = parse_networks(config.rate_limit_exempt, "WEBMACS_RATE_LIMIT_EXEMPT")
        self.logins = LoginFailures(config.login_max_failures, config.login_failure_window)
        self.hasher = PasswordHasherPool(config.password_hash_workers)

    def check_ip(self, ip: str | None) -> float:
        from webmacs.serving import in_networks

        if not ip or in_networks(ip, self.exempt):
            return 0.0
        return self.ip.hit(ip)
