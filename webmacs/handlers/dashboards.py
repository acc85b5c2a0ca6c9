"""Custom dashboards and their widgets (REST contract §Dashboards).

Visibility and rights (docs/dashboards.md):

- everyone signed in sees their own dashboards plus every ``is_global`` one;
  another user's private dashboard answers 404, as if it did not exist;
- only the owner changes or deletes a dashboard and its widgets (403 for anyone
  else, admins included); a dashboard whose owner was deleted has no owner, and
  then an admin may change or delete it;
- creating and changing need the operator role, reading needs a viewer.

Deleting a dashboard deletes its widgets (``ON DELETE CASCADE``). Deleting an
event a widget shows sets the widget's ``event_public_id`` to null: the widget
and its dashboard stay, unbound, until someone picks another event.
"""

from __future__ import annotations

import json

from sqlalchemy import or_, select

from webmacs.handlers.base import (DEFAULT_MAX_BODY, ApiError, BaseHandler, Owner, authenticated, get_or_404,
                                   owner_public_id, paginate)
from webmacs.handlers.resources import _event_id as event_id_of
from webmacs.models import WIDGET_TYPES, Dashboard, DashboardWidget, Event
from webmacs.timefmt import api as iso
from webmacs.validation import Bool, Int, Str, ValidationError

DASHBOARD_SPEC = {
    "name": Str(1, 255, required=True),
    "is_global": Bool(default=False),
}


class JsonText(Str):
    """A string holding a JSON document (``config_json`` is a JSON *string* in the contract)."""

    def clean(self, name, value):
        value = super().clean(name, value)
        try:
            json.loads(value)
        except ValueError:
            raise ValidationError(name, "must be a string holding valid JSON") from None
        return value

    def schema(self):
        return {**super().schema(), "contentMediaType": "application/json"}


WIDGET_SPEC = {
    "widget_type": Str(choices=WIDGET_TYPES, required=True),
    "title": Str(1, 255, required=True),
    "event_public_id": Str(1, 64, nullable=True),
    "x": Int(0, 11, default=0),
    "y": Int(0, 10_000, default=0),
    "w": Int(1, 12, default=4),
    "h": Int(1, 12, default=3),
    "config_json": JsonText(0, 65_536, strip=False, nullable=True),
}


def widget_dict(widget: DashboardWidget, event_public_id: str | None) -> dict:
    return {
        "public_id": widget.public_id,
        "widget_type": widget.widget_type,
        "title": widget.title,
        "event_public_id": event_public_id,
        "x": widget.x,
        "y": widget.y,
        "w": widget.w,
        "h": widget.h,
        "config_json": widget.config_json,
        "created_on": iso(widget.created_on),
    }


