"""Threshold rules: evaluated in memory on every committed batch, fired in the background.

- The enabled rules live in memory, grouped by event id, in a
  :class:`webmacs.cache.CachedView` (topic ``rules``: any rule or event change
  reloads it; a reload that raced with a later change is discarded). Batches that
  arrive while no set is loaded are kept (newest value per event) and evaluated as
  soon as it is. The view is refreshed in the background when it is old at the
  time of a batch, so changes made by another server process (and its triggers,
  for the cooldown hint) are picked up without a query per batch.
- :meth:`RuleEngine.evaluate` is synchronous and costs O(rules of the batch's
  events): it compares the last value per event, skips rules still in their
  cooldown (an in-memory hint) and queues candidates. It never queries.
- A background task **claims** each candidate with one atomic conditional UPDATE
  (``SET last_triggered_at = now WHERE id = :id AND enabled AND
  (last_triggered_at IS NULL OR last_triggered_at <= now - cooldown)``) and fires
  only when it changed a row, so a cooldown holds across restarts and across
  several server processes sharing the database. A ``log`` action writes its
  entry in the same transaction; a ``webhook`` action is emitted after commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from sqlalchemy import bindparam, case, or_, select, update

from webmacs import metrics
from webmacs.cache import CachedView
from webmacs.db import Database
from webmacs.models import LogEntry, Rule
from webmacs.webhooks import WebhookDispatcher

log = logging.getLogger("webmacs.rules")

EPSILON = 1e-9
SYMBOLS = {"gt": ">", "lt": "<", "gte": ">=", "lte": "<=", "eq": "=", "between": "between",
           "not_between": "not between"}
RANGE_OPERATORS = ("between", "not_between")
MAX_QUEUE = 10_000  # candidates waiting for their claim
CLAIM_CHUNK = 200


def compare(operator: str, value: float, threshold: float, threshold_high: float | None = None) -> bool:
    """Does ``value`` meet the rule condition? ``eq`` allows |v - t| <= 1e-9; ``between``
    is inclusive (lo <= v <= hi); ``not_between`` is v < lo or v > hi."""
    if operator == "gt":
        return value > threshold
    if operator == "lt":
        return value < threshold
    if operator == "gte":
        return value >= threshold
    if operator == "lte":
        return value <= threshold
    if operator == "eq":
        return abs(value - threshold) <= EPSILON
    if operator == "between":
        return threshold_high is not None and threshold <= value <= threshold_high
    if operator == "not_between":
        return threshold_high is not None and (value < threshold or value > threshold_high)
    raise ValueError(f"unknown operator {operator!r}")


def _num(x: float) -> str:
    """20.0 -> "20", 9.999999 -> "9.999999" (never rounded: a log must not say 10 < 10)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def describe(operator: str, threshold: float, threshold_high: float | None) -> str:
    if operator in RANGE_OPERATORS:
        return f"{SYMBOLS[operator]} {_num(threshold)} and {_num(threshold_high)}"
    return f"{SYMBOLS[operator]} {_num(threshold)}"


@dataclass(frozen=True)
class _Rule:
    id: int
    public_id: str
    name: str
    event_id: int
    operator: str
    threshold: float
    threshold_high: float | None
    action_type: str
    webhook_event_type: str | None
    cooldown: int


@dataclass(frozen=True)
class _Candidate:
    rule: _Rule
    event_name: str
    event_public_id: str
    unit: str | None
    value: float
    experiment_public_id: str | None
    now: float  # epoch seconds
    previous_hint: float | None


def _load_rules(session) -> tuple[dict[int, list[_Rule]], dict[int, float]]:
    rows = session.execute(select(Rule).where(Rule.enabled.is_(True)).order_by(Rule.id)).scalars().all()
    by_event: dict[int, list[_Rule]] = {}
    last: dict[int, float] = {}
    for r in rows:
        by_event.setdefault(r.event_id, []).append(_Rule(
            r.id, r.public_id, r.name, r.event_id, r.operator, r.threshold, r.threshold_high, r.action_type,
            r.webhook_event_type, r.cooldown_seconds))
        if r.last_triggered_at is not None:
            last[r.id] = r.last_triggered_at.timestamp()
    return by_event, last


def log_message(c: _Candidate) -> str:
    unit = f" {c.unit}" if c.unit else ""
    text = (f"Rule '{c.rule.name}' triggered: {c.event_name} value {_num(c.value)}{unit} "
            f"{describe(c.rule.operator, c.rule.threshold, c.rule.threshold_high)}")
    return text if len(text) <= 500 else text[:499] + "…"


