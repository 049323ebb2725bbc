"""A deterministic synthetic payer population and its event timeline (demo and benchmarks).

Same seed, same bytes: every random choice comes from a ``random.Random`` seeded from the
configuration (one per member, one per day), never the global generator, and no wall clock
is read. Event ids are ``s<seed>-<sequence>``.

The population: a payer with ``members`` members in a few metro areas (ages, risk scores,
addresses with coordinates, four plans including a virtual-first plan whose members default
to the V1C group), PCPs (NUCC 207Q00000X / 207R00000X), specialists, post-acute providers
(home health 251E00000X, SNF 314000000X, IRF 283X00000X, hospice 251G00000X) with network
tiers, quality, cost and capacity, hospitals sending HL7 v2 in two vendor styles, and a V1C
group.

The timeline (:meth:`Population.timeline`) is a generator of :class:`TimelineItem` in time
order: the provider directory and the roster first, then claims over the lookback period, then
during the period V1C visits, referral requests, ED visits, observation stays and admissions
with transfers, A08 updates, cancels (A11/A13), discharges with NUBC dispositions,
readmissions and post-discharge follow-up. ADT events are HL7 v2 text so the real parser is
used. Memory is bounded by the items of the next few weeks of open episodes, not by the
length of the timeline.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from cth_shared.contracts import CloudEvent, new_event, npi_with_check_digit
from cth_shared.contracts.events import (
    ClaimAdjudicated,
    ClaimLine,
    Facility,
    MemberEnrolled,
    ProviderUpserted,
    ReferralRequested,
    VirtualVisitCompleted,
)

from .hl7_adt import AdtSettings

__all__ = ["Hospital", "Population", "PopulationConfig", "Provider", "TimelineItem"]


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One thing that happens at ``at``: a CloudEvent, or an HL7 v2 message (text, CR-separated)."""

    at: datetime
    kind: Literal["event", "hl7"]
    payload: CloudEvent[Any] | str


@dataclass(frozen=True)
class PopulationConfig:
    """What to generate. ``start`` + ``days`` is the live period; claims history precedes it."""

    members: int = 1000
    seed: int = 1
    start: date = date(2026, 3, 1)
    days: int = 30
    lookback_days: int = 365
    tenant: str = "payer-demo"
    #: Annual rates per member (scaled by risk where it matters).
    claims_per_year: float = 8.0
    admissions_per_year: float = 0.09
    ed_visits_per_year: float = 0.35
    observation_per_year: float = 0.05
    v1c_visits_per_year: float = 3.0
    referrals_per_year: float = 0.4
    new_member_share: float = 0.03
    non_member_ed_share: float = 0.01


@dataclass(frozen=True)
class Metro:
    name: str
    state: str
    zip_prefix: str
    latitude: float
    longitude: float
    timezone: str


METROS = (
    Metro("Chicago", "IL", "606", 41.8781, -87.6298, "America/Chicago"),
    Metro("Atlanta", "GA", "303", 33.7490, -84.3880, "America/New_York"),
    Metro("Phoenix", "AZ", "850", 33.4484, -112.0740, "America/Phoenix"),
    Metro("Denver", "CO", "802", 39.7392, -104.9903, "America/Denver"),
)
METRO_WEIGHTS = (0.4, 0.25, 0.2, 0.15)


@dataclass(frozen=True)
class Plan:
    plan_id: str
    network_id: str
    product: str
    virtual_first: bool = False


PLANS = (
    Plan("PLAN-MA-PPO", "NET-A", "medicare_advantage"),
    Plan("PLAN-COM-HMO", "NET-B", "commercial"),
    Plan("PLAN-VF", "NET-A", "commercial", virtual_first=True),
    Plan("PLAN-MCD", "NET-B", "medicaid"),
)
PLAN_WEIGHTS = (0.3, 0.35, 0.2, 0.15)


@dataclass(frozen=True)
class Provider:
    npi: str
    name: str
    organization_name: str
    tin: str
    taxonomy: str
    role: str
    services: tuple[str, ...]
    networks: tuple[tuple[str, str], ...]
    metro: int
    latitude: float
    longitude: float
    capacity: int
    quality_score: float
    cost_index: float
    virtual_capable: bool = False


@dataclass(frozen=True)
class Hospital:
    npi: str
    name: str
    namespace: str
    tin: str
    metro: int
    style: Literal["v251", "v23"]
    mrn_prefix: str
    oid: str

    @property
    def identifier_system(self) -> str:
        """How the hospital's MRNs appear on the roster (matching what its ADT feed sends)."""
        return f"urn:oid:{self.oid}" if self.style == "v251" else f"urn:cth:facility:{self.namespace}"


@dataclass(frozen=True)
class MemberProfile:
    index: int
    member_id: str
    given_name: str
    family_name: str
    sex: str
    birth_date: date
    metro: int
    address: dict[str, Any]
    plan: Plan
    risk_score: float
    usual_pcp: Provider
    selected_pcp: bool
    care_manager_id: str | None
    effective_date: date
    hospitals: tuple[Hospital, ...]

    def mrn(self, hospital: Hospital) -> str:
        return f"{hospital.mrn_prefix}{self.index + 1:08d}"


