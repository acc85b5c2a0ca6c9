"""The OpenAPI 3.1 description of the HTTP API, built from the handlers themselves.

- Paths and methods come from the route table (every module in
  :data:`webmacs.handlers.MODULES`, every method its handler class defines);
  :func:`missing_operations` names any that :data:`OPERATIONS` does not describe,
  and ``tests/test_openapi.py`` fails on them, so a new route cannot go undocumented.
- Request bodies and query parameters are the handlers' own field specs
  (:mod:`webmacs.validation`, ``Field.json_schema``): what the document promises
  is what ``self.validated(SPEC)`` checks.
- Response shapes, status codes and summaries are the compact :class:`Op`
  declarations below; the schemathesis run in the test suite checks every
  response of a live server against them.

Served at ``GET /api/v1/openapi.json`` (public); ``webmacs openapi`` prints it and
``python -m webmacs.openapi --markdown`` writes docs/rest.md from it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler

from webmacs import __version__
from webmacs.handlers import MODULES, auth, dashboard, dashboards, datapoints, export, integrations
from webmacs.handlers import metrics as metrics_handler
from webmacs.handlers import ota, packages, resources, sso, ws
from webmacs.handlers.base import PAGE_ARGS, BaseHandler
from webmacs.storage.export import csv_header
from webmacs.models import (CHANNEL_DIRECTIONS, DELIVERY_STATUSES, EVENT_TYPES, LOGGING_TYPES, ROLES,
                            RULE_ACTIONS, RULE_OPERATORS, STATUS_TYPES, UPDATE_STATUSES, WEBHOOK_EVENT_TYPES,
                            WIDGET_TYPES)
from webmacs.validation import Bool, Field, Str, spec_schema

HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
JSON = "application/json"
SECURITY = [{"bearerJWT": []}, {"apiToken": []}]


# --- response shapes ----------------------------------------------------------------------

_KINDS = {"str": {"type": "string"}, "time": {"type": "string", "format": "date-time"},
          "int": {"type": "integer"}, "num": {"type": "number"}, "bool": {"type": "boolean"},
          "obj": {"type": "object"}}


def _prop(kind: Any) -> dict:
    """``"str"``, ``"time?"`` (nullable), a tuple of choices, or a schema as it is."""
    if isinstance(kind, dict):
        return kind
    if isinstance(kind, tuple):
        return {"type": "string", "enum": list(kind)}
    base = dict(_KINDS[kind.rstrip("?")])
    if kind.endswith("?"):
        base["type"] = [base["type"], "null"]
    return base


def shape(optional: dict[str, Any] | None = None, **props: Any) -> dict:
    """An object whose every listed key is always present (and the ``optional`` ones sometimes)."""
    properties = {k: _prop(v) for k, v in {**props, **(optional or {})}.items()}
    return {"type": "object", "properties": properties, "required": list(props)}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def array(item: dict) -> dict:
    return {"type": "array", "items": item}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


PLUGIN_STATUSES = ("inactive", "connected", "error", "demo")  # PluginInstance.status (schemas.md PluginStatus)

SCHEMAS: dict[str, dict] = {
    "Error": shape(detail="str"),
    "Status": shape(status=("success",), message="str"),
    "User": shape(public_id="str", email="str", username="str", role=ROLES, admin="bool", sso_provider="str?",
                  created_on="time", registered_on="time"),
    "ApiToken": shape(public_id="str", name="str", last_used_at="time?", expires_at="time?", created_at="time",
                      user_public_id="str"),
    "ApiTokenCreated": shape(public_id="str", name="str", token={"type": "string", "description":
                             "The token itself: shown once, only in this answer."},
                             expires_at="time?", created_at="time", user_public_id="str"),
    "Login": shape(status=("success",), message="str", access_token="str", token_type=("bearer",),
                   public_id="str", username="str"),
    "LoginHint": shape(users_exist="bool", message="str?", command="str?"),
    "Health": shape(status=("ok", "degraded"), version="str", database=("ok", "error"), last_datapoint="time?",
                    uptime_seconds="num"),
    "SsoConfig": shape(enabled="bool", provider_name="str?"),
    "SsoToken": shape(access_token="str", token_type=("bearer",)),
    "Event": shape(public_id="str", name="str", type=EVENT_TYPES, unit="str?", min_value="num?", max_value="num?",
                   created_on="time", user_public_id="str?"),
    "Experiment": shape(public_id="str", name="str", started_on="time?", stopped_on="time?",
                        status=("running", "stopped"), created_on="time", user_public_id="str?"),
    "Datapoint": shape(public_id="str", value="num", timestamp="time", event_public_id="str",
                       experiment_public_id="str?"),
    "BatchResult": shape(status=("success",), message="str", accepted="int", rejected="int",
                         optional={"batch_id": "str", "duplicate": "bool"}),
    "Series": {"type": "object", "description": "Each requested event's readings, oldest first, by event id.",
               "additionalProperties": array(shape(timestamp="time", value="num"))},
    "Channel": shape(channel_id="str", channel_name="str", direction=CHANNEL_DIRECTIONS, unit="str?",
                     min_value="num?", max_value="num?"),
    "Plugin": shape(id="str", name="str", version="str", vendor="str", description="str", url="str?",
                    channels=array(ref("Channel")), dynamic_channels="bool"),
    "ChannelMapping": shape(public_id="str", channel_id="str", channel_name="str", direction=CHANNEL_DIRECTIONS,
                            unit="str", event_public_id="str?", created_on="time"),
    "PluginInstance": shape(public_id="str", plugin_id="str", instance_name="str", demo_mode="bool", enabled="bool",
                            status=PLUGIN_STATUSES, config_json="obj?", error_message="str?", created_on="time",
                            updated_on="time", user_public_id="str?", channel_mappings=array(ref("ChannelMapping"))),
    "PluginPackage": shape(public_id="str", package_name="str", version="str", source=("bundled", "uploaded"),
                           plugin_ids=array({"type": "string"}), file_size_bytes="int?", installed_on="time?",
                           removable="bool", optional={"file_name": "str", "sha256": "str"}),
    "Webhook": shape(public_id="str", url="str", events=array({"type": "string", "enum": list(WEBHOOK_EVENT_TYPES)}),
                     enabled="bool", has_secret="bool", created_on="time", user_public_id="str?"),
    "WebhookDelivery": shape(public_id="str", event_type="str", status=DELIVERY_STATUSES, attempts="int",
                             last_error="str?", response_code="int?", next_attempt_at="time?", created_on="time",
                             delivered_on="time?"),
    "Rule": shape(public_id="str", name="str", event_public_id="str?", event_name="str?", operator=RULE_OPERATORS,
                  threshold="num", threshold_high="num?", action_type=RULE_ACTIONS,
                  webhook_event_type={"type": ["string", "null"]}, enabled="bool", cooldown_seconds="int",
                  last_triggered_at="time?", created_on="time", user_public_id="str?"),
    "LogEntry": shape(public_id="str", content="str", logging_type=LOGGING_TYPES,
                      status_type=STATUS_TYPES, created_on="time", user_public_id="str?"),
    "Widget": shape(public_id="str", widget_type=WIDGET_TYPES, title="str", event_public_id="str?", x="int",
                    y="int", w="int", h="int", config_json="str?", created_on="time"),
    "Dashboard": shape(public_id="str", name="str", is_global="bool", created_on="time", user_public_id="str?",
                       widgets=array(ref("Widget"))),
    "FirmwareUpdate": shape(public_id="str", version="str", changelog="str?", file_hash_sha256="str?",
                            file_size_bytes="int?", has_firmware_file="bool", download_url="str?",
                            status=UPDATE_STATUSES, error_message="str?", created_on="time", started_on="time?",
                            completed_on="time?", user_public_id="str?"),
    "OtaCheck": shape(current_version="str", latest_version="str?", update_available="bool",
                      github_latest_version="str?", github_download_url="str?", github_release_url="str?",
                      github_error="str?", active_update=nullable(ref("FirmwareUpdate"))),
}


def page_of(name: str) -> dict:
    return shape(page="int", page_size="int", total="int", data=array(ref(name)))


def envelope(name: str | None = None) -> dict:
    """A write's answer (BaseHandler.success): the status, a message and the resource under data."""
    if name is None:
        return ref("Status")
    return shape(status=("success",), message="str", data=ref(name))