def _widgets(session, dashboard_ids: list[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {i: [] for i in dashboard_ids}
    if not dashboard_ids:
        return out
    rows = session.execute(
        select(DashboardWidget, Event.public_id).outerjoin(Event, Event.id == DashboardWidget.event_id)
        .where(DashboardWidget.dashboard_id.in_(dashboard_ids)).order_by(DashboardWidget.id)
    ).all()
    for widget, event_public_id in rows:
        out[widget.dashboard_id].append(widget_dict(widget, event_public_id))
    return out


def dashboard_dict(dashboard: Dashboard, owner_public_id: str | None, widgets: list[dict]) -> dict:
    return {
        "public_id": dashboard.public_id,
        "name": dashboard.name,
        "is_global": dashboard.is_global,
        "created_on": iso(dashboard.created_on),
        "user_public_id": owner_public_id,
        "widgets": widgets,
    }


def _full(session, dashboard: Dashboard) -> dict:
    return dashboard_dict(dashboard, owner_public_id(session, dashboard.user_id), _widgets(session, [dashboard.id])[dashboard.id])


def _event_id(session, public_id: str | None) -> int | None:
    try:
        return event_id_of(session, public_id)
    except ApiError:  # a body field naming no event: a validation error here
        raise ApiError(422, "event_public_id: no event with this public_id") from None


class _DashboardBase(BaseHandler):
    def visible(self, session, public_id: str) -> Dashboard:
        dashboard = get_or_404(session, Dashboard, public_id, "Dashboard")
        if not dashboard.is_global and dashboard.user_id != self.principal.user_id:
            raise ApiError(404, "Dashboard not found.")
        return dashboard

    def owned(self, session, public_id: str) -> Dashboard:
        dashboard = self.visible(session, public_id)
        if dashboard.user_id == self.principal.user_id:
            return dashboard
        if dashboard.user_id is None and self.principal.has_role("admin"):
            return dashboard
        raise ApiError(403, "Only the dashboard owner can modify it.")


class DashboardsHandler(_DashboardBase):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()
        stmt = (select(Dashboard, Owner.public_id).outerjoin(Owner, Owner.id == Dashboard.user_id)
                .where(or_(Dashboard.user_id == self.principal.user_id, Dashboard.is_global.is_(True)))
                .order_by(Dashboard.id.desc()))

        def load(session):
            result = paginate(session, stmt, page, size, lambda d, owner: (d, owner))
            widgets = _widgets(session, [d.id for d, _ in result["data"]])
            result["data"] = [dashboard_dict(d, owner, widgets[d.id]) for d, owner in result["data"]]
            return result

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated(DASHBOARD_SPEC)

        def create(session):
            dashboard = Dashboard(name=body["name"], is_global=body["is_global"], user_id=self.principal.user_id)
            session.add(dashboard)
            session.flush()
            return dashboard_dict(dashboard, self.principal.public_id, [])

        # Created objects that clients read back are the body itself (docs/rest-notes.md).
        self.send(await self.db.session(create), 201)


class DashboardHandler(_DashboardBase):
    @authenticated()
    async def get(self, public_id: str) -> None:
        self.send(await self.db.session(lambda s: _full(s, self.visible(s, public_id))))

    @authenticated("operator")
    async def put(self, public_id: str) -> None:
        body = self.validated(DASHBOARD_SPEC, partial=True)

        def update(session):
            dashboard = self.owned(session, public_id)
            for key, value in body.items():
                setattr(dashboard, key, value)
            session.flush()
            return _full(session, dashboard)

        self.success("Dashboard successfully updated.", resource=await self.db.session(update))

    @authenticated("operator")
    async def delete(self, public_id: str) -> None:
        def remove(session):
            dashboard = self.owned(session, public_id)
            # explicit, so it does not depend on the backend enforcing the cascade
            session.query(DashboardWidget).filter(DashboardWidget.dashboard_id == dashboard.id).delete()
            session.delete(dashboard)

        await self.db.session(remove)
        self.success("Dashboard successfully deleted.")


class _WidgetWrite(_DashboardBase):
    # config_json may hold its full length even as \uXXXX escapes (6 bytes a character)
    max_body_bytes = 6 * WIDGET_SPEC["config_json"].max_len + DEFAULT_MAX_BODY


class WidgetsHandler(_WidgetWrite):
    @authenticated("operator")
    async def post(self, public_id: str) -> None:
        body = self.validated(WIDGET_SPEC)

        def create(session):
            dashboard = self.owned(session, public_id)
            event_public_id = body.pop("event_public_id", None)
            widget = DashboardWidget(dashboard_id=dashboard.id, event_id=_event_id(session, event_public_id),
                                     **body)
            session.add(widget)
            session.flush()
            return widget_dict(widget, event_public_id)

        self.send(await self.db.session(create), 201)


class WidgetHandler(_WidgetWrite):
    def _load(self, session, public_id: str, widget_id: str) -> DashboardWidget:
        dashboard = self.owned(session, public_id)
        widget = session.execute(select(DashboardWidget).where(
            DashboardWidget.public_id == widget_id, DashboardWidget.dashboard_id == dashboard.id)).scalar()
        if widget is None:
            raise ApiError(404, "Widget not found.")
        return widget

    @authenticated("operator")
    async def put(self, public_id: str, widget_id: str) -> None:
        body = self.validated(WIDGET_SPEC, partial=True)

        def update(session):
            widget = self._load(session, public_id, widget_id)
            if "event_public_id" in body:
                widget.event_id = _event_id(session, body.pop("event_public_id"))
            for key, value in body.items():
                setattr(widget, key, value)
            session.flush()
            event = session.execute(select(Event.public_id).where(Event.id == widget.event_id)).scalar()
            return widget_dict(widget, event)

        self.success("Widget successfully updated.", resource=await self.db.session(update))

    @authenticated("operator")
    async def delete(self, public_id: str, widget_id: str) -> None:
        await self.db.session(lambda s: s.delete(self._load(s, public_id, widget_id)))
        self.success("Widget successfully deleted.")


default_handlers = [
    (r"/api/v1/dashboards", DashboardsHandler),
    (r"/api/v1/dashboards/([^/]+)/widgets", WidgetsHandler),
    (r"/api/v1/dashboards/([^/]+)/widgets/([^/]+)", WidgetHandler),
    (r"/api/v1/dashboards/([^/]+)", DashboardHandler),
]
