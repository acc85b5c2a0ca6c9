"""In-memory views of database state, and the one place where "this changed, reload" enters.

A :class:`CachedView` holds what one loader function read from the database (the
linkage of events to enabled plugins, the enabled webhooks, the enabled rules).
Its contract:

- :meth:`~CachedView.current` returns the view, loading it first when there is
  none. A load that raced with an :meth:`~CachedView.invalidate` is discarded
  and done again (generation counter), so an answer is never older than the last
  change made through this process. A failing load raises to the caller.
- :meth:`~CachedView.invalidate` drops the view and reloads it in the background,
  retrying with backoff (0.5 s doubling to 30 s) until it has one.
- :meth:`~CachedView.maybe_refresh`, called on use, reloads a view older than
  ``refresh_seconds`` in the background while the old one stays in use, so
  changes made by another server process are seen too.
- ``on_load`` is called with each newly installed view (on the IOLoop).

Everything runs on the IOLoop; the loader runs on the database executor.

:class:`Changes` maps topics (``"linkage"``, ``"webhooks"``, ``"rules"``) to the
views that depend on them. Handlers call ``await changes.changed(topic)`` after
committing; that is the only way views are invalidated. It also publishes the
topics on the cluster bus (:mod:`webmacs.bus`, channel ``changes``) before
answering, and :meth:`Changes.remote` invalidates this process's views when another
process published a change, so every process is fresh within milliseconds of the
commit (the ``refresh_seconds`` reload stays as a safety net). When the bus was
lost, :meth:`Changes.reload_all` drops every view: changes may have been missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Awaitable, Callable, Generic, TypeVar

from webmacs.bus import CHANGES

log = logging.getLogger("webmacs.cache")

T = TypeVar("T")

# Background refresh age: picks up changes made by another process sharing the database.
REFRESH_SECONDS = 30.0
RETRY_FIRST, RETRY_MAX = 0.5, 30.0

LINKAGE = "linkage"  # events, plugin instances, channel mappings, experiments
WEBHOOKS = "webhooks"
RULES = "rules"

_EMPTY: Any = object()


class CachedView(Generic[T]):
    def __init__(self, name: str, run: Callable[..., Awaitable[Any]], loader: Callable[[Any], T],
                 refresh_seconds: float = REFRESH_SECONDS, on_load: Callable[[T], None] | None = None) -> None:
        """``run(loader)`` runs the loader on the database executor (``Database.session``)."""
        self.name = name
        self._run = run
        self._loader = loader
        self.refresh_seconds = refresh_seconds
        self._on_load = on_load
        self._value: Any = _EMPTY
        self.generation = 0
        self.loaded_at = float("-inf")
        self._reloader: asyncio.Future | None = None
        self._closed = False

    @property
    def value(self) -> T | None:
        """The view, or None while it is being (re)loaded."""
        return None if self._value is _EMPTY else self._value

    @property
    def loaded(self) -> bool:
        return self._value is not _EMPTY

    async def current(self) -> T:
        while self._value is _EMPTY:
            await self._load()
        return self._value

    def invalidate(self) -> None:
        self.generation += 1
        self._value = _EMPTY
        self._background(self._reload)

    def maybe_refresh(self) -> None:
        if time.monotonic() - self.loaded_at > self.refresh_seconds:
            self.loaded_at = time.monotonic()  # one refresh at a time, even if it fails
            self._background(self._refresh)

    def close(self) -> None:
        """Stop background reloads (server shutdown)."""
        self._closed = True
        if self._reloader is not None:
            self._reloader.cancel()

    # --- internals ------------------------------------------------------------------
    def _background(self, job: Callable[[], Awaitable[None]]) -> None:
        if self._closed or (self._reloader is not None and not self._reloader.done()):
            return
        try:
            self._reloader = asyncio.ensure_future(job())
        except RuntimeError:  # no running loop (before start): the first use loads it
            self._reloader = None

    async def _load(self) -> None:
        generation = self.generation
        started = time.monotonic()
        value = await self._run(self._loader)
        if generation == self.generation:
            self._value = value
            self.loaded_at = started
            if self._on_load is not None:
                self._on_load(value)

    async def _refresh(self) -> None:
        try:
            await self._load()
        except RuntimeError:  # database executor shut down: the server is stopping
            return
        except Exception:  # noqa: BLE001 - tried again on a later use
            log.warning("could not refresh %s", self.name, exc_info=True)
        if self._value is _EMPTY:  # invalidated meanwhile and the load failed
            await self._reload()

    async def _reload(self) -> None:
        delay = RETRY_FIRST
        while self._value is _EMPTY and not self._closed:
            try:
                await self._load()
            except RuntimeError:  # database executor shut down: the server is stopping
                return
            except Exception:  # noqa: BLE001 - retried
                log.warning("could not load %s, retrying in %.1fs", self.name, delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)


# How long a change waits for its bus message to be sent before answering anyway.
PUBLISH_WAIT = 1.0


class Changes:
    """Topic -> the views that depend on it."""

    def __init__(self, bus=None) -> None:
        """``bus``: a :class:`webmacs.bus.Bus` to tell the other processes (None: nobody)."""
        self._views: dict[str, list[CachedView]] = defaultdict(list)
        self.bus = bus

    def register(self, topic: str, view: CachedView) -> None:
        self._views[topic].append(view)

    def views(self) -> list[CachedView]:
        return list({id(v): v for vs in self._views.values() for v in vs}.values())

    async def changed(self, *topics: str) -> None:
        """After a commit: invalidate every view of ``topics``, then wait until each is
        current again so the caller's next request sees the change. A view that cannot
        load now keeps reloading in the background (its users wait or defer meanwhile)."""
        views = {id(v): v for t in topics for v in self._views.get(t, ())}.values()
        for view in views:
            view.invalidate()
        if self.bus is not None and self.bus.shared:
            try:  # sent before we answer, so the caller's next request to any process sees it
                await asyncio.wait_for(asyncio.shield(self.bus.publish(CHANGES, {"topics": list(topics)})),
                                       PUBLISH_WAIT)
            except (asyncio.TimeoutError, OverflowError):
                log.warning("change of %s not yet sent to the other processes", ", ".join(topics))
        for view in views:
            try:
                await view.current()
            except Exception:  # noqa: BLE001 - the background reload keeps trying
                log.warning("could not reload %s after a change", view.name, exc_info=True)

    def remote(self, payload: dict) -> None:
        """Bus subscriber: another process committed a change of ``payload["topics"]``."""
        topics = payload.get("topics")
        if not isinstance(topics, list):
            return
        for view in {id(v): v for t in topics if isinstance(t, str) for v in self._views.get(t, ())}.values():
            view.invalidate()

    def reload_all(self) -> None:
        """The bus came back after a loss: reload every view."""
        views = self.views()
        for view in views:
            view.invalidate()
        log.warning("reloading %d caches after a cluster bus loss: %s", len(views),
                    ", ".join(v.name for v in views))

    def close(self) -> None:
        for view in self.views():
            view.close()
