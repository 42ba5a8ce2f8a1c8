"""examples/movielens: the loaders, the synthetic stream, the features and the harness."""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ralf import Record

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
data = importlib.import_module("examples.movielens.data")
features = importlib.import_module("examples.movielens.features")
evaluate = importlib.import_module("examples.movielens.evaluate")

# (user, movie, rating, timestamp), deliberately not in time order, with a tie at 300
ROWS = [(1, 10, 4.0, 300), (2, 10, 3.5, 100), (1, 20, 5.0, 200), (3, 30, 1.0, 300),
        (2, 30, 2.0, 50)]
EXPECTED = pd.DataFrame(
    [(2, 30, 2.0, 50), (2, 10, 3.5, 100), (1, 20, 5.0, 200), (1, 10, 4.0, 300),
     (3, 30, 1.0, 300)], columns=data.COLUMNS)
U_DATA = "".join(f"{u}\t{m}\t{r:g}\t{t}\n" for u, m, r, t in ROWS)
RATINGS_DAT = "".join(f"{u}::{m}::{r:g}::{t}\n" for u, m, r, t in ROWS)
RATINGS_CSV = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{m},{r:g},{t}\n" for u, m, r, t in ROWS)
TINY = ["--users", "60", "--movies", "40", "--ratings", "3000", "--tick", "500", "--quiet"]


def check(frame: pd.DataFrame) -> None:
    """The common shape: typed columns, time order, ties in file order."""
    pd.testing.assert_frame_equal(frame, EXPECTED.astype(
        {"user": "int64", "movie": "int64", "rating": "float64", "timestamp": "int64"}))


# ---- loaders ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "text"), [("u.data", U_DATA), ("ratings.dat", RATINGS_DAT),
                                            ("ratings.csv", RATINGS_CSV)])
def test_each_loader_reads_its_format_in_time_order(tmp_path: Path, name: str, text: str
                                                    ) -> None:
    path = tmp_path / name
    path.write_text(text)
    check(data.READERS[name](path))
    check(data.load(path))


def test_load_finds_the_ratings_in_a_directory_or_a_zip(tmp_path: Path) -> None:
    unpacked = tmp_path / "ml-1m"
    unpacked.mkdir()
    (unpacked / "ratings.dat").write_text(RATINGS_DAT)
    (unpacked / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    check(data.load(tmp_path))
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-100k/u.item", "1|Toy Story (1995)\n")
        z.writestr("ml-100k/u.data", U_DATA)
    check(data.load(archive))


def test_load_goes_by_suffix_for_other_names(tmp_path: Path) -> None:
    path = tmp_path / "my_ratings.csv"
    path.write_text(RATINGS_CSV)
    check(data.load(path))


def test_load_refuses_what_is_not_a_ratings_file(tmp_path: Path) -> None:
    bad_header = tmp_path / "ratings.csv"
    bad_header.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="userId,movieId,rating,timestamp"):
        data.load(bad_header)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="not a MovieLens ratings file"):
        data.load(other)
    with pytest.raises(FileNotFoundError):
        data.load(tmp_path / "missing.csv")


