"""HTTP API: current and as-of attribution, an organization's panel, a Da Vinci ATR Group export.

Every route needs a bearer token; the token's organization is a PCP TIN and sees only the
members attributed to it (other members answer 404, other organizations' lists 403).
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Annotated, Any

import asyncpg
from cth_shared.auth import Principal, principal_dependency
from fastapi import Depends, FastAPI, HTTPException, Query, status
from fhir.resources.R4B.group import Group

from .domain import AttributionRules

ATR = "http://hl7.org/fhir/us/davinci-atr"
EXT_CHANGE_TYPE = f"{ATR}/StructureDefinition/ext-changeType"
EXT_ATTRIBUTED_PROVIDER = f"{ATR}/StructureDefinition/ext-attributedProvider"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
TIN_SYSTEM = "urn:oid:2.16.840.1.113883.4.4"
MEMBER_ID_SYSTEM = "urn:cth:member-id"
_VERSION_RE = re.compile(r"^\d{1,9}$")


def _row_view(row: asyncpg.Record, *, as_of: date | None = None) -> dict[str, Any]:
    view = {
        "member_id": row["member_id"],
        "method": row["method"],
        "pcp_npi": row["pcp_npi"],
        "organization_id": row["pcp_tin"],
        "care_team": json.loads(row["care_team"]),
        "explanation": json.loads(row["explanation"]),
    }
    if as_of is None:
        view.update(effective_from=row["effective_from"], computed_as_of=row["as_of"])
    else:
        view.update(as_of=as_of, effective_from=row["effective_from"], effective_to=row["effective_to"])
    return view


def _own_org(principal: Principal, organization_id: str) -> None:
    if principal.organization_id != organization_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a token sees only its own organization")


async def panel_members(pool: asyncpg.Pool, organization_id: str, on: date | None = None) -> dict[str, str]:
    """{member_id: pcp_npi} attributed to ``organization_id`` now, or on date ``on`` (history)."""
    if on is None:
        rows = await pool.fetch(
            "SELECT member_id, pcp_npi FROM attribution_current WHERE pcp_tin = $1", organization_id
        )
    else:
        rows = await pool.fetch(
            "SELECT member_id, pcp_npi FROM attribution_history WHERE pcp_tin = $1 AND effective_from <= $2"
            " AND (effective_to IS NULL OR effective_to > $2)",
            organization_id, on,
        )
    return {r["member_id"]: r["pcp_npi"] for r in rows}


def atr_group(organization_id: str, version: int, members: dict[str, str], previous: dict[str, str] | None,
              effective: dict[str, date]) -> dict[str, Any]:
    """A Da Vinci ATR-shaped Group (FHIR R4/R4B) with a ``changeType`` per member against ``previous``.

    changeType codes (ATR CodeSystem atr-changetype): new, changed, nochange, dropped (dropped
    members are listed with ``inactive: true``). Without ``previous`` every member is ``new``.
    """
    entries = []
    for member_id in sorted(members):
        if previous is None or member_id not in previous:
            change = "new"
        elif previous[member_id] != members[member_id]:
            change = "changed"
        else:
            change = "nochange"
        entry: dict[str, Any] = {
            "extension": [
                {"url": EXT_CHANGE_TYPE, "valueCode": change},
                {"url": EXT_ATTRIBUTED_PROVIDER, "valueReference": {
                    "type": "Practitioner", "identifier": {"system": NPI_SYSTEM, "value": members[member_id]}}},
            ],
            "entity": {"type": "Patient", "identifier": {"system": MEMBER_ID_SYSTEM, "value": member_id}},
        }
        if member_id in effective and effective[member_id] is not None:
            entry["period"] = {"start": effective[member_id].isoformat()}
        entries.append(entry)
    for member_id in sorted(set(previous or ()) - set(members)):
        entries.append({
            "extension": [{"url": EXT_CHANGE_TYPE, "valueCode": "dropped"}],
            "entity": {"type": "Patient", "identifier": {"system": MEMBER_ID_SYSTEM, "value": member_id}},
            "inactive": True,
        })
    group = Group.model_validate({
        "resourceType": "Group",
        "id": f"atr-{organization_id}",
        "meta": {"versionId": str(version), "profile": [f"{ATR}/StructureDefinition/atr-group"]},
        "identifier": [{"system": "urn:cth:attribution-contract", "value": organization_id}],
        "active": True,
        "type": "person",
        "actual": True,
        "name": f"Attributed members of TIN {organization_id}",
        "managingEntity": {"type": "Organization", "identifier": {"system": TIN_SYSTEM, "value": organization_id}},
        "quantity": len(members),
        "member": entries or None,
    })
    return json.loads(group.model_dump_json(exclude_none=True))


def create_api(pool: asyncpg.Pool, rules: AttributionRules) -> FastAPI:
    """The FastAPI app over the service pool."""
    app = FastAPI(title="attribution", version=rules.rules_version)
    principal_of = principal_dependency(lambda: pool)

    @app.get("/members/{member_id}/attribution")
    async def member_attribution(
        member_id: str, as_of: date | None = None, principal: Principal = Depends(principal_of),
    ) -> dict[str, Any]:
        """The member's current attribution with its explanation, or the one in force on ``as_of``."""
        current = await pool.fetchrow("SELECT * FROM attribution_current WHERE member_id = $1", member_id)
        owns_now = current is not None and current["pcp_tin"] == principal.organization_id
        if as_of is None:
            if not owns_now:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no member attributed to your organization")
            return _row_view(current)
        row = await pool.fetchrow(
            "SELECT * FROM attribution_history WHERE member_id = $1 AND effective_from <= $2"
            " AND (effective_to IS NULL OR effective_to > $2)",
            member_id, as_of,
        )
        owned_then = row is not None and row["pcp_tin"] == principal.organization_id
        if not (owns_now or owned_then):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no member attributed to your organization")
        if row is None:
            return {"member_id": member_id, "as_of": as_of, "method": "unattributed", "pcp_npi": None,
                    "organization_id": None, "care_team": [], "effective_from": None, "effective_to": None,
                    "explanation": {"reason_code": "no_attribution_recorded", "rules_version": rules.rules_version}}
        return _row_view(row, as_of=as_of)

    @app.get("/organizations/{organization_id}/panel")
    async def panel(
        organization_id: str,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
        principal: Principal = Depends(principal_of),
    ) -> dict[str, Any]:
        """The organization's attributed members, paged by member id."""
        _own_org(principal, organization_id)
        total = await pool.fetchval("SELECT count(*) FROM attribution_current WHERE pcp_tin = $1", organization_id)
        rows = await pool.fetch(
            "SELECT member_id, method, pcp_npi, effective_from FROM attribution_current WHERE pcp_tin = $1"
            " ORDER BY member_id LIMIT $2 OFFSET $3",
            organization_id, page_size, (page - 1) * page_size,
        )
        return {
            "organization_id": organization_id, "page": page, "page_size": page_size, "total": total,
            "members": [dict(r) for r in rows],
        }

    @app.get("/organizations/{organization_id}/Group")
    async def group(
        organization_id: str, since: str | None = None, principal: Principal = Depends(principal_of),
    ) -> dict[str, Any]:
        """Da Vinci ATR Group of the organization's members; ``since`` = a previous version number or a date.

        Each export is recorded as a new version (``meta.versionId``) to compare later exports against.
        """
        _own_org(principal, organization_id)
        previous: dict[str, str] | None = None
        if since is not None:
            if _VERSION_RE.match(since):
                raw = await pool.fetchval(
                    "SELECT members FROM group_exports WHERE organization_id = $1 AND version = $2",
                    organization_id, int(since),
                )
                if raw is None:
                    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no Group version {since}")
                previous = json.loads(raw)
            else:
                try:
                    previous = await panel_members(pool, organization_id, date.fromisoformat(since))
                except ValueError:
                    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                        "since is a version number or a YYYY-MM-DD date") from None
        rows = await pool.fetch(
            "SELECT member_id, pcp_npi, effective_from FROM attribution_current WHERE pcp_tin = $1", organization_id
        )
        members = {r["member_id"]: r["pcp_npi"] for r in rows}
        effective = {r["member_id"]: r["effective_from"] for r in rows}
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('group:' || $1))", organization_id)
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM group_exports WHERE organization_id = $1", organization_id
            )
            await conn.execute(
                "INSERT INTO group_exports(organization_id, version, members) VALUES ($1, $2, $3::jsonb)",
                organization_id, version, json.dumps(members),
            )
        return atr_group(organization_id, version, members, previous, effective)

    return app
