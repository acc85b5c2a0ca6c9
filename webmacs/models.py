"""SQLAlchemy 2 models.

Every resource has an integer primary key for joins and a ``public_id`` (UUID
string) that is the only id the API shows. Datapoints are the exception: they
are a narrow Core table (no ORM objects on the hot path), see ``datapoints``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("viewer", "operator", "admin")
ROLE_LEVEL = {name: level for level, name in enumerate(ROLES, start=1)}
EVENT_TYPES = ("sensor", "actuator", "range", "cmd_button", "cmd_opened", "cmd_closed")
WEBHOOK_EVENT_TYPES = (
    "sensor.threshold_exceeded",
    "sensor.reading",
    "experiment.started",
    "experiment.stopped",
    "system.health_changed",
)
RULE_OPERATORS = ("gt", "lt", "gte", "lte", "eq", "between", "not_between")
RULE_ACTIONS = ("webhook", "log")
LOGGING_TYPES = ("error", "warning", "info")
STATUS_TYPES = ("read", "unread")
DELIVERY_STATUSES = ("pending", "delivered", "failed", "dead_letter")
CHANNEL_DIRECTIONS = ("input", "output", "bidirectional")
WIDGET_TYPES = ("line_chart", "gauge", "stat_card", "actuator_toggle")
UPDATE_STATUSES = ("pending", "downloading", "verifying", "applying", "completed", "failed", "rolled_back")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_public_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text. Values
    always come back aware (UTC), so the API never emits a naive time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def _pk() -> Mapped[int]:
    return mapped_column(Integer, primary_key=True, autoincrement=True)


def _public_id() -> Mapped[str]:
    return mapped_column(String(36), unique=True, nullable=False, default=new_public_id)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), nullable=False, default=utcnow)


def _owner() -> Mapped[int | None]:
    return mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    email: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    username: Mapped[str] = mapped_column(String(50), unique=True, nullable=False)
    # NULL for a user created by single sign-on: password login is refused until
    # an admin sets a password.
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default="viewer")
    created_on: Mapped[datetime] = _created()
    # The SSO identity linked to this user: the IdP's issuer and its ``sub``.
    sso_provider: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sso_subject_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Login tokens issued before this time are refused: set when the password or the
    # role changes (webmacs.accounts.end_sessions).
    sessions_valid_after: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    __table_args__ = (UniqueConstraint("sso_provider", "sso_subject_id", name="uq_users_sso_identity"),)


class SsoCode(Base):
    """Single-use SSO values, by their SHA-256: ``login`` codes (60 s, exchanged
    once for a JWT) and ``state`` ids (inserted once when a callback uses them, so
    a replayed state fails on the primary key, on every server process)."""

    __tablename__ = "sso_codes"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    created_on: Mapped[datetime] = _created()


class RevokedToken(Base):
    """A logged-out JWT, by its ``jti``; kept until the token would expire."""

    __tablename__ = "revoked_tokens"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    revoked_on: Mapped[datetime] = _created()


class ApiToken(Base):
    """A long-lived ``wm_`` token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = _created()


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False, default="sensor")
    unit: Mapped[str | None] = mapped_column(String(255), nullable=True)
    min_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    user_id: Mapped[int | None] = _owner()
    created_on: Mapped[datetime] = _created()


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    started_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stopped_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    user_id: Mapped[int | None] = _owner()
    created_on: Mapped[datetime] = _created()


class PluginInstance(Base):
    __tablename__ = "plugin_instances"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    plugin_id: Mapped[str] = mapped_column(String(100), nullable=False)
    instance_name: Mapped[str] = mapped_column(String(255), nullable=False)
    demo_mode: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="inactive")
    config_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    user_id: Mapped[int | None] = _owner()
    created_on: Mapped[datetime] = _created()
    updated_on: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow)


class ChannelMapping(Base):
    __tablename__ = "channel_mappings"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("plugin_instances.id", ondelete="CASCADE"), nullable=False, index=True
    )
    channel_id: Mapped[str] = mapped_column(String(100), nullable=False)
    channel_name: Mapped[str] = mapped_column(String(255), nullable=False)
    direction: Mapped[str] = mapped_column(String(16), nullable=False, default="input")
    unit: Mapped[str] = mapped_column(String(50), nullable=False, default="")
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"), nullable=True)
    created_on: Mapped[datetime] = _created()

    __table_args__ = (Index("ux_channel_mappings_instance_channel", "instance_id", "channel_id", unique=True),)


