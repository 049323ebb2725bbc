"""Paired A/B: one `python -m bench` part run for an older revision and for the working tree, alternated.

This 2-core virtual machine's speed drifts by 10-20% between runs (bench/notes.md), so a change is
judged by runs of both revisions taken back to back in one sitting, not by two `make bench` runs at
different times. The older revision is checked out in a temporary git worktree and put first on
``PYTHONPATH`` (its `shared`, its services and its `bench`), with this checkout's virtual environment;
services started by the harness inherit that path. Nothing is written to BENCHMARKS.md.

    python -m bench.ab --against e496e5b --only bulk --rounds 3
    python -m bench.ab --against e496e5b --only pipeline --rounds 1 -- --no-profile --no-tracing-variants

Prints, per headline figure, each run's value for both revisions and the median ratio new/old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
_err = Console(stderr=True)


def _python_path(tree: Path) -> str:
    parts = [tree / "shared" / "src", *sorted((tree / "services").glob("*/src")), tree]
    return os.pathsep.join(str(p) for p in parts)


def _run(label: str, tree: Path, env: dict[str, str], bench_args: list[str]) -> dict[str, Any] | None:
    """One run's headline figures; None when it failed (its stderr tail is printed)."""
    _err.print(f"[bold]{label}[/]: python -m bench {' '.join(bench_args)} (in {tree})")
    done = subprocess.run(
        [sys.executable, "-m", "bench", *bench_args, "--no-write"],
        cwd=tree, env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        _err.print(f"[red]{label} run failed (exit {done.returncode}); left out of the comparison[/]:\n"
                   f"{done.stderr[-3000:]}")
        return None
    document = json.loads(done.stdout[done.stdout.index("{"):])
    return {k: v for k, v in document.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("cores", "duration_s")}


def compare(against: str, bench_args: list[str], rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    failed = {"old": 0, "new": 0}
    with tempfile.TemporaryDirectory(prefix="cth-ab-") as tmp:
        worktree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree), against],
                       check=True)
        try:
            old_env = {**os.environ, "PYTHONPATH": _python_path(worktree)}
            new_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            for round_no in range(1, rounds + 1):
                _err.print(f"round {round_no}/{rounds}")
                # A failed run (e.g. a service that could not start) costs its own figures, not the
                # rounds already measured.
                for side, label, tree, env in (("old", f"old ({against})", worktree, old_env),
                                               ("new", "new (working tree)", ROOT, new_env)):
                    result = _run(label, tree, env, bench_args)
                    if result is None:
                        failed[side] += 1
                    else:
                        runs[side].append(result)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                           check=False)
    figures = sorted(set().union(*runs["old"], *runs["new"]))
    summary: dict[str, Any] = {}
    for key in figures:
        old = [r[key] for r in runs["old"] if key in r]
        new = [r[key] for r in runs["new"] if key in r]
        ratio = (statistics.median(new) / statistics.median(old)) if old and new and statistics.median(old) else None
        summary[key] = {"old": old, "new": new, "median_ratio_new_to_old": round(ratio, 3) if ratio else None}
    return {"against": against, "bench_args": bench_args, "rounds": rounds, "failed_runs": failed,
            "figures": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the older revision (commit, tag or branch)")
    parser.add_argument("--only", required=True, help="the bench part(s) to run, as for python -m bench --only")
    parser.add_argument("--rounds", type=int, default=3, help="old/new pairs, alternated (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("bench_args", nargs="*", help="more python -m bench options, after --")
    args = parser.parse_args(argv)
    result = compare(args.against, ["--only", args.only, *args.bench_args], args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"python -m bench --only {args.only}: {args.against} (old) vs working tree (new), "
                        f"{args.rounds} alternated round(s)")
    for column in ("figure", "old runs", "new runs", "median new/old"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for key, row in result["figures"].items():
        table.add_row(key, " / ".join(f"{v:,}" for v in row["old"]), " / ".join(f"{v:,}" for v in row["new"]),
                      "" if row["median_ratio_new_to_old"] is None else f"{row['median_ratio_new_to_old']:.3f}")
    Console(width=max(Console().width, 140)).print(table)
    if any(result["failed_runs"].values()):
        _err.print(f"failed runs, left out: {result['failed_runs']}")


if __name__ == "__main__":
    main()
