"""bench/throughput.py still runs: a tiny load through real Postfix, no timing asserted.

The benchmark stopped at start for a whole session (its Postfix instances got master.cf
after postfix-config, which reads it) and nobody noticed: a benchmark nobody can run
measures nothing. What is checked is that every configuration carried every message
and nothing failed or was refused, never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.service import ROOT

pytestmark = pytest.mark.integration


def test_the_throughput_bench_runs_through_postfix(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.throughput",
            "--configs",
            "null,smtpguard",
            "--modes",
            "single",
            "-m",
            "50",
            "--repeat",
            "1",
            "--no-direct",
            "--workers",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["failures"] == []
    assert result["postfix_milter_rejects"] == {"null": 0, "smtpguard": 0}
    runs = {run["config"]: run for run in result["postfix_runs"]}
    assert set(runs) == {"null", "smtpguard"}
    assert all(run["messages"] == 50 for run in runs.values())
