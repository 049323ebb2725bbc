"""The ``cth`` CLI without a broker: file detection, --dry-run reports, exit codes, generate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
from cth_shared.embedded import free_port
from cth_shared.producers.cli import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    app,
    detect_file_kind,
    parse_speed,
)
from typer.testing import CliRunner

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
ROSTER_HEADER = (
    "member_id,plan_id,network_id,product,virtual_first,v1c_group_npi,effective_date,termination_date,"
    "given_name,family_name,birth_date,sex,address_line,city,state,postal_code,latitude,longitude,"
    "risk_score,care_manager_id,selected_pcp_npi,identifiers"
)
MEMBER_ROW = (
    "M000001,PLAN-VF,NET-A,commercial,true,1003000126,2026-01-01,,Ada,Example,1950-04-02,female,"
    "12 Elm St,Springfield,IL,62701,39.78,-89.65,72.5,CM-17,,urn:oid:2.16.840.1.113883.3.72.5.9.1|MRN100001"
)

runner = CliRunner()


def feed_directory(tmp_path: Path, *, bad_row: bool = False, bad_message: bool = False) -> Path:
    folder = tmp_path / "feed"
    folder.mkdir()
    rows = [ROSTER_HEADER, MEMBER_ROW]
    if bad_row:
        rows.append(MEMBER_ROW.replace("M000001", "M000009").replace("1950-04-02", "1950-13-45"))
    (folder / "roster.csv").write_text("\n".join(rows) + "\n")
    hl7 = (FIXTURES / "epic_style_v251.hl7").read_bytes()
    if bad_message:
        hl7 += b"\nMSH|^~\\&|EPICADT|STEXGEN\nPID|1\n"
    (folder / "epic.hl7").write_bytes(hl7)
    (folder / "notes.txt").write_text("ignored: not a feed file\n")
    return folder


def test_detect_file_kind(tmp_path):
    folder = feed_directory(tmp_path)
    assert detect_file_kind(folder / "roster.csv") == "roster"
    assert detect_file_kind(folder / "epic.hl7") == "hl7"
    (tmp_path / "bundle.json").write_text(json.dumps({"resourceType": "Bundle"}))
    assert detect_file_kind(tmp_path / "bundle.json") == "fhir"
    (tmp_path / "events.ndjson").write_text(json.dumps({"specversion": "1.0", "type": "x"}) + "\n")
    assert detect_file_kind(tmp_path / "events.ndjson") == "events"
    (tmp_path / "hl7-facilities.json").write_text("{}")
    assert detect_file_kind(tmp_path / "hl7-facilities.json") == "facilities"


@pytest.mark.parametrize(
    ("text", "expected"), [("max", None), ("realtime", 1.0), ("x60", 60.0), ("12.5", 12.5), ("60x", 60.0)]
)
def test_parse_speed(text, expected):
    assert parse_speed(text) == expected


@pytest.mark.parametrize("text", ["fast-ish", "x0", "-3"])
def test_parse_speed_rejects_nonsense(text):
    with pytest.raises(typer.BadParameter):
        parse_speed(text)


def test_dry_run_of_a_clean_directory_exits_0(tmp_path):
    result = runner.invoke(app, ["publish", str(feed_directory(tmp_path)), "--dry-run"])
    assert result.exit_code == EXIT_OK, result.output
    assert "roster" in result.output and "encounter.admitted" in result.output


def test_bad_row_and_bad_message_exit_1_with_file_and_line(tmp_path):
    folder = feed_directory(tmp_path, bad_row=True, bad_message=True)
    result = runner.invoke(app, ["publish", str(folder), "--dry-run"])
    assert result.exit_code == EXIT_REJECTED, result.output
    assert f"{folder / 'roster.csv'}:3: " in result.output
    assert "birth_date" in result.output and "1950-13-45" not in result.output
    lines = (folder / "epic.hl7").read_bytes().splitlines()
    bad_line = next(n for n, text in enumerate(lines, start=1) if text == b"MSH|^~\\&|EPICADT|STEXGEN")
    assert f"{folder / 'epic.hl7'}:{bad_line}: truncated" in result.output


@pytest.mark.parametrize(
    "arguments",
    [
        ["publish"],  # no path
        ["publish", "/no/such/path"],
        ["publish", "--kind", "spreadsheet", "."],
        ["replay", "--speed", "warp"],
        ["replay", "--mllp", "nohostport"],
        ["generate"],  # --out is required
        ["bogus-command"],
    ],
)
def test_usage_errors_exit_2(arguments):
    assert runner.invoke(app, arguments).exit_code == EXIT_USAGE


def test_a_file_of_unknown_kind_given_explicitly_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    result = runner.invoke(app, ["publish", str(tmp_path / "notes.txt")])
    assert result.exit_code == EXIT_USAGE and "--kind" in result.output


def test_no_broker_exits_3(tmp_path):
    folder = feed_directory(tmp_path)
    result = runner.invoke(
        app, ["publish", str(folder), "--bootstrap", f"127.0.0.1:{free_port()}", "--connect-timeout", "3"]
    )
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "broker unavailable" in result.output


def test_help_documents_the_exit_codes():
    result = runner.invoke(app, ["publish", "--help"])
    assert result.exit_code == 0
    assert "Exit codes" in result.output and "3 broker" in result.output


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for name in ("events.ndjson", "adt.hl7", "hl7-facilities.json"):
        sha.update((folder / name).read_bytes())
    return sha.hexdigest()


def test_generate_is_deterministic_and_its_output_publishes_cleanly(tmp_path):
    arguments = ["generate", "--members", "150", "--seed", "9", "--days", "10", "--lookback-days", "10"]
    first = runner.invoke(app, [*arguments, "--out", str(tmp_path / "a")])
    second = runner.invoke(app, [*arguments, "--out", str(tmp_path / "b")])
    assert first.exit_code == second.exit_code == EXIT_OK, first.output
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert (tmp_path / "a" / "adt.hl7").stat().st_size > 0
    published = runner.invoke(app, ["publish", str(tmp_path / "a"), "--dry-run"])
    assert published.exit_code == EXIT_OK, published.output
    assert "member.enrolled" in published.output and "encounter." in published.output


def test_hl7_file_messages_carry_the_line_of_their_msh(tmp_path):
    from cth_shared.producers.cli import _hl7_messages

    message = "MSH|^~\\&|A|B|C|D|20260301||ADT^A01|{n}|P|2.5.1\nEVN|A01|20260301\nPID|1||X{n}\n"
    path = tmp_path / "feed.hl7"
    path.write_text("\n".join(message.format(n=n) for n in range(3)))  # blank line between messages
    found = list(_hl7_messages(path))
    assert [line for line, _ in found] == [1, 5, 9]
    assert [m.split(b"|")[9] for _, m in found] == [b"0", b"1", b"2"]