class PluginPackage(Base):
    """An uploaded plugin wheel, kept in WEBMACS_PLUGIN_PACKAGES_DIR for controllers to install."""

    __tablename__ = "plugin_packages"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    package_name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)  # normalised name
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    plugin_ids: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON list
    file_name: Mapped[str] = mapped_column(String(255), nullable=False)
    file_size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    user_id: Mapped[int | None] = _owner()
    installed_on: Mapped[datetime] = _created()


class LogEntry(Base):
    __tablename__ = "log_entries"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    content: Mapped[str] = mapped_column(Text, nullable=False)
    logging_type: Mapped[str] = mapped_column(String(16), nullable=False, default="info")
    status_type: Mapped[str] = mapped_column(String(16), nullable=False, default="unread")
    user_id: Mapped[int | None] = _owner()
    created_on: Mapped[datetime] = _created()


class Rule(Base):
    __tablename__ = "rules"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), nullable=False, index=True)
    operator: Mapped[str] = mapped_column(String(16), nullable=False)
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    threshold_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    action_type: Mapped[str] = mapped_column(String(16), nullable=False)
    webhook_event_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    cooldown_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=60)
    last_triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    user_id: Mapped[int | None] = _owner()
    created_on: Mapped[datetime] = _created()


class Webhook(Base):
    __tablename__ = "webhooks"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    url: Mapped[str] = mapped_column(String(2048), unique=True, nullable=False)
    secret: Mapped[str | None] = mapped_column(String(255), nullable=True)
    events: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON list
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    user_id: Mapped[int | None] = _owner()
    created_on: Mapped[datetime] = _created()


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_on: Mapped[datetime] = _created()
    delivered_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The server process attempting a pending delivery, until claimed_until (renewed while it
    # holds it): of several processes on one database exactly one attempts each delivery.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_on"),
        Index("ix_webhook_deliveries_status", "status"),
    )


class SensorReadingThrottle(Base):
    """When the last ``sensor.reading`` webhook of an event was sent, cluster-wide: a
    process sends one only if it moves ``sent_at`` forward by the throttle (atomically)."""

    __tablename__ = "sensor_reading_throttle"
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class IngestBatch(Base):
    """A committed telemetry ``batch_id``; makes replays idempotent (kept 48 h, see
    ``webmacs.services.BATCH_ID_RETENTION``)."""

    __tablename__ = "ingest_batches"
    # who sent it: "token:<api token id>" or "user:<user id>" (batch ids are per sender)
    sender: Mapped[str] = mapped_column(String(48), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    accepted: Mapped[int] = mapped_column(Integer, nullable=False)
    rejected: Mapped[int] = mapped_column(Integer, nullable=False)
    created_on: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)


class IngestQueueState(Base):
    """How far the writer got: the highest ingest queue record (``committed_seq``) whose
    rows are committed, updated in the same transaction as them (webmacs/storage/queue.py)."""

    __tablename__ = "ingest_queue_state"
    queue_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    committed_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Dashboard(Base):
    """A custom dashboard: its owner's, or everyone's when ``is_global``."""

    __tablename__ = "dashboards"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    is_global: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True,
                                                index=True)
    created_on: Mapped[datetime] = _created()


class DashboardWidget(Base):
    """A widget on a dashboard; deleting the dashboard deletes it. Deleting the
    event it shows sets ``event_id`` to NULL (the widget stays, unbound)."""

    __tablename__ = "dashboard_widgets"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    dashboard_id: Mapped[int] = mapped_column(ForeignKey("dashboards.id", ondelete="CASCADE"), nullable=False,
                                              index=True)
    widget_type: Mapped[str] = mapped_column(String(32), nullable=False)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id", ondelete="SET NULL"), nullable=True)
    x: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    y: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    w: Mapped[int] = mapped_column(Integer, nullable=False, default=4)
    h: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    config_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_on: Mapped[datetime] = _created()


class FirmwareUpdate(Base):
    """An OTA update record; the optional firmware file lives in the OTA storage
    directory under ``file_name`` (never in the database)."""

    __tablename__ = "firmware_updates"
    id: Mapped[int] = _pk()
    public_id: Mapped[str] = _public_id()
    version: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    changelog: Mapped[str | None] = mapped_column(Text, nullable=True)
    file_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    file_hash_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    file_size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    user_id: Mapped[int | None] = _owner()
    created_on: Mapped[datetime] = _created()
    started_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


# The hot table. One narrow row per reading: time, event, value, experiment and
# a bigint id (identity on PostgreSQL, rowid on SQLite). No UUID per row: the
# API's datapoint public_id is derived from (event, time, id), see
# webmacs.storage.datapoints.public_id, and served by the (event_id, time) index.
datapoints = Table(
    "datapoints",
    Base.metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("value", Float, nullable=False),
    Column("event_id", Integer, nullable=False),
    Column("experiment_id", Integer, nullable=True),
)
