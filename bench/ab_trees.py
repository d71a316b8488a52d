"""A/B of two revisions through Postfix: bench/throughput.py from each, alternated.

    .venv/bin/python -m bench.ab_trees REV_A REV_B [--rounds 4] [--repeat 3]
        [-m 1500] [--workers 2] [--cpu-affinity auto]

Each revision is exported with ``git archive`` into a scratch directory. Each round runs
``bench/throughput.py --configs null,smtpguard --modes single --no-direct`` from both
trees, A first in odd rounds and B first in even ones, so that a drift of the machine's
speed falls on both, with ``PYTHONPATH`` on that tree (the milters run that tree's
code). Printed per round and tree: c{n}/b as throughput.py computes it (medians of
its runs), the median of the paired ratios (each smtpguard run against the null milter
run next to it), and the milter's and Postfix's CPU per message; then per tree the
median over the rounds, and B minus A per round.

Why a tool: on a machine shared with other work, a few alternations of the throughput
command can show a difference of 0.03x that a longer comparison does not reproduce
(bench/README.md, round 8). Read the B - A column: a change is worth claiming when its
sign holds in every round and its size stands out from the spread of the rounds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Round:
    """One throughput.py run of one tree."""

    ratio: float
    paired: float
    milter_ms: float
    postfix_ms: float


def export(rev: str, into: Path) -> Path:
    """``rev`` of this repository as a plain directory tree (``git archive``)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_tree(tree: Path, args: argparse.Namespace, out: Path) -> Round:
    workers = str(args.workers)
    command = [
        *(sys.executable, "-m", "bench.throughput", "--configs", "null,smtpguard"),
        *("--modes", "single", "--no-direct", "-m", str(args.messages)),
        *("--repeat", str(args.repeat), "--workers", workers),
        *("--cpu-affinity", args.cpu_affinity, "--json", str(out)),
    ]
    env = {**os.environ, "PYTHONPATH": f"{tree / 'milter'}:{tree}"}
    subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True)
    return summarize(json.loads(out.read_text(encoding="utf-8")), args.workers)


def summarize(result: dict[str, Any], workers: int) -> Round:
    """The figures of one throughput.py JSON result (single mode, null and smtpguard)."""
    name = f"smtpguard_w{workers}" if workers > 1 else "smtpguard"
    single = result["postfix"]["single"]
    configs = single["configs"]
    runs: dict[int, dict[str, float]] = {}
    for run in result["postfix_runs"]:
        if run["mode"] == "single":
            runs.setdefault(run["repetition"], {})[run["config"]] = run["msg_per_s"]
    paired = [r[name] / r["null"] for r in runs.values() if name in r and r.get("null")]
    ratio = configs[name]["msg_per_s_median"] / configs["null"]["msg_per_s_median"]
    return Round(
        ratio=ratio,
        paired=statistics.median(paired),
        milter_ms=configs[name]["milter_cpu_seconds_per_message"] * 1000,
        postfix_ms=configs[name]["postfix_cpu_seconds_per_message"] * 1000,
    )


def line(label: str, r: Round) -> str:
    return (
        f"  {label:<10} c/b {r.ratio:5.3f}  paired {r.paired:5.3f}"
        f"  milter {r.milter_ms:5.3f} ms  postfix {r.postfix_ms:5.3f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev_a")
    parser.add_argument("rev_b")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="throughput.py --repeat")
    parser.add_argument("-m", "--messages", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpu-affinity", default="auto")
    args = parser.parse_args(argv)
    results: dict[str, list[Round]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="smtpguard-ab-") as tmp:
        work = Path(tmp)
        trees = {"A": export(args.rev_a, work / "a"), "B": export(args.rev_b, work / "b")}
        print(f"A = {args.rev_a}, B = {args.rev_b}; {args.rounds} rounds", flush=True)
        for n in range(args.rounds):
            order = ("A", "B") if n % 2 == 0 else ("B", "A")
            print(f"round {n + 1}", flush=True)
            for key in order:
                found = run_tree(trees[key], args, work / f"{key}{n}.json")
                results[key].append(found)
                print(line(key, found), flush=True)
    print("\nmedian over the rounds:")
    for key, rounds in results.items():
        medians = [statistics.median(getattr(r, f.name) for r in rounds) for f in fields(Round)]
        print(line(key, Round(*medians)))
    print("\nB - A per round (paired ratio; milter ms; postfix ms):")
    for n, (a, b) in enumerate(zip(results["A"], results["B"], strict=True), 1):
        print(
            f"  round {n}: {b.paired - a.paired:+.3f}; {b.milter_ms - a.milter_ms:+.3f};"
            f" {b.postfix_ms - a.postfix_ms:+.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
