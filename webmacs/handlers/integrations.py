"""Webhooks and their delivery log, threshold rules (admin only), and log entries.

After a committed change, webhook and rule writes announce it
(:meth:`BaseHandler.commit` with the ``webhooks`` / ``rules`` topic): the views are
current when the response goes out; batches arriving while the rule set reloads
are held and evaluated against the new one.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from sqlalchemy import select

from webmacs.cache import RULES, WEBHOOKS
from webmacs.handlers.base import (ApiError, BaseHandler, Owner, authenticated, flush_or_409, get_or_404,
                                   owner_public_id, paginate)
from webmacs.models import (
    DELIVERY_STATUSES,
    LOGGING_TYPES,
    RULE_ACTIONS,
    RULE_OPERATORS,
    STATUS_TYPES,
    WEBHOOK_EVENT_TYPES,
    Event,
    LogEntry,
    Rule,
    Webhook,
    WebhookDelivery,
)
from webmacs.rules import RANGE_OPERATORS
from webmacs.timefmt import api as iso
from webmacs.validation import Bool, Int, List, Num, Str, ValidationError

MAX_COOLDOWN = 365 * 24 * 3600



# --- webhooks ----------------------------------------------------------------------------

class Url(Str):
    def __init__(self, **kw):
        super().__init__(1, 2048, **kw)

    def clean(self, name, value):
        value = super().clean(name, value)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            parts = None
        if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname
                or any(ch.isspace() for ch in value)):
            raise ValidationError(name, "must be an http:// or https:// URL")
        return value

    def schema(self):
        return {**super().schema(), "format": "uri", "examples": ["https://hooks.example.com/webmacs"]}


WEBHOOK_SPEC = {
    "url": Url(required=True),
    "secret": Str(0, 255, strip=False, nullable=True),
    "events": List(Str(choices=WEBHOOK_EVENT_TYPES), min_items=1, max_items=len(WEBHOOK_EVENT_TYPES) * 4,
                   required=True),
    "enabled": Bool(default=True),
}


def webhook_dict(hook: Webhook, user_public_id: str | None) -> dict:
    return {
        "public_id": hook.public_id,
        "url": hook.url,
        "events": json.loads(hook.events or "[]"),
        "enabled": hook.enabled,
        "has_secret": bool(hook.secret),
        "created_on": iso(hook.created_on),
        "user_public_id": user_public_id,
    }


def _apply_webhook(hook: Webhook, body: dict) -> None:
    if "url" in body:
        hook.url = body["url"]
    if "secret" in body:
        hook.secret = body["secret"] or None  # "" or null: no signature
    if "events" in body:
        hook.events = json.dumps(list(dict.fromkeys(body["events"])))
    if "enabled" in body:
        hook.enabled = body["enabled"]


DUPLICATE_URL = "A webhook with this URL already exists."


class _WebhookWrite(BaseHandler):
    changes = (WEBHOOKS,)


class WebhooksHandler(_WebhookWrite):
    @authenticated("admin")
    async def get(self) -> None:
        page, size = self.page_args()
        stmt = select(Webhook, Owner.public_id).outerjoin(Owner, Owner.id == Webhook.user_id).order_by(Webhook.id)
        self.send(await self.db.session(paginate, stmt, page, size, webhook_dict))

    @authenticated("admin")
    async def post(self) -> None:
        body = self.validated(WEBHOOK_SPEC)

        def create(session):
            hook = Webhook(user_id=self.principal.user_id)
            _apply_webhook(hook, body)
            session.add(hook)
            flush_or_409(session, DUPLICATE_URL)
            return webhook_dict(hook, self.principal.public_id)

        self.success("Webhook successfully created.", 201, await self.commit(create))


class WebhookHandler(_WebhookWrite):
    @authenticated("admin")
    async def get(self, public_id: str) -> None:
        def load(session):
            hook = get_or_404(session, Webhook, public_id, "Webhook")
            return webhook_dict(hook, owner_public_id(session, hook.user_id))

        self.send(await self.db.session(load))

    @authenticated("admin")
    async def put(self, public_id: str) -> None:
        body = self.validated(WEBHOOK_SPEC, partial=True)

        def change(session):
            hook = get_or_404(session, Webhook, public_id, "Webhook")
            _apply_webhook(hook, body)
            flush_or_409(session, DUPLICATE_URL)
            return webhook_dict(hook, owner_public_id(session, hook.user_id))

        self.success("Webhook successfully updated.", resource=await self.commit(change))

    @authenticated("admin")
    async def delete(self, public_id: str) -> None:
        def remove(session):
            hook = get_or_404(session, Webhook, public_id, "Webhook")
            session.execute(WebhookDelivery.__table__.delete().where(WebhookDelivery.webhook_id == hook.id))
            session.delete(hook)

        await self.commit(remove)
        self.success("Webhook deleted.")


def delivery_dict(d: WebhookDelivery) -> dict:
    return {
        "public_id": d.public_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "response_code": d.response_code,
        "next_attempt_at": iso(d.next_attempt_at),
        "created_on": iso(d.created_on),
        "delivered_on": iso(d.delivered_on),
    }


class WebhookDeliveriesHandler(BaseHandler):
    @authenticated("admin")
    async def get(self, public_id: str) -> None:
        page, size = self.page_args()
        status = self.get_query_argument("status", None)
        if status is not None and status not in DELIVERY_STATUSES:
            raise ApiError(422, "status: must be one of " + ", ".join(DELIVERY_STATUSES))

        def load(session):
            hook = get_or_404(session, Webhook, public_id, "Webhook")
            stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
            if status is not None:
                stmt = stmt.where(WebhookDelivery.status == status)
            stmt = stmt.order_by(WebhookDelivery.created_on.desc(), WebhookDelivery.id.desc())
            return paginate(session, stmt, page, size, delivery_dict)

        self.send(await self.db.session(load))


# --- rules ---------------------------------------------------------------------------------

RULE_SPEC = {
    "name": Str(1, 255, required=True),
    "event_public_id": Str(1, 64, required=True),
    "operator": Str(choices=RULE_OPERATORS, required=True),
    "threshold": Num(required=True),
    "threshold_high": Num(nullable=True),
    "action_type": Str(choices=RULE_ACTIONS, required=True),
    "webhook_event_type": Str(choices=WEBHOOK_EVENT_TYPES, nullable=True),
    "enabled": Bool(default=True),
    "cooldown_seconds": Int(0, MAX_COOLDOWN, default=60),
}


def rule_dict(rule: Rule, event_public_id: str | None, event_name: str | None, user_public_id: str | None) -> dict:
    return {
        "public_id": rule.public_id,
        "name": rule.name,
        "event_public_id": event_public_id,
        "event_name": event_name,
        "operator": rule.operator,
        "threshold": rule.threshold,
        "threshold_high": rule.threshold_high,
        "action_type": rule.action_type,
        "webhook_event_type": rule.webhook_event_type,
        "enabled": rule.enabled,
        "cooldown_seconds": rule.cooldown_seconds,
        "last_triggered_at": iso(rule.last_triggered_at),
        "created_on": iso(rule.created_on),
        "user_public_id": user_public_id,
    }


_RULE_COLUMNS = (Rule, Event.public_id, Event.name, Owner.public_id)


def _rule_select():
    return (select(*_RULE_COLUMNS).join(Event, Event.id == Rule.event_id)
            .outerjoin(Owner, Owner.id == Rule.user_id))


def _apply_rule(session, rule: Rule, body: dict) -> None:
    """Set the given fields, then check the whole rule (422 naming the field)."""
    if "event_public_id" in body:
        event_id = session.execute(select(Event.id).where(Event.public_id == body["event_public_id"])).scalar()
        if event_id is None:
            raise ApiError(422, "event_public_id: unknown event")
        rule.event_id = event_id
    for key in ("name", "operator", "threshold", "threshold_high", "action_type", "webhook_event_type",
                "enabled", "cooldown_seconds"):
        if key in body:
            setattr(rule, key, body[key])
    if rule.operator in RANGE_OPERATORS:
        if rule.threshold_high is None:
            raise ApiError(422, f"threshold_high: required for operator {rule.operator}")
        if rule.threshold_high < rule.threshold:
            raise ApiError(422, "threshold_high: must be >= threshold")
    if rule.action_type == "webhook":
        rule.webhook_event_type = rule.webhook_event_type or "sensor.threshold_exceeded"
    else:
        rule.webhook_event_type = None


class _RuleWrite(BaseHandler):
    changes = (RULES,)


def _load_rule(session, public_id: str) -> dict:
    row = None if "\x00" in public_id else session.execute(_rule_select().where(Rule.public_id == public_id)).first()
    if row is None:
        raise ApiError(404, "Rule not found.")
    return rule_dict(*row)


class RulesHandler(_RuleWrite):
    @authenticated("admin")
    async def get(self) -> None:
        page, size = self.page_args()
        self.send(await self.db.session(paginate, _rule_select().order_by(Rule.id), page, size, rule_dict))

    @authenticated("admin")
    async def post(self) -> None:
        body = self.validated(RULE_SPEC)

        def create(session):
            rule = Rule(user_id=self.principal.user_id, threshold_high=None, webhook_event_type=None)
            _apply_rule(session, rule, body)
            session.add(rule)
            session.flush()
            return _load_rule(session, rule.public_id)

        self.success("Rule successfully created.", 201, await self.commit(create))


class RuleHandler(_RuleWrite):
    @authenticated("admin")
    async def get(self, public_id: str) -> None:
        self.send(await self.db.session(_load_rule, public_id))

    @authenticated("admin")
    async def put(self, public_id: str) -> None:
        body = self.validated(RULE_SPEC, partial=True)

        def change(session):
            _apply_rule(session, get_or_404(session, Rule, public_id, "Rule"), body)
            session.flush()
            return _load_rule(session, public_id)

        self.success("Rule successfully updated.", resource=await self.commit(change))

    @authenticated("admin")
    async def delete(self, public_id: str) -> None:
        await self.commit(lambda s: s.delete(get_or_404(s, Rule, public_id, "Rule")))
        self.success("Rule deleted.")


# --- log entries ---------------------------------------------------------------------------

LOG_SPEC = {
    "content": Str(1, 500, required=True),
    "logging_type": Str(choices=LOGGING_TYPES, default="info"),
}
LOG_UPDATE_SPEC = {
    "status_type": Str(choices=STATUS_TYPES),
    "content": Str(1, 500),
}


def log_dict(entry: LogEntry, user_public_id: str | None) -> dict:
    return {
        "public_id": entry.public_id,
        "content": entry.content,
        "logging_type": entry.logging_type,
        "status_type": entry.status_type,
        "created_on": iso(entry.created_on),
        "user_public_id": user_public_id,
    }


class LogsHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()
        filters = []
        for name, choices, column in (("logging_type", LOGGING_TYPES, LogEntry.logging_type),
                                      ("status_type", STATUS_TYPES, LogEntry.status_type)):
            value = self.get_query_argument(name, None)
            if value is not None:
                if value not in choices:
                    raise ApiError(422, f"{name}: must be one of " + ", ".join(choices))
                filters.append(column == value)
        stmt = (select(LogEntry, Owner.public_id).outerjoin(Owner, Owner.id == LogEntry.user_id).where(*filters)
                .order_by(LogEntry.created_on.desc(), LogEntry.id.desc()))
        self.send(await self.db.session(paginate, stmt, page, size, log_dict))

    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated(LOG_SPEC)

        def create(session):
            entry = LogEntry(content=body["content"], logging_type=body["logging_type"], status_type="unread",
                             user_id=self.principal.user_id)
            session.add(entry)
            session.flush()
            return log_dict(entry, self.principal.public_id)

        self.success("Log entry successfully created.", 201, await self.db.session(create))


class LogHandler(BaseHandler):
    @authenticated()
    async def get(self, public_id: str) -> None:
        def load(session):
            entry = get_or_404(session, LogEntry, public_id, "Log entry")
            return log_dict(entry, owner_public_id(session, entry.user_id))

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def put(self, public_id: str) -> None:
        body = self.validated(LOG_UPDATE_SPEC, partial=True)

        def change(session):
            entry = get_or_404(session, LogEntry, public_id, "Log entry")
            for key, value in body.items():
                setattr(entry, key, value)
            session.flush()
            return log_dict(entry, owner_public_id(session, entry.user_id))

        self.success("Log entry successfully updated.", resource=await self.db.session(change))


default_handlers = [
    (r"/api/v1/webhooks", WebhooksHandler),
    (r"/api/v1/webhooks/([^/]+)/deliveries", WebhookDeliveriesHandler),
    (r"/api/v1/webhooks/([^/]+)", WebhookHandler),
    (r"/api/v1/rules", RulesHandler),
    (r"/api/v1/rules/([^/]+)", RuleHandler),
    (r"/api/v1/logging", LogsHandler),
    (r"/api/v1/logging/([^/]+)", LogHandler),
]
