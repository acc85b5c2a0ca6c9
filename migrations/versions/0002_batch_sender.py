"""Telemetry batch ids are unique per sender (user or API token), not across all senders.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Two controllers that both number their batches from "1" no longer collide: the
idempotency row is keyed by ``(sender, batch_id)``, ``sender`` being
``token:<id>`` for an API token and ``user:<id>`` for a login token. Rows from
before this revision get the sender ``""`` (they match no one; they only served
to de-duplicate resends for 48 hours). Downgrading empties the table, as the
narrower key cannot hold ids that now repeat across senders.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ingest_batches", recreate="always") as batch:
        batch.add_column(sa.Column("sender", sa.String(length=48), nullable=False, server_default=""))
        batch.drop_constraint("pk_ingest_batches", type_="primary")
        batch.create_primary_key("pk_ingest_batches", ["sender", "batch_id"])
    with op.batch_alter_table("ingest_batches") as batch:
        batch.alter_column("sender", server_default=None)


def downgrade() -> None:
    op.execute("DELETE FROM ingest_batches")
    with op.batch_alter_table("ingest_batches", recreate="always") as batch:
        batch.drop_constraint("pk_ingest_batches", type_="primary")
        batch.drop_column("sender")
        batch.create_primary_key("pk_ingest_batches", ["batch_id"])
