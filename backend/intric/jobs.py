"""Jobs: the pure processing step and the Postgres-backed store used by api and worker."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from intric.db import jobs

log = logging.getLogger("intric.worker")

PROCESS_JOB = "process_job"  # arq function name


def compute_result(text: str) -> dict[str, Any]:
    """What the worker does with a job's text (upper-cased, reversed, word count)."""
    return {
        "upper": text.upper(),
        "reversed": text[::-1],
        "word_count": len(text.split()),
    }


def job_to_json(row: dict[str, Any]) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": str(row["id"]),
        "text": row["text"],
        "status": row["status"],
        "result": row["result"],
        "created_at": iso(row["created_at"]),
        "completed_at": iso(row["completed_at"]),
    }


class JobStore(Protocol):
    async def create(self, text: str) -> dict[str, Any]: ...
    async def get(self, job_id: uuid.UUID) -> dict[str, Any] | None: ...
    async def complete(self, job_id: uuid.UUID, result: dict[str, Any]) -> bool: ...
    async def fail(self, job_id: uuid.UUID, reason: str) -> None: ...


class PgJobStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def create(self, text: str) -> dict[str, Any]:
        stmt = (
            sa.insert(jobs)
            .values(id=uuid.uuid4(), text=text, status="queued")
            .returning(*jobs.c)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).mappings().one()
        return dict(row)

    async def get(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).mappings().first()
        return dict(row) if row is not None else None

    async def complete(self, job_id: uuid.UUID, result: dict[str, Any]) -> bool:
        stmt = (
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(status="done", result=result, completed_at=sa.func.now())
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    async def fail(self, job_id: uuid.UUID, reason: str) -> None:
        stmt = (
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(status="failed", result={"error": reason}, completed_at=sa.func.now())
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)


async def process_job(ctx: dict[str, Any], job_id: str) -> dict[str, Any] | None:
    """The arq task (ctx["store"] is a JobStore, set up in intric.worker.startup)."""
    store: JobStore = ctx["store"]
    jid = uuid.UUID(job_id)
    row = await store.get(jid)
    if row is None:
        log.warning("job %s: not found", job_id)
        return None
    if row["status"] == "done":
        log.info("job %s: already done", job_id)
        return row["result"]
    result = compute_result(row["text"])
    await store.complete(jid, result)
    log.info("job %s: done (%d words)", job_id, result["word_count"])
    return result
