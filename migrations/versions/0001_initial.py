"""Initial schema, with the datapoints hypertable when TimescaleDB is available.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import logging

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.webmacs")

# Frozen: this revision spells out every table as it stood when it was written and
# never reads the live models (a later model change must not alter what a fresh
# install gets from 0001). Times are timezone-aware (timestamptz on PostgreSQL,
# naive UTC text on SQLite; webmacs.models.UTCDateTime reads and writes them).
TIME = sa.DateTime(timezone=True)

# In creation order (foreign keys point backwards); dropped in reverse.
TABLES = [
    "ingest_batches",
    "revoked_tokens",
    "users",
    "api_tokens",
    "events",
    "experiments",
    "log_entries",
    "plugin_instances",
    "webhooks",
    "channel_mappings",
    "rules",
    "webhook_deliveries",
]


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "ingest_batches",
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("created_on", TIME, nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_ingest_batches")),
    )
    op.create_index(
        op.f("ix_ingest_batches_created_on"),
        "ingest_batches",
        ["created_on"],
        unique=False,
    )
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("revoked_on", TIME, nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_revoked_tokens")),
    )
    op.create_index(
        op.f("ix_revoked_tokens_expires_at"),
        "revoked_tokens",
        ["expires_at"],
        unique=False,
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=50), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_on", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("public_id", name=op.f("uq_users_public_id")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
        sa.Column("last_used_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_api_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("public_id", name=op.f("uq_api_tokens_public_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("unit", sa.String(length=255), nullable=True),
        sa.Column("min_value", sa.Float(), nullable=True),
        sa.Column("max_value", sa.Float(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_events_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("name", name=op.f("uq_events_name")),
        sa.UniqueConstraint("public_id", name=op.f("uq_events_public_id")),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("started_on", TIME, nullable=True),
        sa.Column("stopped_on", TIME, nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_experiments_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("public_id", name=op.f("uq_experiments_public_id")),
    )
    op.create_table(
        "log_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("logging_type", sa.String(length=16), nullable=False),
        sa.Column("status_type", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_log_entries_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_entries")),
        sa.UniqueConstraint("public_id", name=op.f("uq_log_entries_public_id")),
    )
    op.create_table(
        "plugin_instances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("plugin_id", sa.String(length=100), nullable=False),
        sa.Column("instance_name", sa.String(length=255), nullable=False),
        sa.Column("demo_mode", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.Column("updated_on", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_plugin_instances_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugin_instances")),
        sa.UniqueConstraint("public_id", name=op.f("uq_plugin_instances_public_id")),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("secret", sa.String(length=255), nullable=True),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_webhooks_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
        sa.UniqueConstraint("public_id", name=op.f("uq_webhooks_public_id")),
        sa.UniqueConstraint("url", name=op.f("uq_webhooks_url")),
    )
    op.create_table(
        "channel_mappings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("channel_id", sa.String(length=100), nullable=False),
        sa.Column("channel_name", sa.String(length=255), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("unit", sa.String(length=50), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_channel_mappings_event_id_events"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["plugin_instances.id"],
            name=op.f("fk_channel_mappings_instance_id_plugin_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_mappings")),
        sa.UniqueConstraint("public_id", name=op.f("uq_channel_mappings_public_id")),
    )
    op.create_index(
        op.f("ix_channel_mappings_instance_id"),
        "channel_mappings",
        ["instance_id"],
        unique=False,
    )
    op.create_table(
        "rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("operator", sa.String(length=16), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("threshold_high", sa.Float(), nullable=True),
        sa.Column("action_type", sa.String(length=16), nullable=False),
        sa.Column("webhook_event_type", sa.String(length=64), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("cooldown_seconds", sa.Integer(), nullable=False),
        sa.Column("last_triggered_at", TIME, nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_rules_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_rules_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rules")),
        sa.UniqueConstraint("public_id", name=op.f("uq_rules_public_id")),
    )
    op.create_index(op.f("ix_rules_event_id"), "rules", ["event_id"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=36), nullable=False),
        sa.Column("webhook_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("response_code", sa.Integer(), nullable=True),
        sa.Column("next_attempt_at", TIME, nullable=True),
        sa.Column("created_on", TIME, nullable=False),
        sa.Column("delivered_on", TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("public_id", name=op.f("uq_webhook_deliveries_public_id")),
    )
    op.create_index(
        "ix_webhook_deliveries_status", "webhook_deliveries", ["status"], unique=False
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_created",
        "webhook_deliveries",
        ["webhook_id", "created_on"],
        unique=False,
    )
    # ### end Alembic commands ###
    if bind.dialect.name == "postgresql":
        _datapoints_postgresql(bind)
    else:
        op.execute(
            "CREATE TABLE datapoints ("
            " id INTEGER PRIMARY KEY,"
            " time DATETIME NOT NULL,"
            " value FLOAT NOT NULL,"
            " event_id INTEGER NOT NULL,"
            " experiment_id INTEGER)"
        )
        op.execute(
            "CREATE INDEX ix_datapoints_event_time ON datapoints (event_id, time)"
        )
        op.execute("CREATE INDEX ix_datapoints_time ON datapoints (time)")


def _datapoints_postgresql(bind) -> None:
    # Narrow row (id 8 + time 8 + value 8 + event 4 + experiment 4 bytes, in that
    # order so no alignment padding is needed) and no primary key: a hypertable's
    # unique indexes must include the time column and the identity already makes
    # ids unique. One index, (event_id, time), serves "latest per event" (a
    # backward scan), "event X between A and B" and id lookups. Ascending on
    # purpose: readings arrive in time order per event, so each new entry goes
    # right after the previous one and nbtree's fill-factor split keeps leaf
    # pages ~90% full; a DESC index puts each new entry *before* the previous
    # one and splits pages 50/50 (measured: 56 vs 32 bytes per row).
    op.execute(
        "CREATE TABLE datapoints ("
        " id bigint GENERATED BY DEFAULT AS IDENTITY,"
        " time timestamptz NOT NULL,"
        " value double precision NOT NULL,"
        " event_id integer NOT NULL,"
        " experiment_id integer)"
    )
    op.execute("CREATE INDEX ix_datapoints_event_time ON datapoints (event_id, time)")
    has_ts = bind.execute(
        sa.text(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
    ).scalar()
    if has_ts:
        installed = bind.execute(
            sa.text("SELECT count(*) FROM pg_extension WHERE extname='timescaledb'")
        ).scalar()
        if not installed:
            op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        hours = int(context.config.attributes.get("chunk_interval_hours", 24))
        # No default time index: (event_id, time) covers the queries we serve and
        # each index costs bytes on every row.
        bind.execute(
            sa.text(
                "SELECT create_hypertable('datapoints', 'time', "
                "chunk_time_interval => make_interval(hours => :h), create_default_indexes => false)"
            ),
            {"h": hours},
        )
    else:
        log.warning(
            "TimescaleDB is not available: datapoints is a plain PostgreSQL table"
        )
        op.execute("CREATE INDEX ix_datapoints_time ON datapoints (time)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS datapoints")
    for name in reversed(TABLES):
        op.drop_table(name)
