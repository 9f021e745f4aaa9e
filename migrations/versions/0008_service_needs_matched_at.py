"""service needs keep when they were matched

A report re-made later for a past period must show the needs matched by that period's end,
not those matched since: ``service_needs.matched_at`` is set where a need is matched (the end
of the matching run's day, a replay's included). Needs matched before this revision keep a
NULL time: when they were matched is unknown, and the report counts them matched as the
reports of that version did (no guess is written into them).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 21:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('service_needs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('matched_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('service_needs', schema=None) as batch_op:
        batch_op.drop_column('matched_at')