# ---- the synthetic stream ---------------------------------------------------------------------
def test_synthetic_has_the_shape_of_movielens() -> None:
    frame = data.synthetic(users=300, movies=100, ratings=20_000, seed=3)
    assert list(frame.columns) == data.COLUMNS
    assert list(frame.dtypes.astype(str)) == ["int64", "int64", "float64", "int64"]
    assert len(frame) == 20_000
    assert frame["timestamp"].is_monotonic_increasing
    assert set(frame["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert frame["user"].between(1, 300).all() and frame["movie"].between(1, 100).all()
    counts = frame["user"].value_counts()
    assert counts.head(30).sum() > 0.3 * len(frame)  # Zipf: a tenth of the users rate a third
    assert counts.median() < counts.mean() / 1.5
    pd.testing.assert_frame_equal(frame, data.synthetic(users=300, movies=100, ratings=20_000,
                                                        seed=3))


def test_synthetic_tastes_drift() -> None:
    """With drift, a user's early ratings predict their late ones worse than without."""
    def early_late_gap(drift: float) -> float:
        frame = data.synthetic(users=50, movies=20, ratings=40_000, drift=drift, seed=1)
        half = frame["timestamp"] < frame["timestamp"].median()
        means = [frame[h].groupby(["user", "movie"])["rating"].mean() for h in (half, ~half)]
        both = pd.concat(means, axis=1, join="inner")
        return float((both.iloc[:, 0] - both.iloc[:, 1]).abs().mean())

    assert early_late_gap(1.5) > early_late_gap(0.0) + 0.1


# ---- the features -----------------------------------------------------------------------------
def test_user_vectors_is_the_ridge_fit_of_the_users_ratings() -> None:
    rng = np.random.default_rng(0)
    movies = {m: (rng.normal(size=3).tolist(), float(rng.normal(3.5, 0.3))) for m in range(5)}
    op = features.UserVectors(features.USER_SCHEMA, reg=2.0, forget=1.0)
    ratings = [(7, m % 5, float(1 + m % 5)) for m in range(12)]
    for user, movie, stars in ratings:
        vector, bias = movies[movie]
        out = op.on_record(Record(user=user, movie=movie, rating=stars, timestamp=0),
                           Record(movie=movie, vector=vector, bias=bias))
    x = np.array([[*movies[m][0], 1.0] for _, m, _ in ratings])
    y = np.array([s - movies[m][1] for _, m, s in ratings])
    w = np.linalg.solve(x.T @ x + 2.0 * np.eye(4), x.T @ y)
    assert out.user == 7
    np.testing.assert_allclose([*out.vector, out.bias], w)
    assert op.on_record(Record(user=7, movie=99, rating=1.0, timestamp=0), None) is None


def test_als_learns_movie_vectors_that_beat_the_biases() -> None:
    frame = data.synthetic(users=200, movies=50, ratings=20_000, noise=0.3, seed=2)
    learned = features.train_movie_vectors(frame, dim=8, iterations=8)
    assert sorted(learned.movie.tolist()) == sorted(frame["movie"].unique().tolist())
    assert learned.vector.shape == (len(learned.movie), 8)
    # with each user's least-squares fit on the learned vectors, the fit beats biases alone
    row = {m: i for i, m in enumerate(learned.movie.tolist())}
    idx = frame["movie"].map(row).to_numpy()
    x = np.hstack([learned.vector[idx], np.ones((len(frame), 1))])
    y = frame["rating"].to_numpy() - learned.bias[idx]
    users, _ = pd.factorize(frame["user"])
    w = features.ridge(*features.grouped_normal_equations(users, users.max() + 1, x, y), 1.0)
    fitted = np.einsum("ij,ij->i", x, w[users])
    assert np.sqrt(np.mean((y - fitted) ** 2)) < 0.8 * np.sqrt(np.mean(
        (y - np.bincount(users, y)[users] / np.bincount(users)[users]) ** 2))


# ---- the harness ------------------------------------------------------------------------------
def run_main(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert evaluate.main(args) == 0
    return out.getvalue()


def test_evaluate_writes_the_table_and_the_ideal_has_no_regret(tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    printed = run_main([*TINY, "--budgets", "0.05,0.2", "--policies",
                        "accuracy_aware,round_robin", "--out", str(csv)])
    table = pd.read_csv(csv)
    assert list(table.columns) == evaluate.CSV_COLUMNS
    assert table["policy"].tolist() == ["ideal", "accuracy_aware", "round_robin",
                                        "accuracy_aware", "round_robin"]
    assert table["budget"].isna().tolist() == [True, False, False, False, False]
    assert table["budget"].iloc[1:].tolist() == [0.05, 0.05, 0.2, 0.2]
    ideal = table.iloc[0]
    assert ideal["regret"] == 0.0
    assert (table["regret"].iloc[1:] > -1e-9).all()  # no budgeted run beats the ideal here
    assert (table["refreshes"].iloc[1:] <= ideal["refreshes"]).all()
    for row in table.itertuples():
        assert np.isclose(row.regret, row.rmse ** 2 - ideal["rmse"] ** 2)
    assert "accuracy_aware" in printed and "vs RR" in printed


def test_budgets_are_respected_tick_by_tick() -> None:
    ratings = data.synthetic(users=60, movies=40, ratings=3000, seed=0)
    exp = evaluate.prepare(ratings, tick=500)
    table, runs = evaluate.evaluate(exp, ["fifo", "lottery"], [0.05])
    assert exp.keys_per_tick(0.05) == 3
    for run in runs[1:]:
        assert run.keys_per_tick == 3
        assert run.most_refreshes_in_a_tick == 3
        assert run.refreshes <= 3 * exp.ticks
    ideal = runs[0]
    assert ideal.keys_per_tick is None and ideal.most_refreshes_in_a_tick > 3
    assert ideal.scored == len(ratings) - exp.train == 2400
    assert table["refreshes"].tolist() == [r.refreshes for r in runs]


def test_accuracy_aware_beats_round_robin_on_the_synthetic_stream() -> None:
    """The point of the feedback API, on a stream small enough for a unit test."""
    exp = evaluate.prepare(data.synthetic(users=200, movies=80, ratings=8000, seed=0),
                           tick=800)
    table, _ = evaluate.evaluate(exp, ["accuracy_aware", "round_robin"], [0.05])
    regret = table.set_index("policy")["regret"]
    assert regret["accuracy_aware"] < 0.75 * regret["round_robin"]


def test_refreshes_to_match_interpolates_along_the_baselines_budgets() -> None:
    table = pd.DataFrame({"policy": ["round_robin"] * 3 + ["fifo"],
                          "rmse": [1.0, 0.9, 0.85, 0.5], "refreshes": [100, 200, 400, 50]})
    assert evaluate.refreshes_to_match(table, "round_robin", 0.95) == pytest.approx(150)
    assert evaluate.refreshes_to_match(table, "round_robin", 0.875) == pytest.approx(300)
    assert evaluate.refreshes_to_match(table, "round_robin", 1.2) == 100
    assert evaluate.refreshes_to_match(table, "round_robin", 0.8) is None


def test_evaluate_runs_on_a_movielens_file(tmp_path: Path) -> None:
    ratings = data.synthetic(users=40, movies=30, ratings=1500, seed=4)
    path = tmp_path / "u.data"
    ratings.to_csv(path, sep="\t", header=False, index=False)
    csv = tmp_path / "out.csv"
    printed = run_main(["--data", str(path), "--budgets", "0.1", "--policies", "fifo",
                        "--tick", "150", "--quiet", "--out", str(csv)])
    assert printed.startswith("u.data: 1,500 ratings by 40 users")
    assert pd.read_csv(csv)["policy"].tolist() == ["ideal", "fifo"]


def test_evaluate_plots_rmse_against_refreshes(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    run_main([*TINY, "--budgets", "0.1", "--policies", "random", "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args", [["--policies", "accuracy_aware,most_clever"],
                                  ["--budgets", "0.1,2"], ["--budgets", ""]])
def test_evaluate_refuses_bad_arguments(args: list[str]) -> None:
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        evaluate.parse_args(args)
