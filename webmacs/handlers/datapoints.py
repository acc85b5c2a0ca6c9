"""REST datapoints: list, create (one or a batch, through the ingest pipeline), latest, get, delete."""

from __future__ import annotations

from sqlalchemy import and_, delete, func, select, text

from webmacs.handlers.base import ApiError, BaseHandler, authenticated
from webmacs.ingest import MAX_BATCH, MAX_BATCH_ID, IngestError, datapoint_public_id, iso, parse_datapoint_public_id
from webmacs.models import Event, Experiment, UTCDateTime, datapoints
from webmacs.validation import List, Num, Obj, Str, ValidationError, validate

POINT_SPEC = {"value": Num(required=True), "event_public_id": Str(1, 64, required=True)}

_DP_COLUMNS = (datapoints.c.id, datapoints.c.time, datapoints.c.value, datapoints.c.event_id,
               Event.public_id.label("event_public_id"), Experiment.public_id.label("experiment_public_id"))


def _joined(stmt):
    return stmt.select_from(datapoints).outerjoin(Event, Event.id == datapoints.c.event_id).outerjoin(
        Experiment, Experiment.id == datapoints.c.experiment_id)


def datapoint_dict(row) -> dict:
    return {
        "public_id": datapoint_public_id(row.event_id, row.time, row.id),
        "value": row.value,
        "timestamp": iso(row.time),
        "event_public_id": row.event_public_id,
        "experiment_public_id": row.experiment_public_id,
    }


def _event_exists(session, public_id: str) -> bool:
    return session.execute(select(Event.id).where(Event.public_id == public_id)).first() is not None


def _check_points(raw: list) -> None:
    """Strict shape check for REST bodies: 422 naming the first bad field."""
    for i, point in enumerate(raw):
        try:
            validate(point, POINT_SPEC)
        except ValidationError as exc:
            raise ApiError(422, f"datapoints[{i}].{exc}") from None


class DatapointsHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()
        event = self.get_query_argument("event_public_id", None)
        experiment = self.get_query_argument("experiment_public_id", None)

        def load(session):
            conditions = []
            if event:
                conditions.append(datapoints.c.event_id == select(Event.id).where(
                    Event.public_id == event).scalar_subquery())
            if experiment:
                conditions.append(datapoints.c.experiment_id == select(Experiment.id).where(
                    Experiment.public_id == experiment).scalar_subquery())
            where = and_(True, *conditions)
            total = session.execute(select(func.count()).select_from(datapoints).where(where)).scalar_one()
            rows = session.execute(
                _joined(select(*_DP_COLUMNS)).where(where).order_by(datapoints.c.time.desc(), datapoints.c.id.desc())
                .limit(size).offset((page - 1) * size)
            ).all()
            return {"page": page, "page_size": size, "total": total, "data": [datapoint_dict(r) for r in rows]}

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated(POINT_SPEC)
        raw = self.json_body()  # the optional reading time is checked by the pipeline
        if "timestamp" in raw:
            body["timestamp"] = raw["timestamp"]
        try:
            result = await self.services.pipeline.ingest([body], want_ids=True)
        except IngestError as exc:
            if exc.retry:
                raise ApiError(503, exc.message) from None
            if not await self.db.session(_event_exists, body["event_public_id"]):
                raise ApiError(404, "Event not found.") from None
            raise ApiError(422, exc.errors[0] if exc.errors else exc.message) from None
        public_id = result.ids[0]
        self.success("Datapoint successfully created.", 201, {
            "public_id": public_id, "value": float(body["value"]),
            "timestamp": iso(parse_datapoint_public_id(public_id)[1]),
            "event_public_id": body["event_public_id"],
            "experiment_public_id": result.experiment_public_id})


class DatapointsBatchHandler(BaseHandler):
    max_body_bytes = 256 * 1024  # 500 datapoints are ~55 kB; room for long ids and whitespace
    max_json_depth = None  # each point is checked flat; skip the pre-scan on the telemetry path
    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated({"datapoints": List(Obj(), max_items=MAX_BATCH, required=True),
                               "batch_id": Str(1, MAX_BATCH_ID, strip=False)})  # optional: see docs/telemetry-acks.md
        _check_points(body["datapoints"])
        batch_id = body.get("batch_id")
        try:
            result = await self.services.pipeline.ingest(body["datapoints"], batch_id=batch_id)
        except IngestError as exc:
            raise ApiError(503 if exc.retry else 422, exc.message) from None
        self.send({
            "status": "success",
            "message": f"{result.accepted} datapoints created.",
            "accepted": result.accepted,
            "rejected": result.rejected,
            **({"batch_id": batch_id, "duplicate": result.duplicate} if batch_id is not None else {}),
        }, 201)


def latest_per_event(session) -> list[dict]:
    if session.bind.dialect.name == "postgresql":
        sql = (
            "SELECT d.id, d.time, d.value, e.id AS event_id, e.public_id AS event_public_id, "
            "x.public_id AS experiment_public_id FROM events e "
            "CROSS JOIN LATERAL (SELECT id, time, value, experiment_id FROM datapoints "
            "  WHERE event_id = e.id ORDER BY time DESC LIMIT 1) d "
            "LEFT JOIN experiments x ON x.id = d.experiment_id ORDER BY e.id"
        )
    else:
        sql = (
            "SELECT d.id, d.time, d.value, e.id AS event_id, e.public_id AS event_public_id, "
            "x.public_id AS experiment_public_id FROM events e "
            "JOIN datapoints d ON d.id = (SELECT id FROM datapoints WHERE event_id = e.id "
            "  ORDER BY time DESC, id DESC LIMIT 1) "
            "LEFT JOIN experiments x ON x.id = d.experiment_id ORDER BY e.id"
        )
    rows = session.execute(text(sql).columns(time=UTCDateTime())).all()
    return [datapoint_dict(r) for r in rows]


class LatestHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        self.send(await self.db.session(latest_per_event))


def _where_public_id(public_id: str):
    parsed = parse_datapoint_public_id(public_id)
    if parsed is None:
        raise ApiError(404, "Datapoint not found.")
    event_id, time, row_id = parsed
    return and_(datapoints.c.event_id == event_id, datapoints.c.time == time, datapoints.c.id == row_id)


class DatapointHandler(BaseHandler):
    @authenticated()
    async def get(self, public_id: str) -> None:
        where = _where_public_id(public_id)

        def load(session):
            row = session.execute(_joined(select(*_DP_COLUMNS)).where(where)).first()
            if row is None:
                raise ApiError(404, "Datapoint not found.")
            return datapoint_dict(row)

        self.send(await self.db.session(load))

    @authenticated("operator")
    async def delete(self, public_id: str) -> None:
        where = _where_public_id(public_id)

        def remove(session):
            if session.execute(delete(datapoints).where(where)).rowcount == 0:
                raise ApiError(404, "Datapoint not found.")

        await self.db.session(remove)
        self.success("Datapoint successfully deleted.")


default_handlers = [
    (r"/api/v1/datapoints", DatapointsHandler),
    (r"/api/v1/datapoints/batch", DatapointsBatchHandler),
    (r"/api/v1/datapoints/latest", LatestHandler),
    (r"/api/v1/datapoints/([^/]+)", DatapointHandler),
]
