"""Connections to Postgres and Redis, bundled for the api (tests swap in fakes)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

import asyncpg
from arq.connections import ArqRedis

from intric.db import CONNECT_TIMEOUT_S, make_engine
from intric.jobs import PROCESS_JOB, JobStore, PgJobStore
from intric.settings import Settings

T = TypeVar("T")


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # mark as retrieved: no "exception was never retrieved" noise


async def within(aw: Awaitable[T], timeout: float) -> T:
    """Await `aw` for at most `timeout` seconds, then raise TimeoutError.

    Unlike asyncio.wait_for, this does not wait for the cancelled operation to finish its
    cleanup: a half-open connection (e.g. a paused/partitioned server) can block a graceful
    close for minutes, and a healthcheck must not hang with it.
    """
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task in done:
        return task.result()
    task.cancel()
    task.add_done_callback(_consume)
    raise TimeoutError(f"no answer within {timeout}s")


def make_redis(settings: Settings) -> ArqRedis:
    """Lazy arq/redis client with short timeouts (connects on first command)."""
    return ArqRedis(
        host=settings.redis_host,
        port=settings.redis_port,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CONNECT_TIMEOUT_S,
    )


class Services:
    """Interface used by the routes."""

    store: JobStore

    async def ping_postgres(self) -> None: ...
    async def ping_redis(self) -> None: ...
    async def enqueue(self, job_id: str) -> None: ...
    async def aclose(self) -> None: ...


class RealServices(Services):
    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = make_engine(settings)
        self.redis = make_redis(settings)
        self.store = PgJobStore(self.engine)

    async def _select_1(self) -> None:
        # a fresh connection, closed with terminate() (no graceful handshake that could hang)
        s = self.settings
        conn = await asyncpg.connect(
            host=s.postgres_host,
            port=s.postgres_port,
            user=s.postgres_user,
            password=s.postgres_password.get_secret_value(),
            database=s.postgres_db,
            timeout=CONNECT_TIMEOUT_S,
        )
        try:
            await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
        finally:
            conn.terminate()

    async def ping_postgres(self) -> None:
        await within(self._select_1(), CONNECT_TIMEOUT_S)

    async def ping_redis(self) -> None:
        await within(self.redis.ping(), CONNECT_TIMEOUT_S)

    async def enqueue(self, job_id: str) -> None:
        job = await within(
            self.redis.enqueue_job(PROCESS_JOB, job_id, _job_id=f"job-{job_id}"),
            CONNECT_TIMEOUT_S,
        )
        if job is None:  # arq returns None when a job with that id already exists
            raise RuntimeError(f"job {job_id} already enqueued")

    async def aclose(self) -> None:
        await within(self.redis.aclose(), CONNECT_TIMEOUT_S)
        await within(self.engine.dispose(), CONNECT_TIMEOUT_S)
