"""Collector (PHI redaction), Prometheus scraping and the provisioned Grafana dashboard."""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploy_files import DEPLOY, REPO, compose, json_file, yaml_file

PHI_KEYS = ("patient.name", "given_name", "family_name", "birth_date", "address", "diagnosis")


def _collector() -> dict[str, Any]:
    return yaml_file("otel-collector/config.yaml")


def _delete_or_hash_rules(config: dict[str, Any]) -> list[dict[str, Any]]:
    rules = config["processors"]["attributes/phi"]["actions"]
    assert all(rule["action"] in {"delete", "hash"} for rule in rules)
    return rules


def _removed_by_attribute_rules(key: str, rules: list[dict[str, Any]]) -> bool:
    # RE2 (the collector's regex engine) and Python's re agree on these simple patterns.
    return any(rule.get("key") == key or ("pattern" in rule and re.search(rule["pattern"], key)) for rule in rules)


def test_collector_config_parses_and_the_traces_pipeline_redacts_before_exporting() -> None:
    config = _collector()
    traces = config["service"]["pipelines"]["traces"]
    processors = traces["processors"]
    redaction = [name for name in processors if name.split("/")[0] == "redaction"]
    assert redaction, "no redaction processor in the traces pipeline"
    assert "attributes/phi" in processors
    assert processors.index("attributes/phi") < processors.index("batch")
    assert processors.index(redaction[0]) < processors.index("batch")
    for name in processors:
        assert name in config["processors"], name
    assert "attributes/phi" in config["service"]["pipelines"]["metrics"]["processors"]


def test_redaction_processor_fails_closed_with_an_allow_list() -> None:
    redaction = _collector()["processors"]["redaction/allowlist"]
    assert redaction["allow_all_keys"] is False
    allowed = set(redaction["allowed_keys"])
    assert allowed
    # network/server "address" attributes are host addresses, not a person's address.
    phi_words = re.compile(r"given|family|birth|dob|diagnos|phone|email|ssn|(patient|member)\.(name|address)|^address$")
    assert [key for key in allowed if phi_words.search(key)] == []
    assert any(re.search(pattern, "123-45-6789") for pattern in redaction["blocked_values"])


@pytest.mark.parametrize(
    "key",
    [
        *PHI_KEYS,
        "patient.given_name",
        "member.birth_date",
        "patient.address.line",
        "member.phone",
        "encounter.diagnosis",
        "encounter.diagnoses.primary",
    ],
)
def test_attributes_processor_removes_phi_keys(key: str) -> None:
    assert _removed_by_attribute_rules(key, _delete_or_hash_rules(_collector()))


def test_attributes_processor_keeps_the_ids_and_codes_the_services_emit() -> None:
    rules = _delete_or_hash_rules(_collector())
    allowed = _collector()["processors"]["redaction/allowlist"]["allowed_keys"]
    for key in allowed:
        assert not _removed_by_attribute_rules(key, rules), key


def test_every_span_attribute_key_the_shared_runtime_sets_is_allowed() -> None:
    allowed = set(_collector()["processors"]["redaction/allowlist"]["allowed_keys"])
    source = "\n".join(path.read_text() for path in (REPO / "shared" / "src" / "cth_shared").rglob("*.py"))
    emitted = set(re.findall(r"\"(cth\.[a-z_.]+|messaging\.[a-z_.]+)\"", source))
    assert emitted, "found no span attribute keys in the shared runtime"
    assert emitted - allowed == set()


def test_traces_go_to_jaeger_and_metrics_to_the_prometheus_exporter_that_prometheus_scrapes() -> None:
    config = _collector()
    pipelines = config["service"]["pipelines"]
    (traces_exporter,) = pipelines["traces"]["exporters"]
    assert traces_exporter.startswith("otlp")
    assert config["exporters"][traces_exporter]["endpoint"] == "jaeger:4317"
    (metrics_exporter,) = pipelines["metrics"]["exporters"]
    assert metrics_exporter == "prometheus"
    port = config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    scrape = yaml_file("prometheus/prometheus.yml")["scrape_configs"]
    targets = {target for job in scrape for group in job["static_configs"] for target in group["targets"]}
    assert f"otel-collector:{port}" in targets
    assert "kafka-exporter:9308" in targets


