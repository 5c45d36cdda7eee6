from __future__ import annotations

import asyncio
import importlib
import uuid

import pytest

from intric.jobs import compute_result
from intric.jobs import process_job
from tests.conftest import VALID_ENV
from tests.fakes import FakeStore


def test_compute_result():
    assert compute_result("Hello  big world") == {
        "upper": "HELLO  BIG WORLD",
        "reversed": "dlrow gib  olleH",
        "word_count": 3,
    }
    assert compute_result("   ")["word_count"] == 0


def test_process_job_marks_done_and_is_idempotent():
    store = FakeStore()
    row = asyncio.run(store.create("a b"))
    ctx = {"store": store}
    result = asyncio.run(process_job(ctx, str(row["id"])))
    assert result == compute_result("a b")
    done = store.rows[row["id"]]
    assert done["status"] == "done" and done["completed_at"] is not None
    first_completed = done["completed_at"]
    asyncio.run(process_job(ctx, str(row["id"])))
    assert store.rows[row["id"]]["completed_at"] == first_completed


def test_process_job_missing_row():
    assert asyncio.run(process_job({"store": FakeStore()}, str(uuid.uuid4()))) is None


def test_worker_settings(clean_os_env):
    for k, v in {**VALID_ENV, "REDIS_HOST": "cache", "REDIS_PORT": "6380"}.items():
        clean_os_env.setenv(k, v)
    import intric.settings

    clean_os_env.setattr(intric.settings, "_cached", None)
    import intric.worker as worker

    worker = importlib.reload(worker)
    ws = worker.WorkerSettings
    assert ws.redis_settings.host == "cache" and ws.redis_settings.port == 6380
    assert [f.__name__ for f in ws.functions] == ["process_job"]
    # `arq --check` needs a fresh health key: refreshed often, expires soon after the worker stops
    assert 1 <= ws.health_check_interval <= 30


def _check(port: int):
    import subprocess
    import time

    from tests.conftest import BACKEND, PYTHON, run_env

    env = {**VALID_ENV, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port)}
    start = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "arq", "--check", "intric.worker.WorkerSettings"],
                          cwd=BACKEND, env=run_env(env), capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def test_check_fails_fast_without_redis():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    proc, elapsed = _check(port)
    assert proc.returncode != 0 and elapsed < 20  # generous: loaded CI machines


def test_check_has_a_deadline_against_a_hung_redis(silent_server):
    proc, elapsed = _check(silent_server)
    assert proc.returncode == 1
    assert "health check failed" in proc.stderr
    assert elapsed < 20  # deadline 5 s + interpreter start; generous for loaded machines
