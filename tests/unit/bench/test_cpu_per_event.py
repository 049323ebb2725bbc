"""The pipeline benchmark's CPU accounting: per process and for the whole machine, per encounter event."""

from __future__ import annotations

import os
import time

from bench.pipeline import Sampler, cpu_ms_per_event


async def test_the_sampler_counts_a_process_cpu_within_the_machines() -> None:
    sampler = Sampler({"harness": os.getpid()}, db=None)  # type: ignore[arg-type]  # no outbox to read
    sampler.start()
    spin_until = time.process_time() + 0.3
    while time.process_time() < spin_until:
        pass
    usage = await sampler.stop()
    assert usage["harness"]["cpu_s"] >= 0.25
    # every process's CPU is part of the machine's busy time (clock ticks: allow one tick per core)
    assert usage["machine"]["cpu_s"] >= usage["harness"]["cpu_s"] - 0.01 * usage["machine"]["cores"]
    assert usage["machine"]["cores"] == os.cpu_count()


def test_cpu_ms_per_event_per_process_and_machine() -> None:
    usage = {"notifications": {"cpu_cores": 0.5, "cpu_s": 9.4, "peak_rss_mb": 120.0},
             "machine": {"cpu_cores": 1.9, "cpu_s": 35.0, "cores": 2}, "outbox_peak_backlog": {"care_gaps": 3}}
    assert cpu_ms_per_event(usage, 18_000) == {"notifications": 0.522, "machine": 1.944}
    assert cpu_ms_per_event(usage, 0) == {}