def test_collector_receives_otlp_http_on_the_port_the_services_export_to() -> None:
    receiver = _collector()["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert receiver.endswith(":4318")
    assert compose()["services"]["attribution"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318")
    health = _collector()["extensions"]["health_check"]["endpoint"]
    probe = " ".join(compose()["services"]["otel-collector"]["healthcheck"]["test"])
    assert f":{health.rsplit(':', 1)[1]}/" in probe


# ------------------------------------------------------------------ Grafana


def _prometheus_name(instrument: str, unit: str, kind: str) -> str:
    """OpenTelemetry -> Prometheus naming as the collector's prometheus exporter applies it."""
    base = instrument.replace(".", "_")
    unit_word = {"ms": "milliseconds", "s": "seconds", "By": "bytes"}.get(unit, "")
    if unit_word:
        base = f"{base}_{unit_word}"
    return {"counter": f"{base}_total", "histogram": f"{base}_bucket", "gauge": base}[kind]


#: (instrument, unit, kind, emitted by the shared runtime today?)
INSTRUMENTS = [
    ("events.consumed", "{event}", "counter", True),
    ("events.dead_lettered", "{event}", "counter", True),
    ("handler.batch.duration", "ms", "histogram", True),
    ("outbox.published", "{event}", "counter", True),
    ("outbox.backlog", "{event}", "gauge", True),
    ("batch.retries", "{attempt}", "counter", True),
    ("alert.end_to_end.duration", "ms", "histogram", False),
    ("webhook.deliveries", "{delivery}", "counter", False),
]

REQUIRED_PANELS = {
    "events consumed per service": "events_consumed_total",
    "handler batch latency p50 / p99": "handler_batch_duration_milliseconds_bucket",
    "end-to-end latency histogram": "alert_end_to_end_duration_milliseconds_bucket",
    "consumer lag": "kafka_consumergroup_lag",
    "dlq rate": "events_dead_lettered_total",
    "outbox backlog": "outbox_backlog",
    "webhook success rate": "webhook_deliveries_total",
    "transient retries": "batch_retries_total",
}


def _dashboard() -> dict[str, Any]:
    return json_file("grafana/dashboards/care-transitions-hub.json")


def test_dashboard_has_a_panel_for_each_required_signal() -> None:
    panels = _dashboard()["panels"]
    for title_part, metric in REQUIRED_PANELS.items():
        matching = [panel for panel in panels if title_part in panel["title"].lower()]
        assert matching, f"no panel titled like {title_part!r}"
        expressions = " ".join(target["expr"] for panel in matching for target in panel["targets"])
        assert metric in expressions, title_part


def test_dashboard_metric_names_follow_the_instruments_the_services_emit() -> None:
    source = "\n".join(path.read_text() for path in (REPO / "shared" / "src" / "cth_shared").rglob("*.py"))
    expressions = " ".join(target["expr"] for panel in _dashboard()["panels"] for target in panel["targets"])
    for instrument, unit, kind, emitted_today in INSTRUMENTS:
        if emitted_today:
            assert f'"{instrument}"' in source, f"the runtime no longer emits {instrument}"
        assert _prometheus_name(instrument, unit, kind) in expressions, instrument


def test_dashboard_panels_have_unique_ids_and_use_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasources = {
        source["uid"] for source in yaml_file("grafana/provisioning/datasources/datasources.yml")["datasources"]
    }
    assert {"prometheus", "jaeger"} <= datasources
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in datasources
        assert panel["targets"], panel["title"]


def test_grafana_provisions_the_dashboard_from_the_mounted_directory() -> None:
    provider = yaml_file("grafana/provisioning/dashboards/dashboards.yml")["providers"][0]
    grafana = compose()["services"]["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    directory = provider["options"]["path"]
    assert mounts[directory] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(directory)
    assert (DEPLOY / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).is_file()
