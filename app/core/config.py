"""The service's settings: one typed object, read once from the environment (and CLI flags)."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.redact import redact_url

MIN_KEY_CHARS = 16
FD_RESERVE = 64  # file descriptors kept for all but clients (models, Redis, logs)
FD_LINGER = 256  # and for refused connections while their answer goes out


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    """The open-file limit less what the rest needs: 19,680 under a limit of 20,000."""
    return max(16, open_file_limit() - FD_RESERVE - FD_LINGER)


class Settings(BaseSettings):
    """Every field is also an environment variable of the same name (README lists them)."""

    # errors never echo what was given: a setting may be a secret (API_KEYS, REDIS_URL)
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", hide_input_in_errors=True
    )

    STORE: Path = Field(Path("store"), description="model store folder to load checkpoints from")
    DEVICE: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    DEFAULT_MODEL: str | None = Field(None, description="model used when a request names none")
    SERVER: Literal["uvicorn", "granian"] = Field(
        "uvicorn",
        description="the HTTP server of `python -m app`: uvicorn, or granian (faster under "
        "load over many connections, slower for a lone request; one "
        "worker, the same app, drain and JSON answers, but its own connection bounds: a late "
        "head is cut off without a 408, an idle connection closes at HEADER_TIMEOUT_SECONDS, "
        "a head past its buffer gets an empty 431, connections past MAX_CONNECTIONS wait to "
        "be accepted instead of a 503; the README's Servers section)",
    )
    HOST: str = "127.0.0.1"
    PORT: int = Field(8000, ge=1, le=65535)
    LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    ACCESS_LOG: bool = Field(True, description="one JSON line per request on stderr")

    SESSION_TTL_SECONDS: float = Field(1800.0, gt=0, description="idle sessions expire after")
    MAX_SESSIONS: int = Field(100_000, ge=1, description="live sessions at most")
    SESSION_CAP_POLICY: Literal["reject", "evict"] = Field(
        "reject", description="when full: 429, or evict the least recently used session"
    )
    SESSION_BACKEND: Literal["memory", "redis"] = Field(
        "memory", description="where sessions live: this process, or Redis (shared, durable)"
    )
    REDIS_URL: str = Field("redis://localhost:6379/0", description="with SESSION_BACKEND=redis")
    REDIS_PREFIX: str = Field("hn", description="prefix of this service's Redis keys")
    SESSION_LEASE_SECONDS: float = Field(
        5.0,
        ge=0.5,
        description="Redis: a request's hold on a session lasts this long unless renewed (its "
        "holder renews it every third of this while it works): a crashed holder's, no longer",
    )
    SESSION_LEASE_WAIT_SECONDS: float = Field(
        2.0,
        gt=0,
        description="Redis: a request waits at most this for a session that another replica "
        "holds, then gets 503 with Retry-After",
    )
    MAX_TEXT_CHARS: int = Field(10_000, ge=1, description="longer texts get 413")
    MAX_WORDS: int = Field(200, ge=1, description="max_words of a continuation at most")
    # One request's own memory stays under about 64 MiB: what its choices, tokens and logprob
    # entries cost, measured on a real server (peak RSS per unit, gru; gru-copy's state adds
    # ~2.5 KiB a choice), with room: 2,048 choices x 6 KiB = 12 MiB, 200,000 tokens x 128 B
    # (116 B a prompt token, 79 B a generated one) = 24.4 MiB, 60,000 logprob entries x 400 B
    # (393 B with logprobs 0, 260 B with 30) = 22.9 MiB. README "Security" has the sums.
    MAX_CHOICES: int = Field(
        2048, ge=1, description="choices of one completion at most: prompts x max(n, best_of)"
    )
    MAX_REQUEST_TOKENS: int = Field(
        200_000,
        ge=1,
        description="tokens one completion may feed and generate: choices x (prompt tokens + "
        "max_tokens)",
    )
    MAX_LOGPROB_ENTRIES: int = Field(
        60_000,
        ge=1,
        description="log-probabilities one completion may return: scored tokens (the "
        "generated ones, and the prompt's with echo) x (logprobs + 1)",
    )
    MAX_BODY_BYTES: int = Field(
        1 << 20, ge=1024, description="larger request bodies get 413 before they are read"
    )
    BODY_TIMEOUT_SECONDS: float = Field(
        10.0, gt=0, description="a request body must arrive within this (408 otherwise)"
    )
    MAX_HEADER_BYTES: int = Field(
        16384, ge=1024, description="request headers larger than this in all get 431"
    )
    HEADER_TIMEOUT_SECONDS: float = Field(
        10.0,
        gt=0,
        description="a request head (request line and headers) must arrive within this, from "
        "the connection's start or a request's first byte: 408 and closed otherwise",
    )
    MAX_CONNECTIONS: int = Field(
        default_factory=default_max_connections,
        ge=1,
        description="open client connections at most (default: the open-file limit less "
        f"{FD_RESERVE + FD_LINGER}); past it the slowest head or the idlest one is closed, "
        "else the new one gets 503",
    )
    DRAIN_SECONDS: float = Field(
        30.0,
        ge=0,
        validation_alias=AliasChoices("DRAIN_SECONDS", "SHUTDOWN_GRACE_SECONDS"),
        description="on SIGTERM, /ready answers 503 at once and requests in flight and open "
        "streams get this long to finish; then 503 (JSON, Retry-After) and streams end with an "
        "error event (SHUTDOWN_GRACE_SECONDS: its older name)",
    )
    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins browsers may call from (comma-separated or a JSON list); "
        "none: CORS off",
    )

    MAX_BATCH_SIZE: int = Field(256, ge=1, description="requests in one batched forward")
    BATCH_WAIT_MS: float = Field(0.0, ge=0, description="wait for a fuller batch (0: never)")
    MAX_QUEUE: int = Field(4096, ge=1, description="queued jobs per model before 429")
    # A state is 0.2 to 1.5 KB whatever its prefix's length (~0.7 to 2 KB an entry, counted):
    # 32 MiB keeps some 16,000 to 45,000 prefixes, a small part of a replica's memory.
    PREFIX_CACHE_MB: float = Field(
        32.0,
        ge=0,
        description="memory of the stateless requests' prefix cache (states after shared "
        "prefixes), least recently used evicted past it (0: off)",
    )
    PREFIX_CACHE_SCOPE: Literal["shared", "per_key"] = Field(
        "shared",
        description="shared: one key's prefixes serve every key (a hit is faster, which "
        "tells a caller that someone sent its prefix); per_key: each key's its own",
    )
    MAX_QUEUE_SHARE: float = Field(
        0.25,
        gt=0,
        le=1,
        description="one request holds at most this share of MAX_QUEUE at once: a larger "
        "completion's other choices wait their turn, interleaved with other requests",
    )
    SSE_FLUSH_MS: float = Field(
        50.0,
        ge=0,
        description="a stream writes at most once per this many ms: the words ready go out "
        "together, one event each (0: a write as soon as a word is ready)",
    )
    STREAM_WRITE_TIMEOUT_SECONDS: float = Field(
        30.0,
        gt=0,
        description="a stream whose client reads nothing for this long is ended and its "
        "connection closed (its generation stopped, its memory freed)",
    )
    FAST_PATH: bool = Field(
        True, description="serve the next-word routes without FastAPI's per-request overhead"
    )
    CELL_MODE: Literal["eager", "script", "compile"] = Field(
        "script", description="how the hand-written GRU cell (gru-custom) runs"
    )
    TORCH_THREADS: int = Field(
        1, ge=1, description="CPU threads of torch: one suits these tiny models best"
    )

    API_KEYS: SecretStr | None = Field(
        None, description="comma-separated API keys: /v1 then needs 'Authorization: Bearer'"
    )
    API_KEYS_FILE: Path | None = Field(
        None, description="a file of API keys, one a line (# comments and blank lines ignored)"
    )
    MAX_SESSIONS_PER_KEY: int = Field(
        1000, ge=1, description="live sessions one API key may hold (with keys on)"
    )
    RATE_LIMIT_RPS: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="requests a second one API key (with keys off: one client address) may "
        "make on /v1, a token bucket; past it 429 (None or 0: no limit)",
    )
    RATE_LIMIT_BURST: float | None = Field(
        None,
        ge=1,
        allow_inf_nan=False,
        description="the requests bucket's size: requests at once (default 2 x RATE_LIMIT_RPS)",
    )
    RATE_LIMIT_TOKENS_PER_SECOND: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="tokens a second (words fed and generated, estimated from the request "
        "body) one API key or client address may use on /v1 (None or 0: no limit)",
    )
    RATE_LIMIT_TOKEN_BURST: float | None = Field(
        None,
        ge=1,
        allow_inf_nan=False,
        description="the tokens bucket's size (default 2 x RATE_LIMIT_TOKENS_PER_SECOND)",
    )
    ADMIN_API_KEYS: SecretStr | None = Field(
        None,
        description="comma-separated admin keys: they turn on the admin API (/admin: model "
        "versions), which takes only these (a user's key gets 403); none may be a user's key",
    )
    ADMIN_API_KEYS_FILE: Path | None = Field(
        None, description="a file of admin keys, one a line (# comments and blank lines ignored)"
    )
    UNLOAD_GRACE_SECONDS: float = Field(
        300.0,
        ge=0,
        allow_inf_nan=False,
        description="an unloaded version serves its sessions this long at most (unless an "
        "unload says otherwise), then they get 410",
    )
    MODEL_STORE_POLL_SECONDS: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="look for new versions in STORE this often and load them (None: never)",
    )
    MODEL_STORE_POLL_POLICY: Literal["latest", "manual"] = Field(
        "manual",
        description="what polling does with a new version: latest promotes it (the quality "
        "gate still applies), manual only loads it",
    )
    OTLP_ENDPOINT: str | None = Field(
        None,
        description="OpenTelemetry traces go to this OTLP/HTTP collector (http://collector:4318; "
        "/v1/traces is added unless given): one trace per request (None: no tracing at all)",
    )
    OTEL_SERVICE_NAME: str = Field(
        "human-numbers", min_length=1, description="the traces' service.name"
    )
    TRACE_SAMPLE_RATIO: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of the requests traced (a caller's traceparent decides for its own)",
    )
    STATE_SIGNING_KEY: SecretStr | None = Field(
        None,
        description="the secret that signs session state documents (HMAC-SHA256; at least "
        f"{MIN_KEY_CHARS} characters, shared by every replica): GET /v1/sessions/{{id}}/state "
        "and POST /v1/sessions with `state` answer 501 without it",
    )
    STATE_SIGNING_KEY_FILE: Path | None = Field(
        None,
        description="a file of state signing keys, one a line (# comments and blank lines "
        "ignored), instead of STATE_SIGNING_KEY: the first signs, every one checks (to rotate, "
        "put the new key first and keep the old one below it while its documents matter)",
    )
    STATE_SIGNING_KEY_FALLBACKS: SecretStr | None = Field(
        None,
        description="comma-separated older signing keys: documents they signed still restore, "
        "nothing new is signed with them (rotation with STATE_SIGNING_KEY)",
    )
    AUTH_METRICS: bool = Field(False, description="with keys on, /metrics needs a key too")
    AUTH_DOCS: bool = Field(
        False, description="with keys on, /docs, /redoc and /openapi.json need a key too"
    )

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _origins(cls, v: object) -> object:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [o.strip() for o in text.split(",") if o.strip()]
        return v

    @field_validator("OTLP_ENDPOINT")
    @classmethod
    def _otlp_is_a_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            ok = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0
        except ValueError:  # a bad port
            ok = False
        if not ok:
            raise ValueError(
                f"OTLP_ENDPOINT {redact_url(v)} is not an http(s) URL of a collector: "
                "e.g. http://collector:4318"
            )
        return v

    @field_validator("MAX_CONNECTIONS")
    @classmethod
    def _connections_fit_the_file_limit(cls, v: int) -> int:
        limit = open_file_limit()
        if v > limit - FD_RESERVE:
            raise ValueError(
                f"MAX_CONNECTIONS {v} does not fit this process's open-file limit ({limit}, "
                "ulimit -n) with room for the rest: lower it, or raise the limit"
            )
        return v

    @field_validator("STATE_SIGNING_KEY")
    @classmethod
    def _signing_key_is_long(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():  # compose passes an empty value: off
            return None
        if len(v.get_secret_value()) < MIN_KEY_CHARS:
            raise ValueError(
                f"STATE_SIGNING_KEY is too short: it needs at least {MIN_KEY_CHARS} characters "
                "(e.g. openssl rand -hex 32)"
            )
        return v

    @field_validator("STORE")
    @classmethod
    def _store_is_a_folder(cls, v: Path) -> Path:
        if v.exists() and not v.is_dir():
            raise ValueError(f"STORE {v} is not a folder")
        return v

    @model_validator(mode="after")
    def _keys_are_readable(self) -> Settings:
        self.api_keys()  # a bad key or key file stops the start, with the reason
        self.admin_api_keys()
        self.state_signing_keys()
        return self

    def max_lingering(self) -> int:
        """Refused connections that may wait for their 503 to go out: the file descriptors
        left between MAX_CONNECTIONS and the limit, less the reserve."""
        return max(0, open_file_limit() - self.MAX_CONNECTIONS - FD_RESERVE)

    def api_keys(self) -> list[str]:
        """The API keys of API_KEYS and API_KEYS_FILE together; [] when keys are off."""
        return read_keys("API_KEYS", self.API_KEYS, self.API_KEYS_FILE)

    def admin_api_keys(self) -> list[str]:
        """The admin keys of ADMIN_API_KEYS and ADMIN_API_KEYS_FILE; [] when the admin API
        is off. ValueError if one of them is also a user's key."""
        keys = read_keys("ADMIN_API_KEYS", self.ADMIN_API_KEYS, self.ADMIN_API_KEYS_FILE)
        if keys and set(keys) & set(self.api_keys()):
            raise ValueError(
                "a key is both in ADMIN_API_KEYS and in API_KEYS: admin keys must be distinct "
                "from users' keys"
            )
        return keys

    def state_signing_keys(self) -> list[str]:
        """The keys that check state documents, the one that signs first; [] when documents
        are off. ValueError (the start stops) for a key file that cannot be read or holds a
        short key, both STATE_SIGNING_KEY and its file, or fallbacks with nothing to sign."""
        if self.STATE_SIGNING_KEY is not None and self.STATE_SIGNING_KEY_FILE is not None:
            raise ValueError(
                "STATE_SIGNING_KEY and STATE_SIGNING_KEY_FILE are both set: give the signing "
                "key one way (older keys go below it in the file, or in "
                "STATE_SIGNING_KEY_FALLBACKS)"
            )
        keys = [self.STATE_SIGNING_KEY.get_secret_value()] if self.STATE_SIGNING_KEY else []
        if self.STATE_SIGNING_KEY_FILE is not None:
            keys = read_lines("STATE_SIGNING_KEY_FILE", self.STATE_SIGNING_KEY_FILE)
        fallbacks = self.STATE_SIGNING_KEY_FALLBACKS
        older = [k.strip() for k in fallbacks.get_secret_value().split(",")] if fallbacks else []
        older = [k for k in older if k]
        if older and not keys:
            raise ValueError(
                "STATE_SIGNING_KEY_FALLBACKS is set without a key that signs: set "
                "STATE_SIGNING_KEY (or STATE_SIGNING_KEY_FILE) too"
            )
        for i, key in enumerate(keys + older, 1):
            if len(key) < MIN_KEY_CHARS:
                raise ValueError(
                    f"state signing key number {i} is too short: keys need at least "
                    f"{MIN_KEY_CHARS} characters (e.g. openssl rand -hex 32)"
                )
        return list(dict.fromkeys(keys + older))


def read_lines(setting: str, file: Path) -> list[str]:
    """The keys of a key file: one a line, # comments and blank lines ignored; ValueError
    naming the setting for a file that cannot be read or holds none."""
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{setting} {file}: {getattr(e, 'strerror', None) or e}") from None
    keys = [k.strip() for k in lines if k.strip() and not k.strip().startswith("#")]
    if not keys:
        raise ValueError(f"{setting} {file} holds no key")
    return keys


def read_keys(setting: str, listed: SecretStr | None, file: Path | None) -> list[str]:
    keys = []
    if listed is not None:
        keys += [k.strip() for k in listed.get_secret_value().split(",") if k.strip()]
    if file is not None:
        keys += read_lines(f"{setting}_FILE", file)
    what = "API key" if setting == "API_KEYS" else "admin key"
    for i, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
            raise ValueError(
                f"{what} number {i} is too short or holds a space: keys need at least "
                f"{MIN_KEY_CHARS} characters and no whitespace (e.g. openssl rand -hex 24)"
            )
    return keys
