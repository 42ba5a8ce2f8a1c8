"""MovieLens user-vector features under a refresh budget: how much accuracy each
prioritization policy keeps (``python -m examples.movielens.evaluate``, docs/accuracy.md).

* :mod:`examples.movielens.data` — loaders for the MovieLens rating files and a synthetic
  stream of the same shape (the default).
* :mod:`examples.movielens.features` — movie vectors learned once by alternating least
  squares, and the ``UserVectors`` operator that keeps each user's vector up to date.
* :mod:`examples.movielens.evaluate` — the experiment: replay ratings in time order,
  predict each one from the served (possibly stale) user vector, report the error.
"""