# --- operations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Q:
    """A query parameter, described by a validation field."""

    name: str
    field: Field
    description: str = ""


PAGE = tuple(Q(name, field) for name, field in PAGE_ARGS.items())


@dataclass(frozen=True)
class Op:
    summary: str
    role: str | None = "viewer"  # None: public
    body: dict[str, Field] | None = None  # the handler's spec
    partial: bool = False  # an update: any subset of the spec
    ok: int = 200
    response: dict | None = None  # the success body's schema
    media: str = JSON  # the success body's media type
    query: tuple[Q, ...] = ()
    errors: tuple[int, ...] = ()  # beyond those implied (auth, path ids, bodies)
    params: tuple[str, ...] = ("public_id",)  # names of the path's groups, in order
    description: str = ""
    upload: str | None = None  # a file upload: its media types, comma-separated
    redirect: bool = False  # answers 307
    id_schema: dict | None = None  # the path ids' schema, when they have a shape


# event id, time in microseconds, row id (webmacs.storage.datapoints.public_id)
DATAPOINT_ID = {"type": "string", "pattern": "^[0-9]+-[0-9]+-[0-9]+$", "examples": ["3-1767610800500000-42"]}
_ID_FILTER = tuple(Q(name, field, field.description or "") for name, field in datapoints.LIST_FILTERS.items())

