"""The ingest queue's committed position: ingest_queue_state.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

One row per server-side ingest queue (``queue_id``, kept in the queue directory).
``committed_seq`` is the highest queue record whose rows are in ``datapoints``; the
writer updates it in the same transaction as the rows, so replaying the queue after
a crash skips exactly what was committed (see webmacs/storage/queue.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_queue_state",
        sa.Column("queue_id", sa.String(64), primary_key=True),
        sa.Column("committed_seq", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ingest_queue_state")
