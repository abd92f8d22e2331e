"""A start whose database is at the migrations' head already does not load Alembic: the head read from the
scripts must be the one Alembic finds, and a database below it must still be upgraded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from proxy.database import MIGRATIONS, at_head, head_revision, migrate, open_engine

ROOT = Path(__file__).resolve().parents[2]


def test_the_head_read_from_the_scripts_is_alembics() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert [head_revision()] == ScriptDirectory.from_config(config).get_heads()


async def test_a_database_below_head_is_upgraded_and_one_at_head_is_left_alone(tmp_path: Path) -> None:
    engine = open_engine(sa.engine.URL.create("sqlite+aiosqlite", database=str(tmp_path / "ledger.db")))
    try:
        async with engine.connect() as connection:
            assert not await connection.run_sync(at_head)  # empty: no alembic_version table
        await migrate(engine)
        async with engine.begin() as connection:
            assert await connection.run_sync(at_head)
            await connection.execute(sa.text("UPDATE alembic_version SET version_num = '0005'"))
            await connection.execute(sa.text("DROP TABLE webhook_deliveries"))
            assert not await connection.run_sync(at_head)
        await migrate(engine)  # below head: Alembic runs 0006 again
        async with engine.connect() as connection:
            assert await connection.run_sync(at_head)
            assert await connection.run_sync(lambda sync: sa.inspect(sync).has_table("webhook_deliveries"))
    finally:
        await engine.dispose()


def test_a_migrated_database_is_opened_without_importing_alembic(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    script = (
        "import asyncio, sys\n"
        "from proxy.database import migrate, open_engine\n"
        "from sqlalchemy.engine import make_url\n"
        "async def main():\n"
        f"    engine = open_engine(make_url({url!r}))\n"
        "    await migrate(engine)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True) for _ in "12"]
    assert [run.stdout.strip() for run in runs] == ["True", "False"]  # the first start migrates; the second has no need
