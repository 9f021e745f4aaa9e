"""mediation cases hold the findings that joined them

A dispute or domestic-violence finding made while its household's case is open joins that
case: ``mediation_cases.flag_ids`` lists the findings a case holds, and its ``cues`` gain the
joining finding's kind (a mediator handling a quarrel must learn of violence found since).
Cases opened before this revision keep NULL: only their ``source_flag_id`` is known, and the
other findings they were opened with are recorded as joining at the next run (their kinds are
already among the cues, so the cues do not change).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 23:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mediation_cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('flag_ids', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mediation_cases', schema=None) as batch_op:
        batch_op.drop_column('flag_ids')
