"""The one typed settings object for every Ferry process (API, workers, beat, tools).

Values come from environment variables with the ``FERRY_`` prefix. Settings are read and validated when
a process starts (``get_settings()``), never at import time, so a bad value stops the process at once
with a message naming the variable.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_BOOTSTRAP_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}(,[A-Za-z0-9.\-\[\]:]+:\d{1,5})*$")


class FerrySettings(BaseSettings):
    # hide_input_in_errors: a bad FERRY_DATABASE_URL must not print its password into every process's log.
    model_config = SettingsConfigDict(env_prefix="FERRY_", extra="ignore", frozen=True, hide_input_in_errors=True)

    # No defaults: a deployment that forgot them must stop at start with the variable's name, not talk to
    # whatever listens on a developer's port.
    database_url: str = Field(min_length=1, description="SQLAlchemy URL of the PostgreSQL database (psycopg 3 driver).")
    redis_url: str = Field(
        min_length=1, description="Redis used as the Celery broker and result backend and for worker reports."
    )
    aws_region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")] = "us-east-1"
    aws_account_id: Annotated[str, Field(pattern=r"^\d{12}$")] = "000000000000"
    kafka_probe_clusters: dict[str, str] = Field(
        default={},
        description="Named Kafka clusters that /healthz reports on (JSON object name -> bootstrap servers).",
    )
    health_timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 3.0
    celery_queue: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")] = "ferry"
    reconcile_interval_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=2.0, description="How often each worker (and each API process) runs a reconcile pass."
    )
    default_delivery: Literal["at-least-once", "exactly-once"] = Field(
        default="at-least-once",
        description="Delivery of a replicator created without the reserved tag ferry:delivery.",
    )
    api_reconcile: bool = Field(
        default=True,
        description="API processes run reconcile passes too, so a fleet whose every worker died is still seen "
        "(its replicators become FAILED with NO_LIVE_WORKER).",
    )
    access_key_cache: bool = Field(
        default=True,
        description="API processes keep verified access keys in memory, forgotten at once when a key changes "
        "(PostgreSQL LISTEN/NOTIFY; the cache stands aside while notifications cannot be shown to arrive).",
    )
    fleet_agent_enabled: bool = Field(
        default=True, description="Run a fleet agent (replication work) in each Celery worker process."
    )
    fleet_tick_seconds: Annotated[float, Field(gt=0, le=10)] = Field(
        default=1.0, description="How often a worker heartbeats, renews its leases and converges on its units."
    )
    fleet_lease_seconds: Annotated[float, Field(ge=3, le=300)] = Field(
        default=10.0,
        description="How long a unit's lease lasts without renewal: a dead worker's units move after it. A worker "
        "stops writing a safety margin (FERRY_FLEET_WRITE_TIMEOUT_SECONDS + 0.5 s, at least a fifth of the lease) "
        "before the database would hand it over. A lease is renewed once half of what is left after that margin is "
        "gone (at most every tick, at least three ticks before it would lapse): a longer lease writes proportionally "
        "fewer renewals, which counts with thousands of partitions per worker.",
    )
    fleet_partitions_started_per_pass: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=500,
        description="How many new partitions of one replicator a worker starts copying per pass (about one a "
        "second); more wait for the next passes, so a replicator of thousands of partitions starts in steps "
        "instead of one pass whose Kafka calls time out.",
    )
    fleet_write_timeout_seconds: Annotated[float, Field(ge=0.5, le=120)] = Field(
        default=5.0,
        description="How long a worker's Kafka clients wait for a broker before abandoning a request (and its "
        "connection): bounds how late a write that passed the lease check can still be pending.",
    )
    worker_dead_after_seconds: Annotated[float, Field(ge=2, le=300)] = 10.0
    # ----- autoscaling signal (docs/operations.md, "Sizing and autoscaling")
    fleet_worker_capacity_bytes_per_second: Annotated[float, Field(gt=0)] = Field(
        default=50_000_000.0,
        description="Bytes per second one worker is counted on to copy (make bench's figures, with a margin): the "
        "fleet asks for enough workers to carry the copied bytes, and to clear the lag in "
        "FERRY_FLEET_LAG_CLEAR_SECONDS, at FERRY_FLEET_TARGET_UTILISATION of this.",
    )
    fleet_target_utilisation: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.7,
        description="The share of a worker's capacity (and of one CPU core, a worker's copy loop runs on one) the "
        "fleet plans to use: the headroom for bursts.",
    )
    fleet_lag_clear_seconds: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=300.0, description="How soon the fleet should clear a lag: more workers are asked for until it can."
    )
    worker_liveness_file: Path | None = Field(
        default=None,
        description="A file each worker rewrites every tick with when its control and work loops last ran, for "
        "a process supervisor's probe (python -m workers.liveness).",
    )
    replicator_fail_after_seconds: Annotated[float, Field(ge=0, le=3600)] = 15.0
    group_sync_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=5.0, description="How often a replicator's consumer group offsets are translated and synced."
    )
    topic_config_sync_seconds: Annotated[float, Field(ge=1, le=3600)] = Field(
        default=30.0,
        description="How often replicators compare the target topics' configurations and ACLs with the source's "
        "(copyTopicConfigurations, copyAccessControlListsForTopics). The source's are described once per interval "
        "for every replicator of a worker that reads that source as the same principal; new topics are found and "
        "created within seconds regardless.",
    )
    usage_flush_seconds: Annotated[float, Field(ge=1, le=300)] = Field(
        default=10.0,
        description="How often a worker adds what it copied and ran to the usage table (docs/usage.md): what a "
        "worker killed with SIGKILL had not stored yet, at most this long's worth, is not counted.",
    )
    offset_map_max_runs: Annotated[int, Field(ge=16)] = Field(
        default=10_000,
        description="Offset map runs kept per source partition before old ones are thinned (with a stated bound).",
    )
    # ----- logs (docs/operations.md, "Logs")
    log_format: Literal["json", "text"] = Field(
        default="text",
        description="json: one JSON object a line (the image's default); text: human-readable lines (development).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="The least severe level written (ferry worker/beat --loglevel overrides it)."
    )
    # ----- API security (docs/security.md)
    auth: Literal["sigv4", "disabled"] = Field(
        default="sigv4",
        description="sigv4: every API call must be signed with a key Ferry issued; disabled: anyone acts for "
        "aws_account_id (development only; a warning is logged at every start).",
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Seals the secret access keys in the database (at least 32 characters)."
    )
    secret_key_file: Path | None = Field(
        default=None, description="A file holding the secret key instead (e.g. a mounted Kubernetes Secret)."
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token with which Prometheus scrapes /metrics for every account."
    )
    api_requests_per_second: Annotated[float, Field(gt=0, le=100_000)] = Field(
        default=50.0, description="Requests per second one access key may make (per API process), on average."
    )
    api_request_burst: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=100, description="Requests one access key may make at once before the rate applies."
    )
    max_replicators_per_account: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=100, description="Replicators one account may have (CreateReplicator answers 429 beyond)."
    )
    console_session_seconds: Annotated[float, Field(ge=60, le=7 * 86400)] = Field(
        default=8 * 3600.0, description="How long a web console sign-in lasts (docs/console.md)."
    )
    # ----- secured clusters (docs/security.md, "Clusters")
    secrets_manager_endpoint: str | None = Field(
        default=None,
        description="A Secrets Manager compatible endpoint (default: AWS Secrets Manager in the ARN's region).",
    )
    secrets_dir: Path | None = Field(
        default=None, description="Read secrets from files instead: <dir>/<secret name> (e.g. a mounted Secret)."
    )
    secret_cache_seconds: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=300.0, description="How long a secret read is reused (a refused credential is read again at once)."
    )
    allowed_bootstrap: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs and host patterns bootstrap servers may use although they are loopback, link-local or "
        "metadata addresses (comma-separated or a JSON list); empty: any routable address, none of those.",
    )

    @property
    def fleet_lease_margin_seconds(self) -> float:
        """How long before a lease's expiry in the database a worker already treats it as lost (pauses, clock
        rates and the time a request takes to reach a broker fit in it)."""
        return max(self.fleet_lease_seconds / 5, self.fleet_write_timeout_seconds + 0.5)

    @property
    def fleet_lease_validity_seconds(self) -> float:
        """How long after a renewal a worker trusts its lease: the lease less its safety margin."""
        return self.fleet_lease_seconds - self.fleet_lease_margin_seconds

    @model_validator(mode="after")
    def _fleet_timings_agree(self) -> FerrySettings:
        renewals = self.fleet_lease_validity_seconds / self.fleet_tick_seconds
        if renewals < 3:
            raise ValueError(
                f"FERRY_FLEET_LEASE_SECONDS ({self.fleet_lease_seconds:g}) minus its safety margin "
                f"({self.fleet_lease_margin_seconds:g}: FERRY_FLEET_WRITE_TIMEOUT_SECONDS + 0.5 s, at least a fifth "
                f"of the lease) must span at least three ticks of FERRY_FLEET_TICK_SECONDS "
                f"({self.fleet_tick_seconds:g}), so one slow renewal does not lose every lease"
            )
        if self.worker_dead_after_seconds < 3 * self.fleet_tick_seconds:
            raise ValueError(
                f"FERRY_WORKER_DEAD_AFTER_SECONDS ({self.worker_dead_after_seconds:g}) must be at least three ticks "
                f"of FERRY_FLEET_TICK_SECONDS ({self.fleet_tick_seconds:g}): a worker heartbeats once per tick"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str) -> str:
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError("must be a postgresql+psycopg:// URL (psycopg 3 serves both the API and workers)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_only(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("allowed_bootstrap", mode="before")
    @classmethod
    def _comma_or_json_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    def as_environment(self) -> dict[str, str]:
        """These settings as ``FERRY_*`` environment variables for a child process, secrets included."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            elif isinstance(value, dict | list):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"FERRY_{name.upper()}"] = text
        return env

    def secret_key_material(self) -> str | None:
        """The secret key from FERRY_SECRET_KEY, else from the file FERRY_SECRET_KEY_FILE names."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        if self.secret_key_file is not None:
            return self.secret_key_file.read_text().strip()
        return None

    @field_validator("kafka_probe_clusters")
    @classmethod
    def _bootstrap_lists(cls, value: dict[str, str]) -> dict[str, str]:
        for name, servers in value.items():
            if not _BOOTSTRAP_RE.match(servers):
                raise ValueError(f"cluster {name!r}: {servers!r} is not a host:port[,host:port] list")
        return value


SETTINGS_DIR_VARIABLE = "FERRY_SETTINGS_DIR"


class SettingsError(Exception):
    """Settings that cannot start a process; the message names each variable and what is wrong with it."""


def read_settings() -> FerrySettings:
    """Settings from ``FERRY_*`` environment variables and, where one is not set, from a file of that variable's
    name in the folder ``FERRY_SETTINGS_DIR`` names (a Kubernetes Secret or ConfigMap mounted as files)."""
    folder = os.environ.get(SETTINGS_DIR_VARIABLE)
    if folder and not Path(folder).is_dir():
        raise SettingsError(f"{SETTINGS_DIR_VARIABLE}={folder}: not a folder")
    try:
        return FerrySettings(_secrets_dir=folder or None)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "FERRY_" + "_".join(str(part) for part in error["loc"][:1]).upper()
            problem = "is required (not set)" if error["type"] == "missing" else error["msg"]
            problems.append(f"{name} {problem}")
        raise SettingsError("; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> FerrySettings:
    """The process-wide settings (``read_settings``), read on first use."""
    return read_settings()
