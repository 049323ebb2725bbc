"""The ``cth`` command as a process against the real broker: publish a directory, replay a population."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter

import pytest
from cth_shared.contracts import CloudEvent, parse_event
from cth_shared.contracts.events import MemberEnrolled
from cth_shared.producers.files import iter_members, read_roster
from cth_shared.producers.hl7_adt import AdtEvent, AdtTranslator, MemberIndex, UnmatchedPatient, split_messages
from cth_shared.producers.synthetic import Population, PopulationConfig
from producer_io import EPIC_MRN_SYSTEM, FIXTURES, read_topic

pytestmark = pytest.mark.integration

ROSTER_HEADER = (
    "member_id,plan_id,network_id,product,virtual_first,v1c_group_npi,effective_date,termination_date,"
    "given_name,family_name,birth_date,sex,address_line,city,state,postal_code,latitude,longitude,"
    "risk_score,care_manager_id,selected_pcp_npi,identifiers"
)
MEMBER_ROW = (
    "M000001,PLAN-VF,NET-A,commercial,true,1003000126,2026-01-01,,Ada,Example,1950-04-02,female,"
    f"12 Elm St,Springfield,IL,62701,39.78,-89.65,72.5,CM-17,,{EPIC_MRN_SYSTEM}|MRN100001"
)
HOSPITAL_NPI = "1234567893"


async def cth(isolated, *arguments: str, timeout: float = 120) -> tuple[int, str, str]:
    env = {**os.environ, **isolated.service_env()}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cth_shared.producers.cli",
        *arguments,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def fhir_discharge() -> dict:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:p1",
                "request": {"method": "POST", "url": "Patient"},
                "resource": {
                    "resourceType": "Patient",
                    "id": "p1",
                    "identifier": [{"system": EPIC_MRN_SYSTEM, "value": "MRN100001"}],
                },
            },
            {
                "fullUrl": "urn:uuid:o1",
                "request": {"method": "POST", "url": "Organization"},
                "resource": {
                    "resourceType": "Organization",
                    "id": "o1",
                    "name": "Holy Family Hospital",
                    "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": HOSPITAL_NPI}],
                },
            },
            {
                "fullUrl": "urn:uuid:e1",
                "request": {"method": "POST", "url": "Encounter"},
                "resource": {
                    "resourceType": "Encounter",
                    "id": "e1",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
                    "identifier": [{"value": "FHIR-V-1"}],
                    "subject": {"reference": "urn:uuid:p1"},
                    "serviceProvider": {"reference": "urn:uuid:o1"},
                    "period": {"start": "2026-03-05T10:00:00-05:00", "end": "2026-03-05T16:00:00-05:00"},
                    "hospitalization": {
                        "dischargeDisposition": {
                            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/nubc-UB92", "code": "01"}]
                        }
                    },
                },
            },
        ],
    }


async def test_publish_directory_with_a_bad_row_publishes_the_rest_and_exits_1(isolated, tmp_path):
    folder = tmp_path / "feed"
    (folder / "nested").mkdir(parents=True)
    bad = MEMBER_ROW.replace("M000001", "M000009").replace("1950-04-02", "1950-13-45")
    (folder / "roster.csv").write_text("\n".join([ROSTER_HEADER, MEMBER_ROW, bad]) + "\n")
    (folder / "nested" / "epic.hl7").write_bytes((FIXTURES / "epic_style_v251.hl7").read_bytes())
    (folder / "nested" / "discharge.json").write_text(json.dumps(fhir_discharge()))

    code, out, err = await cth(isolated, "publish", str(folder))
    assert code == 1, out + err
    assert f"{folder / 'roster.csv'}:3: " in err and "1950-13-45" not in err

    # What the feed should give, worked out directly with the translator (roster files are
    # covered by their own tests).
    index = MemberIndex.from_members(iter_members(read_roster(folder / "roster.csv")))
    translator = AdtTranslator(index)
    expected: Counter[str] = Counter()
    for message in split_messages((FIXTURES / "epic_style_v251.hl7").read_bytes()):
        result = translator.translate(message)
        if isinstance(result, AdtEvent):
            expected[result.event.type] += 1
        else:
            assert isinstance(result, UnmatchedPatient)
    expected["encounter.discharged"] += 1  # the FHIR bundle

    members = await read_topic(isolated, "enrollment", expected=1)
    assert [parse_event(r.value).subject for r in members] == ["M000001"]
    encounters = await read_topic(isolated, "encounters", expected=sum(expected.values()))
    events = [parse_event(r.value) for r in encounters]
    assert Counter(e.type for e in events) == expected
    assert {e.subject for e in events} == {"M000001"}
    assert any(e.data.trigger == "FHIR" and e.data.facility.npi == HOSPITAL_NPI for e in events)


async def test_replay_of_a_small_population_through_a_local_mllp_listener_exits_0(isolated):
    arguments = ["--members", "250", "--seed", "21", "--days", "14", "--lookback-days", "7"]
    population = Population(PopulationConfig(members=250, seed=21, days=14, lookback_days=7))
    index = MemberIndex()
    translator = AdtTranslator(index, population.adt_settings())
    expected: Counter[str] = Counter()
    for item in population.timeline():
        if isinstance(item.payload, CloudEvent):
            expected[item.payload.type] += 1
            if isinstance(item.payload.data, MemberEnrolled):
                index.add(item.payload.data)
        else:
            result = translator.translate(item.payload)
            if isinstance(result, AdtEvent):
                expected[result.event.type] += 1
    encounters = sum(n for kind, n in expected.items() if kind.startswith("encounter."))
    assert encounters > 0

    code, out, err = await cth(isolated, "replay", *arguments, "--mllp", "local", "--connections", "4")
    assert code == 0, out + err
    assert "ACK AA" in out and "ACK AE" not in out and "ACK AR" not in out

    records = await read_topic(isolated, "encounters", expected=encounters)
    assert Counter(parse_event(r.value).type for r in records) == Counter(
        {k: v for k, v in expected.items() if k.startswith("encounter.")}
    )
    members = await read_topic(isolated, "enrollment", expected=expected["member.enrolled"])
    assert len(members) == expected["member.enrolled"]


async def test_replay_to_a_separate_cth_listen_process(isolated):
    population_args = ["--members", "200", "--seed", "5", "--days", "10", "--lookback-days", "3"]
    env = {**os.environ, **isolated.service_env()}
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cth_shared.producers.cli",
        "listen",
        "--port",
        "0",
        "--synthetic-members",
        "200",
        *population_args[2:],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert listener.stdout is not None
        line = await asyncio.wait_for(listener.stdout.readline(), 60)
        assert line.startswith(b"MLLP_PORT="), line
        port = int(line.split(b"=")[1])
        code, out, err = await cth(isolated, "replay", *population_args, "--mllp", f"127.0.0.1:{port}")
        assert code == 0, out + err
        assert "ACK AA" in out and "ACK AE" not in out and "ACK AR" not in out
    finally:
        if listener.returncode is None:
            listener.terminate()
        _, listener_err = await asyncio.wait_for(listener.communicate(), 30)
    assert listener.returncode == 0, listener_err.decode()
    assert b"rejected 0 errors 0" in listener_err
    population = Population(PopulationConfig(members=200, seed=5, days=10, lookback_days=3))
    index = MemberIndex()
    translator = AdtTranslator(index, population.adt_settings())
    encounters = 0
    for item in population.timeline():
        if isinstance(item.payload, CloudEvent):
            if isinstance(item.payload.data, MemberEnrolled):
                index.add(item.payload.data)
        elif isinstance(translator.translate(item.payload), AdtEvent):
            encounters += 1
    assert encounters > 0
    records = await read_topic(isolated, "encounters", expected=encounters)
    assert len({parse_event(r.value).id for r in records}) == encounters == len(records)
