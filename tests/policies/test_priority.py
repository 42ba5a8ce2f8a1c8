"""Prioritization policies: what each picks, lottery statistics, budgets, no starvation."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pandas as pd
import pytest

from ralf import RalfClient, SchemaError
from ralf.engine.progress import Pending, PendingIndex, StaleKeys
from ralf.policies import (
    FIFO,
    LIFO,
    AccuracyAware,
    LeastRecentlyUpdated,
    Lottery,
    MostPending,
    QueryAware,
    Random,
    RoundRobin,
)
from ralf.testing import ListSource, ManualClock, replay_staleness
from tests.pipelines import COUNT, RATINGS, CountPerKey, ratings

T0 = dt.datetime(2024, 1, 1)


def view(entries: dict, now: dt.datetime = T0, excluded: set | None = None) -> StaleKeys:
    """entries: key -> (count, first_seq, last_seq), inserted in FIFO order."""
    index = PendingIndex()
    for key, (count, first, last) in entries.items():
        since = T0 + dt.timedelta(seconds=first) - dt.datetime(1970, 1, 1)
        index.keys[key] = Pending(count, first, since // dt.timedelta(microseconds=1), last)
    return StaleKeys(index, excluded or set(), {}, now)


STALE = {"a": (1, 1, 9), "b": (5, 2, 3), "c": (2, 4, 12), "d": (9, 5, 6)}


def test_fifo_takes_the_oldest_pending_first():
    assert FIFO().choose_many(view(STALE), 2) == ["a", "b"]
    assert FIFO().choose(view(STALE)) == "a"


def test_lifo_takes_the_newest_pending_first():
    policy = LIFO()
    policy.on_pending(sorted(STALE, key=lambda k: STALE[k][2]))
    assert policy.choose_many(view(STALE), 2) == ["c", "a"]


def test_most_pending():
    assert MostPending().choose_many(view(STALE), 2) == ["d", "b"]


def test_least_recently_updated_prefers_never_updated_then_oldest_update():
    policy = LeastRecentlyUpdated()
    policy.on_pending(list(STALE))
    policy.on_refresh(["b"], T0)
    policy.on_refresh(["a"], T0)
    first_two = policy.choose_many(view(STALE), 2)
    assert set(first_two) == {"c", "d"}
    assert policy.choose_many(view(STALE), 4)[2:] == ["b", "a"]


def test_round_robin_cycles_through_every_key():
    policy = RoundRobin()
    picks = [policy.choose_many(view(STALE), 1)[0] for _ in range(8)]
    assert picks == ["a", "b", "c", "d"] * 2


def test_quarantined_keys_are_never_offered():
    stale = view(STALE, excluded={"a", "b"})
    assert list(stale) == ["c", "d"] and len(stale) == 2 and "a" not in stale
    assert FIFO().choose_many(stale, 4) == ["c", "d"]


def test_query_aware_prefers_recently_queried_keys():
    policy = QueryAware(half_life=10.0)
    for _ in range(3):
        policy.on_query("c", T0)
    policy.on_query("d", T0 + dt.timedelta(seconds=30))
    assert policy.choose_many(view(STALE, now=T0 + dt.timedelta(seconds=30)), 3) == [
        "d", "c", "a"]  # 1 recent query beats 3 queries three half-lives ago


def test_random_is_reproducible():
    assert Random(seed=3).choose_many(view(STALE), 2) == Random(seed=3).choose_many(
        view(STALE), 2)


def _chi_square(observed: Counter, expected: dict) -> float:
    return sum((observed[k] - e) ** 2 / e for k, e in expected.items())


def test_lottery_choose_frequencies_match_ticket_shares():
    tickets = {"a": 1, "b": 2, "c": 3, "d": 4}
    policy = Lottery(tickets, seed=7)
    stale = view(STALE)
    draws = 20_000
    observed = Counter(policy.choose(stale) for _ in range(draws))
    expected = {k: draws * t / 10 for k, t in tickets.items()}
    assert _chi_square(observed, expected) < 16.27  # chi-square, 3 dof, p = 0.001


def test_lottery_choose_many_first_winner_matches_ticket_shares():
    tickets = {"a": 1, "b": 2, "c": 3, "d": 4}
    policy = Lottery(tickets, seed=11)
    observed = Counter()
    draws = 6000
    for _ in range(draws):
        # The k-of-n draw gives every key the chance of successive draws without
        # replacement: the chance to be among 1 winner is the ticket share.
        observed[policy.choose_many(view(STALE), 1)[0]] += 1
    expected = {k: draws * t / 10 for k, t in tickets.items()}
    assert _chi_square(observed, expected) < 16.27


def test_lottery_keeps_a_chance_for_every_key_with_tickets():
    policy = Lottery({"a": 1000}, default=1, seed=5)
    seen = {policy.choose(view(STALE)) for _ in range(3000)}
    assert seen == set(STALE)


def test_lottery_tickets_from_a_dataframe_and_a_csv(tmp_path):
    df = pd.DataFrame({"user": [1, 2], "active_minutes": [10.0, 30.0]})
    assert Lottery(df).tickets == {1: 10.0, 2: 30.0}
    path = tmp_path / "user_active_time.csv"
    df.to_csv(path, index=False)
    assert Lottery(str(path)).tickets == {1: 10.0, 2: 30.0}
    with pytest.raises(ValueError, match="negative"):
        Lottery({1: -1})


@pytest.mark.parametrize("policy", [FIFO, LIFO, MostPending, LeastRecentlyUpdated, RoundRobin,
                                    lambda: Lottery({3: 10}, seed=1), QueryAware,
                                    lambda: Random(seed=2)])
def test_budget_is_never_exceeded_and_every_key_is_refreshed_in_the_end(policy, make_ralf):
    rows = ratings(2000, users=60, seed=4)
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 100), name="ratings")
        table = source.map(CountPerKey, args=(COUNT,), name="counts", budget=7)
        table.add_prioritization_policy(policy())
        refreshed = 0
        while True:
            server.step()
            now = server.metrics()["tables"]["counts"]["refreshes"]
            assert now - refreshed <= 7
            refreshed = now
            if server.drained():
                break
        got = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
        assert got == pd.DataFrame(rows)["user"].value_counts().to_dict()


def test_keys_a_policy_favours_end_up_fresher():
    rows = ratings(6000, users=40, seed=9)
    favoured = set(range(1, 11))
    staleness = replay_staleness(
        RATINGS, rows, CountPerKey, (COUNT,), budget=4,
        policy=Lottery({u: 50 for u in favoured}, seed=3), batch_size=100)
    mean = staleness.groupby("key")["staleness"].mean()
    fav = mean[mean.index.isin(favoured)].mean()
    rest = mean[~mean.index.isin(favoured)].mean()
    assert fav < rest / 2, (fav, rest)


def test_round_robin_starves_nobody_on_a_skewed_stream():
    # 90% of the records are for user 1; user 1 must not hog the budget.
    rows = [{"user": 1 if i % 10 else 2 + (i // 10) % 20, "movie": 1, "rating": 1.0}
            for i in range(3000)]
    staleness = replay_staleness(RATINGS, rows, CountPerKey, (COUNT,), budget=3,
                                 policy=RoundRobin(), batch_size=50)
    worst = staleness.groupby("key")["staleness"].max()
    assert worst.max() <= 10  # 21 keys, 3 per tick: each key within ~7 ticks


def test_ticks_driven_by_a_clock_object(make_ralf):
    clock = ManualClock()
    with make_ralf(clock=clock) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(500), 50),
                                      name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.start(interval=5.0)
        assert server.wait_drained(timeout=60)
        server.stop()
        ticks = server.metrics()["ticks"]
        assert ticks >= 10  # 500 records, 50 a tick
        # the thread waited on the clock object after every tick: 5 clock seconds each
        assert clock.now() == dt.datetime(2024, 1, 1) + dt.timedelta(seconds=5 * ticks)


def test_accuracy_aware_estimates_regret_from_reported_errors():
    policy = AccuracyAware()
    policy.on_error("c", 2.0, T0)   # regret 4
    policy.on_error("c", 1.0, T0)   # regret 5
    policy.on_error("b", 3.0, T0)   # regret 9
    policy.on_error("zz", 9.0, T0)  # not stale: never chosen
    assert policy.regret("c", T0) == 5.0 and policy.regret("a", T0) == 0.0
    assert policy.choose_many(view(STALE), 3) == ["b", "c", "a"]  # then FIFO
    policy.on_refresh(["b"], T0)
    assert policy.regret("b", T0) == 0.0
    assert policy.choose(view(STALE)) == "c"


def test_accuracy_aware_decay_halves_old_errors():
    policy = AccuracyAware(decay=10.0)
    policy.on_error("a", 2.0, T0)
    assert policy.regret("a", T0 + dt.timedelta(seconds=10)) == pytest.approx(2.0)
    policy.on_error("a", 1.0, T0 + dt.timedelta(seconds=10))
    assert policy.regret("a", T0 + dt.timedelta(seconds=20)) == pytest.approx(1.5)


def test_record_error_feeds_the_policy_in_process_and_over_http(make_ralf):
    rows = ratings(600, users=30, seed=2)
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, rows, 600), name="ratings")
        table = source.map(CountPerKey, args=(COUNT,), name="counts", budget=2)
        table.add_prioritization_policy(AccuracyAware())
        url = server.serve(port=0)
        RalfClient(server).record_error("counts", 17, 5.0)
        RalfClient(url).record_error("counts", "23", -7.0)
        server.step()
        assert sorted(RalfClient(server).bulk_query("counts")["user"]) == [17, 23]
        m = server.metrics()["tables"]["counts"]
        assert m["errors_reported"] == 2 and m["squared_error"] == 74.0
        with pytest.raises(SchemaError, match="finite"):
            RalfClient(server).record_error("counts", 1, float("nan"))
        with pytest.raises(SchemaError):
            RalfClient(url).record_error("counts", "x", 1.0)
