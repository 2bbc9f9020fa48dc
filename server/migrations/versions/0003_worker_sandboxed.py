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
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('sandboxed', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('sandboxed')
