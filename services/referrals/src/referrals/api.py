"""HTTP API of the referrals service (bearer token scoped to an organization).

A referral belongs to an organization: the ordering provider's TIN for explicit requests, the
discharging facility's TIN for discharge referrals. A token sees only its organization's
referrals: another organization's referral answers 404, another organization's lists 403.
"""

import json
from datetime import date
from typing import Annotated, Any, Literal

import asyncpg
from cth_shared.auth import Principal, principal_dependency
from cth_shared.runtime import ServiceContext
from fastapi import Depends, FastAPI, HTTPException, Path, Query, status

from . import store

SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"
MAX_REPORT_DAYS = 3 * 366
ReferralStatus = Literal["open", "unroutable", "completed", "leaked", "expired", "cancelled"]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def referral_view(row: asyncpg.Record) -> dict[str, Any]:
    """A referral with its explanation (score components of the choice and the alternatives)."""
    decision = _json(row["decision"]) or {}
    return {
        "referral_id": row["referral_id"],
        "member_id": row["member_id"],
        "service_category": row["service_category"],
        "origin": row["origin"],
        "organization_id": row["organization_id"],
        "ordering_npi": row["ordering_npi"],
        "encounter_id": row["encounter_id"],
        "urgency": row["urgency"],
        "requested_at": row["requested_at"].isoformat(),
        "status": row["status"],
        "routing_version": row["routing_version"],
        "chosen": decision.get("chosen"),
        "alternatives": decision.get("alternatives", []),
        "explanation": {
            "weights": decision.get("weights"),
            "tie_break": decision.get("tie_break"),
            "candidates_considered": decision.get("candidates_considered"),
            "unroutable_reason": row["unroutable_reason"],
            "unroutable_detail": decision.get("detail"),
        },
        "closed_at": row["closed_at"].isoformat() if row["closed_at"] else None,
        "close_reason": row["close_reason"],
        "leakage": None if row["leakage_kind"] is None else {
            "kind": row["leakage_kind"],
            "detected_at": row["leakage_detected_at"].isoformat(),
            "evidence": _json(row["leakage_evidence"]),
        },
    }


def _rate(leaked: int, routed: int) -> float:
    return round(leaked / routed, 4) if routed else 0.0


def create_api(ctx: ServiceContext) -> FastAPI:
    """The FastAPI app; the runtime adds /healthz and serves it."""
    app = FastAPI(title="referrals", description="Routed referrals, their explanation, and leakage reports")
    caller = principal_dependency(lambda: ctx.pool)

    def own_organization(organization_id: str, principal: Principal) -> None:
        if principal.organization_id != organization_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "token is not scoped to this organization")

    @app.get("/referrals/{referral_id}")
    async def get_referral(
        referral_id: Annotated[str, Path(pattern=SAFE_ID)],
        principal: Annotated[Principal, Depends(caller)],
    ) -> dict[str, Any]:
        row = await store.get_referral(ctx.pool, referral_id)
        if row is None or row["organization_id"] != principal.organization_id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such referral for this organization")
        return referral_view(row)

    @app.get("/organizations/{organization_id}/referrals")
    async def organization_referrals(
        organization_id: Annotated[str, Path(pattern=SAFE_ID)],
        principal: Annotated[Principal, Depends(caller)],
        referral_status: Annotated[ReferralStatus | None, Query(alias="status")] = None,
        page: Annotated[int, Query(ge=1, le=10_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        own_organization(organization_id, principal)
        total, rows = await store.organization_referrals(ctx.pool, organization_id, referral_status, page_size,
                                                         (page - 1) * page_size)
        return {"organization_id": organization_id, "status": referral_status, "page": page, "page_size": page_size,
                "total": total, "referrals": [referral_view(r) for r in rows]}

    @app.get("/organizations/{organization_id}/leakage")
    async def organization_leakage(
        organization_id: Annotated[str, Path(pattern=SAFE_ID)],
        principal: Annotated[Principal, Depends(caller)],
        start: Annotated[date, Query(description="First referral date (inclusive)")],
        end: Annotated[date, Query(description="Last referral date (inclusive)")],
    ) -> dict[str, Any]:
        own_organization(organization_id, principal)
        if end < start or (end - start).days > MAX_REPORT_DAYS:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                                f"end must be on or after start, at most {MAX_REPORT_DAYS} days later")
        rows = await store.leakage_by_ordering_provider(ctx.pool, organization_id, start, end)
        per_provider = [{
            "ordering_npi": r["ordering_npi"], "routed": r["routed"], "leaked": r["leaked"],
            "out_of_network": r["out_of_network"], "non_preferred": r["non_preferred"],
            "leakage_rate": _rate(r["leaked"], r["routed"]),
        } for r in rows]
        routed = sum(p["routed"] for p in per_provider)
        leaked = sum(p["leaked"] for p in per_provider)
        return {
            "organization_id": organization_id, "start": start.isoformat(), "end": end.isoformat(),
            "routed": routed, "leaked": leaked,
            "out_of_network": sum(p["out_of_network"] for p in per_provider),
            "non_preferred": sum(p["non_preferred"] for p in per_provider),
            "leakage_rate": _rate(leaked, routed),
            "by_ordering_provider": per_provider,
        }

    return app
