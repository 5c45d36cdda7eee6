"""Initialise the database: `python init_db.py` (from the directory holding alembic.ini).

1. `alembic upgrade head` (programmatically; the URL comes from the POSTGRES_* variables)
2. idempotent seed: tenant `default`, inserted only where missing.
Running it twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from intric.db import tenants  # noqa: E402
from intric.settings import get_settings  # noqa: E402

DEFAULT_TENANTS = ("default",)


def alembic_config() -> Config:
    return Config(str(HERE / "alembic.ini"))


async def current_revision(engine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def seed(engine) -> list[str]:
    created = []
    async with engine.begin() as conn:
        for name in DEFAULT_TENANTS:
            stmt = (
                insert(tenants)
                .values(id=uuid.uuid4(), name=name)
                .on_conflict_do_nothing(index_elements=["name"])
                .returning(tenants.c.id)
            )
            if (await conn.execute(stmt)).first() is not None:
                created.append(name)
    return created


def main() -> int:
    settings = get_settings()  # exits(2) with one message on bad configuration
    engine = create_async_engine(settings.database_url(), poolclass=NullPool, connect_args={"timeout": 10})
    cfg = alembic_config()
    head = ScriptDirectory.from_config(cfg).get_current_head()

    before = asyncio.run(current_revision(engine))
    if before == head:
        print(f"migrations: already at head ({head})", flush=True)
    else:
        command.upgrade(cfg, "head")
        print(f"migrations: upgraded {before or 'empty database'} -> {head}", flush=True)

    created = asyncio.run(seed(engine))
    for name in created:
        print(f"seeded tenant {name}", flush=True)
    if not created:
        print("seed already present", flush=True)
    asyncio.run(engine.dispose())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, sa.exc.SQLAlchemyError, asyncio.TimeoutError) as exc:
        print(f"error: database initialisation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
