"""Alembic's environment for the ledger: run on the connection `proxy.database.migrate` hands over.

There is no alembic.ini and no command line: the proxy applies its migrations itself at start-up, on
whichever database `server.database` names (SQLite or PostgreSQL).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

# Any constant will do: replicas starting together take turns instead of racing to create the table.
_MIGRATION_LOCK = 0x1A6E_6A7E


def run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError("the ledger's migrations are applied by proxy.database.migrate, on its connection")
run(_connection)
