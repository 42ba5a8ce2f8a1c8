"""SIGKILL in every window of the engine, twice — late in a run, then again in the run that
recovers from it (but in the windows a recovery never reaches again, ``ONCE``) — restart
to completion, and compare with the oracle.

The engine honours ``RALF_CRASH_AT=point@n`` (:mod:`ralf.faults`): the subprocess kills
itself the n-th time it reaches that point. Which hit is "late" comes from one counting
run of the same pipeline (``RALF_COUNT_POINTS``). Every kill is asserted to have happened:
a point that is never reached fails the test instead of turning it into a plain run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ralf import Ralf
from ralf.faults import POINTS
from ralf.testing import new_postgres_database
from tests.engine.kill_pipeline import assert_equals_oracle, build

ROOT = Path(__file__).resolve().parents[2]
N = 1500


def _run(db: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RALF_CRASH_AT")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "tests.engine.kill_pipeline", db, str(N)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _killed_at(db: str, point: str, nth: int) -> None:
    run = _run(db, {"RALF_CRASH_AT": f"{point}@{nth}"})
    assert run.returncode == -signal.SIGKILL, (
        f"crash point {point}@{nth} was never reached: {run.stdout[-300:]} {run.stderr}")


@pytest.fixture(scope="module")
def hits(tmp_path_factory, request) -> dict[str, dict[str, int]]:
    """How often a whole run of the pipeline reaches each point, per backend."""
    counted = {}
    for backend in ("duckdb", "postgres"):
        folder = tmp_path_factory.mktemp(f"count-{backend}")
        db = (str(folder / "count.duckdb") if backend == "duckdb"
              else new_postgres_database(request.getfixturevalue("postgres_url")))
        out = folder / "hits.json"
        run = _run(db, {"RALF_COUNT_POINTS": str(out)})
        assert run.returncode == 0 and "done" in run.stdout, run.stderr
        counted[backend] = json.loads(out.read_text())
    return counted


def check_against_oracle(db: str) -> None:
    with Ralf(db) as server:
        build(server, N)
        server.run()
        assert_equals_oracle(server, N)


# Points a recovering run never reaches again: the pipeline forgets its key once, and a
# restart finishes an acknowledged forget from its next step on (ralf.engine.forget)
ONCE = {"forget.after_ask", "forget.after_erase"}
# Points this pipeline never reaches, killed at by their own suite: a rebuild of a changed
# table (tests/test_evolve.py)
ELSEWHERE = {"evolve.before_swap"}
PIPELINE_POINTS = [p for p in POINTS if p not in ELSEWHERE]


@pytest.mark.parametrize("point", PIPELINE_POINTS)
def test_sigkill_late_and_again_in_recovery_then_restart_equals_the_oracle(database, point,
                                                                           hits):
    backend = "postgres" if database.startswith("postgresql") else "duckdb"
    reached = hits[backend].get(point, 0)
    assert reached > 0, f"a whole run never reaches {point}"
    _killed_at(database, point, max(1, reached * 2 // 3))  # late in the first run
    if point not in ONCE:
        _killed_at(database, point, 1)  # the first time the recovering run gets there
    finished = _run(database)
    assert finished.returncode == 0 and "done" in finished.stdout, finished.stderr
    check_against_oracle(database)


def test_a_whole_run_reaches_every_window_and_no_other_point(hits):
    for backend, counted in hits.items():
        assert set(counted) == set(PIPELINE_POINTS), backend
