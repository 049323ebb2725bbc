"""`make bench` / `python -m bench`: every benchmark in one run, results in BENCHMARKS.md + bench/results/latest.json.

Parts (``--only``/``--skip`` pick them):

* ``pipeline``: the raw aiokafka chain baseline and the four services on the embedded stack (throughput flat
  out with tracing off and on, end-to-end latency at 500/s and at 10/50/80% of the measured maximum,
  per-service CPU and RSS, DLQ and outbox backlog, a py-spy profile of each service);
* ``bulk``: attribution roster load (1M members) and claims backfill (bench/attribution_bulk.py);
* ``routing``: referral routing with 100,000 providers (bench/referrals_routing.py);
* the year of ADT for a 3M-member plan is extrapolated from the pipeline's measured slice.

``--quick`` is a smoke run (small population, short phases, 50k members): minutes, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NOTES = ROOT / "bench" / "notes.md"
PARTS = ("pipeline", "hl7", "routing", "bulk")
console = Console(stderr=True, highlight=False)

TARGETS = {
    "pipeline_events_per_s": 5000,
    "pipeline_to_baseline_ratio": 0.25,
    "e2e_p99_ms_at_500": 100,
    "e2e_p99_ms_at_80pct": 500,
    "roster_members_per_s": 50_000,
    "claim_lines_per_s": 20_000,
    "max_service_rss_mb": 500,
    "tracing_throughput_cost_pct": 10,
    "routing_referrals_per_s": 2000,
}


def progress(message: str) -> None:
    console.print(f"[dim]{datetime.now(UTC).strftime('%H:%M:%S')}[/dim] {message}")


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


_PROBE_DOC = {"member_id": "M000123", "care_team": [{"id": f"{1000000000 + i}", "role": "pcp"} for i in range(8)],
              "explanation": {"candidates": [{"npi": f"{i}", "allowed": i * 10.5} for i in range(8)]}}


def speed_probe() -> float:
    """Milliseconds for a fixed piece of pure-Python work (JSON, dicts, sorting), best of 5; lower is faster.

    This virtual machine's speed drifts 10-40% within minutes (bench/notes.md); a probe before each part
    tells a reader whether a run's figures were taken in a slow or a fast moment."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for i in range(2_000):
            text = json.dumps(_PROBE_DOC)
            doc = json.loads(text)
            sorted(doc["care_team"], key=lambda m: (m["role"], m["id"]), reverse=bool(i & 1))
            {k: v for k, v in doc.items() if k != "member_id"}
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------------------------- pipeline


def _take(workload: Any, count: int) -> list[Any]:
    """``count`` fresh encounter events (``SentEvent``s; as many copies of the ADT slice as needed)."""
    events: list[Any] = []
    while len(events) < count:
        events += workload.copy(min(count - len(events), len(workload.encounters)))
    return events