# handler class -> method -> Op
OPERATIONS: dict[type, dict[str, Op]] = {
    # accounts
    auth.LoginHintHandler: {"get": Op("Whether any user exists (for the first start's login form)", role=None,
                                      response=ref("LoginHint"))},
    auth.LoginHandler: {"post": Op("Sign in with email and password; returns a JWT", role=None,
                                   body=auth.LOGIN_SPEC, response=ref("Login"), errors=(401, 503))},
    auth.LogoutHandler: {"post": Op("End the current login token (JWT only: API tokens are deleted instead)",
                                    response=envelope())},
    auth.MeHandler: {"get": Op("The signed-in user", response=ref("User"))},
    auth.UsersHandler: {
        "get": Op("List users", role="admin", query=PAGE, response=page_of("User")),
        "post": Op("Create a user", role="admin", body=auth.USER_SPEC, ok=201, response=envelope("User"),
                   errors=(409, 503)),
    },
    auth.UserHandler: {
        "get": Op("Get a user", role="admin", response=ref("User")),
        "put": Op("Update a user (a role or password change ends their sessions)", role="admin",
                  body=auth.USER_SPEC, partial=True, response=envelope("User"), errors=(409, 503)),
        "delete": Op("Delete a user (not yourself)", role="admin", response=envelope()),
    },
    auth.TokensHandler: {
        "get": Op("List API tokens (your own; every user's for an admin)", query=PAGE, response=page_of("ApiToken")),
        "post": Op("Create an API token for yourself", body=auth.TOKEN_SPEC, ok=201,
                   response=ref("ApiTokenCreated")),
    },
    auth.TokenHandler: {"delete": Op("Delete an API token", response=envelope())},
    auth.HealthHandler: {"get": Op("Liveness and database health (for probes; never rate limited)", role=None,
                                   response=ref("Health"))},
    # single sign-on
    sso.SsoConfigHandler: {"get": Op("Whether single sign-on is enabled", role=None, response=ref("SsoConfig"))},
    sso.SsoAuthorizeHandler: {"get": Op("Start a single sign-on: redirects to the identity provider", role=None,
                                        redirect=True, errors=(404, 502))},
    sso.SsoCallbackHandler: {"get": Op(
        "The identity provider's redirect back: redirects to the dashboard with a one-time code", role=None,
        redirect=True, errors=(401, 403, 404, 409, 502),
        query=(Q("code", Str(0, 2048)), Q("state", Str(0, 4096)), Q("error", Str(0, 2048)),
               Q("error_description", Str(0, 4096))))},
    sso.SsoExchangeHandler: {"post": Op("Trade the one-time single sign-on code for a JWT", role=None,
                                        body=sso.EXCHANGE_SPEC, response=ref("SsoToken"))},
    # datapoints
    datapoints.DatapointsHandler: {
        "get": Op("List datapoints, newest first", query=PAGE + _ID_FILTER, response=page_of("Datapoint")),
        "post": Op("Store one reading (its event must be linked to an enabled plugin instance)", role="operator",
                   body=datapoints.DATAPOINT_SPEC, ok=201, response=envelope("Datapoint"), errors=(404, 409, 503)),
    },
    datapoints.DatapointsBatchHandler: {"post": Op(
        "Store up to 500 readings at once; batch_id makes a resend harmless", role="operator",
        body=datapoints.BATCH_SPEC, ok=201, response=ref("BatchResult"), errors=(503,))},
    datapoints.LatestHandler: {"get": Op("The newest reading of every event", response=array(ref("Datapoint")))},
    datapoints.SeriesHandler: {"post": Op("Downsampled recent readings of up to 20 events (charts)",
                                          body=datapoints.SERIES_SPEC, response=ref("Series"))},
    datapoints.DatapointHandler: {
        "get": Op("Get a datapoint", response=ref("Datapoint"), id_schema=DATAPOINT_ID),
        "delete": Op("Delete a datapoint", role="operator", response=envelope(), id_schema=DATAPOINT_ID),
    },
    export.ExperimentCsvHandler: {"get": Op(
        "An experiment's readings as CSV (one column per event), streamed",
        description="Authenticated by the bearer token, or instead by `token`: a download token "
                    "from POST .../export/ticket (for a browser's plain navigation).",
        query=(Q("bom", Bool(default=False), "Put a UTF-8 byte order mark first (for spreadsheets)."),
               Q("token", Str(1, 4096), "A single-use download token (see .../export/ticket).")),
        media="text/csv", response={"type": "string", "examples": [
            csv_header().decode() + "2026-01-05T11:00:00.500000+00:00,Reactor temperature,"
            "8c1f4d2e-6b7a-4e59-9d03-2a5b7c9e1f40,21.5,°C,1-1767610800500000-42\n"]})},
    export.ExperimentCsvTicketHandler: {"post": Op(
        "A single-use CSV download URL for a browser, valid 60 s (no bearer token in the URL)",
        query=(Q("bom", Bool(default=False), "The URL's download starts with a UTF-8 byte order mark."),),
        ok=201, response={"type": "object", "required": ["url", "expires_in"], "additionalProperties": False,
                          "properties": {"url": {"type": "string"}, "expires_in": {"type": "integer"}},
                          "examples": [{"url": "/api/v1/experiments/8c1f4d2e-6b7a-4e59-9d03-2a5b7c9e1f40/export/csv"
                                               "?token=eyJhbGciOiJIUzI1NiJ9.e30.sig", "expires_in": 60}]})},
    # plugin packages
    packages.PackagesHandler: {"get": Op("Plugin packages: the bundled ones and the uploaded wheels",
                                         response=array(ref("PluginPackage")))},
    packages.PackageUploadHandler: {"post": Op(
        "Upload a plugin wheel (multipart field 'file') for controllers to install", role="admin", ok=201,
        upload="multipart/form-data", response=envelope("PluginPackage"), errors=(409, 413, 422))},
    packages.PackageDownloadHandler: {"get": Op("Download an uploaded wheel", role="operator",
                                                media="application/octet-stream", response={"type": "string"})},
    packages.PackageHandler: {"delete": Op("Uninstall an uploaded package", role="admin", response=envelope())},
    # events, experiments, plugin instances, channel mappings
    resources.EventsHandler: {
        "get": Op("List events", query=PAGE, response=page_of("Event")),
        "post": Op("Create an event", role="operator", body=resources.EVENT_SPEC, ok=201,
                   response=envelope("Event"), errors=(409,)),
    },
    resources.EventHandler: {
        "get": Op("Get an event", response=ref("Event")),
        "put": Op("Update an event", role="operator", body=resources.EVENT_SPEC, partial=True,
                  response=envelope("Event"), errors=(409,)),
        "delete": Op("Delete an event, its readings and its rules", role="operator", response=envelope()),
    },
    resources.ExperimentsHandler: {
        "get": Op("List experiments, newest first", query=PAGE, response=page_of("Experiment")),
        "post": Op("Start an experiment (one runs at a time)", role="operator", body=resources.EXPERIMENT_SPEC,
                   ok=201, response=envelope("Experiment"), errors=(409,)),
    },
    resources.ExperimentHandler: {
        "get": Op("Get an experiment", response=ref("Experiment")),
        "put": Op("Rename an experiment", role="operator", body=resources.EXPERIMENT_SPEC, partial=True,
                  response=envelope("Experiment")),
        "delete": Op("Delete an experiment and its readings", role="operator", response=envelope()),
    },
    resources.ExperimentStopHandler: {"put": Op("Stop a running experiment", role="operator",
                                                response=envelope("Experiment"), errors=(409,))},
    resources.PluginsAvailableHandler: {"get": Op("The plugins instances can be made of",
                                                  response=array(ref("Plugin")))},
    resources.PluginsHandler: {
        "get": Op("List plugin instances", query=PAGE, response=page_of("PluginInstance")),
        "post": Op("Create a plugin instance (with a mapping, and an event, per channel)", role="operator",
                   body=resources.INSTANCE_SPEC, ok=201, response=envelope("PluginInstance")),
    },
    resources.PluginHandler: {
        "get": Op("Get a plugin instance", response=ref("PluginInstance")),
        "put": Op("Update a plugin instance", role="operator", body=resources.INSTANCE_UPDATE_SPEC, partial=True,
                  response=envelope("PluginInstance")),
        "delete": Op("Delete a plugin instance and its mappings", role="operator", response=envelope()),
    },
    resources.ChannelsHandler: {
        "get": Op("A plugin instance's channel mappings", response=array(ref("ChannelMapping"))),
        "post": Op("Map a channel (optionally to an event)", role="operator", body=resources.MAPPING_SPEC, ok=201,
                   response=envelope("ChannelMapping"), errors=(409,)),
    },
    resources.ChannelHandler: {
        "get": Op("Get a channel mapping", response=ref("ChannelMapping"), params=("public_id", "mapping_id")),
        "put": Op("Update a channel mapping", role="operator", body=resources.MAPPING_UPDATE_SPEC, partial=True,
                  response=envelope("ChannelMapping"), params=("public_id", "mapping_id")),
        "delete": Op("Delete a channel mapping", role="operator", response=envelope(),
                     params=("public_id", "mapping_id")),
    },
    # webhooks, rules, log
    integrations.WebhooksHandler: {
        "get": Op("List webhooks", role="admin", query=PAGE, response=page_of("Webhook")),
        "post": Op("Create a webhook", role="admin", body=integrations.WEBHOOK_SPEC, ok=201,
                   response=envelope("Webhook"), errors=(409,)),
    },
    integrations.WebhookHandler: {
        "get": Op("Get a webhook", role="admin", response=ref("Webhook")),
        "put": Op("Update a webhook", role="admin", body=integrations.WEBHOOK_SPEC, partial=True,
                  response=envelope("Webhook"), errors=(409,)),
        "delete": Op("Delete a webhook and its delivery log", role="admin", response=envelope()),
    },
    integrations.WebhookDeliveriesHandler: {"get": Op(
        "A webhook's deliveries, newest first", role="admin", response=page_of("WebhookDelivery"),
        query=PAGE + (Q("status", Str(choices=DELIVERY_STATUSES)),))},
    integrations.RulesHandler: {
        "get": Op("List threshold rules", role="admin", query=PAGE, response=page_of("Rule")),
        "post": Op("Create a threshold rule", role="admin", body=integrations.RULE_SPEC, ok=201,
                   response=envelope("Rule")),
    },
    integrations.RuleHandler: {
        "get": Op("Get a rule", role="admin", response=ref("Rule")),
        "put": Op("Update a rule", role="admin", body=integrations.RULE_SPEC, partial=True, response=envelope("Rule")),
        "delete": Op("Delete a rule", role="admin", response=envelope()),
    },
    integrations.LogsHandler: {
        "get": Op("List log entries, newest first", response=page_of("LogEntry"),
                  query=PAGE + (Q("logging_type", Str(choices=LOGGING_TYPES)),
                                Q("status_type", Str(choices=STATUS_TYPES)))),
        "post": Op("Write a log entry", role="operator", body=integrations.LOG_SPEC, ok=201,
                   response=envelope("LogEntry")),
    },
    integrations.LogHandler: {
        "get": Op("Get a log entry", response=ref("LogEntry")),
        "put": Op("Mark a log entry read/unread or change its text", role="operator",
                  body=integrations.LOG_UPDATE_SPEC, partial=True, response=envelope("LogEntry")),
    },
    # dashboards
    dashboards.DashboardsHandler: {
        "get": Op("Your dashboards and every global one", query=PAGE, response=page_of("Dashboard")),
        "post": Op("Create a dashboard", role="operator", body=dashboards.DASHBOARD_SPEC, ok=201,
                   response=ref("Dashboard")),
    },
    dashboards.DashboardHandler: {
        "get": Op("Get a dashboard with its widgets", response=ref("Dashboard")),
        "put": Op("Update a dashboard (its owner only)", role="operator", body=dashboards.DASHBOARD_SPEC,
                  partial=True, response=envelope("Dashboard")),
        "delete": Op("Delete a dashboard and its widgets (its owner only)", role="operator", response=envelope()),
    },
    dashboards.WidgetsHandler: {"post": Op("Add a widget to a dashboard", role="operator", body=dashboards.WIDGET_SPEC,
                                           ok=201, response=ref("Widget"))},
    dashboards.WidgetHandler: {
        "put": Op("Update a widget", role="operator", body=dashboards.WIDGET_SPEC, partial=True,
                  response=envelope("Widget"), params=("public_id", "widget_id")),
        "delete": Op("Delete a widget", role="operator", response=envelope(), params=("public_id", "widget_id")),
    },
    # OTA
    ota.UpdatesHandler: {
        "get": Op("List firmware updates, newest first", role="admin", query=PAGE, response=page_of("FirmwareUpdate")),
        "post": Op("Register a firmware update", role="admin", body=ota.CREATE_SPEC, ok=201,
                   response=envelope("FirmwareUpdate"), errors=(409,)),
    },
    ota.CheckHandler: {"get": Op("Whether a newer firmware than the controller's is registered", role="admin",
                                 query=(Q("current_version", ota.CURRENT_VERSION, "The version the controller runs."),),
                                 response=ref("OtaCheck"))},
    ota.BundleUploadHandler: {"post": Op(
        "Upload a .tar.gz update bundle (multipart field 'file') for the device's updater", role="admin", ok=201,
        upload="multipart/form-data", response=envelope(), errors=(400, 409, 413, 422))},
    ota.ApplyHandler: {"post": Op("Apply an update: pending -> completed (its firmware file, if any, verified "
                                  "first: failed on a SHA-256 mismatch)", role="admin",
                                  response=envelope("FirmwareUpdate"), errors=(409, 422))},
    ota.DeployHandler: {"post": Op("Hand an update with a firmware file to the controller (pending -> downloading)",
                                   role="admin", response=envelope("FirmwareUpdate"), errors=(409,))},
    ota.RollbackHandler: {"post": Op("Roll a completed update back", role="admin",
                                     response=envelope("FirmwareUpdate"), errors=(409,))},
    ota.StatusHandler: {"put": Op("The controller's progress report", role="admin", body=ota.STATUS_SPEC,
                                  response=envelope("FirmwareUpdate"), errors=(409,))},
    ota.FirmwareHandler: {
        "get": Op("Download the firmware file", role="admin", media="application/octet-stream",
                  response={"type": "string"}),
        "post": Op("Upload the firmware file (raw body, or multipart field 'file')", role="admin", ok=201,
                   upload="application/octet-stream,multipart/form-data", response=envelope("FirmwareUpdate"),
                   errors=(409, 413, 415, 422)),
    },
    ota.UpdateHandler: {
        "get": Op("Get a firmware update", role="admin", response=ref("FirmwareUpdate")),
        "delete": Op("Delete a firmware update and its file", role="admin", response=envelope(), errors=(409,)),
    },
    # not under /api/v1
    dashboard.IndexHandler: {"get": Op("The dashboard web app", role=None, media="text/html",
                                       response={"type": "string"}),
                             "head": Op("The dashboard web app's headers", role=None, media=None)},
    metrics_handler.MetricsHandler: {"get": Op(
        "Prometheus metrics (bearer WEBMACS_METRICS_TOKEN; 404 when metrics are off)", role="metrics",
        media="text/plain", response={"type": "string"}, errors=(404,))},
}

