"""Events, experiments, plugin instances and channel mappings.

Every write here that changes what the ingest pipeline accepts (events, plugin
instances, mappings, the running experiment) announces the ``linkage`` change
after its commit and before its response (:meth:`BaseHandler.commit`), so the
next batch sees the change.
"""

from __future__ import annotations

import json

from sqlalchemy import delete, select

from webmacs.cache import LINKAGE, RULES
from webmacs.handlers.base import (ApiError, BaseHandler, Owner, authenticated, flush_or_409, get_or_404,
                                   owner_public_id, paginate)
from webmacs.models import (
    CHANNEL_DIRECTIONS,
    EVENT_TYPES,
    ChannelMapping,
    Event,
    Experiment,
    LogEntry,
    PluginInstance,
    utcnow,
)
from webmacs.handlers.packages import uploaded_plugins
from webmacs.plugins import available
from webmacs.storage import datapoints
from webmacs.timefmt import api as iso
from webmacs.validation import Bool, Num, Obj, Str

# EventCreate as schemas.md has it: all five fields required (docs/rest-notes.md).
# Updates (partial) may send any of them.
EVENT_SPEC = {
    "name": Str(1, 255, required=True),
    "min_value": Num(required=True),
    "max_value": Num(required=True),
    "unit": Str(1, 255, required=True),
    "type": Str(choices=EVENT_TYPES, required=True),
}
EXPERIMENT_SPEC = {"name": Str(1, 255, required=True)}



def event_dict(event: Event, user_public_id: str | None) -> dict:
    return {
        "public_id": event.public_id,
        "name": event.name,
        "type": event.type,
        "unit": event.unit,
        "min_value": event.min_value,
        "max_value": event.max_value,
        "created_on": iso(event.created_on),
        "user_public_id": user_public_id,
    }


def _check_range(values: dict) -> None:
    lo, hi = values.get("min_value"), values.get("max_value")
    if lo is not None and hi is not None and lo > hi:
        raise ApiError(422, "max_value: must be >= min_value")


class _Invalidating(BaseHandler):
    """Writes here change what the ingest pipeline accepts."""

    changes = (LINKAGE,)


class EventsHandler(_Invalidating):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()
        stmt = select(Event, Owner.public_id).outerjoin(Owner, Owner.id == Event.user_id).order_by(Event.id)
        self.send(await self.db.session(paginate, stmt, page, size, event_dict))

    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated(EVENT_SPEC)
        _check_range(body)

        def create(session):
            event = Event(user_id=self.principal.user_id, **body)
            session.add(event)
            flush_or_409(session, "An event with this name already exists.")
            return event_dict(event, self.principal.public_id)

        self.success("Event successfully created.", 201, await self.commit(create))


class EventHandler(_Invalidating):
    @authenticated()
    async def get(self, public_id: str) -> None:
        def load(session):
            event = get_or_404(session, Event, public_id, "Event")
            return event_dict(event, owner_public_id(session, event.user_id))

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def put(self, public_id: str) -> None:
        body = self.validated(EVENT_SPEC, partial=True)

        def update(session):
            event = get_or_404(session, Event, public_id, "Event")
            for key, value in body.items():
                setattr(event, key, value)
            _check_range({"min_value": event.min_value, "max_value": event.max_value})
            flush_or_409(session, "An event with this name already exists.")
            return event_dict(event, owner_public_id(session, event.user_id))

        self.success("Event successfully updated.", resource=await self.commit(update))

    @authenticated("operator")
    async def delete(self, public_id: str) -> None:
        def remove(session):
            session.delete(get_or_404(session, Event, public_id, "Event"))

        await self.commit(remove, changes=(LINKAGE, RULES))  # its rules go with it
        self.success("Event successfully deleted.")


# --- experiments ---------------------------------------------------------------------

def experiment_dict(exp: Experiment, user_public_id: str | None) -> dict:
    return {
        "public_id": exp.public_id,
        "name": exp.name,
        "started_on": iso(exp.started_on),
        "stopped_on": iso(exp.stopped_on),
        "status": "running" if exp.stopped_on is None else "stopped",
        "created_on": iso(exp.created_on),
        "user_public_id": user_public_id,
    }


def _experiment_event(services, kind: str, exp: dict) -> None:
    services.webhooks.emit(f"experiment.{kind}", {
        "experiment_name": exp["name"],
        "experiment_id": exp["public_id"],
        "started_on": exp["started_on"],
        "stopped_on": exp["stopped_on"],
    })


