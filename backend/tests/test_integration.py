"""Against a real Postgres + Redis: runs only when POSTGRES_HOST and REDIS_HOST are set
(e.g. `POSTGRES_HOST=127.0.0.1 POSTGRES_PORT=15432 REDIS_HOST=127.0.0.1 REDIS_PORT=16379 ... pytest`).
Uses the database as is: init_db is idempotent, jobs get fresh uuids."""

from __future__ import annotations

import subprocess
import time

import pytest
from fastapi.testclient import TestClient

from intric.api import create_app
from intric.jobs import compute_result
from intric.settings import load_settings
from tests.conftest import BACKEND, PYTHON, integration_env, run_env

ENV = integration_env()
pytestmark = pytest.mark.skipif(ENV is None, reason="no POSTGRES_HOST/REDIS_HOST: integration tests skipped")


def run(*args, timeout=120):
    return subprocess.run(list(args), cwd=BACKEND, env=run_env(ENV), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def initialised():
    first = run(PYTHON, "init_db.py")
    assert first.returncode == 0, first.stderr
    return first


def test_init_db_is_idempotent(initialised):
    second = run(PYTHON, "init_db.py")
    assert second.returncode == 0, second.stderr
    assert "migrations: already at head (0001)" in second.stdout
    assert "seed already present" in second.stdout
    assert "seeded tenant" not in second.stdout
    for out in (initialised.stdout + initialised.stderr, second.stdout + second.stderr):
        assert ENV["POSTGRES_PASSWORD"] not in out


@pytest.fixture
def client(initialised):
    with TestClient(create_app(load_settings(ENV))) as c:
        yield c


def test_healthz(client):
    r = client.get("/api/v1/healthz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


def test_job_processed_by_real_worker(client):
    r = client.post("/api/v1/jobs", json={"text": "integration test text"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"

    worker = run(PYTHON, "-m", "arq", "--burst", "intric.worker.WorkerSettings")
    assert worker.returncode == 0, worker.stderr

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/jobs/{job_id}").json()
        if body["status"] == "done":
            break
        time.sleep(0.2)
    assert body["status"] == "done"
    assert body["result"] == compute_result("integration test text")
    assert body["completed_at"] is not None