GIVEN = (
    "Ada",
    "Grace",
    "Alan",
    "Mary",
    "James",
    "Linda",
    "Robert",
    "Maria",
    "David",
    "Aisha",
    "Wei",
    "Carlos",
    "Fatima",
    "John",
    "Patricia",
    "Michael",
    "Jennifer",
    "William",
    "Elena",
    "Kwame",
    "Priya",
    "Thomas",
)
FAMILY = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Nguyen",
    "O'Brien",
    "Okafor",
    "Patel",
    "Kim",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Moore",
)
STREETS = (
    "Elm",
    "Oak",
    "Maple",
    "Cedar",
    "Pine",
    "Lake",
    "Hill",
    "Washington",
    "Park",
    "Main",
    "Sunset",
    "River",
)

SPECIALTIES = (  # (service category, NUCC taxonomy, label)
    ("cardiology", "207RC0000X", "Cardiology"),
    ("pulmonology", "207RP1001X", "Pulmonology"),
    ("endocrinology", "207RE0101X", "Endocrinology"),
    ("nephrology", "207RN0300X", "Nephrology"),
    ("orthopedics", "207X00000X", "Orthopedics"),
    ("neurology", "2084N0400X", "Neurology"),
    ("oncology", "207RX0202X", "Oncology"),
    ("behavioral_health", "2084P0800X", "Behavioral Health"),
)
POST_ACUTE = (  # (service category, NUCC taxonomy, label, place of service, procedure code)
    ("home_health", "251E00000X", "Home Health", "12", "G0299"),
    ("snf", "314000000X", "Skilled Nursing", "31", "99308"),
    ("inpatient_rehab", "283X00000X", "Rehabilitation Hospital", "61", "97110"),
    ("hospice", "251G00000X", "Hospice", "34", "G0299"),
)
INPATIENT_DX = ("I50.9", "J18.9", "J44.1", "N39.0", "A41.9", "I63.9", "S72.001A", "I21.4", "F32.9", "F20.9")
ED_DX = ("R07.9", "S93.401A", "R10.9", "J06.9", "R51.9", "M54.50")
CHRONIC_DX = ("I10", "E11.9", "E78.5", "J44.9", "N18.3", "F41.1", "M17.11")
DISPOSITIONS_INPATIENT = (
    ("01", 62),
    ("06", 14),
    ("03", 10),
    ("62", 4),
    ("50", 2),
    ("20", 2),
    ("02", 3),
    ("07", 3),
)
DISPOSITIONS_ED = (("01", 93), ("07", 5), ("02", 2))
DISPOSITIONS_OBS = (("01", 85), ("06", 10), ("07", 5))
POST_ACUTE_BY_DISPOSITION = {"06": "home_health", "03": "snf", "62": "inpatient_rehab", "50": "hospice"}
PRIMARY_CARE_CODES = (("99213", 40), ("99214", 35), ("99215", 5), ("99203", 5), ("G0439", 8), ("99490", 7))


