"""SIGKILL at every fault-injection point, restart to completion, compare with the oracle.

The engine honours RALF_CRASH_AT=point@n (ralf/engine/faults.py): the subprocess kills
itself the n-th time it reaches that point — mid-ingestion, mid-operator, mid-commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ralf import Ralf, RalfClient
from ralf.engine.faults import POINTS
from ralf.testing import recompute
from tests.engine.kill_pipeline import build, events
from tests.pipelines import AVERAGE, AverageRating

ROOT = Path(__file__).resolve().parents[2]
N = 1500


def _run(db: str, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RALF_CRASH_AT"}
    if crash_at:
        env["RALF_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "tests.engine.kill_pipeline", db, str(N)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def check_against_oracle(db: str) -> None:
    with Ralf(db) as server:
        build(server, N)
        server.run()
        client = RalfClient(server)
        stored = server.sql("SELECT id FROM events ORDER BY _ralf_seq")
        assert stored["id"].tolist() == list(range(N))  # none lost, none twice, in order
        df = pd.DataFrame(events(N))
        truth = df["user"].value_counts().to_dict()
        for table in ("counts", "budgeted_counts", "lazy_counts"):
            got = client.bulk_query(table).set_index("user")["count"].to_dict()
            assert got == truth, table
        agg = client.bulk_query("agg").set_index("user")
        assert agg["n"].to_dict() == truth
        means = df.groupby("user")["rating"].mean()
        assert (abs(agg["mean"] - means) < 1e-9).all()
        medians = client.bulk_query("medians").set_index("user")["med"]
        assert (abs(medians - df.groupby("user")["rating"].median()) < 1e-9).all()
        expected = recompute(server, "events", AverageRating(AVERAGE), "user")
        got = client.bulk_query("average").sort_values("user").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_point_then_restart_equals_the_oracle(database, point):
    db = database
    nth = 1 if point.startswith("lazy") else 3
    crashed = _run(db, f"{point}@{nth}")
    assert crashed.returncode == -signal.SIGKILL, (
        f"crash point {point} was never reached: {crashed.stdout[-300:]} {crashed.stderr}")
    finished = _run(db, None)
    assert finished.returncode == 0 and "done" in finished.stdout, finished.stderr
    check_against_oracle(db)


def test_there_are_at_least_twenty_crash_points():
    assert len(set(POINTS)) >= 20
