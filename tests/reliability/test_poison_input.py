"""Poison input mixed into valid traffic, through all four services on the real broker and Postgres.

On the ``enrollment`` topic (consumed by attribution, referrals, care-gaps) and the ``encounters``
topic (referrals, care-gaps, notifications), all keyed by one member so everything shares a
partition: valid events, then malformed JSON, wrong types, unknown types, invalid codes, control
characters, very long Unicode, an empty record, a tombstone and a 10 MB record, then valid events
again. Every poison record lands in each consuming service's DLQ topic and ``dead_letters`` table
with its reason; every valid event is applied, the ones after the poison included (no partition
stalls); hostile strings that are *valid* are stored verbatim and served as JSON data, and the
inbox page never renders data as HTML.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import shutil
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from cth_shared.auth import issue_token
from cth_shared.contracts import EXAMPLES, ContractError, new_event, parse_event, registered_types
from poison_support import (
    SERVICES,
    astop_services,
    connect,
    event_bytes,
    eventually,
    log_text,
    producer,
    read_topic,
    send,
    start_services,
    stop_services,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

MEMBER = "M-POISON-1"
PCP_TIN = "987654321"
TEN_MB = 10 * 1024 * 1024
HOSTILE_FACILITY = "<script>alert('x')</script> O'Brien\"; DROP TABLE notifications;-- <img src=x onerror=alert(1)>"
HOSTILE_NAME = "Robert'); DROP TABLE members;-- <b>𝕭𝖔𝖇</b> 👩‍⚕️"


def _doc(raw: bytes) -> dict[str, Any]:
    return json.loads(raw)


def _mutated(raw: bytes, change: Any) -> bytes:
    document = _doc(raw)
    change(document)
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def apply(document: dict[str, Any]) -> None:
        node: Any = document
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return apply


def poison_for(topic: str) -> list[tuple[str, bytes | None, str]]:
    """(label, value, expected DLQ reason) of the poison records sent to ``topic``."""
    base = (event_bytes("member.updated", subject=MEMBER, member_id=MEMBER) if topic == "enrollment"
            else event_bytes("encounter.admitted", subject=MEMBER, member_id=MEMBER, encounter_id="ENC-P1"))
    common: list[tuple[str, bytes | None, str]] = [
        ("malformed json", b'{"specversion": "1.0", "id": ', "invalid_json"),
        ("binary garbage", b"\xff\xfe\x00\x01garbage\x80", "invalid_json"),
        ("empty value", b"", "invalid_json"),
        ("tombstone", None, "invalid_json"),
        ("json array", b"[1, 2, 3]", "not_an_object"),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        ("unknown type", _mutated(base, _set(("type",), "encounter.exploded")), "unknown_type"),
        ("newer version", _mutated(base, lambda d: d.update(dataschema=d["dataschema"][:-1] + "99")),
         "unsupported_version"),
        ("member id wrong type", _mutated(base, _set(("data", "member_id"), 12345)), "invalid_event"),
        ("data wrong type", _mutated(base, _set(("data",), "not an object")), "invalid_event"),
        ("sql in an id", _mutated(base, _set(("data", "member_id"), "M1'; DROP TABLE inbox;--")), "invalid_event"),
        ("control characters", _mutated(base, _set(("subject",), "M\x00\x1b[31m\x07")), "invalid_event"),
    ]
    if topic == "enrollment":
        return [*common,
                ("bad NPI check digit", _mutated(base, _set(("data", "v1c_group_npi"), "1003000127")), "invalid_event"),
                ("bad birth date", _mutated(base, _set(("data", "birth_date"), "1950-02-30")), "invalid_event"),
                ("very long unicode name", _mutated(base, _set(("data", "family_name"), "ǅ" * 20_000)),
                 "invalid_event")]
    discharge = event_bytes("encounter.discharged", subject=MEMBER, member_id=MEMBER, encounter_id="ENC-P1")
    return [*common,
            ("unknown NUBC disposition", _mutated(discharge, _set(("data", "disposition"), "99")), "invalid_event"),
            ("bad facility NPI", _mutated(base, _set(("data", "facility", "npi"), "1245319598")), "invalid_event"),
            ("unknown patient class", _mutated(base, _set(("data", "patient_class"), "spaceship")), "invalid_event"),
            ("very long unicode facility",
             _mutated(base, _set(("data", "facility", "name"), "😀\u200d\u202e" * 20_000)), "invalid_event"),
            ("10 MB record", _mutated(base, _set(("data", "facility", "name"), "x" * TEN_MB)), "oversize")]


def valid_for(topic: str) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(event id, value) of the valid events sent before and after the poison on ``topic``."""
    if topic == "enrollment":
        before = [("enr-1", event_bytes("member.enrolled", event_id="enr-1", member_id=MEMBER,
                                        given_name=HOSTILE_NAME))]
        after = [("enr-2", event_bytes("member.updated", event_id="enr-2", member_id=MEMBER, risk_score=91.0)),
                 ("enr-3", event_bytes("member.pcp_selected", event_id="enr-3", member_id=MEMBER))]
        return before, after
    facility = {"npi": "1245319599", "name": HOSTILE_FACILITY, "tin": "123456789"}
    before = [("adt-1", event_bytes("encounter.admitted", event_id="adt-1", member_id=MEMBER, encounter_id="ENC-P1",
                                    facility=facility))]
    after = [("adt-2", event_bytes("encounter.discharged", event_id="adt-2", member_id=MEMBER, encounter_id="ENC-P1",
                                   facility=facility))]
    return before, after


