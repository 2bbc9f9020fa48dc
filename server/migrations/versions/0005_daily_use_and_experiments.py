"""what deletion, reuse, sign-in links, metrics and hyperparameter searches keep

- `runs.deleted_at`, `uploads.deleted_at`: the stored data was freed; the record
  (status, lineage, manifest sizes) stays.
- `runs.reuse_key`: the hash of everything that decides a run's result (command,
  environment, code, mounted contents); `--idempotent` looks runs up by it.
- `tokens.expires_at`: one-time sign-in links for the viewer expire.
- `metric_points` and `runs.metrics_size`/`runs.worker_metric_seq`: metrics,
  numbered per run like log entries, with the worker's batch `seq` for dedup.
- `searches` and `search_trials`: hyperparameter searches and their runs.

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain add_column, never a batch: a rebuilt `runs` would cascade into its children.
    op.add_column('runs', sa.Column('deleted_at', sa.DateTime(), nullable=True))
    op.add_column('runs', sa.Column('reuse_key', sa.String(length=64), nullable=True))
    op.add_column('runs', sa.Column('metrics_size', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('runs', sa.Column('worker_metric_seq', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_runs_reuse_key', 'runs', ['reuse_key'], unique=False)
    op.add_column('uploads', sa.Column('deleted_at', sa.DateTime(), nullable=True))
    op.add_column('tokens', sa.Column('expires_at', sa.DateTime(), nullable=True))
    op.create_table('metric_points',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('offset', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=True),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'offset')
    )
    op.create_index('ix_metric_points_run_name', 'metric_points', ['run_id', 'name', 'offset'], unique=False)
    op.create_table('searches',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_index('ix_searches_status', 'searches', ['status'], unique=False)
    op.create_table('search_trials',
    sa.Column('search_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['search_id'], ['searches.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('search_id', 'number')
    )
    op.create_index('ix_search_trials_run_id', 'search_trials', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_search_trials_run_id', table_name='search_trials')
    op.drop_table('search_trials')
    op.drop_index('ix_searches_status', table_name='searches')
    op.drop_table('searches')
    op.drop_index('ix_metric_points_run_name', table_name='metric_points')
    op.drop_table('metric_points')
    # Not a batch (see 0004): SQLite 3.35+ drops a column in place.
    op.drop_column('tokens', 'expires_at')
    op.drop_column('uploads', 'deleted_at')
    op.drop_index('ix_runs_reuse_key', table_name='runs')
    op.drop_column('runs', 'worker_metric_seq')
    op.drop_column('runs', 'metrics_size')
    op.drop_column('runs', 'reuse_key')
    op.drop_column('runs', 'deleted_at')
