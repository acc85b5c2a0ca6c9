"""Several server processes on one database: delivery claims and the sensor.reading throttle.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

``webhook_deliveries.claimed_by`` / ``claimed_until``: the process attempting a
pending delivery and until when (a lease it renews). ``sensor_reading_throttle``:
when each event's last ``sensor.reading`` webhook went out, shared by every process.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "sensor_reading_throttle",
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE",
                                name="fk_sensor_reading_throttle_event_id_events"),
        sa.PrimaryKeyConstraint("event_id", name="pk_sensor_reading_throttle"),
    )


def downgrade() -> None:
    op.drop_table("sensor_reading_throttle")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
