"""One settings module for the api, the arq worker, alembic and init_db.

Every variable is read from the process environment. All problems are collected and
reported in ONE message naming each bad variable; the value of a secret is never
printed (for secrets the message only says "missing", "empty" or what kind of value
was expected).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from pydantic import SecretStr

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
JWT_ALGORITHMS = (
    "HS256", "HS384", "HS512",
    "RS256", "RS384", "RS512",
    "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512",
    "EdDSA",
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """Raised with one entry per bad variable: [(NAME, problem), ...]."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return "invalid configuration: " + "; ".join(f"{n}: {p}" for n, p in self.problems)


class _Invalid(ValueError):
    pass


def _show(raw: str) -> str:
    """repr() of a (non-secret) raw value, shortened."""
    return repr(raw if len(raw) <= 40 else raw[:37] + "...")


# --- converters: take the raw string, return the value or raise _Invalid(problem) ----------


def _int(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    def conv(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise _Invalid("not an integer") from None
        if value < minimum:
            raise _Invalid(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise _Invalid(f"must be <= {maximum}")
        return value

    return conv


def _str(raw: str) -> str:
    return raw


def _nonempty(raw: str) -> str:
    if raw.strip() == "":
        raise _Invalid("empty")
    return raw


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _Invalid("not a boolean (use true/false)")


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[str], str]:
    def conv(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip()
        if value not in options:
            raise _Invalid("must be one of " + "/".join(options))
        return value

    return conv


def _api_prefix(raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/"):
        raise _Invalid("must start with '/'")
    return value.rstrip("/")


# --- the variable table -----------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    name: str
    conv: Callable[[str], Any] = _nonempty
    required: bool = True
    secret: bool = False
    default: Any = None


VARS: tuple[Var, ...] = (
    # database / queue
    Var("POSTGRES_USER"),
    Var("POSTGRES_HOST"),
    Var("POSTGRES_PASSWORD", secret=True),
    Var("POSTGRES_PORT", _int(1, 65535)),
    Var("POSTGRES_DB"),
    Var("REDIS_HOST"),
    Var("REDIS_PORT", _int(1, 65535)),
    # limits
    Var("UPLOAD_FILE_TO_SESSION_MAX_SIZE", _int()),
    Var("UPLOAD_IMAGE_TO_SESSION_MAX_SIZE", _int()),
    Var("UPLOAD_MAX_FILE_SIZE", _int()),
    Var("TRANSCRIPTION_MAX_FILE_SIZE", _int()),
    Var("MAX_IN_QUESTION", _int()),
    # api / auth
    Var("API_PREFIX", _api_prefix),
    Var("API_KEY_LENGTH", _int()),
    Var("API_KEY_HEADER_NAME"),
    Var("JWT_AUDIENCE"),
    Var("JWT_ISSUER"),
    Var("JWT_EXPIRY_TIME", _int()),
    Var("JWT_ALGORITHM", _choice(JWT_ALGORITHMS)),
    Var("JWT_SECRET", secret=True),
    Var("JWT_TOKEN_PREFIX", _str),  # must be present, may be empty
    # optional: LLM providers (secrets)
    Var("OPENAI_API_KEY", required=False, secret=True),
    Var("ANTHROPIC_API_KEY", required=False, secret=True),
    Var("AZURE_API_KEY", required=False, secret=True),
    Var("AZURE_ENDPOINT", required=False),
    Var("AZURE_API_VERSION", required=False),
    Var("AZURE_MODEL_DEPLOYMENT", required=False),
    Var("MISTRAL_API_KEY", required=False, secret=True),
    # optional: OIDC
    Var("MOBILITYGUARD_DISCOVERY_ENDPOINT", required=False),
    Var("MOBILITYGUARD_CLIENT_ID", required=False),
    Var("MOBILITYGUARD_CLIENT_SECRET", required=False, secret=True),
    # optional: feature flags
    Var("USING_ACCESS_MANAGEMENT", _bool, required=False, default=False),
    Var("USING_AZURE_MODELS", _bool, required=False, default=False),
    Var("USING_CRAWL", _bool, required=False, default=False),
    # optional: operations
    Var("LOGLEVEL", _choice(LOG_LEVELS, upper=True), required=False, default="INFO"),
    Var("SENTRY_DSN", required=False, secret=True),
    Var("SENTRY_ENVIRONMENT", required=False),
    # baked into the image by the Dockerfile (build args VERSION / REVISION)
    Var("INTRIC_VERSION", required=False, default="0.0.0-dev"),
    Var("INTRIC_REVISION", required=False, default="unknown"),
)

SECRET_NAMES = frozenset(v.name for v in VARS if v.secret)


@dataclass(frozen=True)
class Settings:
    postgres_user: str
    postgres_host: str
    postgres_password: SecretStr = field(repr=False)
    postgres_port: int
    postgres_db: str
    redis_host: str
    redis_port: int
    upload_file_to_session_max_size: int
    upload_image_to_session_max_size: int
    upload_max_file_size: int
    transcription_max_file_size: int
    max_in_question: int
    api_prefix: str
    api_key_length: int
    api_key_header_name: str
    jwt_audience: str
    jwt_issuer: str
    jwt_expiry_time: int
    jwt_algorithm: str
    jwt_secret: SecretStr = field(repr=False)
    jwt_token_prefix: str
    openai_api_key: SecretStr | None = field(repr=False)
    anthropic_api_key: SecretStr | None = field(repr=False)
    azure_api_key: SecretStr | None = field(repr=False)
    azure_endpoint: str | None
    azure_api_version: str | None
    azure_model_deployment: str | None
    mistral_api_key: SecretStr | None = field(repr=False)
    mobilityguard_discovery_endpoint: str | None
    mobilityguard_client_id: str | None
    mobilityguard_client_secret: SecretStr | None = field(repr=False)
    using_access_management: bool
    using_azure_models: bool
    using_crawl: bool
    loglevel: str
    sentry_dsn: SecretStr | None = field(repr=False)
    sentry_environment: str | None
    intric_version: str
    intric_revision: str

    @property
    def version(self) -> str:
        return self.intric_version

    @property
    def revision(self) -> str:
        return self.intric_revision

    def database_url(self):
        """SQLAlchemy URL object (password escaped; never rendered into logs)."""
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+asyncpg",
            username=self.postgres_user,
            password=self.postgres_password.get_secret_value(),
            host=self.postgres_host,
            port=self.postgres_port,
            database=self.postgres_db,
        )


assert [f.name for f in fields(Settings)] == [v.name.lower() for v in VARS], "VARS/Settings out of sync"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `environ` (default: os.environ). Raises ConfigError."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for var in VARS:
        raw = env.get(var.name)
        if raw is None or (not var.required and raw.strip() == ""):
            if var.required:
                problems.append((var.name, "missing"))
            values[var.name.lower()] = var.default
            continue
        if raw.strip() == "" and var.conv is not _str:
            problems.append((var.name, "empty"))
            continue
        try:
            value = var.conv(raw)
        except _Invalid as exc:
            # never echo a secret's value, not even part of it
            problem = str(exc) if var.secret else f"{exc} ({_show(raw)})"
            problems.append((var.name, problem))
            continue
        values[var.name.lower()] = SecretStr(value) if var.secret else value
    if problems:
        raise ConfigError(problems)
    return Settings(**values)


_cached: Settings | None = None


def get_settings() -> Settings:
    """Settings from the environment, or exit(2) printing one message (no secrets)."""
    global _cached
    if _cached is None:
        try:
            _cached = load_settings()
        except ConfigError as exc:
            print(f"error: {exc.message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    return _cached
