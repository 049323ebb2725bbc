"""Code systems and identifier checks used by the event contracts.

Each validator raises ``ValueError`` with a message naming the rule it enforces;
pydantic turns that into a field-level validation error.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

_NPI_RE = re.compile(r"^[0-9]{10}$")
_TIN_RE = re.compile(r"^[0-9]{9}$")
# CPT Category I (5 digits), Category II (4 digits + F), Category III (4 digits + T),
# PLA codes (4 digits + U); HCPCS Level II: one letter A-V and 4 digits.
_CPT_HCPCS_RE = re.compile(r"^([0-9]{4}[0-9FTU]|[A-V][0-9]{4})$")
_ICD10_RE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
_TAXONOMY_RE = re.compile(r"^[0-9]{3}[0-9A-Z]{6}X$")
_POS_RE = re.compile(r"^[0-9]{2}$")
_MODIFIER_RE = re.compile(r"^[0-9A-Z]{2}$")
_SAFE_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"


def npi_check_digit_ok(npi: str) -> bool:
    """True when ``npi`` is 10 digits with a valid Luhn check digit.

    CMS NPI standard: the Luhn algorithm runs over the constant prefix 80840
    followed by the first nine digits (CMS, "Requirements for NPI check digit").
    """
    return _NPI_RE.fullmatch(npi) is not None and _npi_luhn_ok(npi)


@functools.lru_cache(maxsize=1 << 16)
def _npi_luhn_ok(npi: str) -> bool:
    """The Luhn check of a 10-digit NPI; remembered, since the same providers recur in every batch (only
    strings of ten digits get here, so the cache holds at most 65,536 of them)."""
    digits = [int(c) for c in "80840" + npi[:9]]
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 0:  # rightmost payload digit is doubled
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10 == int(npi[9])


def npi_with_check_digit(first_nine: str) -> str:
    """Complete a nine-digit NPI stem with its Luhn check digit (synthetic data helper)."""
    if not re.fullmatch(r"[0-9]{9}", first_nine):
        raise ValueError("an NPI stem is exactly nine digits")
    for check in "0123456789":
        if npi_check_digit_ok(first_nine + check):
            return first_nine + check
    raise AssertionError("unreachable: one check digit always fits")  # pragma: no cover


def _check_npi(value: str) -> str:
    if not _NPI_RE.fullmatch(value):
        raise ValueError("NPI must be exactly 10 digits")
    if not _npi_luhn_ok(value):
        raise ValueError("NPI check digit is invalid (Luhn over 80840 prefix)")
    return value


def _check_tin(value: str) -> str:
    if not _TIN_RE.fullmatch(value):
        raise ValueError("TIN must be exactly 9 digits")
    return value


def _check_procedure(value: str) -> str:
    if not _CPT_HCPCS_RE.fullmatch(value):
        raise ValueError("procedure code must be CPT (5 digits, or 4 digits + F/T/U) or HCPCS (A-V + 4 digits)")
    return value


def _check_icd10(value: str) -> str:
    if not _ICD10_RE.fullmatch(value):
        raise ValueError("diagnosis must be an ICD-10-CM code such as I50.9")
    return value


def _check_taxonomy(value: str) -> str:
    if not _TAXONOMY_RE.fullmatch(value):
        raise ValueError("taxonomy must be a 10-character NUCC code such as 207Q00000X")
    return value


def _check_pos(value: str) -> str:
    if not _POS_RE.fullmatch(value):
        raise ValueError("place of service must be a 2-digit CMS POS code")
    return value


def _check_modifier(value: str) -> str:
    if not _MODIFIER_RE.fullmatch(value):
        raise ValueError("modifier must be 2 alphanumeric characters")
    return value


Npi = Annotated[str, AfterValidator(_check_npi)]
Tin = Annotated[str, AfterValidator(_check_tin)]
ProcedureCode = Annotated[str, AfterValidator(_check_procedure)]
Icd10Code = Annotated[str, AfterValidator(_check_icd10)]
TaxonomyCode = Annotated[str, AfterValidator(_check_taxonomy)]
PlaceOfService = Annotated[str, AfterValidator(_check_pos)]
Modifier = Annotated[str, AfterValidator(_check_modifier)]
#: Identifiers we mint or receive (member ids, encounter ids, claim ids): bounded, no spaces
#: or markup, safe as Kafka keys and URL path segments.
SafeId = Annotated[str, StringConstraints(pattern=_SAFE_ID_RE)]
#: Free text from outside (names, facility names): bounded, no control characters.
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
#: Longer free text (reasons, details): bounded, no control characters.
FreeText = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]


class DischargeCategory(StrEnum):
    """What a NUBC disposition means for transition-of-care rules."""

    HOME = "home"
    HOME_HEALTH = "home_health"
    SNF = "snf"
    INPATIENT_REHAB = "inpatient_rehab"
    LONG_TERM_CARE = "long_term_care"
    ACUTE_TRANSFER = "acute_transfer"
    PSYCHIATRIC = "psychiatric"
    HOSPICE = "hospice"
    EXPIRED = "expired"
    LEFT_AMA = "left_ama"
    OTHER = "other"


#: NUBC UB-04 FL17 patient discharge status codes (also HL7 v2 PV1-36, table 0112).
NUBC_DISCHARGE_DISPOSITIONS: dict[str, tuple[str, DischargeCategory]] = {
    "01": ("Discharged to home or self care", DischargeCategory.HOME),
    "02": ("Discharged/transferred to a short-term general hospital", DischargeCategory.ACUTE_TRANSFER),
    "03": ("Discharged/transferred to a skilled nursing facility", DischargeCategory.SNF),
    "04": ("Discharged/transferred to a facility providing custodial or supportive care", DischargeCategory.LONG_TERM_CARE),
    "05": ("Discharged/transferred to a designated cancer center or children's hospital", DischargeCategory.ACUTE_TRANSFER),
    "06": ("Discharged/transferred to home under care of organized home health", DischargeCategory.HOME_HEALTH),
    "07": ("Left against medical advice", DischargeCategory.LEFT_AMA),
    "09": ("Admitted as an inpatient to this hospital", DischargeCategory.OTHER),
    "20": ("Expired", DischargeCategory.EXPIRED),
    "21": ("Discharged/transferred to court/law enforcement", DischargeCategory.OTHER),
    "30": ("Still patient", DischargeCategory.OTHER),
    "40": ("Expired at home (hospice)", DischargeCategory.EXPIRED),
    "41": ("Expired in a medical facility (hospice)", DischargeCategory.EXPIRED),
    "42": ("Expired, place unknown (hospice)", DischargeCategory.EXPIRED),
    "43": ("Discharged/transferred to a federal health care facility", DischargeCategory.ACUTE_TRANSFER),
    "50": ("Discharged to hospice - home", DischargeCategory.HOSPICE),
    "51": ("Discharged to hospice - medical facility", DischargeCategory.HOSPICE),
    "61": ("Discharged/transferred to a swing bed", DischargeCategory.SNF),
    "62": ("Discharged/transferred to an inpatient rehabilitation facility", DischargeCategory.INPATIENT_REHAB),
    "63": ("Discharged/transferred to a long term care hospital", DischargeCategory.LONG_TERM_CARE),
    "64": ("Discharged/transferred to a Medicaid-certified nursing facility", DischargeCategory.SNF),
    "65": ("Discharged/transferred to a psychiatric hospital", DischargeCategory.PSYCHIATRIC),
    "66": ("Discharged/transferred to a critical access hospital", DischargeCategory.ACUTE_TRANSFER),
    "69": ("Discharged/transferred to a designated disaster alternative care site", DischargeCategory.OTHER),
    "70": ("Discharged/transferred to another type of health care institution", DischargeCategory.OTHER),
    "81": ("Discharged to home or self care with a planned acute care readmission", DischargeCategory.HOME),
    "82": ("Discharged/transferred to a short term general hospital with a planned readmission", DischargeCategory.ACUTE_TRANSFER),
    "83": ("Discharged/transferred to a SNF with a planned acute care readmission", DischargeCategory.SNF),
    "84": ("Discharged/transferred to custodial care with a planned readmission", DischargeCategory.LONG_TERM_CARE),
    "85": ("Discharged/transferred to a cancer center or children's hospital with a planned readmission", DischargeCategory.ACUTE_TRANSFER),
    "86": ("Discharged/transferred to home health with a planned readmission", DischargeCategory.HOME_HEALTH),
    "87": ("Discharged/transferred to court/law enforcement with a planned readmission", DischargeCategory.OTHER),
    "88": ("Discharged/transferred to a federal facility with a planned readmission", DischargeCategory.ACUTE_TRANSFER),
    "89": ("Discharged/transferred to a swing bed with a planned readmission", DischargeCategory.SNF),
    "90": ("Discharged/transferred to an IRF with a planned readmission", DischargeCategory.INPATIENT_REHAB),
    "91": ("Discharged/transferred to an LTCH with a planned readmission", DischargeCategory.LONG_TERM_CARE),
    "92": ("Discharged/transferred to a nursing facility with a planned readmission", DischargeCategory.SNF),
    "93": ("Discharged/transferred to a psychiatric hospital with a planned readmission", DischargeCategory.PSYCHIATRIC),
    "94": ("Discharged/transferred to a critical access hospital with a planned readmission", DischargeCategory.ACUTE_TRANSFER),
    "95": ("Discharged/transferred to another institution with a planned readmission", DischargeCategory.OTHER),
}


def _check_disposition(value: str) -> str:
    if value not in NUBC_DISCHARGE_DISPOSITIONS:
        raise ValueError("not a NUBC discharge disposition code (UB-04 FL17 / HL7 table 0112)")
    return value


NubcDisposition = Annotated[str, AfterValidator(_check_disposition)]


def discharge_category(disposition: str) -> DischargeCategory:
    """The transition-of-care category of a NUBC discharge disposition code."""
    return NUBC_DISCHARGE_DISPOSITIONS[disposition][1]


class PatientClass(StrEnum):
    """HL7 v2 PV1-2 patient class, reduced to what transitions of care need."""

    INPATIENT = "inpatient"
    OBSERVATION = "observation"
    EMERGENCY = "emergency"
    OUTPATIENT = "outpatient"


class ServiceCategory(StrEnum):
    """Referral / directory service categories (post-acute first, then specialties)."""

    HOME_HEALTH = "home_health"
    SNF = "snf"
    INPATIENT_REHAB = "inpatient_rehab"
    HOSPICE = "hospice"
    PRIMARY_CARE = "primary_care"
    CARDIOLOGY = "cardiology"
    PULMONOLOGY = "pulmonology"
    ENDOCRINOLOGY = "endocrinology"
    NEPHROLOGY = "nephrology"
    ORTHOPEDICS = "orthopedics"
    BEHAVIORAL_HEALTH = "behavioral_health"
    PHYSICAL_THERAPY = "physical_therapy"
    ONCOLOGY = "oncology"
    NEUROLOGY = "neurology"


#: Post-acute service category a discharge disposition calls for (DESIGN section 3, referrals).
POST_ACUTE_SERVICE_BY_DISCHARGE: dict[DischargeCategory, ServiceCategory] = {
    DischargeCategory.HOME_HEALTH: ServiceCategory.HOME_HEALTH,
    DischargeCategory.SNF: ServiceCategory.SNF,
    DischargeCategory.INPATIENT_REHAB: ServiceCategory.INPATIENT_REHAB,
    DischargeCategory.HOSPICE: ServiceCategory.HOSPICE,
}