def _weighted(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    total = sum(w for _, w in choices)
    pick = rng.uniform(0, total)
    for value, weight in choices:
        pick -= weight
        if pick <= 0:
            return value
    return choices[-1][0]


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:  # normal approximation keeps large days cheap
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _ts(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y%m%d%H%M%S%z")


class Population:
    """The payer, its providers and members (members are derived lazily from the seed)."""

    def __init__(self, config: PopulationConfig | None = None) -> None:
        self.config = config or PopulationConfig()
        seed = self.config.seed
        rng = random.Random(f"cth:{seed}:providers")
        members = max(1, self.config.members)
        self.providers: list[Provider] = []
        self.pcps_by_metro: list[list[Provider]] = [[] for _ in METROS]
        self.specialists_by_metro: list[list[Provider]] = [[] for _ in METROS]
        self.post_acute_by_metro: list[dict[str, list[Provider]]] = [{} for _ in METROS]
        stems = itertools.count(1)

        def npi(kind: int) -> str:
            return npi_with_check_digit(f"1{kind}{next(stems):07d}")

        def near(metro: Metro, spread: float) -> tuple[float, float]:
            return (
                round(metro.latitude + rng.uniform(-spread, spread), 5),
                round(metro.longitude + rng.uniform(-spread, spread), 5),
            )

        def networks() -> tuple[tuple[str, str], ...]:
            roll = rng.random()
            if roll < 0.12:
                return ()  # out of network: care here is leakage
            tier_a = "preferred" if rng.random() < 0.5 else "standard"
            tier_b = "preferred" if rng.random() < 0.4 else "standard"
            return (("NET-A", tier_a), ("NET-B", tier_b)) if roll < 0.8 else (("NET-A", tier_a),)

        pcp_count = max(2 * len(METROS), members // 400)
        groups_per_metro = max(1, pcp_count // (4 * len(METROS)))
        for k in range(pcp_count):
            m = k % len(METROS)
            metro = METROS[m]
            group = (k // len(METROS)) % groups_per_metro
            lat, lon = near(metro, 0.2)
            provider = Provider(
                npi=npi(1),
                name=f"Dr. {rng.choice(GIVEN)} {rng.choice(FAMILY)}",
                organization_name=f"{metro.name} Primary Care Group {group + 1}",
                tin=f"{41 + m:02d}{group + 1:07d}",
                taxonomy="207Q00000X" if k % 2 == 0 else "207R00000X",
                role="pcp",
                services=("primary_care",),
                networks=networks() or (("NET-A", "standard"),),
                metro=m,
                latitude=lat,
                longitude=lon,
                capacity=rng.randint(200, 2500),
                quality_score=round(rng.uniform(2.5, 5.0), 2),
                cost_index=round(rng.uniform(0.7, 1.4), 2),
            )
            self.providers.append(provider)
            self.pcps_by_metro[m].append(provider)
        for m, metro in enumerate(METROS):
            for category, taxonomy, label in SPECIALTIES:
                for copy in range(max(1, members // 5000)):
                    lat, lon = near(metro, 0.25)
                    provider = Provider(
                        npi=npi(2),
                        name=f"Dr. {rng.choice(GIVEN)} {rng.choice(FAMILY)}",
                        organization_name=f"{metro.name} {label} Associates {copy + 1}",
                        tin=f"{51 + m:02d}{len(self.providers):07d}",
                        taxonomy=taxonomy,
                        role="specialist",
                        services=(category,),
                        networks=networks(),
                        metro=m,
                        latitude=lat,
                        longitude=lon,
                        capacity=rng.randint(20, 400),
                        quality_score=round(rng.uniform(2.5, 5.0), 2),
                        cost_index=round(rng.uniform(0.7, 1.6), 2),
                        virtual_capable=rng.random() < 0.3,
                    )
                    self.providers.append(provider)
                    self.specialists_by_metro[m].append(provider)
            for category, taxonomy, label, _, _ in POST_ACUTE:
                self.post_acute_by_metro[m][category] = []
                for copy in range(2 + members // 4000):
                    lat, lon = near(metro, 0.35)
                    provider = Provider(
                        npi=npi(3),
                        name=f"{metro.name} {label} {copy + 1}",
                        organization_name=f"{metro.name} {label} {copy + 1} LLC",
                        tin=f"{61 + m:02d}{len(self.providers):07d}",
                        taxonomy=taxonomy,
                        role="post_acute",
                        services=(category,),
                        networks=networks(),
                        metro=m,
                        latitude=lat,
                        longitude=lon,
                        capacity=rng.randint(0, 80),
                        quality_score=round(rng.uniform(2.0, 5.0), 2),
                        cost_index=round(rng.uniform(0.6, 1.8), 2),
                    )
                    self.providers.append(provider)
                    self.post_acute_by_metro[m][category].append(provider)
        self.v1c_group = Provider(
            npi=npi(4),
            name="Virtual First Care Group",
            organization_name="Virtual First Care PC",
            tin="870000001",
            taxonomy="261QP2300X",
            role="v1c",
            services=("primary_care", "behavioral_health"),
            networks=(("NET-A", "preferred"), ("NET-B", "preferred")),
            metro=0,
            latitude=41.8781,
            longitude=-87.6298,
            capacity=50_000,
            quality_score=4.4,
            cost_index=0.8,
            virtual_capable=True,
        )
        self.v1c_clinicians = [
            Provider(
                npi=npi(4),
                name=f"Dr. {rng.choice(GIVEN)} {rng.choice(FAMILY)}",
                organization_name="Virtual First Care PC",
                tin="870000001",
                taxonomy="207Q00000X",
                role="v1c",
                services=("primary_care",),
                networks=(("NET-A", "preferred"),),
                metro=0,
                latitude=41.8781,
                longitude=-87.6298,
                capacity=2000,
                quality_score=round(rng.uniform(3.5, 5.0), 2),
                cost_index=0.8,
                virtual_capable=True,
            )
            for _ in range(max(3, members // 2000))
        ]
        self.providers += [self.v1c_group, *self.v1c_clinicians]
        hospital_names = (
            ("St. Luke's & Presbyterian Medical Center", "Mercy West Hospital"),
            ("Peachtree Regional Medical Center", "Grady Memorial Hospital"),
            ("Desert Valley Hospital", "Banner Camelback Medical Center"),
            ("Front Range General Hospital", "Mile High Medical Center"),
        )
        self.hospitals: list[Hospital] = []
        for m, _metro in enumerate(METROS):
            for h, name in enumerate(hospital_names[m]):
                number = len(self.hospitals)
                self.hospitals.append(
                    Hospital(
                        npi=npi(5),
                        name=name,
                        namespace=f"HOSP{number + 1:02d}",
                        tin=f"{71 + m:02d}{h + 1:07d}",
                        metro=m,
                        style="v251" if h == 0 else "v23",
                        mrn_prefix=f"{chr(65 + number)}R",
                        oid=f"2.16.840.1.113883.3.{9100 + number}.1",
                    )
                )
        self._hospitals_by_metro = [[h for h in self.hospitals if h.metro == m] for m in range(len(METROS))]
        self.new_members = (
            max(0, round(members * self.config.new_member_share)) if self.config.days > 0 else 0
        )
        self.existing_members = members - self.new_members
        self._profiles: OrderedDict[int, MemberProfile] = OrderedDict()
        self._sequence = itertools.count(1)
        self._start = datetime.combine(self.config.start, time(0), tzinfo=UTC)
        self._end = self._start + timedelta(days=self.config.days)
        self._origin = self._start - timedelta(days=self.config.lookback_days)
        self._zones = [ZoneInfo(m.timezone) for m in METROS]

    # ------------------------------------------------------------------ configuration for consumers
    def adt_settings(self) -> AdtSettings:
        """Parser settings for this population's hospital feeds (facilities sending no NPI)."""
        return AdtSettings(
            tenant=self.config.tenant,
            facilities={h.namespace: Facility(npi=h.npi, name=h.name, tin=h.tin) for h in self.hospitals},
        )

    # ------------------------------------------------------------------ members
    def member(self, index: int) -> MemberProfile:
        """Member ``index`` (0-based), derived from the seed alone (bounded cache)."""
        cached = self._profiles.get(index)
        if cached is not None:
            self._profiles.move_to_end(index)
            return cached
        profile = self._make_member(index)
        self._profiles[index] = profile
        if len(self._profiles) > 256:
            self._profiles.popitem(last=False)
        return profile

    def _make_member(self, index: int) -> MemberProfile:
        rng = random.Random(f"cth:{self.config.seed}:member:{index}")
        m = rng.choices(range(len(METROS)), METRO_WEIGHTS)[0]
        metro = METROS[m]
        plan = rng.choices(PLANS, PLAN_WEIGHTS)[0]
        if plan.product == "medicare_advantage":
            age = rng.randint(65, 94)
            risk = min(100.0, rng.lognormvariate(3.6, 0.5))
        else:
            age = rng.randint(0, 17) if rng.random() < 0.15 else rng.randint(18, 64)
            risk = min(100.0, rng.lognormvariate(3.0, 0.6))
        birth = self.config.start - timedelta(days=age * 365 + rng.randint(0, 364))
        lat = round(metro.latitude + rng.uniform(-0.3, 0.3), 5)
        lon = round(metro.longitude + rng.uniform(-0.3, 0.3), 5)
        address = {
            "line": f"{rng.randint(1, 9999)} {rng.choice(STREETS)} St",
            "city": metro.name,
            "state": metro.state,
            "postal_code": f"{metro.zip_prefix}{rng.randint(1, 99):02d}",
            "latitude": lat,
            "longitude": lon,
        }
        if index >= self.existing_members:  # joins during the live period
            offset = (index - self.existing_members) * self.config.days // max(1, self.new_members)
            effective = self.config.start + timedelta(days=offset)
        else:
            effective = self.config.start - timedelta(days=self.config.lookback_days + rng.randint(1, 1500))
        return MemberProfile(
            index=index,
            member_id=f"M{index + 1:07d}",
            given_name=rng.choice(GIVEN),
            family_name=rng.choice(FAMILY),
            sex=rng.choice(("female", "male")),
            birth_date=birth,
            metro=m,
            address=address,
            plan=plan,
            risk_score=round(risk, 1),
            usual_pcp=rng.choice(self.pcps_by_metro[m]),
            selected_pcp=plan.product != "commercial" and rng.random() < 0.35,
            care_manager_id=f"CM-{m + 1}-{rng.randint(1, 12):02d}" if risk >= 50 else None,
            effective_date=effective,
            hospitals=tuple(self._hospitals_by_metro[m]),
        )

    def enrollment(self, profile: MemberProfile) -> MemberEnrolled:
        """The roster record of a member (identifiers = the MRNs its hospitals use)."""
        return MemberEnrolled(
            member_id=profile.member_id,
            plan_id=profile.plan.plan_id,
            network_id=profile.plan.network_id,
            product=profile.plan.product,
            virtual_first=profile.plan.virtual_first,
            v1c_group_npi=self.v1c_group.npi if profile.plan.virtual_first else None,
            effective_date=profile.effective_date,
            given_name=profile.given_name,
            family_name=profile.family_name,
            birth_date=profile.birth_date,
            sex=profile.sex,
            address=profile.address,
            risk_score=profile.risk_score,
            care_manager_id=profile.care_manager_id,
            selected_pcp_npi=profile.usual_pcp.npi if profile.selected_pcp else None,
            identifiers=[{"system": h.identifier_system, "value": profile.mrn(h)} for h in profile.hospitals],
        )

    # ------------------------------------------------------------------ events
    def _event(
        self, data: Any, subject: str, at: datetime, source: str, correlation: str | None = None
    ) -> TimelineItem:
        event = new_event(
            data,
            subject=subject,
            source=source,
            tenant=self.config.tenant,
            time=at,
            event_id=f"s{self.config.seed}-{next(self._sequence):09d}",
            correlation_id=correlation,
        )
        return TimelineItem(at=at, kind="event", payload=event)

    def _provider_event(self, provider: Provider, at: datetime) -> TimelineItem:
        data = ProviderUpserted(
            npi=provider.npi,
            name=provider.name,
            organization_name=provider.organization_name,
            tin=provider.tin,
            taxonomy=provider.taxonomy,
            role=provider.role,
            services=list(provider.services),
            networks=[{"network_id": n, "tier": t} for n, t in provider.networks],
            latitude=provider.latitude,
            longitude=provider.longitude,
            accepting=provider.capacity > 0,
            capacity=provider.capacity,
            quality_score=provider.quality_score,
            cost_index=provider.cost_index,
            virtual_capable=provider.virtual_capable,
        )
        return self._event(data, provider.npi, at, "payer-network-management")

    def _claim(
        self,
        rng: random.Random,
        profile: MemberProfile,
        provider: Provider,
        code: str,
        pos: str,
        service_day: date,
        adjudicated: datetime,
        diagnoses: list[str],
        amount: float,
    ) -> TimelineItem:
        sequence = next(self._sequence)
        status = "denied" if rng.random() < 0.03 else "paid"
        line = ClaimLine(
            line_number=1,
            procedure_code=code,
            rendering_npi=provider.npi,
            rendering_tin=provider.tin,
            rendering_taxonomy=provider.taxonomy,
            place_of_service=pos,
            service_from=service_day,
            service_to=service_day,
            units=1,
            allowed_amount=Decimal(f"{amount if status == 'paid' else 0:.2f}"),
            diagnoses=diagnoses[:12],
        )
        data = ClaimAdjudicated(
            claim_id=f"CLM{self.config.seed}-{sequence:09d}",
            member_id=profile.member_id,
            status=status,
            billing_tin=provider.tin,
            adjudicated_on=adjudicated.date(),
            lines=[line],
        )
        return self._event(data, profile.member_id, adjudicated, "payer-claims")

    def _routine_claim(
        self, rng: random.Random, profile: MemberProfile, adjudicated: datetime
    ) -> TimelineItem:
        service_day = (adjudicated - timedelta(days=rng.randint(5, 30))).date()
        diagnoses = [rng.choice(CHRONIC_DX)]
        roll = rng.random()
        if roll < 0.7 or not self.specialists_by_metro[profile.metro]:
            provider = (
                profile.usual_pcp if rng.random() < 0.85 else rng.choice(self.pcps_by_metro[profile.metro])
            )
            code = _weighted(rng, PRIMARY_CARE_CODES)
            amount = {"99213": 92.0, "99214": 131.0, "99215": 185.0, "99203": 110.0, "G0439": 133.0}.get(
                code, 62.0
            )
        else:
            provider = rng.choice(self.specialists_by_metro[profile.metro])
            code, amount = rng.choice((("99243", 160.0), ("99214", 131.0), ("93000", 17.0), ("99204", 170.0)))
        return self._claim(
            rng,
            profile,
            provider,
            code,
            "11",
            service_day,
            adjudicated,
            diagnoses,
            round(amount * rng.uniform(0.9, 1.1), 2),
        )

    def _v1c_visit(
        self,
        rng: random.Random,
        profile: MemberProfile,
        started: datetime,
        *,
        follow_up: bool,
        diagnoses: list[str] | None = None,
    ) -> TimelineItem:
        sequence = next(self._sequence)
        clinician = rng.choice(self.v1c_clinicians)
        codes = (
            [rng.choice(("99495", "99496"))]
            if follow_up
            else [_weighted(rng, (("99213", 60), ("99214", 30), ("99490", 10)))]
        )
        data = VirtualVisitCompleted(
            visit_id=f"VV{self.config.seed}-{sequence:09d}",
            member_id=profile.member_id,
            provider_npi=clinician.npi,
            organization_tin=clinician.tin,
            modality=_weighted(rng, (("video", 70), ("audio", 15), ("chat", 15))),
            started_at=started,
            ended_at=started + timedelta(minutes=rng.randint(10, 40)),
            procedure_codes=codes,
            diagnoses=[
                {"code": c, "primary": i == 0} for i, c in enumerate(diagnoses or [rng.choice(CHRONIC_DX)])
            ],
            medication_reconciliation=follow_up and rng.random() < 0.8,
            interactive_contact=True,
            allowed_amount=Decimal(f"{rng.uniform(60, 180):.2f}"),
        )
        return self._event(data, profile.member_id, data.ended_at, "v1c-platform")

    def _referral(self, rng: random.Random, profile: MemberProfile, at: datetime) -> TimelineItem:
        category, taxonomy, _ = rng.choice(SPECIALTIES)
        sequence = next(self._sequence)
        data = ReferralRequested(
            referral_id=f"REF{self.config.seed}-{sequence:09d}",
            member_id=profile.member_id,
            service_category=category,
            specialty_taxonomy=taxonomy,
            urgency=_weighted(rng, (("routine", 80), ("urgent", 15), ("asap", 5))),
            ordering_npi=profile.usual_pcp.npi,
            ordering_tin=profile.usual_pcp.tin,
            requested_at=at,
            reason_codes=[rng.choice(CHRONIC_DX)],
        )
        return self._event(data, profile.member_id, at, "ehr-fhir")

    # ------------------------------------------------------------------ HL7 v2
    def _adt(
        self,
        trigger: str,
        hospital: Hospital,
        profile: MemberProfile | None,
        at: datetime,
        visit: str,
        *,
        patient_class: str,
        patient_type: str = "",
        admitted: datetime | None = None,
        discharged: datetime | None = None,
        disposition: str = "",
        diagnoses: tuple[str, ...] = (),
        unit: str = "MED",
        include_in1: bool = True,
        foreign_mrn: str | None = None,
    ) -> TimelineItem:
        zone = self._zones[hospital.metro]
        control = f"{hospital.namespace}{next(self._sequence):010d}"
        structure = {
            "A01": "ADT_A01",
            "A04": "ADT_A01",
            "A08": "ADT_A01",
            "A13": "ADT_A01",
            "A02": "ADT_A02",
            "A03": "ADT_A03",
            "A06": "ADT_A06",
            "A11": "ADT_A09",
        }[trigger]
        mrn = foreign_mrn or (profile.mrn(hospital) if profile else "X")
        given = profile.given_name if profile else "Pat"
        family = profile.family_name if profile else "Doe"
        birth = (profile.birth_date if profile else date(1970, 1, 1)).strftime("%Y%m%d")
        sex = profile.sex[0].upper() if profile else "U"
        admit_ts = _ts(admitted, zone) if admitted else ""
        discharge_ts = _ts(discharged, zone) if discharged else ""
        pcp = profile.usual_pcp if profile else None
        segments: list[str]
        if hospital.style == "v251":
            aa = f"{hospital.namespace}&{hospital.oid}&ISO"
            segments = [
                f"MSH|^~\\&|EPICADT|{hospital.namespace}^{hospital.npi}^NPI|CTH|PAYER|{_ts(at, zone)}||"
                f"ADT^{trigger}^{structure}|{control}|P|2.5.1|||AL|NE",
                f"EVN|{trigger}|{_ts(at, zone)}||||{_ts(at, zone)}|{hospital.namespace}^{hospital.npi}^NPI",
                f"PID|1||{mrn}^^^{aa}^MR||{family}^{given}||{birth}|{sex}|||"
                f"{profile.address['line'] if profile else ''}^^{METROS[hospital.metro].name}^"
                f"{METROS[hospital.metro].state}",
            ]
            if pcp is not None:
                segments.append(f"PD1||||{pcp.npi}^{pcp.name.split()[-1]}^^^^^^^NPI")
                segments.append(
                    f"ROL|1|AD|PP^Primary Care Provider^HL70443|{pcp.npi}^{pcp.name.split()[-1]}^^^^^^^NPI"
                )
            pv1 = [""] * 46
            pv1[1], pv1[2] = "1", patient_class
            pv1[3] = f"{unit}^{100 + len(visit) % 50}^A^{hospital.namespace}&{hospital.npi}&NPI"
            pv1[18], pv1[19] = patient_type, f"{visit}^^^{hospital.namespace}^VN"
            pv1[36], pv1[44], pv1[45] = disposition, admit_ts, discharge_ts
            segments.append("PV1|" + "|".join(pv1[1:]).rstrip("|"))
            segments.append(
                f"PV2|||^Admission||||||||||||||||||||{hospital.name.replace('&', chr(92) + 'T' + chr(92))}"
            )
            for i, code in enumerate(diagnoses, start=1):
                segments.append(
                    f"DG1|{i}||{code}^^I10|||{'A' if trigger in ('A01', 'A04') else 'F'}|||||||||{i}"
                )
            if include_in1 and profile is not None:
                in1 = [""] * 37
                in1[1], in1[2], in1[4], in1[36] = (
                    "1",
                    profile.plan.plan_id,
                    "Example Health Plan",
                    profile.member_id,
                )
                segments.append("IN1|" + "|".join(in1[1:]))
            segments.append("ZPV|1|PREF^Standard")
        else:
            segments = [
                f"MSH|^~\\&|MTADT|{hospital.namespace}|HIE|HIE|{_ts(at, zone)}||ADT^{trigger}|{control}|P|2.3",
                f"EVN|{trigger}|{_ts(at, zone)}",
                f"PID|1|{mrn}|{mrn}^^^^MR||{family.upper()}^{given.upper()}||{birth}|{sex}",
            ]
            if pcp is not None:
                segments.append(f"PD1||||{pcp.npi}^{pcp.name.split()[-1].upper()}")
            pv1 = [""] * 46
            pv1[1], pv1[2], pv1[3] = "1", patient_class, f"{unit}^1^1^{hospital.namespace}"
            pv1[18], pv1[19] = patient_type, visit
            pv1[36] = disposition.lstrip("0") if disposition.startswith("0") else disposition
            pv1[44], pv1[45] = admit_ts, discharge_ts
            segments.append("PV1|" + "|".join(pv1[1:]).rstrip("|"))
            for i, code in enumerate(diagnoses, start=1):
                segments.append(f"DG1|{i}|I10|{code}^{code}||||||||||||{i}")
            if include_in1 and profile is not None:
                segments.append(
                    f"IN1|1|{profile.plan.plan_id}||EXAMPLE HEALTH PLAN"
                    + "|" * 32
                    + f"{profile.member_id}-01"
                )
            segments.append("ZIN|MW|LEGACY\\E\\FLAG")
        return TimelineItem(at=at, kind="hl7", payload="\r".join(segments) + "\r")

    # ------------------------------------------------------------------ episodes
    def _episode(
        self, rng: random.Random, profile: MemberProfile, start: datetime, kind: str
    ) -> list[TimelineItem]:
        """All items of one ED visit / observation stay / admission, and what follows it."""
        hospital = rng.choice(profile.hospitals)
        visit = f"V{next(self._sequence):09d}"
        items: list[TimelineItem] = []
        adt = self._adt
        in1 = rng.random() < 0.8
        if kind == "ed":
            items.append(
                adt(
                    "A04",
                    hospital,
                    profile,
                    start,
                    visit,
                    patient_class="E",
                    patient_type="ER",
                    admitted=start,
                    diagnoses=(rng.choice(ED_DX),),
                    unit="ED",
                    include_in1=in1,
                )
            )
            if rng.random() < 0.2:  # admitted from the ED: A06 E -> I, then an inpatient stay
                converted = start + timedelta(hours=rng.uniform(3, 8))
                items.append(
                    adt(
                        "A06",
                        hospital,
                        profile,
                        converted,
                        visit,
                        patient_class="I",
                        patient_type="ER",
                        admitted=start,
                        unit="MED",
                        include_in1=in1,
                    )
                )
                return items + self._stay(rng, profile, hospital, visit, start, converted, in1)
            left = start + timedelta(hours=rng.uniform(2, 8))
            items.append(
                adt(
                    "A03",
                    hospital,
                    profile,
                    left,
                    visit,
                    patient_class="E",
                    patient_type="ER",
                    admitted=start,
                    discharged=left,
                    disposition=_weighted(rng, DISPOSITIONS_ED),
                    diagnoses=(rng.choice(ED_DX),),
                    unit="ED",
                    include_in1=in1,
                )
            )
            if profile.risk_score >= 40 and rng.random() < 0.5:
                items.append(self._follow_up(rng, profile, left, rng.choice(ED_DX)))
            return items
        if kind == "obs":
            items.append(
                adt(
                    "A04",
                    hospital,
                    profile,
                    start,
                    visit,
                    patient_class="O",
                    patient_type="OBS",
                    admitted=start,
                    diagnoses=(rng.choice(ED_DX),),
                    unit="OBS",
                    include_in1=in1,
                )
            )
            if rng.random() < 0.03:
                items.append(
                    adt(
                        "A11",
                        hospital,
                        profile,
                        start + timedelta(minutes=40),
                        visit,
                        patient_class="O",
                        patient_type="OBS",
                        include_in1=in1,
                    )
                )
                return items
            if rng.random() < 0.25:
                converted = start + timedelta(hours=rng.uniform(12, 24))
                items.append(
                    adt(
                        "A06",
                        hospital,
                        profile,
                        converted,
                        visit,
                        patient_class="I",
                        patient_type="OBS",
                        admitted=start,
                        include_in1=in1,
                    )
                )
                return items + self._stay(rng, profile, hospital, visit, start, converted, in1)
            left = start + timedelta(hours=rng.uniform(20, 40))
            disposition = _weighted(rng, DISPOSITIONS_OBS)
            items.append(
                adt(
                    "A03",
                    hospital,
                    profile,
                    left,
                    visit,
                    patient_class="O",
                    patient_type="OBS",
                    admitted=start,
                    discharged=left,
                    disposition=disposition,
                    diagnoses=(rng.choice(ED_DX),),
                    unit="OBS",
                    include_in1=in1,
                )
            )
            return items + self._after_discharge(rng, profile, left, disposition, rng.choice(ED_DX))
        diagnosis = rng.choice(INPATIENT_DX)
        items.append(
            adt(
                "A01",
                hospital,
                profile,
                start,
                visit,
                patient_class="I",
                patient_type="IP",
                admitted=start,
                diagnoses=(diagnosis,),
                include_in1=in1,
            )
        )
        if rng.random() < 0.03:
            items.append(
                adt(
                    "A11",
                    hospital,
                    profile,
                    start + timedelta(minutes=rng.randint(10, 90)),
                    visit,
                    patient_class="I",
                    patient_type="IP",
                    include_in1=in1,
                )
            )
            return items
        return items + self._stay(rng, profile, hospital, visit, start, start, in1, diagnosis)

    def _stay(
        self,
        rng: random.Random,
        profile: MemberProfile,
        hospital: Hospital,
        visit: str,
        admitted: datetime,
        since: datetime,
        in1: bool,
        diagnosis: str | None = None,
    ) -> list[TimelineItem]:
        diagnosis = diagnosis or rng.choice(INPATIENT_DX)
        adt = self._adt
        items: list[TimelineItem] = []
        stay = timedelta(hours=rng.uniform(24, 24 * 9))
        if rng.random() < 0.3:
            items.append(
                adt(
                    "A08",
                    hospital,
                    profile,
                    since + timedelta(hours=rng.uniform(2, 12)),
                    visit,
                    patient_class="I",
                    patient_type="IP",
                    admitted=admitted,
                    diagnoses=(diagnosis, rng.choice(CHRONIC_DX)),
                    include_in1=in1,
                )
            )
        if rng.random() < 0.2:
            items.append(
                adt(
                    "A02",
                    hospital,
                    profile,
                    since + stay / 3,
                    visit,
                    patient_class="I",
                    patient_type="IP",
                    admitted=admitted,
                    unit=rng.choice(("ICU", "CCU", "TELE")),
                    include_in1=in1,
                )
            )
        discharged = since + stay
        disposition = _weighted(rng, DISPOSITIONS_INPATIENT)
        if diagnosis.startswith("S72") and disposition == "01":
            disposition = rng.choice(("03", "62"))
        items.append(
            adt(
                "A03",
                hospital,
                profile,
                discharged,
                visit,
                patient_class="I",
                patient_type="IP",
                admitted=admitted,
                discharged=discharged,
                disposition=disposition,
                diagnoses=(diagnosis, rng.choice(CHRONIC_DX)),
                include_in1=in1,
            )
        )
        if rng.random() < 0.02:  # discharge entered in error, then re-entered
            items.append(
                adt(
                    "A13",
                    hospital,
                    profile,
                    discharged + timedelta(hours=1),
                    visit,
                    patient_class="I",
                    patient_type="IP",
                    admitted=admitted,
                    include_in1=in1,
                )
            )
            discharged = discharged + timedelta(hours=3)
            items.append(
                adt(
                    "A03",
                    hospital,
                    profile,
                    discharged,
                    visit,
                    patient_class="I",
                    patient_type="IP",
                    admitted=admitted,
                    discharged=discharged,
                    disposition=disposition,
                    diagnoses=(diagnosis,),
                    include_in1=in1,
                )
            )
        elif rng.random() < 0.1:
            items.append(
                adt(
                    "A08",
                    hospital,
                    profile,
                    discharged + timedelta(hours=rng.uniform(2, 20)),
                    visit,
                    patient_class="I",
                    patient_type="IP",
                    admitted=admitted,
                    discharged=discharged,
                    disposition=disposition,
                    diagnoses=(diagnosis, rng.choice(CHRONIC_DX)),
                    include_in1=in1,
                )
            )
        return items + self._after_discharge(rng, profile, discharged, disposition, diagnosis)

    def _after_discharge(
        self,
        rng: random.Random,
        profile: MemberProfile,
        discharged: datetime,
        disposition: str,
        diagnosis: str,
    ) -> list[TimelineItem]:
        if disposition in ("20", "02"):
            return []
        items: list[TimelineItem] = []
        if rng.random() < 0.6:
            items.append(self._follow_up(rng, profile, discharged, diagnosis))
        category = POST_ACUTE_BY_DISPOSITION.get(disposition)
        if category is not None:
            options = self.post_acute_by_metro[profile.metro][category]
            provider = rng.choice(options)
            _, _, _, pos, code = next(p for p in POST_ACUTE if p[0] == category)
            service = discharged + timedelta(days=rng.randint(1, 4))
            items.append(
                self._claim(
                    rng,
                    profile,
                    provider,
                    code,
                    pos,
                    service.date(),
                    service + timedelta(days=rng.randint(10, 25)),
                    [diagnosis],
                    round(rng.uniform(150, 900), 2),
                )
            )
        readmit_chance = 0.08 + profile.risk_score / 600
        if rng.random() < readmit_chance:
            self._pending_readmissions.append(
                (discharged + timedelta(days=rng.uniform(2, 30)), profile.index)
            )
        return items

    def _follow_up(
        self, rng: random.Random, profile: MemberProfile, discharged: datetime, diagnosis: str
    ) -> TimelineItem:
        when = discharged + timedelta(days=rng.uniform(1, 14))
        if profile.plan.virtual_first and rng.random() < 0.8:
            return self._v1c_visit(rng, profile, when, follow_up=True, diagnoses=[diagnosis])
        code = rng.choice(("99495", "99496", "99214"))
        return self._claim(
            rng,
            profile,
            profile.usual_pcp,
            code,
            "11",
            when.date(),
            when + timedelta(days=rng.randint(7, 20)),
            [diagnosis],
            round(rng.uniform(130, 280), 2),
        )

    # ------------------------------------------------------------------ the timeline
    def timeline(self) -> Iterator[TimelineItem]:
        """Every item from the directory load to the end of the period, in time order."""
        self._sequence = itertools.count(1)
        self._pending_readmissions: list[tuple[datetime, int]] = []
        config = self.config
        origin = self._origin
        for provider in self.providers:
            yield self._provider_event(provider, origin)
        for index in range(self.existing_members):
            profile = self.member(index)
            yield self._event(self.enrollment(profile), profile.member_id, origin, "payer-eligibility")
        heap: list[tuple[datetime, int, TimelineItem]] = []
        order = itertools.count()

        def push(item: TimelineItem) -> None:
            heapq.heappush(heap, (item.at, next(order), item))

        total_days = config.lookback_days + config.days
        for day_number in range(total_days):
            day_start = origin + timedelta(days=day_number)
            day_end = day_start + timedelta(days=1)
            live = day_start >= self._start
            rng = random.Random(f"cth:{config.seed}:day:{day_number}")
            population = self.existing_members
            if live and self.new_members:
                for index in range(self.existing_members, self.existing_members + self.new_members):
                    profile = self.member(index)
                    if profile.effective_date == day_start.date():
                        push(
                            self._event(
                                self.enrollment(profile), profile.member_id, day_start, "payer-eligibility"
                            )
                        )
                    if profile.effective_date <= day_start.date():
                        population = index + 1

            def moment() -> datetime:
                return day_start + timedelta(seconds=rng.randrange(86_400))  # noqa: B023 - called inside this day

            for _ in range(_poisson(rng, self.existing_members * config.claims_per_year / 365)):
                push(self._routine_claim(rng, self.member(rng.randrange(self.existing_members)), moment()))
            if live:
                for _ in range(_poisson(rng, population * config.v1c_visits_per_year / 365)):
                    profile = self.member(rng.randrange(population))
                    if profile.plan.virtual_first:
                        push(self._v1c_visit(rng, profile, moment(), follow_up=False))
                for _ in range(_poisson(rng, population * config.referrals_per_year / 365)):
                    push(self._referral(rng, self.member(rng.randrange(population)), moment()))
                for kind, rate in (
                    ("inpatient", config.admissions_per_year),
                    ("ed", config.ed_visits_per_year),
                    ("obs", config.observation_per_year),
                ):
                    for _ in range(_poisson(rng, population * rate * 2 / 365)):
                        profile = self.member(rng.randrange(population))
                        if (
                            rng.random() * 100 > 25 + profile.risk_score
                        ):  # risk-weighted thinning (~half kept)
                            continue
                        for item in self._episode(rng, profile, moment(), kind):
                            push(item)
                for _ in range(
                    _poisson(rng, population * config.ed_visits_per_year * config.non_member_ed_share / 365)
                ):
                    push(self._non_member_visit(rng, moment()))
                due = [r for r in self._pending_readmissions if r[0] < day_end]
                if due:
                    self._pending_readmissions = [r for r in self._pending_readmissions if r[0] >= day_end]
                    for when, index in due:
                        for item in self._episode(rng, self.member(index), max(when, day_start), "inpatient"):
                            push(item)
            while heap and heap[0][0] < day_end:
                _, _, item = heapq.heappop(heap)
                if item.at < self._end:
                    yield item
        self._pending_readmissions = []

    def _non_member_visit(self, rng: random.Random, at: datetime) -> TimelineItem:
        hospital = rng.choice(self.hospitals)
        mrn = f"NM{hashlib.sha256(f'{self.config.seed}:{at.isoformat()}'.encode()).hexdigest()[:8].upper()}"
        return self._adt(
            "A04",
            hospital,
            None,
            at,
            f"V{next(self._sequence):09d}",
            patient_class="E",
            patient_type="ER",
            admitted=at,
            diagnoses=(rng.choice(ED_DX),),
            unit="ED",
            foreign_mrn=mrn,
            include_in1=False,
        )
