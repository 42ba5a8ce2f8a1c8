"""The README's demo, examples/tutorial.py: it runs, and the features it leaves are right."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ralf import Ralf, RalfClient
from ralf.testing import as_of

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
tutorial = importlib.import_module("examples.tutorial")

RATINGS = 4000
SMALL = ["--ratings", str(RATINGS), "--users", "300", "--movies", "80"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Run the demo's main() once on a small stream: (its database file, its output)."""
    db = tmp_path_factory.mktemp("tutorial") / "features.duckdb"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert tutorial.main([*SMALL, "--db", str(db)]) == 0
    return db, out.getvalue()


@pytest.fixture
def client(demo: tuple[Path, str]) -> Iterator[RalfClient]:
    """A client on the database the demo left behind (SQL only: no pipeline is defined)."""
    with Ralf(str(demo[0])) as server:
        yield RalfClient(server)


def exact_averages(client: RalfClient) -> pd.Series:
    ratings = client.sql("SELECT user, rating FROM ratings")
    assert len(ratings) == RATINGS
    return ratings.groupby("user")["rating"].mean()


def averages(client: RalfClient, table: str) -> pd.Series:
    return client.sql(f"SELECT user, average FROM {table}").set_index("user")["average"]


def test_unshed_average_is_the_groupby_mean_of_the_append_table(client: RalfClient) -> None:
    expected = exact_averages(client)
    got = averages(client, "average_exact")
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)


def test_lazy_average_after_bulk_query_is_exact(client: RalfClient) -> None:
    expected = exact_averages(client)
    got = averages(client, "average_lazy")
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)


def test_sampled_average_averages_a_subset_of_each_users_ratings(client: RalfClient) -> None:
    ratings = client.sql("SELECT user, rating FROM ratings")
    bounds = ratings.groupby("user")["rating"].agg(["min", "max"])
    sampled = averages(client, "average")
    assert 0.8 * len(bounds) < len(sampled) <= len(bounds)
    assert set(sampled.index) <= set(bounds.index)
    lo, hi = bounds.loc[sampled.index, "min"], bounds.loc[sampled.index, "max"]
    assert ((sampled >= lo - 1e-9) & (sampled <= hi + 1e-9)).all()
    assert not np.allclose(sampled, exact_averages(client).loc[sampled.index])


def test_user_vectors_predict_ratings_better_than_the_mean(client: RalfClient) -> None:
    ratings = client.sql("SELECT user, movie, rating FROM ratings")
    movies = client.sql("SELECT movie, vector FROM movie_vectors")
    users = client.sql("SELECT user, vector FROM user_vectors")
    assert sorted(users["user"]) == sorted(ratings["user"].unique())
    assert users["vector"].map(len).eq(tutorial.DIM).all()
    movie_vectors = dict(zip(movies["movie"], map(list, movies["vector"]), strict=True))
    error = tutorial.rmse(users, movie_vectors, ratings)
    assert error < 0.7 * ratings["rating"].std(ddof=0)


def test_lottery_refreshes_at_most_the_budget_per_tick(demo: tuple[Path, str]) -> None:
    output = demo[1]
    before = int(re.search(r"stale keys before any tick: ([\d,]+)", output)[1].replace(",", ""))
    left = [int(n.replace(",", "")) for n in re.findall(r"tick \d: ([\d,]+) stale keys left",
                                                        output)]
    assert len(left) == 5
    assert left == [max(0, before - 50 * tick) for tick in range(1, 6)]


def test_lazy_point_query_refreshes_only_its_key(demo: tuple[Path, str]) -> None:
    output = demo[1]
    stale = int(re.search(r"# ([\d,]+) stale keys, 0 rows stored", output)[1].replace(",", ""))
    after = re.search(r"refreshed key \d+ first: ([\d,]+) stale keys left", output)
    assert int(after[1].replace(",", "")) == stale - 1
    assert "0 stale keys left" in output


@pytest.mark.parametrize("how", [["examples/tutorial.py"], ["-m", "examples.tutorial"]],
                         ids=["script", "module"])
def test_runs_from_the_repository_root(how: list[str], tmp_path: Path) -> None:
    db = tmp_path / "features.duckdb"
    result = subprocess.run(
        [sys.executable, *how, "--ratings", "1500", "--users", "100", "--movies", "40",
         "--db", str(db)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f'duckdb {db} -c "SELECT * FROM average LIMIT 5"' in result.stdout
    assert db.is_file()


def test_the_training_set_from_the_backfill_is_point_in_time_correct(client: RalfClient):
    """Section 8: features as of each label's time equal merge_asof over the events."""
    events = tutorial.rating_events(tutorial.generate(RATINGS, 300, 80, 0), seed=1)
    entities = pd.DataFrame({"user": events["user"].sample(100, random_state=3).to_numpy(),
                             "event_timestamp": events["ts"].sample(100, random_state=4)
                             .to_numpy()})
    got = client.sql("SELECT count(*) AS n FROM rating_events")["n"][0]
    assert got == RATINGS
    ordered = events.sort_values("ts", kind="stable")
    running = ordered.assign(average=ordered.groupby("user")["rating"].transform(
        lambda r: r.expanding().mean()))
    want = as_of(running, entities, "user", "ts")
    history = client.sql('SELECT user, average, _ralf_event_time FROM '
                         'ralf."average_by_time__history"')
    answer = as_of(history.rename(columns={"_ralf_event_time": "ts"}), entities, "user", "ts")
    np.testing.assert_allclose(answer["average"].to_numpy(float),
                               want["average"].to_numpy(float), rtol=1e-9)
