"""Ratings for the experiment: the MovieLens files, or a synthetic stream of the same shape.

Every loader returns the same frame: ``user``, ``movie`` (int64), ``rating`` (float64) and
``timestamp`` (int64, seconds since the epoch), sorted by timestamp (ties keep file order),
so the experiment can replay any of them in time order.

* ``u.data`` (ml-100k): tab-separated ``user item rating timestamp``, no header.
* ``ratings.dat`` (ml-1m, ml-10m): ``user::movie::rating::timestamp``, no header.
* ``ratings.csv`` (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m): header
  ``userId,movieId,rating,timestamp``.

:func:`load` accepts any of these files, a directory holding one (the unpacked archive)
or the downloaded ``.zip`` itself. Nothing is fetched: there is no network here.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

COLUMNS = ["user", "movie", "rating", "timestamp"]
_CSV_HEADER = {"userId": "user", "movieId": "movie", "rating": "rating", "timestamp": "timestamp"}

Source = str | Path | BinaryIO


def read_u_data(source: Source) -> pd.DataFrame:
    """ml-100k's ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp`` per line."""
    frame = pd.read_csv(source, sep="\t", header=None, names=COLUMNS, engine="c")
    return in_time_order(frame)


def read_ratings_dat(source: Source) -> pd.DataFrame:
    """ml-1m's ``ratings.dat``: ``user::movie::rating::timestamp`` per line.

    The two-character separator would force pandas' slow Python parser; replacing it by a
    tab first keeps the C parser (seconds instead of a minute for ml-10m)."""
    raw = source.read() if hasattr(source, "read") else Path(source).read_bytes()
    text = io.BytesIO(raw.replace(b"::", b"\t"))
    frame = pd.read_csv(text, sep="\t", header=None, names=COLUMNS, engine="c")
    return in_time_order(frame)


def read_ratings_csv(source: Source) -> pd.DataFrame:
    """ml-latest's ``ratings.csv`` (and ml-20m/25m/32m): header ``userId,movieId,rating,
    timestamp``; a file already using this module's column names is accepted too."""
    frame = pd.read_csv(source, engine="c")
    frame = frame.rename(columns=_CSV_HEADER)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{_name(source)}: expected the header userId,movieId,rating,timestamp "
                         f"(MovieLens ratings.csv), got {list(frame.columns)}")
    return in_time_order(frame[COLUMNS])


# file name -> reader; a name that is none of these is recognised by its suffix
READERS: dict[str, Callable[[Source], pd.DataFrame]] = {
    "u.data": read_u_data,
    "ratings.dat": read_ratings_dat,
    "ratings.csv": read_ratings_csv,
}
_BY_SUFFIX = {".data": read_u_data, ".dat": read_ratings_dat, ".csv": read_ratings_csv}


def load(path: str | Path) -> pd.DataFrame:
    """The ratings in ``path``: a MovieLens ratings file, a directory or a ``.zip`` holding one."""
    path = Path(path)
    if path.is_dir():
        found = _find(sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()))
        return READERS[Path(found).name](path / found)
    if not path.is_file():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            found = _find(archive.namelist())
            with archive.open(found) as member:
                return READERS[Path(found).name](io.BytesIO(member.read()))
    reader = READERS.get(path.name) or _BY_SUFFIX.get(path.suffix)
    if reader is None:
        raise ValueError(f"{path}: not a MovieLens ratings file (expected u.data, ratings.dat, "
                         "ratings.csv, a directory or a .zip holding one)")
    return reader(path)


def _find(names: list[str]) -> str:
    """The ratings file among an archive's or a directory's files (the shallowest one)."""
    hits = [n for n in names if Path(n).name in READERS]
    if not hits:
        raise FileNotFoundError(f"no u.data, ratings.dat or ratings.csv among {names[:10]}")
    return min(hits, key=lambda n: (n.count("/"), n))


def _name(source: Source) -> str:
    return str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "ratings")


def in_time_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The common shape: typed columns, sorted by timestamp with ties in file order."""
    frame = frame.astype({"user": "int64", "movie": "int64", "rating": "float64",
                          "timestamp": "int64"})
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def synthetic(users: int = 3000, movies: int = 1500, ratings: int = 200_000, *,
              days: float = 365.0, dim: int = 8, activity_skew: float = 0.7,
              popularity_skew: float = 0.7,
              session_length: float = 5.0, drift: float = 0.4, noise: float = 0.6,
              seed: int = 0) -> pd.DataFrame:
    """A MovieLens-like stream whose generating process is known.

    What makes feature freshness matter in real rating streams, kept here:

    * skew: user activity follows Zipf's law (exponent ``activity_skew``), and so does
      movie popularity (``popularity_skew``): a tenth of the users give almost half of
      the ratings, and most users rate a few dozen movies;
    * sessions: users join at random times and rate in bursts of about
      ``session_length`` ratings a few minutes apart, then come back later;
    * drifting tastes: each user's latent taste does a random walk in time (per-axis
      standard deviation ``drift`` over the whole period), so old ratings mislead;
    * ratings ``mean + user bias + movie bias + taste . movie + noise``, rounded to whole
      stars in 1..5.
    """
    rng = np.random.default_rng(seed)
    period = days * 86_400.0
    start = 1_262_304_000  # 2010-01-01, seconds since the epoch

    weights = (rng.permutation(users) + 1.0) ** -activity_skew
    counts = rng.multinomial(ratings, weights / weights.sum())
    user = np.repeat(np.arange(users), counts)

    # sessions: the first one when the user joins, the others spread over what remains
    join = rng.uniform(0.0, 0.9 * period, users)
    sessions = 1 + rng.binomial(np.maximum(counts - 1, 0), 1.0 / session_length)
    first = np.concatenate(([0], np.cumsum(sessions)[:-1]))
    owner = np.repeat(np.arange(users), sessions)
    begins = join[owner] + rng.uniform(0.0, 1.0, len(owner)) * (period - join[owner])
    begins[first] = join
    session = first[user] + rng.integers(0, sessions[user])
    seconds = begins[session] + rng.exponential(90.0 * session_length, len(user))

    order = np.lexsort((seconds, user))  # by user, then time: a random walk per user
    user, seconds = user[order], seconds[order]
    steps = rng.normal(0.0, 1.0, (len(user), dim))
    elapsed = np.diff(seconds, prepend=0.0)
    new_user = np.diff(user, prepend=-1) != 0
    elapsed[new_user] = seconds[new_user]  # the walk starts at time 0 for everyone
    steps *= drift * np.sqrt(np.clip(elapsed, 0.0, None) / period)[:, None]
    walk = np.cumsum(steps, axis=0)
    walk -= np.repeat(walk[new_user] - steps[new_user], np.diff(
        np.append(np.flatnonzero(new_user), len(user))), axis=0)

    popularity = (rng.permutation(movies) + 1.0) ** -popularity_skew
    movie = rng.choice(movies, size=len(user), p=popularity / popularity.sum())
    taste = rng.normal(0.0, 0.5, (users, dim))[user] + walk
    items = rng.normal(0.0, 0.5, (movies, dim))[movie]
    score = (3.6 + rng.normal(0.0, 0.35, users)[user] + rng.normal(0.0, 0.45, movies)[movie]
             + np.einsum("ij,ij->i", taste, items) + rng.normal(0.0, noise, len(user)))
    frame = pd.DataFrame({
        "user": user + 1,
        "movie": movie + 1,
        "rating": np.clip(np.rint(score), 1.0, 5.0),
        "timestamp": start + seconds.astype(np.int64),
    })
    return in_time_order(frame)
