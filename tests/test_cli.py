"""The ``ralf`` command (ralf/cli.py): what an operator sees of a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import urllib3

ROOT = Path(__file__).resolve().parents[1]


def test_a_source_that_is_not_there_makes_the_server_degraded(tmp_path):
    """`ralf serve` on a CSV path that does not exist: the reason is logged, shown by
    `ralf status`, and /ready answers 503 with it (/health stays 200: the process lives)."""
    root = ROOT
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("from tests.pipelines import RATINGS\n\n"
                        "def build(server):\n"
                        f"    server.create_csv_source({str(tmp_path / 'missing.csv')!r}, "
                        "RATINGS, name='ratings')\n")
    proc = subprocess.Popen([sys.executable, "-m", "ralf.cli", "serve", str(pipeline),
                             "--port", "0", "--log-every", "3600"], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        assert urllib3.request("GET", url + "/health").status == 200
        deadline = time.monotonic() + 30
        while (ready := urllib3.request("GET", url + "/ready")).status == 200:
            assert time.monotonic() < deadline, "never reported degraded"
        assert ready.status == 503
        (problem,) = json.loads(ready.data)["problems"]
        assert problem["table"] == "ratings" and "missing.csv" in problem["reason"]
        status = subprocess.run([sys.executable, "-m", "ralf.cli", "status", "--url", url],
                                cwd=root, capture_output=True, text=True)
        assert "problem: source 'ratings'" in status.stdout and "missing.csv" in status.stdout
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "missing.csv" in err  # logged, with the reason
