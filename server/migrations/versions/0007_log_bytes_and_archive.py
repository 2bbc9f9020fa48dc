"""logs counted in bytes, and a finished run's log archived to the object store

- `runs.log_bytes`: bytes of the run's own output stored so far (stdout and
  stderr, not the worker's `cast` lines): the per-run cap counts these.
- `runs.log_archive`: the object store key of the run's log once archived as
  NDJSON (its chunks are then dropped from the database); NULL while the log
  lives in `log_chunks`.

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain add_column, never a batch on `runs`: rebuilding it on SQLite would
    # cascade into every table that references it.
    op.add_column('runs', sa.Column('log_bytes', sa.BigInteger(), nullable=False, server_default='0'))
    op.add_column('runs', sa.Column('log_archive', sa.Text(), nullable=True))


def downgrade() -> None:
    # Below 0007 an archived log has no rows and no key: dropping the column
    # would lose those logs, so the way down stops while any run has one.
    archived = op.get_bind().execute(sa.text("SELECT count(*) FROM runs WHERE log_archive IS NOT NULL")).scalar_one()
    if archived:
        raise RuntimeError(f"cannot downgrade below 0007: the logs of {archived} run(s) are archived "
                           "(runs.log_archive) and a database before 0007 cannot name them; delete those runs first")
    op.drop_column('runs', 'log_archive')
    op.drop_column('runs', 'log_bytes')
