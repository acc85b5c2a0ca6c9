"""Custom dashboards with widgets, and OTA firmware update records.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# timestamptz on PostgreSQL, naive UTC text on SQLite (as webmacs.models.UTCDateTime)
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dashboards",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("public_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("is_global", sa.Boolean(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dashboards"),
        sa.UniqueConstraint("public_id", name="uq_dashboards_public_id"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL",
                                name="fk_dashboards_user_id_users"),
    )
    op.create_index("ix_dashboards_user_id", "dashboards", ["user_id"])
    op.create_table(
        "dashboard_widgets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("public_id", sa.String(36), nullable=False),
        sa.Column("dashboard_id", sa.Integer(), nullable=False),
        sa.Column("widget_type", sa.String(32), nullable=False),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("w", sa.Integer(), nullable=False),
        sa.Column("h", sa.Integer(), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=True),
        sa.Column("created_on", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dashboard_widgets"),
        sa.UniqueConstraint("public_id", name="uq_dashboard_widgets_public_id"),
        sa.ForeignKeyConstraint(["dashboard_id"], ["dashboards.id"], ondelete="CASCADE",
                                name="fk_dashboard_widgets_dashboard_id_dashboards"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="SET NULL",
                                name="fk_dashboard_widgets_event_id_events"),
    )
    op.create_index("ix_dashboard_widgets_dashboard_id", "dashboard_widgets", ["dashboard_id"])
    op.create_table(
        "firmware_updates",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("public_id", sa.String(36), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("changelog", sa.Text(), nullable=True),
        sa.Column("file_name", sa.String(255), nullable=True),
        sa.Column("file_hash_sha256", sa.String(64), nullable=True),
        sa.Column("file_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_on", _TIME, nullable=False),
        sa.Column("started_on", _TIME, nullable=True),
        sa.Column("completed_on", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_updates"),
        sa.UniqueConstraint("public_id", name="uq_firmware_updates_public_id"),
        sa.UniqueConstraint("version", name="uq_firmware_updates_version"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL",
                                name="fk_firmware_updates_user_id_users"),
    )


def downgrade() -> None:
    op.drop_table("firmware_updates")
    op.drop_index("ix_dashboard_widgets_dashboard_id", table_name="dashboard_widgets")
    op.drop_table("dashboard_widgets")
    op.drop_index("ix_dashboards_user_id", table_name="dashboards")
    op.drop_table("dashboards")
