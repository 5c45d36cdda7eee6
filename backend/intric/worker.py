"""arq worker: `arq intric.worker.WorkerSettings`.

Healthcheck: `arq --check intric.worker.WorkerSettings` (exit 0 while the worker's health key,
refreshed every HEALTH_CHECK_INTERVAL seconds, exists in redis).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from arq.connections import RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from intric.db import make_engine
from intric.jobs import PgJobStore, process_job
from intric.logs import configure_logging
from intric.settings import get_settings

log = logging.getLogger("intric.worker")

HEALTH_CHECK_INTERVAL = 10  # seconds; the key expires after interval + 1
CHECK_DEADLINE = 5  # seconds `arq --check` may take before it reports failure itself
CHECKING = "--check" in sys.argv


async def startup(ctx: dict[str, Any]) -> None:
    ctx["engine"] = make_engine(settings)
    ctx["store"] = PgJobStore(ctx["engine"])


async def shutdown(ctx: dict[str, Any]) -> None:
    if "engine" in ctx:
        await ctx["engine"].dispose()


settings = get_settings()
configure_logging(settings.loglevel)


def _check_timed_out(signum, frame):  # pragma: no cover - exercised in the container
    print(f"health check failed: no answer from redis within {CHECK_DEADLINE}s", file=sys.stderr, flush=True)
    os._exit(1)


if CHECKING:
    # arq's pool has no socket read timeout: against a hung redis `arq --check` would block
    # until the container runtime kills it. Give it a deadline of its own instead.
    signal.signal(signal.SIGALRM, _check_timed_out)
    signal.alarm(CHECK_DEADLINE)


def _redis_settings(checking: bool) -> RedisSettings:
    if checking:
        # `arq --check` is a healthcheck: one quick attempt, no retries
        return RedisSettings(host=settings.redis_host, port=settings.redis_port, conn_timeout=2,
                             conn_retries=0)
    # the worker waits ~30 s for redis at startup and rides out a short redis restart
    # (~30 s of retries per command) before exiting; the container's restart policy does the rest
    return RedisSettings(
        host=settings.redis_host,
        port=settings.redis_port,
        conn_timeout=2,
        conn_retries=15,
        conn_retry_delay=2,
        retry=Retry(ExponentialBackoff(cap=5, base=0.5), retries=8),
        # OSError: DNS failure / connection refused while redis restarts
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
    )


class WorkerSettings:
    functions = [process_job]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = _redis_settings(checking=CHECKING)
    health_check_interval = HEALTH_CHECK_INTERVAL
    max_jobs = 10
    job_timeout = 60
    keep_result = 3600
