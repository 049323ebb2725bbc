"""HTTP API: a member's gaps, an organization's ranked worklist, a DEQM gaps report.

Every route needs a bearer token of an organization (``cth_shared.auth``). A member
belongs to the organization of its current gap owner (the attributed PCP's TIN, else the
V1C group's); other organizations get 404 for the member and 403 for the worklist.
"""


from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import asyncpg
from cth_shared.auth import Principal, principal_dependency
from fastapi import Depends, FastAPI, HTTPException, Query

from . import store
from .domain.measures import MeasureConfig
from .report import gaps_report

GapStatus = Literal["open", "overdue", "closed", "not_applicable"]


def _gap_json(row: Any) -> dict[str, Any]:
    return {
        "gap_id": row["gap_id"], "member_id": row["member_id"], "measure": row["measure"],
        "measure_version": row["measure_version"], "encounter_id": row["encounter_id"],
        "discharged_at": row["discharged_at"].isoformat(), "window_start": row["window_start"].isoformat(),
        "due_date": row["due_date"].isoformat(), "status": row["status"],
        "owner": {"role": row["owner_role"], "id": row["owner_id"]}, "priority": row["priority"],
        "closing_event_id": row["closing_event_id"], "closing_rule": row["closing_rule"],
        "closed_at": row["closed_at"].isoformat() if row["closed_at"] else None,
        "overdue_detected_at": row["overdue_detected_at"].isoformat() if row["overdue_detected_at"] else None,
        "not_applicable_reason": row["not_applicable_reason"],
    }


def create_api(pool_getter: Any, config: MeasureConfig) -> FastAPI:
    """The FastAPI app; ``pool_getter()`` returns the service's pool."""
    app = FastAPI(title="care-gaps", version=config.version)
    principal = principal_dependency(pool_getter)
    Caller = Annotated[Principal, Depends(principal)]  # type: ignore[call-overload]  # dependency object

    def pool() -> asyncpg.Pool:
        return pool_getter()

    async def owned_member(member_id: str, caller: Principal) -> str:
        organization = await store.member_organization(pool(), member_id)
        if organization is None or organization != caller.organization_id:
            raise HTTPException(404, "member not found")
        return organization

    @app.get("/members/{member_id}/gaps")
    async def member_gaps(member_id: str, caller: Caller) -> dict[str, Any]:
        await owned_member(member_id, caller)
        rows = await store.gaps_of_member(pool(), member_id)
        return {"member_id": member_id, "gaps": [_gap_json(r) for r in rows]}

    @app.get("/organizations/{organization_id}/worklist")
    async def worklist(
        organization_id: str, caller: Caller,
        status: Annotated[list[GapStatus] | None, Query()] = None,
        measure: Annotated[str | None, Query(max_length=64)] = None,
        page: Annotated[int, Query(ge=1, le=10_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Gaps of the organization's members, priority desc then due date; default status open+overdue."""
        if organization_id != caller.organization_id:
            raise HTTPException(403, "a token sees only its own organization's worklist")
        statuses = status or ["open", "overdue"]
        total, rows = await store.worklist(pool(), organization_id, statuses=statuses, measure=measure,
                                           limit=page_size, offset=(page - 1) * page_size)
        return {"organization_id": organization_id, "page": page, "page_size": page_size, "total": total,
                "items": [_gap_json(r) for r in rows]}

    @app.get("/members/{member_id}/gaps-report")
    async def member_gaps_report(member_id: str, caller: Caller, start: date, end: date) -> dict[str, Any]:
        if end < start:
            raise HTTPException(422, "end is before start")
        organization = await owned_member(member_id, caller)
        rows = await store.gaps_of_member(pool(), member_id)
        return gaps_report(member_id, organization, rows, start, end, config, datetime.now(UTC))

    return app
