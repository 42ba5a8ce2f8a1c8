"""Built-in prioritization policies: which stale keys a budgeted table refreshes first.

Each overrides ``choose_many`` so a tick choosing k of n stale keys costs O(k) (FIFO,
LIFO, RoundRobin, LeastRecentlyUpdated, QueryAware when few keys were queried),
O(n log k) (MostPending) or one vectorised O(n) pass (Lottery), never O(k·n).
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from itertools import islice
from typing import Any

import numpy as np

from ralf.policies.base import PrioritizationPolicy, key_weights


def _first_k(order: Any, keys: Sequence[Any], k: int) -> list[Any]:
    """The first k entries of ``order`` that are stale keys."""
    return list(islice((key for key in order if key in keys), k))


class FIFO(PrioritizationPolicy):
    """Oldest pending append first: bounds the worst staleness. The default under a budget."""

    def choose(self, keys: Sequence[Any]) -> Any:
        return next(iter(keys))

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """The first k stale keys in FIFO order."""
        return list(islice(iter(keys), k))


class LIFO(PrioritizationPolicy):
    """Newest pending append first: the keys that are changing right now."""

    def __init__(self) -> None:
        self._recent: OrderedDict[Any, None] = OrderedDict()

    def on_pending(self, keys: list[Any]) -> None:
        """Mark the keys as the most recently appended to, the last one newest."""
        for key in keys:
            self._recent[key] = None
            self._recent.move_to_end(key)

    def on_refresh(self, keys: list[Any], at: dt.datetime) -> None:
        """Forget the refreshed keys until their next append."""
        for key in keys:
            self._recent.pop(key, None)

    def choose(self, keys: Sequence[Any]) -> Any:
        return self.choose_many(keys, 1)[0]

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """The k keys with the newest pending appends; keys it never heard of (e.g. the
        policy was attached late) follow in FIFO order."""
        chosen = _first_k(reversed(self._recent), keys, k)
        if len(chosen) < k:  # keys this policy has not heard of (e.g. attached late)
            have = set(chosen)
            chosen += _first_k((x for x in keys if x not in have), keys, k - len(chosen))
        return chosen


class MostPending(PrioritizationPolicy):
    """Most pending appends first: the most work (or the most change) per refresh."""

    def choose(self, keys: Sequence[Any]) -> Any:
        """The key with the most pending appends."""
        return max(keys, key=keys.pending_count)

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """The k keys with the most pending appends, most first."""
        return heapq.nlargest(k, keys, key=keys.pending_count)


class LeastRecentlyUpdated(PrioritizationPolicy):
    """The key whose feature row was written longest ago (never written first)."""

    def __init__(self) -> None:
        self._order: OrderedDict[Any, None] = OrderedDict()

    def on_pending(self, keys: list[Any]) -> None:
        """Put keys it has not seen before at the front: never written, least recently updated."""
        for key in keys:
            if key not in self._order:
                self._order[key] = None
                self._order.move_to_end(key, last=False)

    def on_refresh(self, keys: list[Any], at: dt.datetime) -> None:
        """Move the refreshed keys to the back: just updated."""
        for key in keys:
            self._order[key] = None
            self._order.move_to_end(key)

    def choose(self, keys: Sequence[Any]) -> Any:
        return self.choose_many(keys, 1)[0]

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """The k stale keys updated longest ago; keys it never heard of follow in FIFO
        order."""
        chosen = _first_k(self._order, keys, k)
        if len(chosen) < k:
            have = set(chosen)
            chosen += _first_k((x for x in keys if x not in have), keys, k - len(chosen))
        return chosen


class RoundRobin(PrioritizationPolicy):
    """Every key in turn, in the order keys first appeared: fair, no starvation."""

    def __init__(self) -> None:
        self._ring: list[Any] = []
        self._seen: set[Any] = set()
        self._position = 0

    def on_pending(self, keys: list[Any]) -> None:
        """Add keys seen for the first time to the end of the ring."""
        for key in keys:
            if key not in self._seen:
                self._seen.add(key)
                self._ring.append(key)

    def choose(self, keys: Sequence[Any]) -> Any:
        return self.choose_many(keys, 1)[0]

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """The next k stale keys around the ring from where the last choice stopped, passing
        over keys that are not stale now (fewer if fewer are stale)."""
        self.on_pending([x for x in keys if x not in self._seen] if len(self._seen) < len(keys)
                        else [])
        ring, n = self._ring, len(self._ring)
        chosen: list[Any] = []
        steps = 0
        while len(chosen) < k and steps < n:
            key = ring[self._position]
            self._position = (self._position + 1) % n
            steps += 1
            if key in keys:
                chosen.append(key)
        return chosen


class Random(PrioritizationPolicy):
    """Uniformly random stale keys: the baseline every other policy should beat."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def choose(self, keys: Sequence[Any]) -> Any:
        """A uniformly random stale key."""
        return self._random.choice(list(keys))

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """k distinct stale keys drawn uniformly (all of them if there are fewer)."""
        candidates = list(keys)
        return self._random.sample(candidates, min(k, len(candidates)))


