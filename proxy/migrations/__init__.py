"""Shell layer: the ledger's Alembic migrations, applied at start-up by `proxy.database.migrate`."""