class ExperimentsHandler(_Invalidating):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()
        stmt = select(Experiment, Owner.public_id).outerjoin(Owner, Owner.id == Experiment.user_id).order_by(
            Experiment.id.desc())
        self.send(await self.db.session(paginate, stmt, page, size, experiment_dict))

    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated(EXPERIMENT_SPEC)

        def create(session):
            if session.execute(select(Experiment.id).where(Experiment.stopped_on.is_(None))).first():
                raise ApiError(409, "An experiment is already running; stop it first.")
            exp = Experiment(name=body["name"], started_on=utcnow(), user_id=self.principal.user_id)
            session.add(exp)
            session.add(LogEntry(content=f"Experiment '{exp.name}' started", logging_type="info",
                                 user_id=self.principal.user_id))
            session.flush()
            return experiment_dict(exp, self.principal.public_id)

        exp = await self.commit(create)
        _experiment_event(self.services, "started", exp)
        self.success("Experiment successfully created.", 201, exp)


class ExperimentHandler(_Invalidating):
    @authenticated()
    async def get(self, public_id: str) -> None:
        def load(session):
            exp = get_or_404(session, Experiment, public_id, "Experiment")
            return experiment_dict(exp, owner_public_id(session, exp.user_id))

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def put(self, public_id: str) -> None:
        body = self.validated(EXPERIMENT_SPEC, partial=True)

        def update(session):
            exp = get_or_404(session, Experiment, public_id, "Experiment")
            if "name" in body:
                exp.name = body["name"]
            return experiment_dict(exp, owner_public_id(session, exp.user_id))

        self.success("Experiment successfully updated.", resource=await self.commit(update))

    @authenticated("operator")
    async def delete(self, public_id: str) -> None:
        def remove(session):
            exp = get_or_404(session, Experiment, public_id, "Experiment")
            datapoints.delete_experiment(session, exp.id)
            session.delete(exp)

        await self.commit(remove)
        self.success("Experiment successfully deleted.")


class ExperimentStopHandler(_Invalidating):
    @authenticated("operator")
    async def put(self, public_id: str) -> None:
        def stop(session):
            exp = get_or_404(session, Experiment, public_id, "Experiment")
            if exp.stopped_on is not None:
                raise ApiError(409, "Experiment is already stopped.")
            exp.stopped_on = utcnow()
            session.add(LogEntry(content=f"Experiment '{exp.name}' stopped", logging_type="info",
                                 user_id=self.principal.user_id))
            return experiment_dict(exp, owner_public_id(session, exp.user_id))

        exp = await self.commit(stop)
        _experiment_event(self.services, "stopped", exp)
        self.success("Experiment successfully stopped.", resource=exp)


# --- plugins and channel mappings --------------------------------------------------------

def mapping_dict(m: ChannelMapping, event_public_id: str | None) -> dict:
    return {
        "public_id": m.public_id,
        "channel_id": m.channel_id,
        "channel_name": m.channel_name,
        "direction": m.direction,
        "unit": m.unit,
        "event_public_id": event_public_id,
        "created_on": iso(m.created_on),
    }


def _mappings(session, instance_id: int) -> list[dict]:
    rows = session.execute(
        select(ChannelMapping, Event.public_id).outerjoin(Event, Event.id == ChannelMapping.event_id)
        .where(ChannelMapping.instance_id == instance_id).order_by(ChannelMapping.id)
    ).all()
    return [mapping_dict(m, e) for m, e in rows]


def instance_dict(session, inst: PluginInstance) -> dict:
    return {
        "public_id": inst.public_id,
        "plugin_id": inst.plugin_id,
        "instance_name": inst.instance_name,
        "demo_mode": inst.demo_mode,
        "enabled": inst.enabled,
        "status": inst.status,
        "config_json": json.loads(inst.config_json) if inst.config_json else None,
        "error_message": inst.error_message,
        "created_on": iso(inst.created_on),
        "updated_on": iso(inst.updated_on),
        "user_public_id": owner_public_id(session, inst.user_id),
        "channel_mappings": _mappings(session, inst.id),
    }


def _status(enabled: bool, demo: bool) -> str:
    return "inactive" if not enabled else ("demo" if demo else "connected")


INSTANCE_SPEC = {
    "plugin_id": Str(1, 100, required=True),
    "instance_name": Str(1, 255, required=True),
    "demo_mode": Bool(default=False),
    "enabled": Bool(default=True),
    "config_json": Obj(nullable=True),
    # true (default): every channel gets a new event (inputs "sensor", outputs
    # "actuator", with the channel's unit and range); false: mappings unlinked.
    "auto_create_events": Bool(default=True),
}