class Lottery(PrioritizationPolicy):
    """Lottery scheduling: each draw picks a stale key with probability proportional to its
    tickets, so every key with tickets keeps a chance (e.g. tickets = user activity).

    ``tickets``: dict, pandas Series, two-column DataFrame or CSV path (key, tickets).
    Drawing k keys without replacement uses Efraimidis–Spirakis keys (u ** (1/w)), which
    has exactly the distribution of k successive draws, in one vectorised pass.
    """

    def __init__(self, tickets: Any = None, default: float = 1.0, seed: int | None = None
                 ) -> None:
        self.tickets = key_weights(tickets, "Lottery tickets") if tickets is not None else {}
        if any(t < 0 for t in self.tickets.values()) or default < 0:
            raise ValueError("Lottery tickets must not be negative")
        self.default = default
        self._random = random.Random(seed)
        self._rng = np.random.default_rng(seed)

    def choose(self, keys: Sequence[Any]) -> Any:
        """One draw weighted by tickets (``default`` for unlisted keys); uniform when no key
        has any."""
        keys = list(keys)
        weights = [self.tickets.get(key, self.default) for key in keys]
        if not any(weights):
            return self._random.choice(keys)
        return self._random.choices(keys, weights=weights)[0]

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        """k keys drawn without replacement, weighted by tickets (every stale key if k
        covers them); keys with zero tickets only fill places no key with tickets can."""
        candidates = list(keys)
        if k >= len(candidates):
            return candidates
        get, default = self.tickets.get, self.default
        w = np.fromiter((get(key, default) for key in candidates), dtype=np.float64,
                        count=len(candidates))
        with np.errstate(divide="ignore"):
            scores = np.log(self._rng.random(len(candidates))) / w  # -inf for 0 tickets
        top = np.argpartition(-scores, k - 1)[:k]
        return [candidates[i] for i in top]


class _ScoredKeys(PrioritizationPolicy):
    """Keys with the highest (optionally exponentially decayed) score first; keys without
    a score follow in FIFO order, so nothing starves."""

    def __init__(self, half_life: float | None) -> None:
        self.half_life = half_life
        self._scores: dict[Any, tuple[float, dt.datetime]] = {}

    def _add(self, key: Any, amount: float, at: dt.datetime) -> None:
        self._scores[key] = (self._value(key, at) + amount, at)

    def _value(self, key: Any, at: dt.datetime) -> float:
        entry = self._scores.get(key)
        if entry is None:
            return 0.0
        value, since = entry
        if self.half_life is None:
            return value
        age = max((at - since).total_seconds(), 0.0)
        return value * math.pow(0.5, age / self.half_life)

    def choose(self, keys: Sequence[Any]) -> Any:
        return self.choose_many(keys, 1)[0]

    def choose_many(self, keys: Sequence[Any], k: int) -> list[Any]:
        now = getattr(keys, "now", None) or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        scored = [key for key in self._scores if key in keys]
        chosen = heapq.nlargest(k, scored, key=lambda key: self._value(key, now))
        if len(chosen) < k:
            have = set(chosen)
            chosen += list(islice((x for x in keys if x not in have), k - len(chosen)))
        return chosen


class QueryAware(_ScoredKeys):
    """Keys clients query most (exponentially decayed, ``half_life`` seconds) go first;
    keys nobody asked for follow in FIFO order."""

    def __init__(self, half_life: float = 60.0) -> None:
        super().__init__(half_life)

    def on_query(self, key: Any, at: dt.datetime) -> None:
        """Count a query of the key towards its score."""
        self._add(key, 1.0, at)

    def score(self, key: Any, at: dt.datetime) -> float:
        """The key's queries counted at time ``at``, each one's weight halved every
        ``half_life`` seconds."""
        return self._value(key, at)


class AccuracyAware(_ScoredKeys):
    """Refresh the keys whose stale features cost the most downstream error first.

    Estimator (the regret a refresh removes): for each key, the sum of squared prediction
    errors clients reported (``client.record_error``) since the key was last refreshed.
    Every query that used the stale row and was wrong adds to it, so a key counts more
    the more often it is queried and the further its features have drifted; a refresh
    resets it. ``decay`` (seconds, optional) halves old errors' weight every ``decay``
    seconds. Keys without reported errors follow in FIFO order, so nothing starves once
    the high-regret keys are served.
    """

    def __init__(self, decay: float | None = None) -> None:
        super().__init__(decay)

    def on_error(self, key: Any, error: float, at: dt.datetime) -> None:
        """Add the squared error to the key's regret."""
        self._add(key, float(error) ** 2, at)

    def on_refresh(self, keys: list[Any], at: dt.datetime) -> None:
        """Reset the refreshed keys' regret: their features are fresh."""
        for key in keys:
            self._scores.pop(key, None)

    def regret(self, key: Any, at: dt.datetime) -> float:
        """The key's estimated regret at time ``at``."""
        return self._value(key, at)
