"""Uploaded plugin packages; one mapping per channel and plugin instance.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)  # timestamptz on PostgreSQL, naive UTC text on SQLite
_UNIQUE_CHANNEL = "ux_channel_mappings_instance_channel"


def upgrade() -> None:
    op.create_table(
        "plugin_packages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("public_id", sa.String(36), nullable=False),
        sa.Column("package_name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("plugin_ids", sa.Text(), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("file_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("installed_on", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plugin_packages"),
        sa.UniqueConstraint("public_id", name="uq_plugin_packages_public_id"),
        sa.UniqueConstraint("package_name", name="uq_plugin_packages_package_name"),
        sa.UniqueConstraint("sha256", name="uq_plugin_packages_sha256"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL", name="fk_plugin_packages_user_id_users"),
    )
    # keep the oldest of any duplicate mappings made before this rule
    op.execute("DELETE FROM channel_mappings WHERE id NOT IN ("
               " SELECT MIN(id) FROM channel_mappings GROUP BY instance_id, channel_id)")
    op.create_index(_UNIQUE_CHANNEL, "channel_mappings", ["instance_id", "channel_id"], unique=True)


def downgrade() -> None:
    op.drop_index(_UNIQUE_CHANNEL, table_name="channel_mappings")
    op.drop_table("plugin_packages")
