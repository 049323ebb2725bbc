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

Run: ``python -m bench.hl7_translate [--messages N] [--json] [--no-mllp]``.
Target: the gateway must not bottleneck the >= 5,000 ADT events/s pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import hl7
from cth_shared.contracts.events import MemberEnrolled
from cth_shared.producers.hl7_adt import AdtEvent, AdtTranslator, MemberIndex
from cth_shared.producers.synthetic import Population, PopulationConfig

TARGET_PER_S = 5000


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


def _best_rate(run: Any, count: int, repeats: int) -> float:
    """Messages per CPU second of the fastest of ``repeats`` runs.

    CPU time of this process, not wall time: on a shared machine (other services, tests) the
    wall clock measures the neighbours; the ratios between the runs are what to compare.
    """
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return count / best


def measure_cpu(messages: list[str], index: MemberIndex, population: Population, repeats: int) -> dict[str, Any]:
    translator = AdtTranslator(index, population.adt_settings())
    raw = [m.encode() for m in messages]  # what the listener gets from the socket
    outcomes: Counter[str] = Counter()
    for message in raw:  # warm-up and a census of the outcomes
        result = translator.translate(message)
        outcomes["event" if isinstance(result, AdtEvent) else "unmatched"] += 1

    def floor() -> None:
        for message in messages:
            hl7.parse(message)

    def full() -> None:
        for message in raw:
            translator.translate(message)  # parse_hl7 (the segments the mapping reads) + the mapping

    def full_with_json() -> None:  # what the publisher adds: the event's JSON bytes
        for message in raw:
            result = translator.translate(message)
            if isinstance(result, AdtEvent):
                result.event.to_json_bytes()

    # Interleave the runs so that background load hits each about equally.
    rates: dict[str, list[float]] = {"floor": [], "translate": [], "translate_json": []}
    for _ in range(repeats):
        rates["floor"].append(_best_rate(floor, len(messages), 1))
        rates["translate"].append(_best_rate(full, len(messages), 1))
        rates["translate_json"].append(_best_rate(full_with_json, len(messages), 1))
    best = {name: max(values) for name, values in rates.items()}
    return {
        "messages": len(messages),
        "outcomes": dict(outcomes),
        "versions": dict(Counter(m.split("|", 12)[11].split("\r")[0] for m in messages)),
        "floor_msgs_per_s": round(best["floor"]),
        "translate_msgs_per_s": round(best["translate"]),
        "translate_json_msgs_per_s": round(best["translate_json"]),
        "translate_to_floor_ratio": round(best["translate"] / best["floor"], 3),
        "floor_us_per_msg": round(1e6 / best["floor"], 1),
        "translate_us_per_msg": round(1e6 / best["translate"], 1),
        "median_translate_msgs_per_s": round(statistics.median(rates["translate"])),
    }


async def measure_mllp(messages: list[str], index: MemberIndex, population: Population,
                       connections: int, window: int) -> dict[str, Any]:
    from cth_shared.embedded import EmbeddedStack, create_catalog_topics
    from cth_shared.producers.replay import open_publisher, replay, start_listener
    from cth_shared.producers.synthetic import TimelineItem
    from cth_shared.settings import StackSettings

    async with EmbeddedStack() as stack:
        await create_catalog_topics(stack.kafka_bootstrap_servers)
        settings = StackSettings(kafka_bootstrap_servers=stack.kafka_bootstrap_servers)
        async with open_publisher(settings, client_id="bench-hl7") as publisher:
            listener = await start_listener(publisher, index=index, adt_settings=population.adt_settings())
            try:
                now = datetime.now(UTC)
                warm = [TimelineItem(at=now, kind="hl7", payload=m) for m in messages[: min(500, len(messages))]]
                await replay(warm, publisher=publisher, mllp=("127.0.0.1", listener.port), index=index,
                             mllp_connections=connections, mllp_window=window)
                items = [TimelineItem(at=now, kind="hl7", payload=m) for m in messages]
                started, cpu_started = time.perf_counter(), time.process_time()
                summary = await replay(items, publisher=publisher, mllp=("127.0.0.1", listener.port),
                                       index=index, mllp_connections=connections, mllp_window=window)
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            finally:
                await listener.stop()
    return {
        "messages": len(messages),
        "connections": connections,
        "window": window,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(len(messages) / elapsed),
        "cpu_us_per_msg": round(cpu / len(messages) * 1e6),  # sender + listener + publisher (one process)
        "acks": dict(summary.acks),
        "errors": summary.errors,
        "error_samples": summary.error_samples[:5],
        "listener_accepted": listener.stats.accepted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per measured pass")
    parser.add_argument("--repeats", type=int, default=5, help="passes per CPU measurement (best counts)")
    parser.add_argument("--no-mllp", action="store_true", help="skip the MLLP + embedded broker part")
    parser.add_argument("--connections", type=int, default=16, help="MLLP connections (replay lanes)")
    parser.add_argument("--window", type=int, default=64, help="messages in flight per MLLP connection")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    messages, index, population = workload(args.messages)
    result: dict[str, Any] = {"cpu": measure_cpu(messages, index, population, args.repeats)}
    if not args.no_mllp:
        result["mllp"] = asyncio.run(measure_mllp(messages, index, population, args.connections, args.window))
        result["mllp"]["to_translate_ratio"] = round(
            result["mllp"]["msgs_per_s"] / result["cpu"]["translate_json_msgs_per_s"], 3)
    result["target_msgs_per_s"] = TARGET_PER_S
    if args.json:
        print(json.dumps(result))
        return
    cpu = result["cpu"]
    print(f"{cpu['messages']} ADT messages ({cpu['versions']}; {cpu['outcomes']})")
    print(f"  floor     hl7.parse only          {cpu['floor_msgs_per_s']:>8,} msg/CPU-s  "
          f"({cpu['floor_us_per_msg']} us)")
    print(f"  translate translate(bytes)        {cpu['translate_msgs_per_s']:>8,} msg/CPU-s  "
          f"({cpu['translate_us_per_msg']} us)  = {cpu['translate_to_floor_ratio']} x floor")
    print(f"  + JSON    ... + event JSON bytes  {cpu['translate_json_msgs_per_s']:>8,} msg/CPU-s")
    if "mllp" in result:
        mllp = result["mllp"]
        print(f"  mllp      listener -> broker ack  {mllp['msgs_per_s']:>8,} msg/s  "
              f"({mllp['cpu_us_per_msg']} CPU-us/msg; {mllp['connections']} connections x {mllp['window']} "
              f"in flight; acks {mllp['acks']}) "
              f"= {mllp['to_translate_ratio']} x translate+JSON")


if __name__ == "__main__":
    main()
