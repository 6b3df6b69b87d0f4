"""docker-compose.yml matches the settings: pinned images, healthchecks, real setting names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import yaml

from feedbackloop.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _settings_as_in_container(env: dict[str, str]) -> Settings:
    """Settings read from exactly these environment variables, as the container reads them."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


def test_images_are_pinned_and_infrastructure_has_healthchecks() -> None:
    services = _compose()["services"]
    assert {"kafka", "clickhouse", "stream", "sink"} <= set(services)
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
    for name in ("kafka", "clickhouse"):
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
    kafka_env = _env(services["kafka"])
    assert "broker,controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_feedbackloop_services_use_real_setting_names_and_reachable_addresses() -> None:
    compose = _compose()
    services = compose["services"]
    fields = set(Settings.model_fields)
    kafka_env = _env(services["kafka"])
    advertised = {
        urlparse(u.replace(u.split("://")[0], "tcp")).netloc
        for u in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name in ("stream", "sink", "migrate", "web"):
        svc = services[name]
        env = _env(svc)
        for key in env:
            assert key.startswith("FEEDBACKLOOP_"), key
            assert key.removeprefix("FEEDBACKLOOP_").lower() in fields, f"{name}: unknown {key}"
        assert env["FEEDBACKLOOP_BOOTSTRAP_SERVERS"] in advertised
        ch = urlparse(env["FEEDBACKLOOP_CLICKHOUSE_URL"])
        assert ch.hostname == "clickhouse" and ch.port == 8123
        ch_env = _env(services["clickhouse"])
        assert (ch.username, ch.password) == (
            ch_env["CLICKHOUSE_USER"],
            ch_env["CLICKHOUSE_PASSWORD"],
        )
        assert env["FEEDBACKLOOP_CLICKHOUSE_DATABASE"] == ch_env["CLICKHOUSE_DB"]
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
        # the settings parse exactly as a container would see them
        s = _settings_as_in_container(env)
        assert s.bootstrap_servers == "kafka:19092" and not s.embedded_broker


def test_host_side_addresses_match_the_default_settings() -> None:
    services = _compose()["services"]
    defaults = Settings()
    assert f"{defaults.broker_port}:9092" in services["kafka"]["ports"]
    assert "HOST://localhost:9092" in _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert "8123:8123" in services["clickhouse"]["ports"]


def test_web_service_binds_all_interfaces_and_requires_an_operator_key() -> None:
    web = _compose()["services"]["web"]
    assert web["command"][:3] == ["web", "--host", "0.0.0.0"]
    assert "8080:8080" in web["ports"]
    keys = _env(web)["FEEDBACKLOOP_WEB_SECRET_KEYS"]
    # compose refuses to start it without the variable (":?"), so no default key exists
    assert "${FEEDBACKLOOP_OPERATOR_KEY:?" in keys
    s = _settings_as_in_container(_env(web))
    assert set(s.web_secret_keys) == {"*"}
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert "web]" in dockerfile  # the image has the web extra
