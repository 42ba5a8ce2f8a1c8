"""The Feast peer baseline (../shared/bench/feast_baseline.py), run with an interpreter that
has feast installed, so a benchmark can print Feast's figures from the same run as ours."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_baseline(python: str, *args: str) -> str | None:
    """The baseline's output, or None (with its tail on stderr) if it failed."""
    script = ROOT.parent / "shared" / "bench" / "feast_baseline.py"
    if not script.exists():
        script = Path("../shared/bench/feast_baseline.py").resolve()
    print(f"running the Feast baseline with {python} ...", flush=True)
    out = subprocess.run([python, str(script), *args], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        return None
    return out.stdout


def figure(output: str | None, pattern: str) -> tuple[str, ...] | None:
    """The groups of ``pattern`` in the baseline's output, if it printed it."""
    match = re.search(pattern, output or "")
    if match is None and output is not None:
        print(f"Feast baseline: no line matching {pattern!r}", file=sys.stderr)
    return None if match is None else match.groups()
