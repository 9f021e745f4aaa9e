"""quarantined rows keyed by batch (file digest / reading batch id)

Two files of the same name, or two meter-API pulls, quarantined rows under one key
(kind, source, line, field, code) and overwrote each other. The batch joins the key.

Downgrade: once two batches hold the same old key, the old unique constraint cannot be
re-created over them. Of each such group only the newest row (highest id) is kept; the older
batches' rows for that line, field and code are deleted. Rows whose line or field is NULL
never collided under the old key and are all kept.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('quarantined_rows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch', sa.String(length=64), server_default='', nullable=False))
        batch_op.drop_constraint('uq_quarantined_rows_kind_source_line_field_code', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_quarantined_rows_kind_source_batch_line_field_code'),
                                          ['kind', 'source', 'batch', 'line', 'field', 'code'])


def downgrade() -> None:
    # Plain "=" as the constraint compares: NULL lines or fields are never duplicates.
    op.execute(sa.text(
        "DELETE FROM quarantined_rows WHERE EXISTS (SELECT 1 FROM quarantined_rows newer"
        " WHERE newer.kind = quarantined_rows.kind AND newer.source = quarantined_rows.source"
        " AND newer.line = quarantined_rows.line AND newer.field = quarantined_rows.field"
        " AND newer.code = quarantined_rows.code AND newer.id > quarantined_rows.id)"))
    with op.batch_alter_table('quarantined_rows', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_quarantined_rows_kind_source_batch_line_field_code'), type_='unique')
        batch_op.create_unique_constraint('uq_quarantined_rows_kind_source_line_field_code',
                                          ['kind', 'source', 'line', 'field', 'code'])
        batch_op.drop_column('batch')
