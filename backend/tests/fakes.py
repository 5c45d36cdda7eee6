from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from intric.services import Services


class FakeStore:
    def __init__(self):
        self.rows: dict[uuid.UUID, dict[str, Any]] = {}

    async def create(self, text: str) -> dict[str, Any]:
        row = {"id": uuid.uuid4(), "text": text, "status": "queued", "result": None,
               "created_at": datetime.now(timezone.utc), "completed_at": None}
        self.rows[row["id"]] = row
        return dict(row)

    async def get(self, job_id):
        row = self.rows.get(job_id)
        return dict(row) if row else None

    async def complete(self, job_id, result) -> bool:
        if job_id not in self.rows:
            return False
        self.rows[job_id].update(status="done", result=result, completed_at=datetime.now(timezone.utc))
        return True

    async def fail(self, job_id, reason) -> None:
        self.rows[job_id].update(status="failed", result={"error": reason},
                                 completed_at=datetime.now(timezone.utc))


class FakeServices(Services):
    def __init__(self, settings=None):
        self.store = FakeStore()
        self.postgres_ok = True
        self.redis_ok = True
        self.queue: list[str] = []
        self.closed = False

    async def ping_postgres(self):
        if not self.postgres_ok:
            raise ConnectionRefusedError("postgres down")

    async def ping_redis(self):
        if not self.redis_ok:
            raise ConnectionRefusedError("redis down")

    async def enqueue(self, job_id: str):
        if not self.redis_ok:
            raise ConnectionRefusedError("redis down")
        self.queue.append(job_id)

    async def aclose(self):
        self.closed = True