WEBSOCKETS = {
    ws.TelemetryHandler: "Controllers push telemetry batches (role operator); see docs/websocket.md.",
    ws.StreamHandler: "Live readings for dashboards (any role); see docs/websocket.md.",
}

# the document's tags: one per handler module
TAGS = {"auth": "Accounts", "sso": "Single sign-on", "dashboard": "Web app", "datapoints": "Datapoints",
        "export": "CSV export", "packages": "Plugin packages", "resources": "Events, experiments and plugins",
        "integrations": "Webhooks, rules and log", "dashboards": "Dashboards", "ota": "OTA updates",
        "metrics": "Metrics", "openapi": "API description"}

ERRORS = {
    400: "Malformed request (body not JSON, NUL in a query parameter, ...)",
    401: "Missing, invalid, expired or revoked token",
    403: "The token's role is not enough (or not the owner)",
    404: "No such resource",
    409: "Conflicts with the current state (duplicate, already running, wrong status)",
    413: "Request body too large for this route",
    415: "Unsupported media type",
    422: "A field is invalid; detail starts with the field's name",
    429: "Rate limited; see Retry-After",
    502: "The identity provider failed",
    503: "Database or password hashing busy; retry",
}


# --- building the document ----------------------------------------------------------------

def routes() -> Iterator[tuple[str, str, type]]:
    """(module, pattern, handler) of every route, in table order."""
    for name in MODULES:
        for pattern, handler, *_ in importlib.import_module(name).default_handlers:
            yield name, pattern, handler


