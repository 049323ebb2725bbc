"""docker-compose.yml: valid Compose, healthy ordering, environment-only services, topic catalog."""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from cth_shared.contracts.topics import (
    CATALOG_TOPICS,
    MEMBER_PARTITIONS,
    SERVICES,
    TEST_SERVICES,
    all_topic_specs,
    dlq_topic,
)
from cth_shared.settings import ServiceSettings
from deploy_files import (
    APP_SERVICES,
    DEPLOY,
    REPO,
    compose,
    compose_raw,
    compose_spec,
    interpolate,
    load_module,
)

ONE_SHOT_JOBS = {"kafka-init"}


def _services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def _schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(compose_spec())
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


# ------------------------------------------------------------------ the Compose specification


def test_compose_file_validates_against_the_compose_specification_schema() -> None:
    assert _schema_errors(compose_raw()) == []
    assert _schema_errors(compose()) == []


def test_schema_check_rejects_an_unknown_depends_on_condition() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["care-gaps"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert _schema_errors(broken)


def test_schema_check_rejects_an_unknown_service_key() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["attribution"]["healthcheck_command"] = "true"
    assert _schema_errors(broken)


def test_interpolation_uses_documented_defaults_and_the_callers_environment() -> None:
    assert interpolate("${A:-x}/${B-y}/$${C}", {}) == "x/y/${C}"
    assert interpolate("${A:-x}/${B-y}", {"A": "", "B": ""}) == "x/"
    assert interpolate("${A:-x}", {"A": "set"}) == "set"


# ------------------------------------------------------------------ health and ordering


def test_every_long_running_service_has_a_healthcheck() -> None:
    missing = [
        name
        for name, service in _services().items()
        if name not in ONE_SHOT_JOBS and (not service.get("healthcheck") or service["healthcheck"].get("disable"))
    ]
    assert missing == []


def test_one_shot_jobs_never_restart_and_are_awaited_to_completion() -> None:
    services = _services()
    for job in ONE_SHOT_JOBS:
        assert services[job]["restart"] == "no"
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if dependency in ONE_SHOT_JOBS:
                assert rule["condition"] == "service_completed_successfully", name


def test_every_depends_on_names_a_condition_and_an_existing_service() -> None:
    services = _services()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must be the long form with conditions"
        for dependency, rule in depends_on.items():
            assert dependency in services, f"{name} -> {dependency}"
            assert rule.get("condition") in {"service_healthy", "service_completed_successfully"}, name
            if rule["condition"] == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{name} waits on {dependency} without a healthcheck"


def test_dependency_graph_has_no_cycles() -> None:
    services = _services()
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, f"cycle through {name}"
        if name in done:
            return
        visiting.add(name)
        for dependency in services[name].get("depends_on", {}):
            visit(dependency)
        visiting.discard(name)
        done.add(name)

    for name in services:
        visit(name)


def test_app_services_start_after_topics_database_and_collector() -> None:
    services = _services()
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["kafka-init"]["condition"] == "service_completed_successfully"
        assert depends_on["postgres"]["condition"] == "service_healthy"
        assert depends_on["otel-collector"]["condition"] == "service_healthy"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_app_healthcheck_asks_the_service_its_healthz() -> None:
    for name in APP_SERVICES:
        probe = " ".join(_services()[name]["healthcheck"]["test"])
        assert "http://127.0.0.1:8080/healthz" in probe, name


def test_postgres_healthcheck_waits_for_the_last_database_over_tcp() -> None:
    probe = " ".join(_services()["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in probe and "-h 127.0.0.1" in probe and "-d notifications" in probe


# ------------------------------------------------------------------ the broker


def test_kafka_is_the_official_image_in_kraft_combined_mode_with_auto_create_off() -> None:
    kafka = _services()["kafka"]
    env = kafka["environment"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_kafka_init_creates_exactly_the_catalog_topics_without_test_only_dlqs() -> None:
    create_topics = load_module(DEPLOY / "kafka" / "create_topics.py", "cth_deploy_create_topics")
    planned = {spec.name: (spec.partitions, dict(spec.configs)) for spec in create_topics.production_topic_specs()}
    test_only = {dlq_topic(service) for service in TEST_SERVICES}
    catalog = {
        spec.name: (spec.partitions, dict(spec.configs)) for spec in all_topic_specs() if spec.name not in test_only
    }
    assert planned == catalog
    assert set(planned) == set(CATALOG_TOPICS) | {dlq_topic(service) for service in SERVICES}
    assert len(planned) == 10 + len(SERVICES)
    assert {partitions for partitions, _ in planned.values()} == {MEMBER_PARTITIONS}
    assert planned["provider-directory"][1] == {"cleanup.policy": "compact"}


def test_kafka_init_runs_the_topic_script_baked_into_the_shared_image() -> None:
    init = _services()["kafka-init"]
    assert init["command"] == ["python", "/app/create_topics.py"]
    assert init["build"]["target"] == "shared"
    assert init["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY deploy/kafka/create_topics.py /app/create_topics.py" in dockerfile


# ------------------------------------------------------------------ database per service


def _databases_created_by_init_sql() -> set[str]:
    sql = (DEPLOY / "postgres" / "init.sql").read_text()
    return set(re.findall(r"^CREATE DATABASE (\w+);", sql, flags=re.MULTILINE))


def test_each_app_service_uses_its_own_database_created_by_init_sql() -> None:
    created = _databases_created_by_init_sql()
    used: list[str] = []
    for name, (_, _, database) in APP_SERVICES.items():
        url = urlsplit(_services()[name]["environment"]["DATABASE_URL"])
        assert url.scheme == "postgresql"
        assert url.hostname == "postgres"
        assert url.path.lstrip("/") == database, name
        assert database in created, name
        used.append(database)
    assert len(set(used)) == len(APP_SERVICES)


def test_init_sql_is_mounted_into_the_postgres_entrypoint_directory() -> None:
    postgres = _services()["postgres"]
    assert postgres["image"].startswith("postgres:17")
    assert "./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/10-databases.sql:ro" in postgres["volumes"]


def test_credentials_come_from_the_environment_with_local_defaults() -> None:
    raw = compose_raw()["services"]
    assert raw["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:-")
    for name in APP_SERVICES:
        assert "${POSTGRES_PASSWORD:-" in raw[name]["environment"]["DATABASE_URL"], name
    overridden = interpolate(compose_raw(), {"POSTGRES_PASSWORD": "s3cret", "POSTGRES_USER": "svc"})
    url = urlsplit(overridden["services"]["care-gaps"]["environment"]["DATABASE_URL"])
    assert (url.username, url.password) == ("svc", "s3cret")


# ------------------------------------------------------------------ the four services


def _settings_fields(module: str) -> set[str]:
    """Environment names the service reads: the shared base plus its own settings class, if any."""
    fields = {name.upper() for name in ServiceSettings.model_fields}
    try:
        settings_module = __import__(f"{module}.settings", fromlist=["*"])
    except ModuleNotFoundError:
        return fields
    for value in vars(settings_module).values():
        if isinstance(value, type) and issubclass(value, ServiceSettings):
            fields |= {name.upper() for name in value.model_fields}
    return fields


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_is_configured_by_environment_only(name: str) -> None:
    service = _services()[name]
    _, module, _ = APP_SERVICES[name]
    for file_based in ("volumes", "configs", "secrets", "env_file"):
        assert file_based not in service, f"{name} takes configuration from {file_based}"
    assert service["command"] == ["python", "-m", module]
    env = service["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["HTTP_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container, behind the port mapping
    assert env["HTTP_PORT"] == "8080"
    unknown = set(env) - _settings_fields(module)
    assert unknown == set(), f"{name} sets variables no settings field reads"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_image_is_built_from_the_one_dockerfile_for_its_own_package(name: str) -> None:
    directory, module, _ = APP_SERVICES[name]
    build = _services()[name]["build"]
    assert build["dockerfile"] == "deploy/Dockerfile"
    assert build["target"] == "service"
    assert build["args"] == {"SERVICE_DIR": directory, "SERVICE_MODULE": module}
    assert (REPO / "services" / directory / "pyproject.toml").is_file()
    assert (REPO / "services" / directory / "src" / module / "__main__.py").is_file()


def test_app_host_ports_are_disjoint_ranges_wide_enough_to_scale_to_the_partition_count() -> None:
    seen: set[int] = set()
    for name in APP_SERVICES:
        (mapping,) = _services()[name]["ports"]
        match = re.fullmatch(r"127\.0\.0\.1:(\d+)-(\d+):8080", mapping)
        assert match, f"{name}: a fixed host port would stop `--scale {name}=N`"
        ports = set(range(int(match[1]), int(match[2]) + 1))
        assert len(ports) >= MEMBER_PARTITIONS, name
        assert not ports & seen, name
        seen |= ports


def test_dockerfile_runs_python_311_slim_as_a_non_root_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "python:3.11-slim" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users, "no USER instruction"
    assert users[-1] not in {"root", "0", "0:0"}
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    for stage in stages:
        stage_users = re.findall(r"^USER (\S+)", stage, flags=re.MULTILINE)
        assert stage_users and stage_users[-1].split(":")[0] not in {"root", "0"}, stage.splitlines()[0]
    assert "pip install /tmp/build/shared" in dockerfile
    assert "COPY services/${SERVICE_DIR}/" in dockerfile
