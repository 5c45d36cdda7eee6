from __future__ import annotations

import subprocess

import pytest

from intric.settings import SECRET_NAMES, ConfigError, load_settings
from tests.conftest import BACKEND, PYTHON, REQUIRED, SECRET_SENTINELS, VALID_ENV, run_env


def problems(env) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return dict(info.value.problems)


def test_valid_environment_loads(valid_env):
    s = load_settings(valid_env)
    assert s.postgres_port == 5432 and s.redis_port == 6379
    assert s.upload_max_file_size == 10485760 and s.max_in_question == 1
    assert s.api_prefix == "/api/v1"
    assert s.jwt_token_prefix == ""
    assert s.jwt_secret.get_secret_value() == VALID_ENV["JWT_SECRET"]
    assert s.loglevel == "INFO"
    assert s.using_access_management is False
    assert s.openai_api_key is None
    assert (s.version, s.revision) == ("0.0.0-dev", "unknown")


def test_optional_values(valid_env):
    valid_env.update(
        LOGLEVEL="debug",
        USING_ACCESS_MANAGEMENT="True",
        USING_CRAWL="0",
        OPENAI_API_KEY="sk-x",
        ANTHROPIC_API_KEY="",  # empty optional == unset (compose `${VAR:-}`)
        INTRIC_VERSION="1.2.3",
        INTRIC_REVISION="abc123",
        API_PREFIX="/api/v1/",
    )
    s = load_settings(valid_env)
    assert s.loglevel == "DEBUG"
    assert s.using_access_management is True and s.using_crawl is False
    assert s.openai_api_key.get_secret_value() == "sk-x"
    assert s.anthropic_api_key is None
    assert (s.version, s.revision) == ("1.2.3", "abc123")
    assert s.api_prefix == "/api/v1"


@pytest.mark.parametrize("name", REQUIRED)
def test_each_required_variable_missing(valid_env, name):
    del valid_env[name]
    assert problems(valid_env) == {name: "missing"}


def test_all_missing_named_in_one_message():
    with pytest.raises(ConfigError) as info:
        load_settings({})
    msg = info.value.message
    assert msg.startswith("invalid configuration: ")
    for name in REQUIRED:
        assert f"{name}: missing" in msg
    assert "\n" not in msg


def test_jwt_token_prefix_may_be_empty_but_must_be_present(valid_env):
    assert load_settings(valid_env).jwt_token_prefix == ""
    del valid_env["JWT_TOKEN_PREFIX"]
    assert problems(valid_env) == {"JWT_TOKEN_PREFIX": "missing"}


def test_malformed_values_are_each_named(valid_env):
    valid_env.update(
        POSTGRES_PORT="abc",
        REDIS_PORT="70000",
        MAX_IN_QUESTION="0",
        UPLOAD_MAX_FILE_SIZE="10MB",
        API_PREFIX="api",
        JWT_ALGORITHM="none",
        LOGLEVEL="verbose",
        USING_CRAWL="maybe",
        POSTGRES_HOST="",
    )
    p = problems(valid_env)
    assert p == {
        "POSTGRES_PORT": "not an integer ('abc')",
        "REDIS_PORT": "must be <= 65535 ('70000')",
        "MAX_IN_QUESTION": "must be >= 1 ('0')",
        "UPLOAD_MAX_FILE_SIZE": "not an integer ('10MB')",
        "API_PREFIX": "must start with '/' ('api')",
        "JWT_ALGORITHM": p["JWT_ALGORITHM"],
        "LOGLEVEL": p["LOGLEVEL"],
        "USING_CRAWL": "not a boolean (use true/false) ('maybe')",
        "POSTGRES_HOST": "empty",
    }
    assert p["JWT_ALGORITHM"].startswith("must be one of HS256/")
    assert p["LOGLEVEL"] == "must be one of DEBUG/INFO/WARNING/ERROR/CRITICAL ('verbose')"


def test_message_format(valid_env):
    valid_env["POSTGRES_PORT"] = "abc"
    del valid_env["JWT_SECRET"]
    with pytest.raises(ConfigError) as info:
        load_settings(valid_env)
    assert info.value.message == (
        "invalid configuration: POSTGRES_PORT: not an integer ('abc'); JWT_SECRET: missing"
    )


@pytest.mark.parametrize("name", ["JWT_SECRET", "POSTGRES_PASSWORD"])
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_secret_reported_without_value(valid_env, name, value):
    valid_env[name] = value
    assert problems(valid_env) == {name: "empty"}


def test_secrets_never_in_repr_or_errors(valid_env):
    valid_env.update({k: v for k, v in SECRET_SENTINELS.items()})
    s = load_settings(valid_env)
    text = repr(s) + str(s)
    for value in SECRET_SENTINELS.values():
        assert value not in text
    valid_env["POSTGRES_PORT"] = "x"
    with pytest.raises(ConfigError) as info:
        load_settings(valid_env)
    for value in SECRET_SENTINELS.values():
        assert value not in info.value.message and value not in repr(info.value)


def test_secret_names_cover_credentials():
    assert {"JWT_SECRET", "POSTGRES_PASSWORD", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
            "AZURE_API_KEY", "MISTRAL_API_KEY"} <= SECRET_NAMES


def test_database_url_escapes_password(valid_env):
    valid_env["POSTGRES_PASSWORD"] = "p@ss:w/rd%"
    url = load_settings(valid_env).database_url()
    assert url.password == "p@ss:w/rd%"
    assert "p@ss" not in repr(url) and "p@ss" not in str(url)


# --- the real processes: api (uvicorn), worker (arq), init_db --------------------------------

BAD_ENV = {**VALID_ENV, **SECRET_SENTINELS, "POSTGRES_PORT": "abc"}
del BAD_ENV["JWT_SECRET"]
EXPECTED = "error: invalid configuration: POSTGRES_PORT: not an integer ('abc'); JWT_SECRET: missing"

ENTRYPOINTS = {
    "api-import": [PYTHON, "-c", "import intric.main"],
    "uvicorn": [PYTHON, "-m", "uvicorn", "intric.main:app", "--port", "0"],
    "worker": [PYTHON, "-m", "arq", "intric.worker.WorkerSettings"],
    "worker-check": [PYTHON, "-m", "arq", "--check", "intric.worker.WorkerSettings"],
    "init_db": [PYTHON, "init_db.py"],
    "alembic": [PYTHON, "-m", "alembic", "upgrade", "head"],
}


@pytest.mark.parametrize("entry", list(ENTRYPOINTS))
def test_process_exits_with_one_message(entry):
    proc = subprocess.run(
        ENTRYPOINTS[entry], cwd=BACKEND, env=run_env(BAD_ENV),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert output.strip() == EXPECTED, output
    for value in SECRET_SENTINELS.values():
        assert value not in output


def test_process_with_bad_secret_never_prints_it():
    env = {**VALID_ENV, **SECRET_SENTINELS, "JWT_SECRET": "  ", "REDIS_PORT": ""}
    proc = subprocess.run(
        [PYTHON, "-c", "import intric.main"], cwd=BACKEND, env=run_env(env),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: invalid configuration: REDIS_PORT: empty; JWT_SECRET: empty"
