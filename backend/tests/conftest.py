from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[1]

# Sentinel secret values: tests assert these never appear in any output.
SECRET_SENTINELS = {
    "POSTGRES_PASSWORD": "pg-SENTINEL-s3cr3t",
    "JWT_SECRET": "jwt-SENTINEL-s3cr3t",
    "OPENAI_API_KEY": "sk-SENTINEL-openai",
    "ANTHROPIC_API_KEY": "sk-SENTINEL-anthropic",
    "AZURE_API_KEY": "SENTINEL-azure",
    "MISTRAL_API_KEY": "SENTINEL-mistral",
    "SENTRY_DSN": "https://SENTINEL@sentry.example/1",
    "MOBILITYGUARD_CLIENT_SECRET": "SENTINEL-oidc",
}

VALID_ENV = {
    "POSTGRES_USER": "intric",
    "POSTGRES_HOST": "db",
    "POSTGRES_PASSWORD": SECRET_SENTINELS["POSTGRES_PASSWORD"],
    "POSTGRES_PORT": "5432",
    "POSTGRES_DB": "intric",
    "REDIS_HOST": "redis",
    "REDIS_PORT": "6379",
    "UPLOAD_FILE_TO_SESSION_MAX_SIZE": "1048576",
    "UPLOAD_IMAGE_TO_SESSION_MAX_SIZE": "1048576",
    "UPLOAD_MAX_FILE_SIZE": "10485760",
    "TRANSCRIPTION_MAX_FILE_SIZE": "10485760",
    "MAX_IN_QUESTION": "1",
    "API_PREFIX": "/api/v1",
    "API_KEY_LENGTH": "64",
    "API_KEY_HEADER_NAME": "X-API-Key",
    "JWT_AUDIENCE": "*",
    "JWT_ISSUER": "INTRIC",
    "JWT_EXPIRY_TIME": "86000",
    "JWT_ALGORITHM": "HS256",
    "JWT_SECRET": SECRET_SENTINELS["JWT_SECRET"],
    "JWT_TOKEN_PREFIX": "",
}

REQUIRED = list(VALID_ENV)


def integration_env() -> dict[str, str] | None:
    """The real environment, when it points at a database (integration tests)."""
    if not os.environ.get("POSTGRES_HOST") or not os.environ.get("REDIS_HOST"):
        return None
    return {**VALID_ENV, **{k: v for k, v in os.environ.items() if k in VALID_ENV}}


@pytest.fixture
def valid_env() -> dict[str, str]:
    return dict(VALID_ENV)


@pytest.fixture
def clean_os_env(monkeypatch):
    """os.environ without any of our variables (so subprocess/env tests are hermetic)."""
    from intric.settings import VARS

    for var in VARS:
        monkeypatch.delenv(var.name, raising=False)
    return monkeypatch


@pytest.fixture
def settings(valid_env):
    from intric.settings import load_settings

    return load_settings(valid_env)


def run_env(env: dict[str, str]) -> dict[str, str]:
    """Environment for a subprocess: PATH etc. from os.environ, our variables from `env` only."""
    from intric.settings import VARS

    names = {v.name for v in VARS}
    base = {k: v for k, v in os.environ.items() if k not in names}
    base["PYTHONPATH"] = str(BACKEND)
    base.update(env)
    return base


PYTHON = sys.executable


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers (a paused/partitioned peer)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()
