"""Alert rules as versioned configuration: which event becomes which alert, for whom, how urgent.

DESIGN.md section 3 (notifications): admit, transfer, discharge, ED visit, readmission,
gap opened/overdue, referral routed and leakage produce alerts for the care team in force
at the event's time and for organization subscriptions. The rule set is data: a new
version is a new entry in ``RULE_SETS``; the service runs the one named by settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

Priority = Literal["routine", "high", "urgent"]
PRIORITY_RANK: dict[str, int] = {"routine": 0, "high": 1, "urgent": 2}


class Kind(StrEnum):
    """Alert kinds (the values of ``NotificationKind`` in the contracts)."""

    ADMIT = "admit"
    TRANSFER = "transfer"
    DISCHARGE = "discharge"
    ED_VISIT = "ed_visit"
    READMISSION = "readmission"
    GAP_OPENED = "gap_opened"
    GAP_OVERDUE = "gap_overdue"
    REFERRAL_ROUTED = "referral_routed"
    LEAKAGE = "leakage"


#: Kinds about a hospital encounter: they can be retracted by an A11/A13 cancel and are
#: rendered as Da Vinci Unsolicited Notifications.
ENCOUNTER_KINDS = frozenset({Kind.ADMIT, Kind.TRANSFER, Kind.DISCHARGE, Kind.ED_VISIT, Kind.READMISSION})
#: What an A11 (cancel admit) and an A13 (cancel discharge) retract.
RETRACTED_BY_CANCEL: dict[str, frozenset[Kind]] = {
    "admit": frozenset({Kind.ADMIT, Kind.ED_VISIT, Kind.READMISSION}),
    "discharge": frozenset({Kind.DISCHARGE}),
}

# Roles an alert can be addressed to. "gap_owner", "ordering_provider" and
# "receiving_provider" are resolved from the event itself; the others from the care team.
Role = Literal["pcp", "v1c_provider", "care_manager", "receiving_provider", "gap_owner", "ordering_provider"]


@dataclass(frozen=True)
class AlertRule:
    """Which roles a kind alerts and with which priority."""

    roles: tuple[Role, ...]
    priority: Priority


@dataclass(frozen=True)
class RuleSet:
    """One version of the alert rules."""

    version: str
    rules: Mapping[Kind, AlertRule]

    def rule_for(self, kind: Kind) -> AlertRule | None:
        return self.rules.get(kind)


RULE_SETS: dict[str, RuleSet] = {
    "alerts-2026.1": RuleSet(
        version="alerts-2026.1",
        rules={
            Kind.ADMIT: AlertRule(("pcp", "v1c_provider", "care_manager"), "high"),
            Kind.ED_VISIT: AlertRule(("pcp", "v1c_provider"), "urgent"),
            Kind.READMISSION: AlertRule(("pcp", "v1c_provider", "care_manager"), "urgent"),
            Kind.TRANSFER: AlertRule(("pcp", "v1c_provider", "care_manager"), "routine"),
            Kind.DISCHARGE: AlertRule(("pcp", "v1c_provider", "care_manager", "receiving_provider"), "high"),
            Kind.GAP_OPENED: AlertRule(("gap_owner",), "routine"),
            Kind.GAP_OVERDUE: AlertRule(("gap_owner",), "high"),
            Kind.REFERRAL_ROUTED: AlertRule(("ordering_provider", "pcp"), "routine"),
            Kind.LEAKAGE: AlertRule(("care_manager", "pcp"), "high"),
        },
    ),
}


def rule_set(version: str) -> RuleSet:
    """The rule set named ``version``; unknown versions fail loudly at start-up."""
    try:
        return RULE_SETS[version]
    except KeyError:
        raise ValueError(f"unknown alert rules version {version!r}; known: {sorted(RULE_SETS)}") from None


# --------------------------------------------------------------------------- encounters
def encounter_alert_kind(
    event_type: str,
    patient_class: str,
    trigger: str,
    *,
    admitted_at: datetime | None = None,
    previous_discharges: Sequence[datetime] = (),
    readmission_window: timedelta = timedelta(days=30),
) -> Kind | None:
    """The alert kind an encounter event raises, or None.

    - A08 is an update of a state we already alerted on: never an alert.
    - An admission of patient class ``emergency`` is an ED visit.
    - An inpatient/observation admission within ``readmission_window`` (30 days, CMS
      Hospital Readmissions Reduction Program / HEDIS PCR) after a discharge of the same
      member is a readmission: it replaces the plain admit alert so the care team gets one,
      more urgent, alert.
    """
    if trigger == "A08":
        return None
    if event_type == "encounter.admitted":
        if patient_class == "emergency":
            return Kind.ED_VISIT
        if admitted_at is not None and patient_class in ("inpatient", "observation") and is_readmission(
            admitted_at, previous_discharges, readmission_window
        ):
            return Kind.READMISSION
        return Kind.ADMIT
    if event_type == "encounter.transferred":
        return Kind.TRANSFER
    if event_type == "encounter.discharged":
        return Kind.DISCHARGE
    return None


def is_readmission(admitted_at: datetime, previous_discharges: Iterable[datetime], window: timedelta) -> bool:
    """True when a previous discharge lies in ``[admitted_at - window, admitted_at]`` (30-day readmission)."""
    return any(admitted_at - window <= discharged_at <= admitted_at for discharged_at in previous_discharges)


# --------------------------------------------------------------------------- recipients
@dataclass(frozen=True)
class CareTeamEntry:
    """One member of the care team in force at the event's time."""

    role: str
    id: str
    tin: str | None = None


