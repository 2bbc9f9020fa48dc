"""workers say whether their runs are sandboxed

A multi-user server leases to an unsandboxed worker only where its operator
allowed it (CAST_ALLOW_UNSANDBOXED_WORKERS). Workers registered before this
revision are taken as unsandboxed until they register again.

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not a batch: SQLite would rebuild `workers`, and dropping the old table
    # sets every run's worker_id to NULL (ON DELETE SET NULL).
    op.add_column('workers', sa.Column('sandboxed', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # Not a batch: a batch drop copies `workers` and drops the old table, which
    # (ON DELETE SET NULL) would forget the worker of every run. SQLite (3.35+)
    # drops the column in place.
    op.drop_column('workers', 'sandboxed')