def handler_methods(handler: type) -> list[str]:
    if issubclass(handler, WebSocketHandler):
        return []
    return [m for m in HTTP_METHODS if getattr(handler, m) is not getattr(RequestHandler, m)]


def missing_operations() -> list[str]:
    """``"METHOD pattern"`` of every route method without an :class:`Op`."""
    missing = []
    for _module, pattern, handler in routes():
        if issubclass(handler, WebSocketHandler):
            if handler not in WEBSOCKETS:
                missing.append(f"WEBSOCKET {pattern}")
            continue
        missing += [f"{m.upper()} {pattern}" for m in handler_methods(handler) if m not in OPERATIONS.get(handler, {})]
    return missing


def path_template(pattern: str, names: tuple[str, ...]) -> str:
    groups = iter(names)
    path = re.sub(r"\(\[\^/\]\+\)", lambda _m: "{" + next(groups) + "}", pattern)
    return path.replace("\\.", ".")


def _param(q: Q) -> dict:
    schema = q.field.json_schema()
    out = {"name": q.name, "in": "query", "required": False, "schema": schema}
    if q.description:
        out["description"] = q.description
    return out


def _error(code: int) -> dict:
    return {"description": ERRORS[code], "content": {JSON: {"schema": ref("Error")}}}


def operation(handler: type, method: str, op: Op, module: str, path: str) -> dict:
    tag = TAGS.get(module.rsplit(".", 1)[-1], module.rsplit(".", 1)[-1])
    out: dict[str, Any] = {"operationId": f"{handler.__name__}.{method}", "summary": op.summary, "tags": [tag]}
    if op.description:
        out["description"] = op.description
    if op.role == "metrics":
        out["security"] = [{"metricsToken": []}, {}]
    elif op.role is None:
        out["security"] = []
    else:
        out["security"] = SECURITY
        out["x-webmacs-role"] = op.role
    names = re.findall(r"{(\w+)}", path)
    params = [{"name": n, "in": "path", "required": True,
               "schema": op.id_schema or {"type": "string", "minLength": 1}} for n in names]
    out["parameters"] = params + [_param(q) for q in op.query]
    codes = set(op.errors)
    if issubclass(handler, BaseHandler):
        codes |= {400, 429, 503}
        if op.role not in (None, "metrics"):
            codes.add(401)
        if op.role in ("operator", "admin"):
            codes.add(403)
        if names:
            codes.add(404)
        if op.body is not None or op.query:
            codes.add(422)
        if op.body is not None or op.upload:
            codes.add(413)
    if op.role == "metrics":
        codes.add(401)
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": spec_schema(op.body, partial=op.partial)}}}
    elif op.upload:
        out["requestBody"] = {"required": True, "content": {
            media: {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                               "required": ["file"]} if media.startswith("multipart")
                    else {"type": "string", "format": "binary"}} for media in op.upload.split(",")}}
    responses: dict[str, Any] = {}
    if op.redirect:
        responses["307"] = {"description": "Redirect (Location header)"}
    else:
        ok: dict[str, Any] = {"description": op.summary}
        if op.media is not None and op.response is not None:
            ok["content"] = {op.media: {"schema": op.response}}
        responses[str(op.ok)] = ok
    for code in sorted(codes):
        responses[str(code)] = _error(code)
    out["responses"] = responses
    return out