async def test_poison_lands_in_each_services_dlq_with_its_reason_and_valid_traffic_flows_around_it(
    isolated: Any, tmp_path: Path
) -> None:
    processes = await start_services(isolated, tmp_path)
    try:
        await _run(isolated, processes)
    finally:
        codes = stop_services(processes)
    assert codes == dict.fromkeys(SERVICES, 0), log_text(processes)[-4000:]


async def _run(isolated: Any, processes: dict[str, Any]) -> None:
    notifications_db = await connect(isolated, "notifications")
    token = await issue_token(notifications_db, PCP_TIN, label="poison test")
    outsider = await issue_token(notifications_db, "111222333", label="poison test outsider")

    # The care team first, so the encounters alert someone.
    async with producer(isolated) as client:
        await send(client, isolated, "attribution", MEMBER,
                   event_bytes("attribution.changed", event_id="attr-1", member_id=MEMBER,
                               effective_date="2026-01-01"))
    await eventually(lambda: notifications_db.fetchval("SELECT count(*) FROM care_team_history"),
                     what="care team known to notifications")

    # A producer with the default 1 MB request limit refuses the 10 MB record with a clear error.
    async with producer(isolated) as default_client:
        with pytest.raises(MessageSizeTooLargeError):
            await default_client.send_and_wait(isolated.topic("encounters"), b"x" * TEN_MB, key=MEMBER.encode())

    sent: dict[str, dict[str, Any]] = {"enrollment": {}, "encounters": {}}
    async with producer(isolated, max_request_size=4 * TEN_MB) as client:
        for topic in ("enrollment", "encounters"):
            before, after = valid_for(topic)
            for event_id, value in before:
                sent[topic][event_id] = ("valid", await send(client, isolated, topic, MEMBER, value), value)
            for label, value, reason in poison_for(topic):
                try:
                    position = await send(client, isolated, topic, MEMBER, value)  # type: ignore[arg-type]
                except KafkaError as exc:
                    # A broker with a message size limit (Apache Kafka: message.max.bytes) refuses at produce
                    # time: the producer hears why, nothing is written, and the rest of the traffic goes on.
                    # The largest record such a broker takes (its default limit is about 1 MB) goes instead.
                    assert len(value or b"") > 1_000_000, f"{label}: refused ({exc!r})"
                    assert "TooLarge" in type(exc).__name__, repr(exc)
                    label, reason = "largest accepted record", "invalid_event"  # under MAX_EVENT_BYTES
                    value = _mutated(value or b"", _set(("data", "facility", "name"), "x" * 990_000))
                    position = await send(client, isolated, topic, MEMBER, value)
                sent[topic][label] = ("poison", position, value, reason)
            for event_id, value in after:
                sent[topic][event_id] = ("valid", await send(client, isolated, topic, MEMBER, value), value)

    assert len({entry[1][0] for entry in sent["encounters"].values()}) == 1, "one member, one partition"

    for service, (_module, schema, topics) in SERVICES.items():
        mine = {topic: sent[topic] for topic in ("enrollment", "encounters") if topic in topics}
        poison = {(topic, *entry[1]): (label, entry[2], entry[3]) for topic, entries in mine.items()
                  for label, entry in entries.items() if entry[0] == "poison"}
        valid_ids = [event_id for entries in mine.values() for event_id, entry in entries.items()
                     if entry[0] == "valid"]
        conn = await connect(isolated, schema)
        try:
            # Every valid event applied, including those after the poison on the same partition.
            await eventually(lambda conn=conn, ids=valid_ids: _consumed(conn, ids), what=f"{service} valid events")
            rows = await eventually(lambda conn=conn, n=len(poison): _dead_letters(conn, n),
                                    what=f"{service} dead letters")
            found = {(r["source_topic"].removeprefix(isolated.topic_prefix), r["partition"], r["offset"]): r
                     for r in rows}
            assert set(found) == set(poison), f"{service}: dead letters are exactly the poison records"
            for position, (label, value, reason) in poison.items():
                row = found[position]
                assert row["reason"] == reason, (service, label, row["reason"], row["detail"])
                assert row["detail"], (service, label)
                assert bytes(row["original"]) == (value or b""), (service, label)
            # The DLQ topic carries the same, with the original bytes unless they are too big for a record.
            records = await read_topic(isolated, f"{service}.dlq", expect=len(poison))
            assert len(records) == len(poison), f"{service}: one DLQ record per poison record"
            for record in records:
                body = json.loads(record.value)
                position = (body["source_topic"].removeprefix(isolated.topic_prefix), body["partition"],
                            body["offset"])
                label, value, reason = poison[position]
                assert dict(record.headers)["dlq_reason"].decode() == reason == body["reason"]
                assert body["service"] == service and record.key == MEMBER.encode()
                if body["original_truncated"]:
                    assert body["original_size"] == len(value or b"") > 512 * 1024
                else:
                    assert base64.b64decode(body["original_base64"]) == (value or b""), (service, label)
        finally:
            await conn.close()

    await _hostile_but_valid_strings_are_kept_verbatim_and_served_as_data(isolated, processes, token, outsider)
    await notifications_db.close()


