"""validation runs keyed by content (digest)

Every validation of a hand-over added a row, so re-running a flow for the same inputs grew
``validation_runs``. A run now carries a digest of what was validated and how it came out;
the same digest again is the same run and is not stored twice. Runs recorded before this
revision keep a NULL digest (NULLs never collide in a unique constraint).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('validation_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('digest', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_validation_runs_digest'), ['digest'])


def downgrade() -> None:
    with op.batch_alter_table('validation_runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_validation_runs_digest'), type_='unique')
        batch_op.drop_column('digest')
