"""Code systems: NPI Luhn check digit, NUBC discharge dispositions and their categories."""

from __future__ import annotations

import pytest
from cth_shared.contracts import (
    NUBC_DISCHARGE_DISPOSITIONS,
    POST_ACUTE_SERVICE_BY_DISCHARGE,
    DischargeCategory,
    ServiceCategory,
    codes,
    discharge_category,
    npi_check_digit_ok,
    npi_with_check_digit,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

BOUNDED = settings(max_examples=200, deadline=None)
STEMS = st.text(alphabet="0123456789", min_size=9, max_size=9)


@pytest.mark.parametrize("npi", ["1234567893", "1245319599", "1003000126", "1982736450"])
def test_known_valid_npis_pass_the_check_digit(npi: str) -> None:
    assert npi_check_digit_ok(npi)


@pytest.mark.parametrize(
    "npi",
    ["1234567890", "1245319598", "123456789", "12345678931", "12345678AB", "", " 1234567893",
     "1234567893 ", "123456789.", "-123456789", "1234567893\n"],
)
def test_malformed_or_wrong_check_digit_npis_fail(npi: str) -> None:
    assert not npi_check_digit_ok(npi)


def test_the_cms_worked_example_stem_gets_check_digit_3() -> None:
    # CMS "Requirements for NPI check digit": 123456789 -> 1234567893.
    assert npi_with_check_digit("123456789") == "1234567893"


@BOUNDED
@given(STEMS)
def test_a_completed_stem_is_a_valid_npi_that_keeps_the_stem(stem: str) -> None:
    npi = npi_with_check_digit(stem)
    assert len(npi) == 10
    assert npi.startswith(stem)
    assert npi_check_digit_ok(npi)


@BOUNDED
@given(STEMS)
def test_exactly_one_check_digit_completes_a_stem(stem: str) -> None:
    valid = [digit for digit in "0123456789" if npi_check_digit_ok(stem + digit)]
    assert valid == [npi_with_check_digit(stem)[-1]]


@BOUNDED
@given(STEMS, st.integers(min_value=0, max_value=8), st.integers(min_value=1, max_value=9))
def test_changing_any_single_stem_digit_breaks_the_check(stem: str, index: int, delta: int) -> None:
    npi = npi_with_check_digit(stem)
    changed = str((int(npi[index]) + delta) % 10)
    corrupted = npi[:index] + changed + npi[index + 1 :]
    assert not npi_check_digit_ok(corrupted)


@BOUNDED
@given(STEMS, st.integers(min_value=0, max_value=7))
def test_swapping_adjacent_distinct_digits_is_detected_unless_zero_and_nine(
    stem: str, index: int
) -> None:
    npi = npi_with_check_digit(stem)
    a, b = npi[index], npi[index + 1]
    if a == b or {a, b} == {"0", "9"}:  # Luhn's one blind spot for adjacent transpositions
        return
    swapped = npi[:index] + b + a + npi[index + 2 :]
    assert not npi_check_digit_ok(swapped)


@pytest.mark.parametrize("stem", ["12345678", "1234567890", "12345678A", "", "12345 678"])
def test_a_stem_that_is_not_nine_digits_is_refused(stem: str) -> None:
    with pytest.raises(ValueError, match="nine digits"):
        npi_with_check_digit(stem)


@pytest.mark.parametrize("code", sorted(NUBC_DISCHARGE_DISPOSITIONS))
def test_every_nubc_code_maps_to_a_category_and_a_description(code: str) -> None:
    description, category = NUBC_DISCHARGE_DISPOSITIONS[code]
    assert len(code) == 2
    assert code.isascii()
    assert code.isdigit()
    assert description.strip()
    assert isinstance(category, DischargeCategory)
    assert discharge_category(code) is category


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("01", DischargeCategory.HOME),
        ("02", DischargeCategory.ACUTE_TRANSFER),
        ("03", DischargeCategory.SNF),
        ("06", DischargeCategory.HOME_HEALTH),
        ("07", DischargeCategory.LEFT_AMA),
        ("20", DischargeCategory.EXPIRED),
        ("40", DischargeCategory.EXPIRED),
        ("50", DischargeCategory.HOSPICE),
        ("51", DischargeCategory.HOSPICE),
        ("61", DischargeCategory.SNF),
        ("62", DischargeCategory.INPATIENT_REHAB),
        ("63", DischargeCategory.LONG_TERM_CARE),
        ("65", DischargeCategory.PSYCHIATRIC),
        ("81", DischargeCategory.HOME),
        ("86", DischargeCategory.HOME_HEALTH),
        ("90", DischargeCategory.INPATIENT_REHAB),
        ("93", DischargeCategory.PSYCHIATRIC),
    ],
)
def test_discharge_category_of_well_known_dispositions(
    code: str, category: DischargeCategory
) -> None:
    assert discharge_category(code) is category


@pytest.mark.parametrize("code", ["00", "08", "99", "1", "001", "", "6"])
def test_discharge_category_of_an_unknown_code_raises(code: str) -> None:
    with pytest.raises(KeyError):
        discharge_category(code)


def test_every_category_but_other_has_at_least_one_disposition() -> None:
    used = {category for _, category in NUBC_DISCHARGE_DISPOSITIONS.values()}
    assert used == set(DischargeCategory)


def test_planned_readmission_codes_share_the_category_of_their_base_code() -> None:
    # NUBC 81-95 mirror 01-70 with "planned acute care readmission".
    pairs = {"81": "01", "82": "02", "83": "03", "84": "04", "85": "05", "86": "06",
             "87": "21", "88": "43", "89": "61", "90": "62", "91": "63", "92": "64",
             "93": "65", "94": "66", "95": "70"}
    for planned, base in pairs.items():
        assert discharge_category(planned) is discharge_category(base), planned


def test_post_acute_categories_map_to_matching_service_categories() -> None:
    assert POST_ACUTE_SERVICE_BY_DISCHARGE == {
        DischargeCategory.HOME_HEALTH: ServiceCategory.HOME_HEALTH,
        DischargeCategory.SNF: ServiceCategory.SNF,
        DischargeCategory.INPATIENT_REHAB: ServiceCategory.INPATIENT_REHAB,
        DischargeCategory.HOSPICE: ServiceCategory.HOSPICE,
    }
    for category, service in POST_ACUTE_SERVICE_BY_DISCHARGE.items():
        assert category.value == service.value


@pytest.mark.parametrize(("code_type", "value"), [
    ("Npi", "1234567893"), ("Tin", "987654321"), ("ProcedureCode", "99496"), ("Icd10Code", "I50.9"),
    ("TaxonomyCode", "207Q00000X"),
])
def test_a_code_followed_by_a_line_break_is_refused(code_type: str, value: str) -> None:
    adapter = TypeAdapter(getattr(codes, code_type))
    assert adapter.validate_python(value) == value
    with pytest.raises(ValidationError):
        adapter.validate_python(value + "\n")
