"""tenants: agents.tenant, contacts per tenant, scoped API keys

Revision ID: 20261202_tenants
Revises: 20261202_pricing
Create Date: 2026-12-02 07:30:00

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = "20261202_tenants"
down_revision: Union[str, Sequence[str], None] = "20261202_pricing"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_agents_tenant"), ["tenant"], unique=False)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agents", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("read_only", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("admin", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("last_used_at", sa.BigInteger(), nullable=True))

    # Every existing contact belongs to the operator: no agent had a tenant before.
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=64), server_default="", nullable=False))
        batch_op.drop_constraint("uq_contacts_channel_address", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_contacts_tenant_channel_address"), ["tenant", "channel", "address"]
        )


def downgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_contacts_tenant_channel_address"), type_="unique")
        batch_op.create_unique_constraint("uq_contacts_channel_address", ["channel", "address"])
        batch_op.drop_column("tenant")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("admin")
        batch_op.drop_column("read_only")
        batch_op.drop_column("agents")

    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agents_tenant"))
        batch_op.drop_column("tenant")