MAPPING_SPEC = {
    "channel_id": Str(1, 100, required=True),
    "channel_name": Str(1, 255, required=True),
    "direction": Str(choices=CHANNEL_DIRECTIONS, required=True),
    "unit": Str(1, 50, required=True),  # ChannelMappingCreate: 1-50 characters
    "event_public_id": Str(1, 64, nullable=True),
}
INSTANCE_UPDATE_SPEC = {k: INSTANCE_SPEC[k] for k in ("instance_name", "demo_mode", "enabled", "config_json")}
MAPPING_UPDATE_SPEC = {k: MAPPING_SPEC[k] for k in ("channel_name", "unit", "event_public_id")}


def _event_id(session, public_id: str | None) -> int | None:
    if public_id is None:
        return None
    event_id = session.execute(select(Event.id).where(Event.public_id == public_id)).scalar()
    if event_id is None:
        raise ApiError(404, "Event not found.")
    return event_id


def _unique_event_name(session, base: str) -> str:
    """``base``, or ``base (2)``, ...: cut to fit the name column (a longer one failed the
    insert on PostgreSQL: a 503 for an instance with a long name)."""
    limit = EVENT_SPEC["name"].max_len
    name, n = base[:limit], 1
    while session.execute(select(Event.id).where(Event.name == name)).first():
        n += 1
        suffix = f" ({n})"
        name = base[:limit - len(suffix)] + suffix
    return name


def create_instance(session, body: dict, user_id: int | None) -> PluginInstance:
    """A plugin instance from a validated :data:`INSTANCE_SPEC` body, with one channel
    mapping per channel of its plugin, each linked to a new event when
    ``auto_create_events`` (POST /plugins, and ``webmacs serve --demo``). The caller
    commits and announces the linkage change."""
    plugin = _plugin_class(session, body["plugin_id"])
    inst = PluginInstance(
        plugin_id=body["plugin_id"], instance_name=body["instance_name"], demo_mode=body["demo_mode"],
        enabled=body["enabled"], status=_status(body["enabled"], body["demo_mode"]),
        config_json=json.dumps(body["config_json"]) if body.get("config_json") is not None else None,
        user_id=user_id,
    )
    session.add(inst)
    session.flush()
    for ch in plugin.channels() if plugin is not None else []:
        event_id = None
        if body["auto_create_events"]:
            event = Event(name=_unique_event_name(session, f"{inst.instance_name} {ch.channel_name}"),
                          type="actuator" if ch.direction == "output" else "sensor", unit=ch.unit,
                          min_value=ch.min_value, max_value=ch.max_value, user_id=user_id)
            session.add(event)
            session.flush()
            event_id = event.id
        session.add(ChannelMapping(instance_id=inst.id, channel_id=ch.channel_id,
                                   channel_name=ch.channel_name, direction=ch.direction, unit=ch.unit,
                                   event_id=event_id))
    session.flush()
    return inst


class PluginsAvailableHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        plugins = [{**cls.meta(), "channels": [ch.as_dict() for ch in cls.channels()],
                    "dynamic_channels": cls.dynamic_channels} for cls in available().values()]
        known = {p["id"] for p in plugins}
        plugins += [p for p in await self.db.session(uploaded_plugins) if p["id"] not in known]
        self.send(plugins)


def _plugin_class(session, plugin_id: str, strict: bool = True):
    """The plugin class; None for a plugin of an uploaded package (its code runs on
    controllers only, so its channels are not known here); 422 for an unknown id."""
    plugin = available().get(plugin_id)
    if plugin is None and strict and plugin_id not in {p["id"] for p in uploaded_plugins(session)}:
        raise ApiError(422, f"plugin_id: unknown plugin {plugin_id!r}")
    return plugin


class PluginsHandler(_Invalidating):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()

        def load(session):
            return paginate(session, select(PluginInstance).order_by(PluginInstance.id), page, size,
                            lambda inst: instance_dict(session, inst))

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated(INSTANCE_SPEC)

        def create(session):
            return instance_dict(session, create_instance(session, body, self.principal.user_id))

        self.success("Plugin instance created.", 201, await self.commit(create))


