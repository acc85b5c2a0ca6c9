"""REST datapoints: list, create (one or a batch, through the ingest pipeline), latest,
series, get, delete. The statements are in :mod:`webmacs.storage`."""

from __future__ import annotations

from webmacs.handlers.base import ApiError, BaseHandler, authenticated
from webmacs.ingest import MAX_BATCH, MAX_BATCH_ID, NO_VALID, IngestError
from webmacs.models import utcnow
from webmacs.storage import datapoints, series
from webmacs import timefmt
from webmacs.validation import Field, Int, List, Num, Obj, Str, ValidationError


class Timestamp(Field):
    """A reading's time, as the ingest pipeline reads it (:func:`webmacs.timefmt.parse`)."""

    def clean(self, name, value):
        try:
            return timefmt.parse(value)
        except (ValueError, OverflowError, OSError):
            raise ValidationError(name, "must be ISO 8601 with offset or epoch seconds") from None

    def schema(self):
        return {"type": ["string", "number"], "description": "ISO 8601 (an offset, or UTC when none) or "
                "epoch seconds; at most 5 minutes in the future; the server's time when absent",
                "examples": ["2026-01-01T12:00:00Z"]}


# One reading as POST /datapoints and each item of a batch take it. The ingest pipeline
# (webmacs.ingest.validate_point) checks these rules for REST and WebSocket alike.
DATAPOINT_SPEC = {
    "value": Num(required=True, example=21.5),
    "event_public_id": Str(1, 255, strip=False, required=True),
    "timestamp": Timestamp(nullable=True),
}

SERIES_SPEC = {
    "event_public_ids": List(Str(1, 64), min_items=1, max_items=20, required=True),
    "minutes": Int(1, 14400, default=60),
    "max_points": Int(10, 2000, default=500),
}
# GET /datapoints filters, by public id
LIST_FILTERS = {"event_public_id": Str(0, 255, description="Only this event's readings (empty: all)."),
                "experiment_public_id": Str(0, 255, description="Only this experiment's readings (empty: all).")}
BATCH_SPEC = {
    "datapoints": List(Obj(DATAPOINT_SPEC), max_items=MAX_BATCH, required=True),
    "batch_id": Str(1, MAX_BATCH_ID, strip=False),  # optional: see docs/telemetry-acks.md
}


class DatapointsHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        page, size = self.page_args()
        self.send(await self.db.session(datapoints.list_page, page, size,
                                        *(self.str_arg(name, f) for name, f in LIST_FILTERS.items())))

    @authenticated("operator")
    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        try:
            result = await self.pipeline.ingest([body], want_ids=True, strict=True)
        except IngestError as exc:
            if exc.message == NO_VALID:  # a valid reading whose event is unknown or not linked
                if not await self.db.session(datapoints.event_exists, body["event_public_id"]):
                    raise ApiError(404, "Event not found.") from None
                raise ApiError(409, "Event is not linked to an enabled plugin instance.") from None
            # one reading, not a batch: name the field, not its place in a list
            raise ApiError(exc.status, exc.message.removeprefix("datapoints[0]: ")) from None
        public_id = result.ids[0]
        self.success("Datapoint successfully created.", 201, {
            "public_id": public_id, "value": float(body["value"]),
            "timestamp": datapoints.parse_public_id(public_id)[1],
            "event_public_id": body["event_public_id"],
            "experiment_public_id": result.experiment_public_id})


class DatapointsBatchHandler(BaseHandler):
    max_body_bytes = 256 * 1024  # 500 datapoints are ~55 kB; room for long ids and whitespace
    max_json_depth = None  # each point is checked flat; skip the pre-scan on the telemetry path
    @authenticated("operator")
    async def post(self) -> None:
        body = self.validated(BATCH_SPEC)
        batch_id = body.get("batch_id")
        try:
            result = await self.pipeline.ingest(body["datapoints"], batch_id=batch_id, sender=self.principal.sender,
                                                strict=True)
        except IngestError as exc:
            raise ApiError(exc.status, exc.message) from None
        self.send({
            "status": "success",
            "message": f"{result.accepted} datapoints created.",
            "accepted": result.accepted,
            "rejected": result.rejected,
            **({"batch_id": batch_id, "duplicate": result.duplicate} if batch_id is not None else {}),
        }, 201)


class LatestHandler(BaseHandler):
    @authenticated()
    async def get(self) -> None:
        self.send(await self.db.session(datapoints.latest_per_event))


class SeriesHandler(BaseHandler):
    @authenticated()
    async def post(self) -> None:
        body = self.validated(SERIES_SPEC)
        ids = list(dict.fromkeys(body["event_public_ids"]))  # unique, in request order
        # encoded on the database thread: a 2000-point x 20 answer is 3 MB of JSON
        self.finish(await self.db.session(series.series_json, ids, body["minutes"], body["max_points"], utcnow(),
                                          self.db.has_timescale))


class DatapointHandler(BaseHandler):
    @authenticated()
    async def get(self, public_id: str) -> None:
        found = await self.db.session(datapoints.get, public_id)
        if found is None:
            raise ApiError(404, "Datapoint not found.")
        self.send(found)

    @authenticated("operator")
    async def delete(self, public_id: str) -> None:
        if not await self.db.session(datapoints.delete_one, public_id):
            raise ApiError(404, "Datapoint not found.")
        self.success("Datapoint successfully deleted.")


default_handlers = [
    (r"/api/v1/datapoints", DatapointsHandler),
    (r"/api/v1/datapoints/batch", DatapointsBatchHandler),
    (r"/api/v1/datapoints/latest", LatestHandler),
    (r"/api/v1/datapoints/series", SeriesHandler),
    (r"/api/v1/datapoints/([^/]+)", DatapointHandler),
]
