"""sessions.version: bumped by every write to a session or its messages

A process keeps a session's hot state (the session and its messages) in memory
between turns; the version tells it whether another process wrote since (see
gateway/store/hot.py).

Revision ID: 20261202_session_version
Revises: 20261202_tenants
Create Date: 2026-12-02 13:10:00

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "20261202_session_version"
down_revision: Union[str, Sequence[str], None] = "20261202_tenants"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("version")
