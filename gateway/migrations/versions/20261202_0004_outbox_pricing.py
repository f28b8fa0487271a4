"""outbox: per-message pricing of sent WhatsApp messages (issue 16)

Revision ID: 20261202_pricing
Revises: 0003
Create Date: 2026-12-02 07:30:00

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "20261202_pricing"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pricing_category", sa.String(length=48), nullable=True))
        batch_op.add_column(sa.Column("pricing_type", sa.String(length=48), nullable=True))
        batch_op.add_column(sa.Column("pricing_billable", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("pricing", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("pricing")
        batch_op.drop_column("pricing_billable")
        batch_op.drop_column("pricing_type")
        batch_op.drop_column("pricing_category")
