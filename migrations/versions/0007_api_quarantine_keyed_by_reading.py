"""meter-API quarantined rows keyed by the reading (meter, time, code)

Meter-API pulls resume from the meter that lags most, so a pull sends again readings an
earlier pull already quarantined; under a new batch each was quarantined (and counted) again.
A quarantined row of a pull now carries ``reading_key``, a digest of its meter id and time as
sent; with the code it is unique, and a pull skips the readings already quarantined. Rows
recorded before this revision, and every row from a file, keep a NULL key (NULLs never
collide in a unique constraint).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 16:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('quarantined_rows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reading_key', sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_quarantined_rows_kind_source_reading_key_code'),
                                          ['kind', 'source', 'reading_key', 'code'])


def downgrade() -> None:
    with op.batch_alter_table('quarantined_rows', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_quarantined_rows_kind_source_reading_key_code'), type_='unique')
        batch_op.drop_column('reading_key')
