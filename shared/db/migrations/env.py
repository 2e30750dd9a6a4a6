"""Alembic environment: runs on the connection handed over by ``shared.db.migrator.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from shared.db.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # plain `alembic` command line: the URL comes from the config
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)
