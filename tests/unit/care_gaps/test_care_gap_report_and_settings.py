"""The DEQM gaps report shape and the settings -> measure configuration mapping."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from care_gaps.domain.measures import MeasureConfig
from care_gaps.report import GAP_STATUS_EXTENSION, gaps_report
from care_gaps.settings import CareGapsSettings

EST = timezone(timedelta(hours=-5))


def gap(measure: str, status: str, gap_id: str, closing_rule: str | None = None) -> dict[str, object]:
    return {
        "gap_id": gap_id, "measure": measure, "status": status, "encounter_id": "SEG-1",
        "discharged_at": datetime(2026, 3, 6, 14, 30, tzinfo=EST), "window_start": date(2026, 3, 7),
        "due_date": date(2026, 3, 13), "closing_rule": closing_rule,
        "closed_at": datetime(2026, 3, 12, 15, 0, tzinfo=UTC) if closing_rule else None,
    }


def test_the_gaps_report_is_a_deqm_document_bundle_with_one_detected_issue_per_gap() -> None:
    gaps = [
        gap("tcm_face_to_face", "closed", "GAP-A", "virtual_visit_face_to_face_code"),
        gap("trc_medication_reconciliation", "open", "GAP-B"),
        gap("readmission_watch", "open", "GAP-C"),
        gap("trc_patient_engagement", "not_applicable", "GAP-D"),
    ]
    bundle = gaps_report("M-1", "987654321", gaps, date(2026, 3, 1), date(2026, 3, 31), MeasureConfig(),
                         datetime(2026, 3, 20, tzinfo=UTC))
    resources = [e["resource"] for e in bundle["entry"]]
    assert bundle["type"] == "document"
    assert resources[0]["resourceType"] == "Composition"
    assert resources[0]["type"]["coding"][0]["code"] == "96315-7"
    issues = {r["identifier"][0]["value"]: r for r in resources if r["resourceType"] == "DetectedIssue"}
    assert set(issues) == {"GAP-A", "GAP-B"}, "the watch and not-applicable gaps are not care gaps"
    status_of = {k: v["modifierExtension"][0] for k, v in issues.items()}
    assert status_of["GAP-A"]["url"] == GAP_STATUS_EXTENSION
    assert status_of["GAP-A"]["valueCodeableConcept"]["coding"][0]["code"] == "closed-gap"
    assert status_of["GAP-B"]["valueCodeableConcept"]["coding"][0]["code"] == "open-gap"
    reports = [r for r in resources if r["resourceType"] == "MeasureReport"]
    assert {r["type"] for r in reports} == {"individual"}
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert set(patient) == {"resourceType", "id", "identifier"}, "no demographics in the report"


def test_the_report_period_selects_gaps_by_local_discharge_date() -> None:
    bundle = gaps_report("M-1", "987654321", [gap("tcm_face_to_face", "open", "GAP-A")],
                         date(2026, 3, 7), date(2026, 3, 31), MeasureConfig(), datetime(2026, 3, 20, tzinfo=UTC))
    assert not [e for e in bundle["entry"] if e["resource"]["resourceType"] == "DetectedIssue"]


def test_default_settings_describe_the_default_measure_configuration() -> None:
    assert CareGapsSettings().measure_config() == MeasureConfig()


def test_settings_change_windows_code_sets_and_exclusions() -> None:
    config = CareGapsSettings(measures_version="tocm-2026.2", hospice_dispositions="", fuh_short_days=8,
                              engagement_codes="99213").measure_config()
    assert config.version == "tocm-2026.2"
    assert config.hospice_dispositions == frozenset()
    assert config.fuh_short_days == 8
    assert config.engagement_codes == {"99213"}
