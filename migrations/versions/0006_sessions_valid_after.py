"""A password or role change ends the user's sessions: users.sessions_valid_after.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Login tokens (JWTs) issued before ``sessions_valid_after`` are refused. NULL (every
existing user) ends nothing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("sessions_valid_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sessions_valid_after")