async def run_pipeline(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from cth_shared.embedded import create_catalog_topics

    from bench.baseline import run_baseline
    from bench.pipeline import Pipeline, build_workload, profile_service

    out: dict[str, Any] = {}
    workload = build_workload(args.members, args.days, progress=progress)
    out["workload"] = {"members": workload.members, "days": workload.days, "adt_messages": workload.adt_messages,
                       "encounter_events": len(workload.encounters), "unmatched": workload.unmatched,
                       "translate_per_s": round(len(workload.encounters) / workload.translate_s),
                       "reference_events": workload.reference_counts}
    async with Pipeline(workdir, progress=progress) as pipeline:
        # 1. Baseline first, on an idle machine state: same broker, same client, same hops, same record sizes.
        bootstrap = pipeline.stack.kafka_bootstrap_servers
        await create_catalog_topics(bootstrap, "baseline.")
        payloads = [(e.key, e.value, e.headers) for e in _take(workload, args.baseline_events)]
        workload.copies = 1000  # the baseline's copies never reach the services; keep ids apart anyway
        workload.eras_used = 0  # and the services' first copy is the slice's own dates
        progress(f"baseline: {len(payloads)} records through 2 bare consume->produce hops (separate processes)")
        baseline = await run_baseline(bootstrap, "baseline.", payloads)
        out["baseline"] = {"events": baseline.events, "seconds": round(baseline.seconds, 2), "hops": baseline.hops,
                           "events_per_s": round(baseline.events_per_s, 1)}
        progress(f"baseline: {baseline.events_per_s:,.0f} events/s")

        # 2. Services with tracing off; reference data; warm-up; flat out; fixed offered rates.
        await pipeline.start_services(tracing=False)
        out["reference_load"] = await pipeline.load_reference(workload)
        warm = await pipeline.run_phase("warm-up", _take(workload, args.warmup_events), None)
        # Size the flat-out phases to ~flat_seconds at the warm-up's rate (bounded by --flat-events).
        flat = int(min(args.flat_events, max(1000, (warm["events_per_s"] or 100) * args.flat_seconds)))
        off1 = await pipeline.run_phase("flat-out, tracing off (1)", _take(workload, flat), None)
        out["flat_out_tracing_off"] = off1
        maximum = off1["events_per_s"] or 1.0
        rates: dict[str, float] = {"at_500": 500.0}
        for pct in (10, 50, 80):
            rates[f"at_{pct}pct"] = round(maximum * pct / 100, 1)
        for label, rate in rates.items():
            # Offered above the maximum (500/s on a slow run), the queue only grows: bound the phase by what
            # the pipeline drains in about rate_seconds.
            count = max(200, int(min(rate, maximum) * args.rate_seconds))
            out[label] = await pipeline.run_phase(f"offered {label}", _take(workload, count), rate)

        # 3. Tracing on vs off in a balanced (ABBA) block: off, on, [on with SQL spans], on, off. The runs get
        #    slower as the tables grow and the machine drifts (PostgreSQL time per statement doubled between
        #    the first and the last run of one bench), so both sides must sit at the same mean position: the
        #    earlier order (off, on, [sql], off, on) compared the rested first run with the last one. Each
        #    restart is followed by a small warm-up.
        small = max(300, args.warmup_events // 4)

        async def flat_phase(name: str, tracing: bool, sql_spans: bool = False) -> dict[str, Any]:
            await pipeline.start_services(tracing=tracing, sql_spans=sql_spans)
            await pipeline.run_phase("warm-up", _take(workload, small), None)
            return await pipeline.run_phase(name, _take(workload, flat), None)

        out["flat_out_tracing_off_2"] = await flat_phase("flat-out, tracing off (2)", False)
        out["flat_out_tracing_on"] = await flat_phase("flat-out, tracing on (1)", True)
        if args.tracing_variants:
            out["flat_out_tracing_on_sql_spans"] = await flat_phase(
                "flat-out, tracing on with per-SQL-statement spans", True, sql_spans=True)
        out["flat_out_tracing_on_2"] = await flat_phase("flat-out, tracing on (2)", True)
        out["flat_out_tracing_off_3"] = await flat_phase("flat-out, tracing off (3)", False)

        # 4. Profile (tracing on, as deployed): one more flat-out run with py-spy attached to every service.
        if args.profile:
            pids = {name: svc.pid for name, svc in pipeline.services.items()}
            events = _take(workload, flat // 2)
            seconds = max(5, int(len(events) / (out["flat_out_tracing_on_2"]["events_per_s"] or maximum)))
            progress(f"profiling each service with py-spy for {seconds}s during a flat-out run")
            tasks = {name: asyncio.create_task(asyncio.to_thread(profile_service, pid, seconds,
                                                                 workdir / f"profile-{name}"))
                     for name, pid in pids.items() if pid}
            out["profile_run"] = await pipeline.run_phase("flat-out with py-spy", events, None)
            out["profiles"] = {name: await task for name, task in tasks.items()}
        out["dead_letters_total"] = await pipeline.dead_letters()
        out["service_logs"] = str(workdir / "logs")
    return out


# --------------------------------------------------------------------------------------------- others


def _part_process(name: str, command: list[str], timeout_s: int) -> dict[str, Any]:
    """Run one bench part as its own Python process and return the JSON object it prints last.

    Each part gets a fresh interpreter, as the CLI it measures would have: measured in the harness's own
    process after the pipeline part, the roster load ran 25-30% slower (the collector walked the pipeline's
    heap too: 36,734 and 37,618 members/s in two full runs against ~50,000 alone)."""
    progress(f"{name}: {' '.join(command[1:])}")
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    lines = proc.stdout.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("{")]  # the last top-level JSON object
    if starts:
        try:
            result: dict[str, Any] = json.loads("\n".join(lines[starts[-1]:]))
            return result
        except ValueError:
            pass
    return {"error": f"no JSON on stdout: {proc.stdout.strip()[-400:]}"}


def run_bulk(args: argparse.Namespace) -> dict[str, Any]:
    """bench/attribution_bulk.py, as its own process (own embedded stack)."""
    command = [sys.executable, "-m", "bench.attribution_bulk", "--members", str(args.roster_members),
               "--claim-members", str(args.claim_members), "--providers", "5000"]
    if not args.bulk_reload:
        command.append("--no-reload")
    result = _part_process("bulk", command, timeout_s=1800)
    if "error" not in result:
        progress(f"bulk: roster {result['roster_first_load']['members_per_s']:,} members/s, claims "
                 f"{result['claims_backfill']['claim_lines_per_s']:,} lines/s")
    return result


def run_routing(args: argparse.Namespace) -> dict[str, Any]:
    """bench/referrals_routing.py, as its own process."""
    command = [sys.executable, "-m", "bench.referrals_routing", "--json", "--providers", str(args.routing_providers),
               "--referrals", str(args.routing_referrals)]
    result = _part_process("routing", command, timeout_s=900)
    if "error" not in result:
        progress(f"routing: {result['referrals_per_s']:,} referrals/s")
    return result


def run_hl7(args: argparse.Namespace) -> dict[str, Any]:
    """bench/hl7_translate.py (the producer toolkit's gateway benchmark), as its own process."""
    command = [sys.executable, "-m", "bench.hl7_translate", "--json", "--messages", str(args.hl7_messages)]
    if args.quick:
        command.append("--no-mllp")
    result = _part_process("hl7", command, timeout_s=300)
    progress("hl7: done")
    return result


def extrapolate_year(pipeline: dict[str, Any], plan_members: int = 3_000_000) -> dict[str, Any]:
    """A year of ADT for a ``plan_members`` plan, from the measured slice's rates."""
    work = pipeline["workload"]
    member_years = work["members"] * work["days"] / 365
    per_member_year = work["adt_messages"] / member_years
    events = per_member_year * plan_members
    rate = pipeline["flat_out_tracing_off"]["events_per_s"]
    seconds = events / rate
    return {
        "plan_members": plan_members,
        "assumptions": (
            "synthetic population rates (PopulationConfig defaults): 90 inpatient admissions, 350 ED visits and 50 "
            "observation stays per 1,000 members per year before risk-weighted thinning (~half kept), each episode "
            "A01/A04 + transfers + A08 updates + A03 (+ cancels); 30-day readmissions; ADT messages per member-year "
            "measured from the generated slice"
        ),
        "adt_messages_per_member_year": round(per_member_year, 3),
        "adt_messages_per_year": round(events),
        "average_per_s_over_the_year": round(events / (365 * 86400), 2),
        "pipeline_events_per_s_used": rate,
        "replay_hours_at_measured_rate": round(seconds / 3600, 2),
        "translate_hours_at_measured_rate": round(events / work["translate_per_s"] / 3600, 2),
    }


# --------------------------------------------------------------------------------------------- report


def headline(results: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {"cores": results["machine"]["cores"]}
    pipeline = results.get("pipeline")
    if pipeline:
        on, off = pipeline["flat_out_tracing_on"], pipeline["flat_out_tracing_off"]
        # Throughput: every tracing-off flat-out run. Tracing cost: the balanced block only (off, on, on, off).
        offs = [p["events_per_s"] for p in (off, pipeline.get("flat_out_tracing_off_2"),
                                            pipeline.get("flat_out_tracing_off_3")) if p]
        ons = [p["events_per_s"] for p in (on, pipeline.get("flat_out_tracing_on_2")) if p]
        block_offs = [p["events_per_s"] for p in (pipeline.get("flat_out_tracing_off_2"),
                                                  pipeline.get("flat_out_tracing_off_3")) if p] or offs
        off_rate, on_rate = sum(offs) / len(offs), sum(ons) / len(ons)
        block_off_rate = sum(block_offs) / len(block_offs)
        base = pipeline["baseline"]["events_per_s"]
        figures.update(
            pipeline_events_per_s=round(off_rate, 1),
            pipeline_events_per_s_each_tracing_off_run=offs,
            pipeline_events_per_s_tracing_on=round(on_rate, 1),
            pipeline_events_per_s_each_tracing_on_run=ons,
            baseline_events_per_s=base,
            pipeline_to_baseline_ratio=round(off_rate / base, 3) if base else None,
            pipeline_to_baseline_ratio_tracing_on=round(on_rate / base, 3) if base else None,
            alerts_per_s=off["alerts_per_s"],
            e2e_p50_ms_at_500=pipeline["at_500"]["e2e_ms"]["p50"],
            e2e_p99_ms_at_500=pipeline["at_500"]["e2e_ms"]["p99"],
            e2e_p999_ms_at_500=pipeline["at_500"]["e2e_ms"]["p99.9"],
            e2e_p50_ms_at_10pct=pipeline["at_10pct"]["e2e_ms"]["p50"],
            e2e_p99_ms_at_10pct=pipeline["at_10pct"]["e2e_ms"]["p99"],
            e2e_p999_ms_at_10pct=pipeline["at_10pct"]["e2e_ms"]["p99.9"],
            e2e_p50_ms_at_50pct=pipeline["at_50pct"]["e2e_ms"]["p50"],
            e2e_p99_ms_at_50pct=pipeline["at_50pct"]["e2e_ms"]["p99"],
            e2e_p999_ms_at_50pct=pipeline["at_50pct"]["e2e_ms"]["p99.9"],
            e2e_p50_ms_at_80pct=pipeline["at_80pct"]["e2e_ms"]["p50"],
            e2e_p99_ms_at_80pct=pipeline["at_80pct"]["e2e_ms"]["p99"],
            e2e_p999_ms_at_80pct=pipeline["at_80pct"]["e2e_ms"]["p99.9"],
            tracing_throughput_cost_pct=round(100 * (1 - on_rate / block_off_rate), 1),
            pipeline_events_per_s_tracing_block_off=round(block_off_rate, 1),
            sql_statements_per_encounter_event=(off.get("sql") or {}).get("statements_per_encounter_event"),
        )
        transits = (off.get("kafka_records") or {}).get("transits_per_event")
        if transits and base:
            # The baseline moves each event through 2 * hops + 2 record transits (the send, a consume and a
            # produce per hop, the drain's read). At its cost per transit, the pipeline's own records alone
            # would allow this many events/s: an estimate of the ceiling the broker and client set.
            hops = pipeline["baseline"]["hops"]
            figures["kafka_record_transits_per_encounter_event"] = transits
            figures["broker_bound_events_per_s"] = round(base * (2 * hops + 2) / transits)
        variant = pipeline.get("flat_out_tracing_on_sql_spans")
        if variant:
            figures["pipeline_events_per_s_tracing_on_sql_spans"] = variant["events_per_s"]
            figures["tracing_throughput_cost_pct_with_sql_spans"] = round(
                100 * (1 - variant["events_per_s"] / block_off_rate), 1)
        services = ("attribution", "referrals", "care-gaps", "notifications")
        phases = [v for v in pipeline.values() if isinstance(v, dict) and "resources" in v]
        rss = {s: max(p["resources"][s]["peak_rss_mb"] for p in phases if s in p["resources"]) for s in services}
        figures["service_peak_rss_mb"] = rss
        figures["max_service_rss_mb"] = max(rss.values())
        figures["service_cpu_cores_flat_out"] = {s: off["resources"][s]["cpu_cores"]
                                                 for s in (*services, "postgres", "broker")}
        figures["outbox_peak_backlog_flat_out"] = off["resources"]["outbox_peak_backlog"]
        per_event = off.get("cpu_ms_per_event") or {}
        if per_event.get("machine"):
            # The machine's busy CPU per encounter event, flat out: what bounds throughput on a saturated machine.
            figures["cpu_ms_per_encounter_event"] = per_event["machine"]
            figures["cpu_ms_per_encounter_event_by_process"] = {k: v for k, v in per_event.items() if k != "machine"}
        figures["dead_letters_total"] = pipeline["dead_letters_total"]
    bulk = results.get("bulk")
    if bulk and "error" not in bulk:
        figures["roster_members_per_s"] = bulk["roster_first_load"]["members_per_s"]
        if "roster_reload_unchanged" in bulk:
            figures["roster_reload_unchanged_members_per_s"] = bulk["roster_reload_unchanged"]["members_per_s"]
        figures["claim_lines_per_s"] = bulk["claims_backfill"]["claim_lines_per_s"]
        figures["bulk_python_peak_rss_mb"] = bulk["python_peak_rss_mb"]
        figures["bulk_postgres_rss_mb"] = bulk["postgres_rss_mb_end"]
    routing = results.get("routing")
    if routing and "error" not in routing:
        figures["routing_referrals_per_s"] = routing["referrals_per_s"]
    if results.get("year_extrapolation"):
        figures["year_3m_adt_messages"] = results["year_extrapolation"]["adt_messages_per_year"]
        figures["year_3m_replay_hours"] = results["year_extrapolation"]["replay_hours_at_measured_rate"]
    return figures


def _verdict(key: str, value: Any) -> str:
    target = TARGETS.get(key)
    if target is None or value is None:
        return ""
    lower_is_better = key.startswith(("e2e_", "max_service_rss", "tracing_"))
    ok = value <= target if lower_is_better else value >= target
    sign = "≤" if lower_is_better else "≥"
    return f"{sign} {target:,} — {'met' if ok else '**missed**'}"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    from bench.pipeline import is_scaffolding

    fig = results["figures"]
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`); raw figures in `bench/results/latest.json`. "
        "Hand-written analysis: `bench/notes.md` (included at the end).",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']} (commit {results['commit']}, {results['duration_s']:.0f} s)",
        f"- machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB RAM, Python {m['python']}, "
        f"{m['platform']}",
        f"- load average at start: {m['load_average_at_start']}; at end: {results.get('load_average_at_end')}"
        + (" — **the machine was shared with other jobs during this run**" if results.get("shared") else ""),
        "- CPU speed probe (fixed pure-Python work, ms, lower is faster; `speed_probe`): "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in m.get("speed_probe_ms", {}).items()),
        f"- mode: {'QUICK smoke run (not a measurement)' if results['quick'] else 'full'}",
        "",
        "## Headline figures vs the targets",
        "",
        "| figure | value | target |",
        "|---|---:|---|",
    ]
    for key, value in fig.items():
        if isinstance(value, dict):
            continue
        shown = f"{value:,}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
        lines.append(f"| `{key}` | {shown} | {_verdict(key, value)} |")
    pipeline = results.get("pipeline")
    if pipeline:
        lines += ["", "## Pipeline phases", "",
                  "| phase | tracing | offered/s | events | events/s | alerts | e2e p50 ms | p99 ms | p99.9 ms | "
                  "max ms | DLQ new |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, phase in pipeline.items():
            if not (isinstance(phase, dict) and "e2e_ms" in phase):
                continue
            e2e = phase["e2e_ms"]
            tracing = ("on" + (", SQL spans" if phase.get("sql_spans") else "")) if phase["tracing"] else "off"
            lines.append(f"| {key} | {tracing} | {phase['offered_per_s'] or 'flat out'} | "
                         f"{phase['events']:,} | {phase['events_per_s']} | {phase['alerts']:,} | {e2e['p50']} | "
                         f"{e2e['p99']} | {e2e['p99.9']} | {e2e['max']} | {sum(phase['dlq_new'].values())} |")
        lines += ["", f"Baseline (bare aiokafka, 2 consume→produce hops, separate processes, same broker, same "
                      f"record sizes): {pipeline['baseline']['events_per_s']:,} events/s "
                      f"({pipeline['baseline']['events']:,} records).",
                  "", f"Workload: {json.dumps(pipeline['workload'])}",
                  "", f"Reference data load: {json.dumps(pipeline['reference_load'])}",
                  "", "### CPU (cores used, CPU ms per encounter event) and peak RSS per process, flat out "
                      "(tracing off, first run)", "",
                  "| process | CPU cores | CPU ms per event | peak RSS MB |", "|---|---:|---:|---:|"]
        per_event = pipeline["flat_out_tracing_off"].get("cpu_ms_per_event") or {}
        for name, usage in pipeline["flat_out_tracing_off"]["resources"].items():
            if name != "outbox_peak_backlog":
                lines.append(f"| {name}{' (all of it, kernel included)' if name == 'machine' else ''} | "
                             f"{usage['cpu_cores']} | {per_event.get(name, '')} | {usage.get('peak_rss_mb', '')} |")
        lines += ["", f"Outbox peak backlog (flat out, tracing off): "
                      f"{json.dumps(pipeline['flat_out_tracing_off']['resources']['outbox_peak_backlog'])}; "
                      f"dead letters at the end: {json.dumps(pipeline['dead_letters_total'])}."]
        sql = pipeline["flat_out_tracing_off"].get("sql") or {}
        if sql:
            lines += ["", "### SQL round trips (pg_stat_statements, flat out, tracing off)", "",
                      f"{sql['statements']:,} statements for {pipeline['flat_out_tracing_off']['events']:,} encounter "
                      f"events: **{sql['statements_per_encounter_event']} statements per event** across the four "
                      f"services; PostgreSQL spent {sql['server_exec_ms_total']:,} ms executing them, "
                      f"{sql['server_exec_share_of_wall_pct']}% of the phase's wall time (the rest is round trips, "
                      "Python and scheduling).", "",
                      "| calls | per event | mean ms | statement |", "|---:|---:|---:|---|"]
            lines += [f"| {t['calls']:,} | {t['per_event']} | {t['mean_ms']} | `{t['query']}` |"
                      for t in sql["top_by_calls"]]
        if pipeline.get("profiles"):
            lines += ["", "## Profiles (py-spy, flat out, tracing on)", ""]
            for name, prof in pipeline["profiles"].items():
                lines.append(f"### {name}")
                if "error" in prof:
                    lines += ["", f"py-spy failed: {prof['error']}", ""]
                    continue
                lines += ["", f"{prof.get('samples', 0)} samples. Inclusive time (top frames):", ""]
                lines += [f"- {pct}% `{frame}`" for frame, pct in prof.get("inclusive_pct", [])
                          if not is_scaffolding(frame)]
                lines += ["", "Own time:", ""]
                lines += [f"- {pct}% `{frame}`" for frame, pct in prof.get("own_pct", [])]
                lines.append("")
    if results.get("year_extrapolation"):
        lines += ["", "## A year of ADT for a 3M-member plan (extrapolated)", "", "```json",
                  json.dumps(results["year_extrapolation"], indent=2), "```"]
    if results.get("bulk"):
        lines += ["", "## Attribution bulk (roster + claims backfill)", "", "```json",
                  json.dumps(results["bulk"], indent=2), "```"]
    if results.get("hl7"):
        lines += ["", "## HL7 v2 ADT translation and MLLP gateway (bench/hl7_translate.py)", "", "```json",
                  json.dumps(results["hl7"], indent=2), "```"]
    if results.get("routing"):
        lines += ["", "## Referral routing (100,000 providers)", "", "```json",
                  json.dumps(results["routing"], indent=2), "```"]
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (minutes); not a measurement")
    parser.add_argument("--only", default="", help=f"comma-separated parts to run: {','.join(PARTS)}")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profile")
    parser.add_argument("--no-tracing-variants", dest="tracing_variants", action="store_false",
                        help="skip the flat-out phase with tracing on plus per-SQL-statement spans")
    parser.add_argument("--no-write", action="store_true", help="print JSON only; leave BENCHMARKS.md alone")
    parser.add_argument("--shared", action="store_true", help="note that the machine was shared during the run")
    parser.add_argument("--members", type=int, help="synthetic population for the pipeline")
    parser.add_argument("--days", type=int, help="days of ADT generated (the slice that is copied per phase)")
    parser.add_argument("--flat-events", type=int, help="most encounter events per flat-out phase")
    parser.add_argument("--flat-seconds", type=float, help="flat-out phases are sized to about this long")
    parser.add_argument("--rate-seconds", type=float, help="seconds per fixed-rate phase")
    parser.add_argument("--roster-members", type=int)
    parser.add_argument("--bulk-reload", action="store_true",
                        help="also time an unchanged roster reload (must emit nothing; ~as long as the load)")
    parser.add_argument("--claim-members", type=int)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "members": 2000 if quick else 4000, "days": 60 if quick else 365,
        "flat_events": 3000 if quick else 40000, "flat_seconds": 6 if quick else 20,
        "rate_seconds": 4 if quick else 10,
        "roster_members": 50_000 if quick else 1_000_000, "claim_members": 10_000 if quick else 40_000,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.warmup_events = 500 if quick else 3000
    args.baseline_events = 5000 if quick else 40000
    args.routing_providers = 100_000
    args.hl7_messages = 1000 if quick else 5000
    args.routing_referrals = 2000 if quick else 10000
    chosen = [p.strip() for p in args.only.split(",") if p.strip()] or list(PARTS)
    skipped = {p.strip() for p in args.skip.split(",") if p.strip()}
    unknown = (set(chosen) | skipped) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; parts are {', '.join(PARTS)}")
    args.parts = [p for p in chosen if p not in skipped]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "quick": args.quick,
        "parts": args.parts,
        "shared": args.shared,
        "targets": TARGETS,
    }
    progress(f"bench: parts {', '.join(args.parts)}{' (quick)' if args.quick else ''} on "
             f"{results['machine']['cores']} cores, load average {results['machine']['load_average_at_start']}")
    probes = results["machine"]["speed_probe_ms"] = {"start": speed_probe()}
    with tempfile.TemporaryDirectory(prefix="cth-bench-") as tmp:
        workdir = Path(tmp)
        if "pipeline" in args.parts:
            results["pipeline"] = asyncio.run(run_pipeline(args, workdir / "pipeline"))
            results["year_extrapolation"] = extrapolate_year(results["pipeline"])
        if "hl7" in args.parts:
            probes["before_hl7"] = speed_probe()
            results["hl7"] = run_hl7(args)
        if "routing" in args.parts:
            probes["before_routing"] = speed_probe()
            results["routing"] = run_routing(args)
        if "bulk" in args.parts:
            probes["before_bulk"] = speed_probe()
            results["bulk"] = run_bulk(args)
    probes["end"] = speed_probe()
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["figures"] = headline(results)
    figures = results["figures"]
    # the keys latest.json promises, at the top level too
    summary = {k: v for k, v in figures.items() if not isinstance(v, dict)}
    document = {**summary, **results}
    text = json.dumps(document, indent=2, default=str)
    if args.no_write:
        print(text)
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "latest-quick.json" if args.quick else "latest.json"
        (RESULTS / name).write_text(text + "\n")
        if not args.quick:
            write_markdown(results, ROOT / "BENCHMARKS.md")
        progress(f"wrote bench/results/{name}" + ("" if args.quick else " and BENCHMARKS.md"))
    for key, value in summary.items():
        console.print(f"  {key:>40}: {value}  {_verdict(key, value)}")
    progress(f"bench done in {results['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