async def _hostile_but_valid_strings_are_kept_verbatim_and_served_as_data(
    isolated: Any, processes: dict[str, Any], token: str, outsider: str
) -> None:
    attribution = await connect(isolated, "attribution")
    try:
        stored = await attribution.fetchval("SELECT count(*) FROM inbox WHERE event_id = 'enr-1'")
        assert stored == 1
    finally:
        await attribution.close()

    notifications = await connect(isolated, "notifications")
    try:
        rows = await eventually(
            lambda: notifications.fetch("SELECT * FROM notifications WHERE member_id = $1 AND organization_id = $2",
                                        MEMBER, PCP_TIN),
            what="alerts for the hostile-but-valid encounter")
    finally:
        await notifications.close()
    contents = [json.loads(r["content"]) if isinstance(r["content"], str) else r["content"] for r in rows]
    assert any(c.get("facility_name") == HOSTILE_FACILITY for c in contents), contents

    async with httpx.AsyncClient(base_url=processes["notifications"].base_url, timeout=10) as api:
        response = await api.get("/inbox", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
        names = [item["content"].get("facility_name") for item in response.json()["items"]]
        assert HOSTILE_FACILITY in names  # data, verbatim: escaping is the renderer's job
        assert "<script>" not in response.text.replace(json.dumps(HOSTILE_FACILITY)[1:-1], "")
        foreign = await api.get("/inbox", headers={"Authorization": f"Bearer {outsider}"})
        assert foreign.json()["items"] == []
        page = await api.get("/inbox/page")
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers.get("x-content-type-options") == "nosniff"
    # The page builds the DOM with textContent only: alert data is never parsed as HTML or code.
    html = (files("notifications") / "static" / "inbox.html").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setTimeout(\"", "srcdoc"):
        assert sink not in html, f"inbox page uses the HTML/code sink {sink}"
    assert re.search(r"\.textContent\s*=", html)


async def _consumed(conn: Any, event_ids: list[str]) -> bool:
    found = await conn.fetchval("SELECT count(*) FROM inbox WHERE event_id = ANY($1::text[])", event_ids)
    return found == len(event_ids)


async def _dead_letters(conn: Any, count: int) -> list[Any] | None:
    rows = await conn.fetch('SELECT * FROM dead_letters ORDER BY source_topic, "offset"')
    return rows if len(rows) >= count else None


XSS_FACILITY = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script><b>Mercy</b>"


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install chromium chromium-driver)")
async def test_the_inbox_page_shows_hostile_text_as_text_and_never_runs_it(isolated: Any, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    processes = await start_services(isolated, tmp_path, names=["notifications"])
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        conn = await connect(isolated, "notifications")
        token = await issue_token(conn, PCP_TIN)
        async with producer(isolated) as client:
            await send(client, isolated, "attribution", MEMBER,
                       event_bytes("attribution.changed", member_id=MEMBER, effective_date="2026-01-01"))
            await eventually(lambda: conn.fetchval("SELECT count(*) FROM care_team_history"), what="care team")
            await send(client, isolated, "encounters", MEMBER, event_bytes(
                "encounter.admitted", member_id=MEMBER, encounter_id="ENC-XSS",
                facility={"npi": "1245319599", "name": XSS_FACILITY, "tin": "123456789"}))
        await eventually(lambda: conn.fetchval("SELECT count(*) FROM notifications WHERE organization_id = $1",
                                               PCP_TIN), what="alert stored")
        await conn.close()

        await asyncio.to_thread(driver.get, f"{processes['notifications'].base_url}/inbox/page")
        scripts_before = driver.execute_script("return document.scripts.length")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        await eventually(lambda: asyncio.to_thread(driver.execute_script,
                                                   "return document.querySelector('li.alert') !== null"),
                         what="alert rendered")
        # Read in one script call: the live list may re-render between a lookup and a read.
        texts = driver.execute_script("return Array.from(document.querySelectorAll('li.alert'), e => e.innerText)")
        assert any(XSS_FACILITY in text for text in texts), texts  # shown verbatim, as text
        assert driver.execute_script("return window.__xss === undefined")
        assert driver.execute_script("return document.querySelectorAll('li.alert img, li.alert script, li.alert b')"
                                     ".length") == 0
        assert driver.execute_script("return document.scripts.length") == scripts_before
    finally:
        driver.quit()
        codes = await astop_services(processes)
    assert codes == {"notifications": 0}, log_text(processes)[-4000:]


EXTREME_STRINGS = [
    "'; DROP TABLE inbox; --", "<script>alert(1)</script>", "Ω≈ç√∫˜µ≤≥÷ 👩‍⚕️𝕳", "\u202eRTL\u200b\ufeff",
    "%s%s%n {0} ${x} {{7*7}}", "NULL", "\\\\server\\share", "ǅ" * 200,
]
EXTREME_NUMBERS = [0, -1, 2**31, 2**63, 10**30, 1e308, -1e-308, 0.5]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _leaves(child, (*path, index))
    else:
        yield path, value


def extreme_events() -> list[tuple[str, str, bytes]]:
    """(topic, key, value) of every *valid* event made by putting an extreme value in one field of an example."""
    out = []
    serial = 0
    for name, entry in sorted(registered_types().items()):
        base = copy.deepcopy(EXAMPLES[name])
        for path, original in _leaves(base):
            if isinstance(original, bool):
                continue
            candidates: list[Any] = (EXTREME_STRINGS if isinstance(original, str)
                                     else EXTREME_NUMBERS if isinstance(original, int | float) else [])
            for candidate in candidates:
                data = copy.deepcopy(base)
                node: Any = data
                for step in path[:-1]:
                    node = node[step]
                node[path[-1]] = candidate
                serial += 1
                try:
                    model = entry.model.model_validate(data)
                except ValueError:
                    continue  # the contract rejects it: the DLQ path is covered above
                subject = data.get("member_id") or data.get("npi")
                event = new_event(model, subject=subject, source="urn:test", tenant="p1", event_id=f"x-{serial}")
                raw = event.to_json_bytes()
                try:
                    parse_event(raw)
                except ContractError:
                    continue
                out.append((entry.topic, subject, raw))
    return out


async def test_valid_events_with_extreme_values_in_any_field_never_fail_a_handler(
    isolated: Any, tmp_path: Path
) -> None:
    events = extreme_events()
    assert len(events) > 300
    processes = await start_services(isolated, tmp_path)
    try:
        async with producer(isolated) as client:
            # The care team and directory first, so alerts and routing have something to work with.
            await send(client, isolated, "attribution", "M000001", event_bytes("attribution.changed"))
            await send(client, isolated, "provider-directory", "1982736450", event_bytes("provider.upserted"))
            futures = [await client.send(isolated.topic(topic), value, key=key.encode())
                       for topic, key, value in events]
            await asyncio.gather(*futures)
        for service, (_module, schema, topics) in SERVICES.items():
            mine = [json.loads(value)["id"] for topic, _k, value in events if topic in topics]
            conn = await connect(isolated, schema)
            try:
                await eventually(lambda conn=conn, ids=mine: _consumed(conn, ids), timeout=90,
                                 what=f"{service} consumed the extreme events")
                failures = await conn.fetch(
                    "SELECT reason, detail, count(*) AS n FROM dead_letters GROUP BY 1, 2 ORDER BY 3 DESC")
                assert not [dict(f) for f in failures if f["reason"] == "handler_error"], (service, failures)
            finally:
                await conn.close()
    finally:
        codes = await astop_services(processes)
    assert codes == dict.fromkeys(SERVICES, 0), log_text(processes)[-4000:]
