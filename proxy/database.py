"""Shell layer: the ledger's database (also where async tasks live without Redis): where it is, its engine,
its schema and its migrations.

`server.database` names it (proxy.core.rules); absent, it is an SQLite file `imagegate.db` beside the
image store's directory, made on first start with nothing to install. PostgreSQL (the `postgres`
extra, asyncpg) is for replicas that share one ledger. The schema is Alembic's (proxy/migrations),
upgraded to its head at every start; a URL is logged only with its password hidden.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from proxy.core.rules import Rules
from proxy.image_store import FileImageStore, ImageStore, default_directory

log = logging.getLogger("imagegate.ledger")
# Alembic narrates every start at INFO ("Context impl SQLiteImpl."); start-up prints nothing before the banner.
logging.getLogger("alembic").setLevel(logging.WARNING)
MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_FILE = "imagegate.db"
CONNECT_TIMEOUT = 5.0  # seconds: a database that is down must not hold start-up or the writer for long

metadata = sa.MetaData()
# The table as proxy/migrations/versions leaves it at head (tests/shell/test_ledger.py compares the two).
GENERATIONS = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    *(sa.Column(name, sa.Text(), nullable=False) for name in ("request_id", "key_name", "operation", "mode")),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("images", sa.Integer(), nullable=False),
    sa.Column("total_ms", sa.Float(), nullable=False),
    sa.Column("upstream_ms", sa.Float(), nullable=False),
    *(sa.Column(name, sa.Text()) for name in ("model", "rule", "upstream_model", "channel")),
    sa.Column("attempts", sa.Integer()),
    sa.Column("n", sa.Integer()),
    *(sa.Column(name, sa.Text()) for name in ("size", "quality", "output_format", "error_type", "error_code")),
    *(sa.Column(name, sa.BigInteger()) for name in ("input_tokens", "output_tokens", "total_tokens", "cost_micro_usd")),
    *(sa.Column(name, sa.Text()) for name in ("task_id", "idempotency_key", "prompt", "prompt_sha256")),
    sa.Column("image_ids", sa.Text()),
    sa.Column("images_expire_at", sa.DateTime(timezone=True)),
)
# Async task records (proxy.task_table), as revisions 0002, 0003 and 0005 make them (indexes on expires_at,
# status and created are the migrations' alone: none is declared here).
TASKS = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("owner", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("created", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.Column("body", sa.Text()),
    sa.Column("error", sa.Text()),
    sa.Column("error_status", sa.Integer()),
    sa.Column("lease_until", sa.Float(), nullable=False, server_default="0"),
    sa.Column("checkpoint", sa.Text()),
)

# Webhook deliveries (proxy.webhooks), as revision 0006 makes them (its indexes are the migration's alone).
WEBHOOK_DELIVERIES = sa.Table(
    "webhook_deliveries",
    metadata,
    *(sa.Column(name, sa.Text(), nullable=False, primary_key=name == "id") for name in ("id", "task_id", "url", "body")),
    sa.Column("secret_set", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_status", sa.Integer()),
    *(sa.Column(name, sa.Float(), nullable=False) for name in ("next_at", "created", "deadline")),
)


class RowInsert:
    """An INSERT of many rows into a table, compiled once for one dialect: the driver's own SQL, and the value
    conversions that the column types ask of that driver (SQLite keeps times as text, for one).

    SQLAlchemy's `execute(table.insert(), mappings)` builds each row's parameters in Python on the event loop,
    about 15 us a row; here a row is a sequence of values in `columns` order, converted only where the type
    asks, and a batch is one `executemany` of the driver.
    """

    def __init__(self, table: sa.Table, columns: Sequence[str], dialect: Dialect) -> None:
        # inline(): no RETURNING of the new ids (PostgreSQL would add one), as with any executemany.
        compiled = table.insert().inline().compile(dialect=dialect, column_keys=list(columns))
        if compiled.positiontup is None:  # aiosqlite and asyncpg, the drivers `database_url` names, bind by position
            raise ValueError(f"a driver that binds parameters by position is needed, not {dialect.driver}")
        self.sql = str(compiled)
        self._slots = [(list(columns).index(name), table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                       for name in compiled.positiontup]

    def parameters(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """One row's parameters, in the statement's order, as the driver takes them."""
        return tuple([values[index] if convert is None else convert(values[index]) for index, convert in self._slots])

    async def execute(self, connection: AsyncConnection, rows: Sequence[Sequence[Any]]) -> None:
        await connection.exec_driver_sql(self.sql, [self.parameters(values) for values in rows])


def default_path(rules: Rules, store: ImageStore | None) -> Path:
    """`imagegate.db` beside the image store's directory (the directory the store really uses, when it has one)."""
    if isinstance(store, FileImageStore):
        return store.directory.parent / DEFAULT_FILE
    directory = Path(rules.server.images.path) if rules.server.images.path else default_directory()
    return directory.parent / DEFAULT_FILE


def database_url(rules: Rules, store: ImageStore | None) -> URL:
    """The async driver's URL for `server.database`: aiosqlite for SQLite, asyncpg for PostgreSQL."""
    written = rules.server.database
    if not written:
        return URL.create("sqlite+aiosqlite", database=str(default_path(rules, store)))
    if written.startswith("sqlite:///"):
        return URL.create("sqlite+aiosqlite", database=written.removeprefix("sqlite:///"))
    return make_url(written).set(drivername="postgresql+asyncpg")


def shown(url: URL) -> str:
    """The URL as logs may show it: the password hidden."""
    return url.render_as_string(hide_password=True)


def open_engine(url: URL) -> AsyncEngine:
    """An engine; nothing connects yet (a database that is down is found by `migrate` and the writer)."""
    if url.get_backend_name() == "sqlite":
        if url.database:
            try:
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create the ledger's directory for %s: %s", url.database, exc)
        # `timeout`: how long SQLite waits for another process's write lock before giving up.
        engine = create_async_engine(url, connect_args={"timeout": CONNECT_TIMEOUT})
        sa.event.listen(engine.sync_engine, "connect", _write_ahead_log)
        return engine
    # pool_pre_ping: connections left over from before a database restart are replaced, not failed on.
    return create_async_engine(url, pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT, "command_timeout": 30})


def _write_ahead_log(connection: Any, _: object) -> None:
    """SQLite in WAL mode: readers (usage reports, task polls) go on while a worker writes, and a commit
    costs one sync of the log instead of a rollback journal's several. The mode stays with the file."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


# `revision: str = "0006"` and `down_revision: str | None = "0005"` (or None) in each migration script.
_REVISION_LINE = re.compile(r'^(down_)?revision\b[^=\n]*=\s*(?:"([^"\n]*)"|None)', re.MULTILINE)


def head_revision() -> str | None:
    """The migrations' head as their scripts name it: the revision no script's `down_revision` points at
    (None when there is not exactly one: then Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("r*.py"):
        for down, name in _REVISION_LINE.findall(script.read_text(encoding="utf-8")):
            if name:
                (parents if down else revisions).add(name)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def at_head(connection: Connection) -> bool:
    """Whether the database's schema is at the migrations' head already (read without Alembic)."""
    head = head_revision()
    if head is None or not sa.inspect(connection).has_table("alembic_version"):
        return False
    return list(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()) == [head]


def _upgrade(connection: Connection) -> None:
    # Alembic, with the Mako and Pygments it imports, is about 10 MB in every process that imports it; most
    # starts find the schema at head already and need none of it.
    if at_head(connection):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to Alembic's head (a no-op when it is there already); raises when the database fails."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
