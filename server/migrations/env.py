"""Alembic environment: runs migrations on the connection the server hands over
(`config.attributes["connection"]`), or on the database of the current
settings when invoked from the `alembic` command with server/alembic.ini."""

from alembic import context
from sqlalchemy import create_engine

from cast.server.models import Base

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from cast.server.settings import Settings

    with create_engine(Settings().sqlalchemy_url).begin() as own_connection:
        _run(own_connection)