def _add_links(paths: dict) -> None:
    """OpenAPI links from each create to the operations on what it created (schemathesis's
    stateful phase follows them: create, then read, change and delete that resource)."""
    for path, item in paths.items():
        post = item.get("post")
        created = post and post["responses"].get("201", {}).get("content", {}).get(JSON, {}).get("schema")
        if not created:
            continue
        pointer = "/data/public_id" if "data" in created.get("properties", {}) else "/public_id"
        for sub, sub_item in paths.items():
            m = re.fullmatch(re.escape(path) + r"/\{(\w+)\}(/.*)?", sub)
            if not m:
                continue
            for method, target in sub_item.items():
                if not isinstance(target, dict) or "operationId" not in target:
                    continue
                values = {n: f"$request.path.{n}" for n in re.findall(r"{(\w+)}", path)}
                values[m.group(1)] = f"$response.body#{pointer}"
                post["responses"]["201"].setdefault("links", {})[target["operationId"].replace(".", "_")] = {
                    "operationId": target["operationId"], "parameters": values}


def build() -> dict:
    """The OpenAPI 3.1 document; ValueError if a route has no operation description."""
    missing = missing_operations()
    if missing:
        raise ValueError("routes without an operation description in webmacs/openapi.py: " + ", ".join(missing))
    paths: dict[str, dict] = {}
    sockets = []
    for module, pattern, handler in routes():
        if issubclass(handler, WebSocketHandler):
            sockets.append({"path": pattern, "description": WEBSOCKETS[handler]})
            continue
        ops = OPERATIONS[handler]
        for method in handler_methods(handler):
            op = ops[method]
            path = path_template(pattern, op.params)
            paths.setdefault(path, {})[method] = operation(handler, method, op, module, path)
    _add_links(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "WebMACS", "version": __version__, "description":
                 "Lab telemetry server. Every error answers {\"detail\": \"...\"}; every write answers "
                 "{\"status\": \"success\", \"message\": ..., \"data\": <resource>} unless its response says "
                 "otherwise. Every /api/v1 path also answers with one trailing slash."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "The access_token of POST /api/v1/auth/login (or of single sign-on)."},
                "apiToken": {"type": "http", "scheme": "bearer",
                             "description": "An API token made with POST /api/v1/tokens (for controllers and "
                                            "scripts; revoked by deleting it)."},
                "metricsToken": {"type": "http", "scheme": "bearer",
                                 "description": "WEBMACS_METRICS_TOKEN (GET /metrics only)."},
            },
        },
        "x-webmacs-websockets": sockets,
    }


def document_json() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


class OpenApiHandler(BaseHandler):
    """``GET /api/v1/openapi.json``: public, like the contract's own description."""

    _cached: bytes | None = None

    async def get(self) -> None:
        if OpenApiHandler._cached is None:
            OpenApiHandler._cached = json.dumps(build()).encode()
        self.finish(OpenApiHandler._cached)


OPERATIONS[OpenApiHandler] = {"get": Op("This document (OpenAPI 3.1)", role=None, response={"type": "object"})}

# listed in webmacs.handlers.MODULES like a handler module
default_handlers = [(r"/api/v1/openapi\.json", OpenApiHandler)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webmacs.openapi",
                                     description="Print the OpenAPI document (or docs/rest.md made from it).")
    parser.add_argument("--markdown", action="store_true", help="print docs/rest.md instead of the JSON")
    args = parser.parse_args(argv)
    if args.markdown:
        from webmacs.restdoc import markdown

        sys.stdout.write(markdown(build()))
    else:
        sys.stdout.write(document_json())
    return 0


if __name__ == "__main__":  # run through the imported module: its handler class is the one routed
    from webmacs import openapi

    raise SystemExit(openapi.main())