class PluginHandler(_Invalidating):
    @authenticated()
    async def get(self, public_id: str) -> None:
        self.send(await self.db.session(
            lambda s: instance_dict(s, get_or_404(s, PluginInstance, public_id, "Plugin instance"))))

    @authenticated("operator")
    async def put(self, public_id: str) -> None:
        body = self.validated(INSTANCE_UPDATE_SPEC, partial=True)

        def update(session):
            inst = get_or_404(session, PluginInstance, public_id, "Plugin instance")
            for key in ("instance_name", "demo_mode", "enabled"):
                if key in body:
                    setattr(inst, key, body[key])
            if "config_json" in body:
                inst.config_json = json.dumps(body["config_json"]) if body["config_json"] is not None else None
            inst.status = _status(inst.enabled, inst.demo_mode)
            inst.updated_on = utcnow()
            session.flush()
            return instance_dict(session, inst)

        self.success("Plugin instance successfully updated.", resource=await self.commit(update))

    @authenticated("operator")
    async def delete(self, public_id: str) -> None:
        def remove(session):
            inst = get_or_404(session, PluginInstance, public_id, "Plugin instance")
            session.execute(delete(ChannelMapping).where(ChannelMapping.instance_id == inst.id))
            session.delete(inst)

        await self.commit(remove)
        self.success("Plugin instance successfully deleted.")


class ChannelsHandler(_Invalidating):
    @authenticated()
    async def get(self, public_id: str) -> None:
        def load(session):
            return _mappings(session, get_or_404(session, PluginInstance, public_id, "Plugin instance").id)

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def post(self, public_id: str) -> None:
        body = self.validated(MAPPING_SPEC)

        def create(session):
            inst = get_or_404(session, PluginInstance, public_id, "Plugin instance")
            plugin = _plugin_class(session, inst.plugin_id, strict=False)
            if plugin is not None and not plugin.has_channel(body["channel_id"]):
                raise ApiError(422, f"channel_id: plugin {inst.plugin_id!r} has no channel {body['channel_id']!r}")
            taken = f"channel_id: channel {body['channel_id']!r} is already mapped on this instance"
            if session.execute(select(ChannelMapping.id).where(ChannelMapping.instance_id == inst.id,
                                                                ChannelMapping.channel_id == body["channel_id"])).first():
                raise ApiError(409, taken)
            m = ChannelMapping(instance_id=inst.id, channel_id=body["channel_id"],
                               channel_name=body["channel_name"], direction=body["direction"], unit=body["unit"],
                               event_id=_event_id(session, body.get("event_public_id")))
            session.add(m)
            flush_or_409(session, taken)
            return mapping_dict(m, body.get("event_public_id"))

        self.success("Channel mapping successfully created.", 201, await self.commit(create))


class ChannelHandler(_Invalidating):
    def _load(self, session, public_id: str, mapping_id: str) -> ChannelMapping:
        inst = get_or_404(session, PluginInstance, public_id, "Plugin instance")
        m = session.execute(select(ChannelMapping).where(ChannelMapping.public_id == mapping_id,
                                                         ChannelMapping.instance_id == inst.id)).scalar()
        if m is None:
            raise ApiError(404, "Channel mapping not found.")
        return m

    @authenticated()
    async def get(self, public_id: str, mapping_id: str) -> None:
        def load(session):
            m = self._load(session, public_id, mapping_id)
            return mapping_dict(m, session.execute(select(Event.public_id).where(Event.id == m.event_id)).scalar())

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def put(self, public_id: str, mapping_id: str) -> None:
        body = self.validated(MAPPING_UPDATE_SPEC, partial=True)

        def update(session):
            m = self._load(session, public_id, mapping_id)
            if "event_public_id" in body:
                m.event_id = _event_id(session, body["event_public_id"])
            for key in ("channel_name", "unit"):
                if key in body:
                    setattr(m, key, body[key])
            session.flush()
            return mapping_dict(m, session.execute(select(Event.public_id).where(Event.id == m.event_id)).scalar())

        self.success("Channel mapping successfully updated.", resource=await self.commit(update))

    @authenticated("operator")
    async def delete(self, public_id: str, mapping_id: str) -> None:
        await self.commit(lambda s: s.delete(self._load(s, public_id, mapping_id)))
        self.success("Channel mapping successfully deleted.")


default_handlers = [
    (r"/api/v1/events", EventsHandler),
    (r"/api/v1/events/([^/]+)", EventHandler),
    (r"/api/v1/experiments", ExperimentsHandler),
    (r"/api/v1/experiments/([^/]+)/stop", ExperimentStopHandler),
    (r"/api/v1/experiments/([^/]+)", ExperimentHandler),
    (r"/api/v1/plugins/available", PluginsAvailableHandler),
    (r"/api/v1/plugins", PluginsHandler),
    (r"/api/v1/plugins/([^/]+)/channels", ChannelsHandler),
    (r"/api/v1/plugins/([^/]+)/channels/([^/]+)", ChannelHandler),
    (r"/api/v1/plugins/([^/]+)", PluginHandler),
]
