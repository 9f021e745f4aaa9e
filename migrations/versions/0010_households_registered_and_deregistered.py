"""households keep when they were registered and removed

A family that moved away (迁出) or whose elderly member died (去世) is taken off the register:
``households.deregistered_at`` and ``deregistered_reason`` (moved_away, deceased, other), set
and cleared by the households import. ``registered_at`` is when the family was first imported;
rows from before this revision take their ``updated_at``, which the import sets at the first
insert only (an upsert never updates it), so it is that same moment. Rows without one keep
NULL: on the register since before anything was recorded.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 23:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('households', schema=None) as batch_op:
        batch_op.add_column(sa.Column('registered_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('deregistered_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('deregistered_reason', sa.String(length=16), nullable=True))
    op.execute("UPDATE households SET registered_at = updated_at WHERE registered_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table('households', schema=None) as batch_op:
        batch_op.drop_column('deregistered_reason')
        batch_op.drop_column('deregistered_at')
        batch_op.drop_column('registered_at')
