"""visits remember when they were recorded

``visits.recorded_at``: when the visit sheet was first stored (the import sets it on insert only;
a re-import keeps it). The risk stage reads the danger cues of sheets recorded in its window
whatever their visit date: county offices batch paper sheets weeks after the visit. Rows from
before this revision keep NULL: they were read by the visit date when they came in.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 00:05:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('visits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recorded_at', sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_visits_recorded_at'), ['recorded_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('visits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_visits_recorded_at'))
        batch_op.drop_column('recorded_at')
