"""HL7 v2 ADT translation throughput: the library floor, our full path, and MLLP end to end.

Messages come from the synthetic population (both hospital styles: v2.5.1 "EPIC-like" with
NPIs, OIDs, ROL/PD1/PV2/IN1/DG1, and v2.3 "legacy" with namespaces only), with the roster's
member index so that the member-matching path runs as in production. In one run it measures:

* ``floor``: bare ``hl7.parse`` of each message: what the python-hl7 library costs on its own
  (CPU time of this process: figures stay comparable on a machine shared with other load);
* ``translate``: ``AdtTranslator.translate`` of the raw bytes, what the MLLP listener does:
  ``parse_hl7`` (structural checks, then the library on the segments the mapping reads), the
  mapping, pydantic models, the CloudEvent: our full path, reported as a ratio to the floor;
* ``mllp`` (skipped with ``--no-mllp``): the MLLP listener end to end on loopback, publishing
  each event to the embedded broker (Tansu) and answering AA after the broker's ack, driven by
  the replay engine's pipelined lanes (16 connections x 64 in flight): wall-clock messages/s
  and the CPU time this process (sender, listener, publisher) spent per message.

Run: ``python -m bench.hl7_translate [--messages N] [--json] [--no-mllp] [--against REV]``;
``--against REV`` measures hl7_adt.py + mllp.py of git revision REV in the same run too
(interleaved), for before/after figures.
Target: the gateway must not bottleneck the >= 5,000 ADT events/s pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
from cth_shared.contracts.events import MemberEnrolled
from cth_shared.producers.hl7_adt import MemberIndex
from cth_shared.producers.synthetic import Population, PopulationConfig

TARGET_PER_S = 5000
ROOT = Path(__file__).resolve().parent.parent
PRODUCERS = "shared/src/cth_shared/producers"


@dataclass
class Variant:
    """A version of the HL7 modules to measure: the working tree, or ``--against REV``."""

    name: str
    adt: Any  # the hl7_adt module
    mllp: Any  # the mllp module


def load_revision(rev: str) -> Variant:
    """hl7_adt.py and mllp.py as they were at git revision ``rev`` (same-run before/after)."""
    modules: dict[str, Any] = {}
    for name in ("hl7_adt", "mllp"):
        source = subprocess.run(["git", "show", f"{rev}:{PRODUCERS}/{name}.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
        qualified = f"cth_shared.producers._bench_{name}_at_rev"
        source = source.replace("from .hl7_adt import", "from cth_shared.producers._bench_hl7_adt_at_rev import")
        module = types.ModuleType(qualified)
        module.__file__ = f"{rev}:{PRODUCERS}/{name}.py"
        sys.modules[qualified] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own file at rev
        modules[name] = module
    return Variant(rev, modules["hl7_adt"], modules["mllp"])


def _translate(variant: Variant, translator: Any) -> Callable[[bytes], Any]:
    """What the listener of ``variant`` runs per frame (parse, then translate)."""
    if hasattr(translator, "SEGMENTS"):
        return translator.translate  # parses the segments the mapping reads
    parse, limit = variant.adt.parse_hl7, translator.settings.max_message_bytes
    return lambda raw: translator.translate(parse(raw, max_bytes=limit))


def workload(messages: int, seed: int = 7) -> tuple[list[str], MemberIndex, Population]:
    """``messages`` HL7 ADT messages (cycled if the population yields fewer) and its member index."""
    population = Population(PopulationConfig(
        members=max(500, messages // 5), days=60, lookback_days=0, seed=seed, claims_per_year=0,
        v1c_visits_per_year=0, referrals_per_year=0, admissions_per_year=3, ed_visits_per_year=8,
        observation_per_year=2,
    ))
    index = MemberIndex()
    found: list[str] = []
    for item in population.timeline():
        if item.kind == "hl7":
            found.append(str(item.payload))
        elif isinstance(getattr(item.payload, "data", None), MemberEnrolled):
            index.add(item.payload.data)  # type: ignore[union-attr]
    if not found:
        raise RuntimeError("the synthetic population produced no HL7 messages")
    return [found[i % len(found)] for i in range(messages)], index, population


def measure_cpu(messages: list[str], index: MemberIndex, population: Population, repeats: int,
                variants: list[Variant]) -> dict[str, Any]:
    raw = [m.encode() for m in messages]  # what the listener gets from the socket
    runs: dict[str, Callable[[range], None]] = {}

    def floor(chunk: range) -> None:
        for i in chunk:
            hl7.parse(messages[i])

    runs["floor"] = floor
    outcomes: Counter[str] = Counter()
    for variant in variants:
        translate = _translate(variant, variant.adt.AdtTranslator(index, population.adt_settings()))
        for message in raw:  # warm-up and a census of the outcomes
            result = translate(message)
            outcomes[f"{variant.name}:{'event' if hasattr(result, 'event') else 'unmatched'}"] += 1

        def full(chunk: range, translate: Callable[[bytes], Any] = translate) -> None:
            for i in chunk:
                translate(raw[i])

        def full_with_json(chunk: range, translate: Callable[[bytes], Any] = translate) -> None:
            for i in chunk:  # + what the publisher adds: the event's JSON bytes
                result = translate(raw[i])
                if hasattr(result, "event"):
                    result.event.to_json_bytes()

        runs[f"translate:{variant.name}"] = full
        runs[f"translate_json:{variant.name}"] = full_with_json
    # Paired and finely interleaved: every chunk of 100 messages goes through every run back to
    # back (in rotating order), so a burst of load from other processes hits all runs alike; the
    # ratios are medians of the per-chunk ratios.
    names = list(runs)
    chunks = [range(i, min(i + 100, len(messages))) for i in range(0, len(messages), 100)]
    totals = {name: [0.0] * repeats for name in names}
    per_chunk: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        gc.collect()
        for number, chunk in enumerate(chunks):
            spent: dict[str, float] = {}
            for name in names[number % len(names):] + names[: number % len(names)]:
                started = time.process_time()
                runs[name](chunk)
                spent[name] = time.process_time() - started
                totals[name][repeat] += spent[name]
            for name in names:
                per_chunk[name].append(spent[name] / max(spent["floor"], 1e-9))
    best = {name: len(messages) / min(values) for name, values in totals.items()}
    cost = {name: statistics.median(values) for name, values in per_chunk.items()}  # x the floor's time
    result: dict[str, Any] = {
        "messages": len(messages),
        "outcomes": dict(outcomes),
        "versions": dict(Counter(m.split("|", 12)[11].split("\r")[0] for m in messages)),
        "floor_msgs_per_s": round(best["floor"]),
        "floor_us_per_msg": round(1e6 / best["floor"], 1),
    }
    for variant in variants:
        suffix = "" if variant.name == "working tree" else f"@{variant.name}"
        rate, with_json = best[f"translate:{variant.name}"], best[f"translate_json:{variant.name}"]
        result[f"translate_msgs_per_s{suffix}"] = round(rate)
        result[f"translate_us_per_msg{suffix}"] = round(1e6 / rate, 1)
        result[f"translate_to_floor_ratio{suffix}"] = round(1 / cost[f"translate:{variant.name}"], 3)
        result[f"translate_time_x_floor{suffix}"] = round(cost[f"translate:{variant.name}"], 3)
        result[f"translate_json_msgs_per_s{suffix}"] = round(with_json)
    if len(variants) > 1:  # the paired speed-up of the working tree over the revision
        tree, rev = (f"translate:{v.name}" for v in variants[:2])
        result["translate_speedup_vs_rev"] = round(statistics.median(
            b / a for a, b in zip(per_chunk[tree], per_chunk[rev], strict=True)), 3)
    return result


class _NoEvents:
    """The replay engine's publisher when the timeline holds HL7 messages only."""

    async def send(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("only HL7 messages are replayed")

    async def flush(self) -> None:
        return None


async def measure_mllp(messages: list[str], index: MemberIndex, population: Population, connections: int,
                       window: int, variants: list[Variant], rounds: int,
                       simulated_ack_ms: float | None = None) -> dict[str, Any]:
    """MLLP end to end; with ``simulated_ack_ms`` the "broker" acknowledges after that delay (no stack)."""
    from cth_shared.embedded import EmbeddedStack, create_catalog_topics
    from cth_shared.producers.replay import open_publisher, replay
    from cth_shared.producers.synthetic import TimelineItem
    from cth_shared.settings import StackSettings

    now = datetime.now(UTC)
    items = [TimelineItem(at=now, kind="hl7", payload=m) for m in messages]
    results: dict[str, list[dict[str, Any]]] = {}
    async with contextlib.AsyncExitStack() as stack_context:
        if simulated_ack_ms is None:
            stack = await stack_context.enter_async_context(EmbeddedStack())
            await create_catalog_topics(stack.kafka_bootstrap_servers)
            settings = StackSettings(kafka_bootstrap_servers=stack.kafka_bootstrap_servers)
            publisher = await stack_context.enter_async_context(open_publisher(settings, client_id="bench-hl7"))
            sink: Callable[[Any], Awaitable[None]] = publisher.publish
        else:
            publisher = _NoEvents()  # type: ignore[assignment]

            async def sink(event: Any) -> None:  # a broker that acknowledges after a fixed delay
                await asyncio.sleep(simulated_ack_ms / 1000)

        for round_no in range(rounds):
            for variant in variants:
                translator = variant.adt.AdtTranslator(index, population.adt_settings())
                mllp_settings = variant.mllp.MllpSettings(port=0)
                listener = await variant.mllp.MllpListener(translator, sink, mllp_settings).start()
                target = ("127.0.0.1", listener.port)
                try:
                    if round_no == 0:  # topics' metadata, connections, caches
                        await replay(items[:300], publisher=publisher, mllp=target, index=index,
                                     mllp_connections=connections, mllp_window=window)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    summary = await replay(items, publisher=publisher, mllp=target, index=index,
                                           mllp_connections=connections, mllp_window=window)
                    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                finally:
                    await listener.stop()
                results.setdefault(variant.name, []).append({
                    "msgs_per_s": round(len(messages) / elapsed),
                    "cpu_us_per_msg": round(cpu / len(messages) * 1e6),  # sender + listener + publisher
                    "acks": dict(summary.acks),
                    "errors": summary.errors,
                    "error_samples": summary.error_samples[:5],
                })
    summary_by_variant: dict[str, Any] = {"messages": len(messages), "connections": connections, "window": window,
                                          "broker": "embedded" if simulated_ack_ms is None
                                          else f"simulated, acks after {simulated_ack_ms} ms"}
    for variant in variants:
        suffix = "" if variant.name == "working tree" else f"@{variant.name}"
        runs = results[variant.name]
        summary_by_variant[f"msgs_per_s{suffix}"] = max(r["msgs_per_s"] for r in runs)
        summary_by_variant[f"cpu_us_per_msg{suffix}"] = min(r["cpu_us_per_msg"] for r in runs)
        summary_by_variant[f"runs{suffix}"] = runs
    return summary_by_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per measured pass")
    parser.add_argument("--repeats", type=int, default=3, help="paired passes over the messages for the CPU figures")
    parser.add_argument("--no-mllp", action="store_true", help="skip the MLLP + embedded broker part")
    parser.add_argument("--connections", type=int, default=16, help="MLLP connections (replay lanes)")
    parser.add_argument("--window", type=int, default=64, help="messages in flight per MLLP connection")
    parser.add_argument("--rounds", type=int, default=2, help="MLLP passes per variant (best counts)")
    parser.add_argument("--against", metavar="REV", help="also measure hl7_adt.py + mllp.py of git revision REV "
                        "in the same run (interleaved), e.g. the commit before an optimisation")
    parser.add_argument("--simulated-ack-ms", type=float, metavar="MS",
                        help="also run the MLLP part against a sink that acknowledges after MS milliseconds "
                        "(the listener alone: no broker CPU, a fixed broker round trip)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    from cth_shared.producers import hl7_adt, mllp

    variants = [Variant("working tree", hl7_adt, mllp)]
    if args.against:
        variants.append(load_revision(args.against))
    messages, index, population = workload(args.messages)
    result: dict[str, Any] = {"cpu": measure_cpu(messages, index, population, args.repeats, variants)}
    if not args.no_mllp:
        result["mllp"] = asyncio.run(measure_mllp(messages, index, population, args.connections, args.window,
                                                  variants, args.rounds))
        result["mllp"]["to_translate_ratio"] = round(
            result["mllp"]["msgs_per_s"] / result["cpu"]["translate_json_msgs_per_s"], 3)
    if args.simulated_ack_ms is not None:
        result["mllp_simulated_broker"] = asyncio.run(measure_mllp(
            messages, index, population, args.connections, args.window, variants, args.rounds, args.simulated_ack_ms))
    result["target_msgs_per_s"] = TARGET_PER_S
    if args.json:
        print(json.dumps(result))
        return
    cpu = result["cpu"]
    print(f"{cpu['messages']} ADT messages ({cpu['versions']})")
    print(f"  floor      hl7.parse only             {cpu['floor_msgs_per_s']:>7,} msg/CPU-s  "
          f"({cpu['floor_us_per_msg']} us)")
    for variant in variants:
        suffix = "" if variant.name == "working tree" else f"@{variant.name}"
        print(f"  translate  {variant.name[:24]:<24}   {cpu[f'translate_msgs_per_s{suffix}']:>7,} msg/CPU-s  "
              f"({cpu[f'translate_us_per_msg{suffix}']} us) = {cpu[f'translate_to_floor_ratio{suffix}']} x floor; "
              f"with the event's JSON {cpu[f'translate_json_msgs_per_s{suffix}']:,}/s")
    if "translate_speedup_vs_rev" in cpu:
        print(f"  working tree vs {args.against}: {cpu['translate_speedup_vs_rev']} x faster (median of paired chunks)")
    for part in ("mllp", "mllp_simulated_broker"):
        if part not in result:
            continue
        mllp_result = result[part]
        print(f"  {part} (broker: {mllp_result['broker']}; {args.connections} connections x {args.window} in flight)")
        for variant in variants:
            suffix = "" if variant.name == "working tree" else f"@{variant.name}"
            print(f"    {variant.name[:24]:<24}   {mllp_result[f'msgs_per_s{suffix}']:>7,} msg/s      "
                  f"({mllp_result[f'cpu_us_per_msg{suffix}']} CPU-us/msg in sender + listener + publisher)")


if __name__ == "__main__":
    main()