@dataclass(frozen=True)
class Recipient:
    """Who receives one alert, in which role, under which organization (the token scope)."""

    recipient_id: str
    role: str
    organization_id: str


@dataclass(frozen=True)
class EventParties:
    """Recipients named by the event itself rather than by the care team."""

    gap_owner: tuple[str, str | None] | None = None  # (role, id)
    ordering_npi: str | None = None
    receiving_npi: str | None = None


@dataclass(frozen=True)
class Subscription:
    """An organization's subscription.

    ``audience="organization"``: "all <kinds> for members attributed to my TIN" — alerts
    addressed to the organization itself. ``audience="care_team"``: the organization's
    clinicians' alerts (optionally one clinician's) routed to its endpoint.
    """

    subscription_id: str
    organization_id: str
    kinds: frozenset[str] | None = None  # None: every kind
    patient_classes: frozenset[str] | None = None  # None: every setting
    audience: str = "organization"
    channel: str = "inbox"
    recipient_id: str | None = None


def organization_of(entry: CareTeamEntry, payer_organization_id: str) -> str:
    """Token scope of a care-team recipient: its TIN, else the payer (care managers)."""
    return entry.tin or payer_organization_id


def care_team_recipients(
    rule: AlertRule, care_team: Sequence[CareTeamEntry], parties: EventParties, payer_organization_id: str
) -> list[Recipient]:
    """The care-team recipients of one alert, in rule order, one per (organization, id).

    ``receiving_provider`` means the provider the member is discharged to when the event
    names one, else any receiving provider on the care team. ``gap_owner`` is the owner on
    the gap event (an unassigned gap goes to the care manager). ``ordering_provider`` is the
    referral's ordering NPI.
    """
    by_id = {entry.id: entry for entry in care_team}
    found: list[Recipient] = []

    def add(role: str, recipient_id: str, tin: str | None = None) -> None:
        known = by_id.get(recipient_id)
        organization = tin or (known.tin if known else None) or payer_organization_id
        if not any(r.recipient_id == recipient_id and r.organization_id == organization for r in found):
            found.append(Recipient(recipient_id, role, organization))

    for role in rule.roles:
        if role == "gap_owner":
            if parties.gap_owner is None:
                continue
            owner_role, owner_id = parties.gap_owner
            if owner_id and owner_role != "unassigned":
                add(owner_role, owner_id)
            else:
                for entry in care_team:
                    if entry.role == "care_manager":
                        add("care_manager", entry.id, entry.tin)
        elif role == "ordering_provider":
            if parties.ordering_npi:
                add("ordering_provider", parties.ordering_npi)
        elif role == "receiving_provider":
            if parties.receiving_npi:
                add("receiving_provider", parties.receiving_npi)
            else:
                for entry in care_team:
                    if entry.role == "receiving_provider":
                        add(entry.role, entry.id, entry.tin)
        else:
            for entry in care_team:
                if entry.role == role:
                    add(entry.role, entry.id, entry.tin)
    return found


