"""logs stored in chunks: a row per run of lines of one stream, not per line

- `log_chunks(run_id, first_offset, count, time, stream, lines)`: `lines` is a
  JSON array of the chunk's lines, numbered from `first_offset`.
- `log_entries` is moved into it (one chunk per old entry, so every old line
  keeps its offset and time) and dropped; the way down expands chunks back.

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _postgresql() -> bool:
    return op.get_bind().dialect.name == 'postgresql'


def upgrade() -> None:
    op.create_table('log_chunks',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('first_offset', sa.Integer(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('stream', sa.String(length=8), nullable=False),
    sa.Column('lines', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'first_offset')
    )
    # JSON functions differ by database; the rows they build are the same.
    as_array = 'json_build_array(text)::text' if _postgresql() else 'json_array(text)'
    op.execute('INSERT INTO log_chunks (run_id, first_offset, count, time, stream, lines) '
               f'SELECT run_id, "offset", 1, time, stream, {as_array} FROM log_entries')
    op.drop_table('log_entries')


def downgrade() -> None:
    op.create_table('log_entries',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('offset', sa.Integer(), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('stream', sa.String(length=8), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'offset')
    )
    if _postgresql():  # WITH ORDINALITY counts from 1, json_each's key from 0
        op.execute('INSERT INTO log_entries (run_id, "offset", time, stream, text) '
                   'SELECT c.run_id, c.first_offset + line.n - 1, c.time, c.stream, line.value '
                   'FROM log_chunks AS c, json_array_elements_text(c.lines::json) WITH ORDINALITY AS line(value, n)')
    else:
        op.execute('INSERT INTO log_entries (run_id, "offset", time, stream, text) '
                   'SELECT c.run_id, c.first_offset + line.key, c.time, c.stream, line.value '
                   'FROM log_chunks AS c, json_each(c.lines) AS line')
    op.drop_table('log_chunks')
