"""The features: movie vectors learned once, user vectors kept up to date by ralf.

The model predicts a rating as ``movie bias + user bias + dot(user vector, movie vector)``
(the movie bias includes the global mean). Movie vectors and biases are learned once by
alternating least squares on a training prefix and then held fixed, as in the tutorial:
they change slowly and are expensive to retrain. Each user's vector and bias are the
regularised least-squares fit of that user's ratings on the fixed movie vectors, which a
ralf operator maintains rating by rating — the feature whose freshness the scheduler trades
against its refresh budget.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ralf import Operator, Record, Schema

RATINGS_SCHEMA = Schema("user", {"user": int, "movie": int, "rating": float, "timestamp": int})
MOVIE_SCHEMA = Schema("movie", {"movie": int, "vector": list[float], "bias": float})
USER_SCHEMA = Schema("user", {"user": int, "vector": list[float], "bias": float})


def ridge(gram: np.ndarray, rhs: np.ndarray, reg: float) -> np.ndarray:
    """Solve ``(gram + reg*I) w = rhs`` — one system, or a stack of them at once."""
    regularised = gram + reg * _eye(gram.shape[-1])
    if rhs.ndim == 1:
        return np.linalg.solve(regularised, rhs)
    return np.linalg.solve(regularised, rhs[..., None])[..., 0]


@functools.cache
def _eye(d: int) -> np.ndarray:
    """The identity, made once per size: the operator solves a system per rating."""
    return np.eye(d)


def grouped_normal_equations(groups: np.ndarray, n_groups: int, features: np.ndarray,
                             targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group g: ``sum x x^T`` and ``sum y x`` over its rows, one bincount per entry, so
    memory stays O(rows + groups * d^2) even for ml-25m."""
    d = features.shape[1]
    gram = np.empty((n_groups, d, d))
    for i in range(d):
        for j in range(i, d):
            gram[:, i, j] = gram[:, j, i] = np.bincount(
                groups, weights=features[:, i] * features[:, j], minlength=n_groups)
    rhs = np.stack([np.bincount(groups, weights=features[:, i] * targets, minlength=n_groups)
                    for i in range(d)], axis=1)
    return gram, rhs


@dataclass
class MovieVectors:
    """What ALS learned for each movie; ``bias`` includes the global mean."""

    movie: np.ndarray
    vector: np.ndarray
    bias: np.ndarray

    def rows(self) -> pd.DataFrame:
        """The rows of the ``movie_vectors`` source table."""
        return pd.DataFrame({"movie": self.movie, "vector": list(self.vector),
                             "bias": self.bias})


def train_movie_vectors(ratings: pd.DataFrame, dim: int = 8, reg: float = 5.0,
                        iterations: int = 10, seed: int = 0) -> MovieVectors:
    """Alternating least squares with biases on ``ratings`` (the training prefix).

    Alternates two batches of ridge regressions: every user's ``[vector, bias]`` on the
    movies' ``[vector, 1]``, then every movie's on the users'. Only the movie side is kept.
    """
    users, _ = pd.factorize(ratings["user"])
    movies, movie_ids = pd.factorize(ratings["movie"])
    y = ratings["rating"].to_numpy(dtype=float)
    mean = float(y.mean())
    rng = np.random.default_rng(seed)
    n_users, n_movies = users.max() + 1, len(movie_ids)
    movie_w = np.hstack([rng.normal(0.0, 0.1, (n_movies, dim)), np.zeros((n_movies, 1))])
    ones = np.ones((len(y), 1))
    for _ in range(iterations):
        x = np.hstack([movie_w[movies, :dim], ones])
        target = y - mean - movie_w[movies, dim]
        user_w = ridge(*grouped_normal_equations(users, n_users, x, target), reg)
        x = np.hstack([user_w[users, :dim], ones])
        target = y - mean - user_w[users, dim]
        movie_w = ridge(*grouped_normal_equations(movies, n_movies, x, target), reg)
    return MovieVectors(movie=np.asarray(movie_ids, dtype=np.int64), vector=movie_w[:, :dim],
                        bias=mean + movie_w[:, dim])


class UserVectors(Operator):
    """A user's vector and bias: ridge regression of their ratings on the movie vectors.

    Used in the lookup join ``ratings.join(movie_vectors, UserVectors, on="movie")``: each
    rating arrives with its movie's row. Per user it keeps the normal equations of the
    fit over ``[movie vector, 1]`` with target ``rating - movie bias``; each rating scales
    them by ``forget`` first, so a rating ``n`` ratings old weighs ``forget**n`` — tastes
    drift, and a fit over all history would follow them ever more slowly. The state is
    two stacked arrays (not a dict of small ones) so the per-refresh checkpoint pickles
    at memory speed.
    """

    def __init__(self, schema: Schema, reg: float = 5.0, forget: float = 0.99) -> None:
        self.reg = reg
        self.forget = forget
        self.slot: dict[int, int] = {}
        self.gram = np.zeros((0, 0, 0))
        self.rhs = np.zeros((0, 0))

    def on_record(self, rating: Record, movie: Record | None) -> Record | None:
        if movie is None:
            return None  # a movie the training prefix never saw: nothing to learn from
        x = np.array([*movie.vector, 1.0])
        i = self._slot(rating.user, len(x))
        gram, rhs = self.gram[i], self.rhs[i]
        gram *= self.forget
        gram += x[:, None] * x
        rhs *= self.forget
        rhs += (rating.rating - movie.bias) * x
        w = ridge(gram, rhs, self.reg)
        return Record(user=rating.user, vector=w[:-1].tolist(), bias=float(w[-1]))

    def _slot(self, user: int, d: int) -> int:
        i = self.slot.get(user)
        if i is None:
            i = self.slot[user] = len(self.slot)
            if i >= len(self.gram):  # grow by doubling
                size = max(2 * len(self.gram), 1024)
                self.gram = np.concatenate([self.gram.reshape(-1, d, d),
                                            np.zeros((size - len(self.gram), d, d))])
                self.rhs = np.concatenate([self.rhs.reshape(-1, d),
                                           np.zeros((size - len(self.rhs), d))])
        return i
