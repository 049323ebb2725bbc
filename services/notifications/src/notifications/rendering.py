"""Our JSON form of an alert (inbox API, SSE stream, webhook body) and its FHIR form."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import asyncpg

from .domain.fhir_message import build_notification_bundle


def _iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


def notification_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The alert as receivers see it: envelope fields + the role-limited ``content``."""
    content = row["content"]
    return {
        "id": row["notification_id"],
        "sequence": row["sequence"],
        "kind": row["kind"],
        "priority": row["priority"],
        "retraction": row["retraction"],
        "retracts_id": row["retracts_id"],
        "retracted_at": _iso(row["retracted_at"]),
        "recipient": {"id": row["recipient_id"], "role": row["recipient_role"],
                      "organization_id": row["organization_id"]},
        "member_id": row["member_id"],
        "encounter_id": row["encounter_id"],
        "event_time": _iso(row["event_time"]),
        "due_date": _iso(row["due_date"]),
        "created_at": _iso(row["created_at"]),
        "acknowledged_at": _iso(row["acknowledged_at"]),
        "status": "acknowledged" if row["acknowledged_at"] is not None else "new",
        "content": json.loads(content) if isinstance(content, str) else content,
        "rules_version": row["rules_version"],
    }


def notification_bundle(row: asyncpg.Record | dict[str, Any], endpoint: str, destination_name: str) -> dict[str, Any]:
    """The Da Vinci Unsolicited Notification Bundle of an encounter alert."""
    content = row["content"]
    return build_notification_bundle(
        notification_id=row["notification_id"], kind=row["kind"], retraction=row["retraction"],
        created_at=row["created_at"].isoformat(), content=json.loads(content) if isinstance(content, str) else content,
        destination_endpoint=endpoint, destination_name=destination_name,
    )
