"""A failure in a tick is a restart in miniature: the same process goes on and loses
nothing, applies nothing twice.

An exception is raised at every fault point (``ralf.faults.arm``), early and late in the
run; the process keeps stepping to the end and must equal the oracle, and after every
tick the serving cache must equal what the database holds (what a reopen would load).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ralf import Ralf, RalfClient, RalfError, faults
from ralf.faults import POINTS, InjectedFault
from ralf.testing import drop_postgres_database, new_postgres_database
from tests.engine.kill_pipeline import assert_equals_oracle, build, forget_when_due

ROOT = Path(__file__).resolve().parents[2]
N = 1500
CACHED = ("counts", "average", "budgeted_counts", "agg", "medians", "per_rating", "joined")


@pytest.fixture(autouse=True)
def disarmed():
    yield
    faults.disarm()


def assert_cache_equals_storage(server: Ralf) -> None:
    """Point queries (the serving cache) answer what the tables hold."""
    client = RalfClient(server)
    for table in CACHED:
        stored = client.bulk_query(table).to_dict("records")
        key = server.table(table).schema.primary_key
        for row in stored:
            assert client.point_query(table, row[key]).to_dict() == row, table


def run_with_faults(server: Ralf) -> list[BaseException]:
    """Step to the end, as `ralf serve` would: failures are reported, never stop it."""
    seen: list[BaseException] = []
    for tick in range(10_000):
        try:
            server.step()
        except (RalfError, InjectedFault) as exc:
            seen.append(exc)
        try:
            forget_when_due(server)  # the pipeline forgets a key once, in the middle
        except (RalfError, InjectedFault) as exc:
            seen.append(exc)
        try:
            server.point_query("lazy_counts", tick % 37)  # lazy refresh on query
        except KeyError:
            pass
        except RalfError as exc:
            seen.append(exc)
        assert_cache_equals_storage(server)
        if server.drained() and not server.stale_keys("lazy_counts"):
            return seen
    raise AssertionError("the run did not drain")


def _injected(errors: list[BaseException]) -> bool:
    return any(isinstance(e, InjectedFault) or isinstance(e.__cause__, InjectedFault)
               for e in errors)


# the points of the one forget of the pipeline: reached once (or twice, after a failure)
FORGET_POINTS = [p for p in POINTS if p.startswith(("forget.", "erase."))]
# a rebuild of a changed table is not in this pipeline: tests/test_evolve.py faults it
EVOLVE_POINTS = [p for p in POINTS if p.startswith("evolve.")]
HITS = [(p, nth) for p in POINTS if p not in FORGET_POINTS + EVOLVE_POINTS
        for nth in (2, 25)]
HITS += [(p, 1) for p in FORGET_POINTS]


@pytest.mark.parametrize(("point", "nth"), HITS)
def test_an_exception_at_each_point_and_the_same_process_goes_on_to_the_oracle(
        make_ralf, point, nth):
    with make_ralf() as server:
        build(server, N)
        faults.arm(point, nth, "raise")
        errors = run_with_faults(server)
        reached = faults.disarm()
        assert reached.get(point, 0) >= nth, f"{point} reached {reached.get(point)} times"
        assert _injected([*errors, *server.errors]), errors
        server.bulk_query("lazy_counts")
        assert_equals_oracle(server, N)


def test_faults_every_few_ticks_at_every_point_in_turn(make_ralf):
    """The soak in small: a fault every third tick, each at another point."""
    with make_ralf() as server:
        build(server, N)
        injected = 0
        for tick in range(10_000):
            if tick % 3 == 0:
                faults.arm(POINTS[(tick // 3) % len(POINTS)], 1, "raise")
            try:
                server.step()
                forget_when_due(server)
            except (RalfError, InjectedFault) as exc:
                injected += _injected([exc])
            assert_cache_equals_storage(server)
            if server.drained():
                break
        assert injected >= 5
        faults.disarm()
        server.run()
        server.bulk_query("lazy_counts")
        assert_equals_oracle(server, N)


def _mount_tmpfs(folder: Path) -> bool:
    """A 16 MB tmpfs at ``folder``, if this machine lets the test mount one."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("mode", ["tmpfs", "rlimit"])
def test_a_disk_that_fills_and_frees_in_one_process(tmp_path, mode):
    """Ticks fail while the disk is full (a tmpfs filled up, or RLIMIT_FSIZE where no
    tmpfs can be mounted); the same process then runs on to the oracle."""
    folder = tmp_path / "disk"
    mounted = mode == "tmpfs" and _mount_tmpfs(folder)
    if mode == "tmpfs" and not mounted:
        mode = "rlimit"  # this machine cannot mount one: the file size limit instead
    folder.mkdir(exist_ok=True)
    try:
        done = subprocess.run([sys.executable, "-m", "tests.engine.full_disk", mode,
                               str(folder / "features.duckdb"), str(N)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
    assert int(done.stdout.split()[1]) > 0  # ticks really failed while the disk was full


def test_postgres_sessions_terminated_from_outside(postgres_url):
    """pg_terminate_backend on every session of the engine, again and again: each write
    that meets a dead session fails, the engine reconnects and resumes, nothing is lost."""
    import psycopg

    database = new_postgres_database(postgres_url)
    name = database.rsplit("/", 1)[1]
    try:
        with Ralf(database) as server, psycopg.connect(postgres_url, autocommit=True) as admin:
            build(server, N)
            terminated = failed = 0
            for tick in range(10_000):
                if tick % 4 == 1:
                    terminated += len(admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s", [name]).fetchall())
                try:
                    server.step()
                    forget_when_due(server)  # the pipeline forgets a key once
                except RalfError:
                    failed += 1
                if server.drained():
                    break
            assert terminated > 5 and failed > 0
            forget_when_due(server)  # asked again if its ask failed, then finished by a tick
            server.step()
            server.bulk_query("lazy_counts")
            assert_equals_oracle(server, N)
    finally:
        drop_postgres_database(database)
