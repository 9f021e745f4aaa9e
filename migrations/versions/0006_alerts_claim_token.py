"""alerts carry the token of the claim sending them

A dispatcher whose lease ran out while it was still sending must not record (nor overwrite)
the attempt of the dispatcher that claimed the alert after it. Each claim writes its own token;
only the holder of the current token records the attempt. Alerts queued before this revision
keep a NULL token (no claim in progress).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 23:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_token', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_column('claim_token')
