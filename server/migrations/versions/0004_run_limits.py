"""runs record the isolation and limits their command ran under

The worker reports them with the `running` status; `cast info` shows them.
Runs that started before this revision have none.

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Not a batch, as in 0003: a rebuilt `runs` would cascade into its children.
    op.add_column('runs', sa.Column('limits', sa.Text(), nullable=True))


def downgrade() -> None:
    # Not a batch: a batch drop copies `runs` and drops the old table, and with
    # foreign keys on that deletes every run's transitions, labels and outputs
    # (ON DELETE CASCADE). SQLite (3.35+) drops the column in place.
    op.drop_column('runs', 'limits')
