"""code bundles per owner: keyed by (owner, client key), stored by the digest
of their content.

A client's key hashes its HEAD sha and diff, so another user could claim it
first with other code; now a key only names a bundle among its owner's.
Bundles stored before this revision keep their file, named by the key, which
becomes their digest.

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_COLUMNS = ('owner_id', 'key', 'size', 'created_at')


def _bundles(name: str, *extra: sa.Column) -> sa.Table:
    return sa.table(name, *(sa.column(column) for column in _COLUMNS), *extra)


def upgrade() -> None:
    op.create_table('code_bundles_by_owner',
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('owner_id', 'key')
    )
    old = _bundles('code_bundles')
    new = _bundles('code_bundles_by_owner', sa.column('digest'))
    op.execute(new.insert().from_select(
        [*_COLUMNS, 'digest'], sa.select(*(old.c[column] for column in _COLUMNS), old.c.key)))
    op.drop_table('code_bundles')
    op.rename_table('code_bundles_by_owner', 'code_bundles')
    op.create_index('ix_code_bundles_digest', 'code_bundles', ['digest'])


def downgrade() -> None:
    op.create_table('code_bundles_by_key',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('key')
    )
    # The old table named files by key: only bundles whose file is still
    # named so (stored before 0002) can go back.
    new = _bundles('code_bundles', sa.column('digest'))
    old = _bundles('code_bundles_by_key')
    op.execute(old.insert().from_select(
        list(_COLUMNS), sa.select(*(new.c[column] for column in _COLUMNS)).where(new.c.digest == new.c.key)))
    op.drop_index('ix_code_bundles_digest', table_name='code_bundles')
    op.drop_table('code_bundles')
    op.rename_table('code_bundles_by_key', 'code_bundles')
