"""initial schema: users and tokens, workers, runs with transitions, labels,
mounts and logs, output manifests, uploads and code bundles.

Revision ID: 0001
Revises: 
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('workers',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('executor', sa.String(length=32), nullable=False),
    sa.Column('cpus', sa.Integer(), nullable=False),
    sa.Column('memory', sa.BigInteger(), nullable=False),
    sa.Column('gpus', sa.JSON(), nullable=False),
    sa.Column('max_runs', sa.Integer(), nullable=False),
    sa.Column('registered_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('code_bundles',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=False),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('worker_id', sa.String(length=40), nullable=True),
    sa.Column('worker_name', sa.String(length=200), nullable=True),
    sa.Column('executor', sa.String(length=32), nullable=True),
    sa.Column('lease_token', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('log_size', sa.Integer(), nullable=False),
    sa.Column('worker_log_seq', sa.Integer(), nullable=False),
    sa.Column('worker_log_lines', sa.Integer(), nullable=False),
    sa.Column('log_truncated', sa.Boolean(), nullable=False),
    sa.Column('outputs_size', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['worker_id'], ['workers.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_lease_expires_at'), ['lease_expires_at'], unique=False)
        batch_op.create_index('ix_runs_owner_id', ['owner_id', 'id'], unique=False)
        batch_op.create_index('ix_runs_status_gpus_id', ['status', 'gpus', 'id'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('uploads',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('files', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('log_entries',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('offset', sa.Integer(), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('stream', sa.String(length=8), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'offset')
    )
    op.create_table('output_files',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'path')
    )
    op.create_table('run_labels',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'label')
    )
    with op.batch_alter_table('run_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_labels_label'), ['label'], unique=False)

    op.create_table('run_mounts',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('resource', sa.Text(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('source_run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['source_run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('run_id', 'position')
    )
    with op.batch_alter_table('run_mounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_mounts_source_run_id'), ['source_run_id'], unique=False)

    op.create_table('run_transitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('run_transitions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_transitions_run_id'), ['run_id'], unique=False)

    op.create_table('upload_files',
    sa.Column('upload_name', sa.String(length=200), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['upload_name'], ['uploads.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('upload_name', 'path')
    )


def downgrade() -> None:
    op.drop_table('upload_files')
    with op.batch_alter_table('run_transitions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_transitions_run_id'))

    op.drop_table('run_transitions')
    with op.batch_alter_table('run_mounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_mounts_source_run_id'))

    op.drop_table('run_mounts')
    with op.batch_alter_table('run_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_labels_label'))

    op.drop_table('run_labels')
    op.drop_table('output_files')
    op.drop_table('log_entries')
    op.drop_table('uploads')
    op.drop_table('tokens')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_status_gpus_id')
        batch_op.drop_index('ix_runs_owner_id')
        batch_op.drop_index(batch_op.f('ix_runs_lease_expires_at'))

    op.drop_table('runs')
    op.drop_table('code_bundles')
    op.drop_table('workers')
    op.drop_table('users')