def _claim(session, batch: list[_Candidate]) -> tuple[list[_Candidate], dict[int, float]]:
    """Claim each candidate's trigger atomically; write log actions. On the executor."""
    table = Rule.__table__
    fired: list[_Candidate] = []
    refused: dict[int, float] = {}
    last_col = table.c.last_triggered_at
    for c in batch:
        now = datetime.fromtimestamp(c.now, timezone.utc)
        cutoff = now - timedelta(seconds=c.rule.cooldown)
        conditions = [table.c.id == c.rule.id, table.c.enabled.is_(True)]
        if c.rule.cooldown > 0:
            conditions.append(or_(last_col.is_(None), last_col <= cutoff))
        # cooldown 0 fires on every match, also when another process stamped a later time
        # first; last_triggered_at never moves backwards
        stamp = bindparam("stamp", now, type_=last_col.type)
        result = session.execute(
            update(table).where(*conditions)
            .values(last_triggered_at=case((or_(last_col.is_(None), last_col < stamp), stamp), else_=last_col))
        )
        if result.rowcount == 1:
            fired.append(c)
            if c.rule.action_type == "log":
                session.add(LogEntry(content=log_message(c), logging_type="warning"))
        else:
            # in its cooldown (another process or an earlier batch fired it): remember when;
            # disabled or deleted meanwhile: hold it back until the rule set is reloaded
            last = session.execute(select(table.c.last_triggered_at).where(table.c.id == c.rule.id)).scalar()
            refused[c.rule.id] = last.timestamp() if last is not None and last > cutoff else c.now
    return fired, refused


class RuleEngine:
    def __init__(self, db: Database, webhooks: WebhookDispatcher) -> None:
        self.db = db
        self.webhooks = webhooks
        self.view: CachedView[tuple[dict[int, list[_Rule]], dict[int, float]]] = CachedView(
            "rules", db.session, _load_rules, on_load=self._installed)
        self._last: dict[int, float] = {}  # rule id -> last trigger (epoch s), the cooldown hint
        self._deferred: dict[int, object] = {}  # event id -> LastValue, while no rule set is loaded
        self._queue: deque[_Candidate] = deque()
        self._worker: asyncio.Task | None = None

    # --- the rule set ----------------------------------------------------------------------
    def _installed(self, loaded: tuple[dict[int, list[_Rule]], dict[int, float]]) -> None:
        """A new rule set: merge the stored trigger times into the cooldown hints and
        evaluate what arrived while none was loaded."""
        for rule_id, t in loaded[1].items():
            if t > self._last.get(rule_id, float("-inf")):
                self._last[rule_id] = t
        deferred, self._deferred = self._deferred, {}
        if deferred:
            self.evaluate(deferred.values())

    # --- evaluation (IOLoop, synchronous, in memory) ------------------------------------------------
    def evaluate(self, last_values: Iterable) -> None:
        """Ingest listener: compare the last value per event with the enabled rules."""
        loaded = self.view.value
        if loaded is None:  # reloading: keep the newest value per event until it is done
            for lv in last_values:
                prev = self._deferred.get(lv.event.id)
                if prev is None or lv.time >= prev.time:
                    self._deferred[lv.event.id] = lv
            return
        self.view.maybe_refresh()
        by_event = loaded[0]
        now = time.time()
        hints = self._last
        queued = False
        for lv in last_values:
            rules = by_event.get(lv.event.id)
            if not rules:
                continue
            for rule in rules:
                if not compare(rule.operator, lv.value, rule.threshold, rule.threshold_high):
                    continue
                previous = hints.get(rule.id)
                if previous is not None and now - previous < rule.cooldown:
                    continue
                hints[rule.id] = now  # optimistic; the claim corrects it
                if len(self._queue) >= MAX_QUEUE:
                    dropped = self._queue.popleft()
                    log.warning("rule queue full: dropped a trigger of rule %r", dropped.rule.name)
                self._queue.append(_Candidate(rule, lv.event.name, lv.event.public_id, lv.event.unit, lv.value,
                                              lv.experiment_public_id, now, previous))
                queued = True
        if queued and (self._worker is None or self._worker.done()):
            self._worker = asyncio.ensure_future(self._work())

    # --- actions (background) ----------------------------------------------------------------------
    async def _work(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), CLAIM_CHUNK))]
            try:
                fired, refused = await self.db.session(_claim, batch)
            except RuntimeError:  # database executor shut down: the server is stopping
                self._queue.clear()
                return
            except Exception:  # noqa: BLE001 - the next matching reading tries again
                log.error("rule triggers not claimed (%d dropped)", len(batch), exc_info=True)
                for c in batch:
                    if self._last.get(c.rule.id) == c.now:
                        if c.previous_hint is None:
                            self._last.pop(c.rule.id, None)
                        else:
                            self._last[c.rule.id] = c.previous_hint
                continue
            self._last.update(refused)
            metrics.RULE_TRIGGERS.inc(len(fired))
            for c in fired:
                if c.rule.action_type == "webhook":
                    self.webhooks.emit(c.rule.webhook_event_type or "sensor.threshold_exceeded", {
                        "rule": c.rule.name,
                        "rule_id": c.rule.public_id,
                        "operator": c.rule.operator,
                        "threshold": c.rule.threshold,
                        "threshold_high": c.rule.threshold_high,
                        "sensor": c.event_name,
                        "event_public_id": c.event_public_id,
                        "value": c.value,
                        "unit": c.unit,
                        "experiment_id": c.experiment_public_id,
                    }, when=datetime.fromtimestamp(c.now, timezone.utc))


async def server_log(db: Database, content: str, logging_type: str = "info") -> None:
    """Write one of the server's own log entries (start, stop); never raises."""

    def add(session):
        session.add(LogEntry(content=content[:500], logging_type=logging_type))

    try:
        await asyncio.wait_for(db.session(add), timeout=5)
    except Exception:  # noqa: BLE001 - a log entry is never worth failing start or stop
        log.warning("could not write log entry %r", content, exc_info=True)
