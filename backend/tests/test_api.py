from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient

from intric.api import create_app
from intric.jobs import compute_result
from intric.settings import load_settings
from intric.jobs import process_job
from tests.fakes import FakeServices


@pytest.fixture
def fake():
    return FakeServices()


@pytest.fixture
def client(settings, fake):
    app = create_app(settings, services_factory=lambda s: fake)
    with TestClient(app) as c:
        yield c
    assert fake.closed


def test_healthz_ok(client):
    r = client.get("/api/v1/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"postgres": "ok", "redis": "ok"}


@pytest.mark.parametrize(
    "down, failed",
    [({"postgres_ok"}, ["postgres"]), ({"redis_ok"}, ["redis"]),
     ({"postgres_ok", "redis_ok"}, ["postgres", "redis"])],
)
def test_healthz_names_failures(client, fake, down, failed):
    for attr in down:
        setattr(fake, attr, False)
    r = client.get("/api/v1/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy"
    assert r.json()["failed"] == failed


def test_version(valid_env, fake):
    valid_env.update(INTRIC_VERSION="1.4.0", INTRIC_REVISION="deadbeef")
    app = create_app(load_settings(valid_env), services_factory=lambda s: fake)
    with TestClient(app) as c:
        assert c.get("/api/v1/version").json() == {"version": "1.4.0", "revision": "deadbeef"}


def test_version_defaults(client):
    assert client.get("/api/v1/version").json() == {"version": "0.0.0-dev", "revision": "unknown"}


def test_api_prefix_is_configurable(valid_env, fake):
    valid_env["API_PREFIX"] = "/intric/api"
    app = create_app(load_settings(valid_env), services_factory=lambda s: fake)
    with TestClient(app) as c:
        assert c.get("/intric/api/healthz").status_code == 200
        assert c.get("/api/v1/healthz").status_code == 404


def test_job_roundtrip(client, fake):
    r = client.post("/api/v1/jobs", json={"text": "hello big world"})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued"
    job_id = body["id"]
    assert fake.queue == [job_id]

    r = client.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200
    assert r.json()["status"] == "queued" and r.json()["result"] is None

    # what the worker does with it
    import asyncio
    asyncio.run(process_job({"store": fake.store}, job_id))
    r = client.get(f"/api/v1/jobs/{job_id}")
    assert r.json()["status"] == "done"
    assert r.json()["result"] == compute_result("hello big world")
    assert r.json()["completed_at"] is not None


def test_job_not_found(client):
    assert client.get(f"/api/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/api/v1/jobs/not-a-uuid").status_code == 422


@pytest.mark.parametrize("payload", [{}, {"text": ""}, {"text": 5}, {"txt": "x"}])
def test_job_validation(client, payload):
    assert client.post("/api/v1/jobs", json=payload).status_code == 422


def test_job_enqueue_failure_is_503_and_marked(client, fake):
    fake.redis_ok = False
    r = client.post("/api/v1/jobs", json={"text": "x"})
    assert r.status_code == 503
    row = fake.store.rows[uuid.UUID(r.json()["id"])]
    assert row["status"] == "failed"


def test_real_services_fail_fast_when_nothing_listens(valid_env):
    """The real Postgres/Redis clients, pointed at closed/unroutable ports: 503 within ~2 s."""
    valid_env.update(POSTGRES_HOST="127.0.0.1", POSTGRES_PORT="9", REDIS_HOST="10.255.255.1",
                     REDIS_PORT="6379")
    app = create_app(load_settings(valid_env))
    with TestClient(app) as c:
        start = time.monotonic()
        r = c.get("/api/v1/healthz")
        elapsed = time.monotonic() - start
    assert r.status_code == 503
    assert r.json()["failed"] == ["postgres", "redis"]
    assert elapsed < 6, elapsed
    assert "SENTINEL" not in r.text


def test_store_failure_is_503(client, fake):
    async def broken(*args, **kwargs):
        raise ConnectionRefusedError("db down")

    fake.store.create = broken
    fake.store.get = broken
    assert client.post("/api/v1/jobs", json={"text": "x"}).status_code == 503
    r = client.get(f"/api/v1/jobs/{uuid.uuid4()}")
    assert r.status_code == 503 and r.json()["detail"] == "database unavailable"


def test_within_does_not_wait_for_a_stuck_cleanup():
    import asyncio

    from intric.services import within

    async def stuck():
        try:
            await asyncio.sleep(3600)
        finally:
            # like a graceful close on a half-open connection: ignores the cancellation
            await asyncio.shield(asyncio.sleep(3))

    async def main():
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await within(stuck(), 0.2)
        return time.monotonic() - start

    assert asyncio.run(main()) < 1.5


def test_real_services_time_out_on_silent_servers(valid_env, silent_server):
    valid_env.update(POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(silent_server),
                     REDIS_HOST="127.0.0.1", REDIS_PORT=str(silent_server))
    app = create_app(load_settings(valid_env))
    with TestClient(app) as c:
        for _ in range(2):
            start = time.monotonic()
            r = c.get("/api/v1/healthz")
            elapsed = time.monotonic() - start
            assert r.status_code == 503
            assert r.json()["failed"] == ["postgres", "redis"]
            assert elapsed < 6, elapsed  # 2 s timeouts; headroom for loaded machines
        start = time.monotonic()
        r = c.post("/api/v1/jobs", json={"text": "x"})
        assert r.status_code == 503 and time.monotonic() - start < 7
