"""Single sign-on: users without a password, the linked SSO identity, single-use codes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# timestamptz on PostgreSQL, naive UTC text on SQLite (as webmacs.models.UTCDateTime)
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column("password_hash", existing_type=sa.String(255), nullable=True)
        batch.add_column(sa.Column("sso_provider", sa.String(255), nullable=True))
        batch.add_column(sa.Column("sso_subject_id", sa.String(255), nullable=True))
        batch.create_unique_constraint("uq_users_sso_identity", ["sso_provider", "sso_subject_id"])
    op.create_table(
        "sso_codes",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("created_on", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name="pk_sso_codes"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name="fk_sso_codes_user_id_users"),
    )
    op.create_index("ix_sso_codes_expires_at", "sso_codes", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sso_codes_expires_at", table_name="sso_codes")
    op.drop_table("sso_codes")
    # SSO-only users have no password and cannot be kept by a NOT NULL column.
    op.execute("DELETE FROM users WHERE password_hash IS NULL")
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_sso_identity", type_="unique")
        batch.drop_column("sso_subject_id")
        batch.drop_column("sso_provider")
        batch.alter_column("password_hash", existing_type=sa.String(255), nullable=False)