def subscription_matches(subscription: Subscription, kind: Kind, patient_class: str | None) -> bool:
    """Does an organization subscription want this alert? (Readmissions count as admits.)"""
    if subscription.kinds is not None:
        wanted = set(subscription.kinds)
        if Kind.ADMIT in wanted:
            wanted.add(Kind.READMISSION)
        if kind not in wanted:
            return False
    if subscription.patient_classes is not None and patient_class is not None:
        return patient_class in subscription.patient_classes
    return True


def organization_recipients(
    kind: Kind, patient_class: str | None, care_team: Sequence[CareTeamEntry], subscriptions: Sequence[Subscription]
) -> list[Recipient]:
    """Organizations whose subscription matches and to whose TIN the member is attributed.

    "Attributed to my TIN" means: a PCP or V1C provider on the care team in force at the
    event's time bills under that TIN.
    """
    attributed_tins = {e.tin for e in care_team if e.tin and e.role in ("pcp", "v1c_provider")}
    organizations: list[Recipient] = []
    for subscription in subscriptions:
        if subscription.audience != "organization" or subscription.organization_id not in attributed_tins:
            continue
        if not subscription_matches(subscription, kind, patient_class):
            continue
        if all(r.organization_id != subscription.organization_id for r in organizations):
            organizations.append(Recipient(subscription.organization_id, "organization", subscription.organization_id))
    return organizations


@dataclass(frozen=True)
class PlannedAlert:
    recipient: Recipient
    kind: Kind
    priority: Priority
    retraction: bool = False


def plan_alerts(
    rules: RuleSet,
    kind: Kind,
    patient_class: str | None,
    care_team: Sequence[CareTeamEntry],
    parties: EventParties,
    subscriptions: Sequence[Subscription],
    payer_organization_id: str,
) -> list[PlannedAlert]:
    """Every alert one event raises: the care team by rule, then subscribed organizations."""
    rule = rules.rule_for(kind)
    if rule is None:
        return []
    planned = [
        PlannedAlert(recipient, kind, rule.priority)
        for recipient in care_team_recipients(rule, care_team, parties, payer_organization_id)
    ]
    planned += [
        PlannedAlert(recipient, kind, rule.priority)
        for recipient in organization_recipients(kind, patient_class, care_team, subscriptions)
    ]
    return planned


def delivery_subscriptions(
    recipient: Recipient, kind: Kind, patient_class: str | None, subscriptions: Sequence[Subscription]
) -> list[Subscription]:
    """The push subscriptions (webhook, FHIR message) one alert is delivered through.

    Organization alerts go to the organization's ``organization`` subscriptions; clinicians'
    and care managers' alerts to their organization's ``care_team`` subscriptions (all of
    its clinicians, or the one named). FHIR message subscriptions only carry encounter kinds.
    """
    wanted_audience = "organization" if recipient.role == "organization" else "care_team"
    chosen = []
    for subscription in subscriptions:
        if subscription.channel not in ("webhook", "fhir_message"):
            continue
        if subscription.organization_id != recipient.organization_id or subscription.audience != wanted_audience:
            continue
        if subscription.recipient_id is not None and subscription.recipient_id != recipient.recipient_id:
            continue
        if subscription.channel == "fhir_message" and kind not in ENCOUNTER_KINDS:
            continue
        if subscription_matches(subscription, kind, patient_class):
            chosen.append(subscription)
    return chosen
