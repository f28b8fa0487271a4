"""outbox.claimed_by: which instance has a part's send in flight (several instances)

Revision ID: 20261202_outbox_claimed_by
Revises: 20261202_turn_leases
Create Date: 2026-12-02 14:20:00

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "20261202_outbox_claimed_by"
down_revision: Union[str, Sequence[str], None] = "20261202_turn_leases"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
