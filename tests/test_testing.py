"""ralf.testing: the helpers users build their own tests on."""

import datetime as dt

from ralf.testing import ListSource, ManualClock, recompute, replay_staleness
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings


def test_list_source_emits_batches_and_resumes_from_its_checkpoint():
    source = ListSource(RATINGS, ratings(25), batch_size=10)
    assert [len(source.next()) for _ in range(3)] == [10, 10, 5]
    assert source.next() is None
    again = ListSource(RATINGS, ratings(25), batch_size=10)
    again.restore(source.checkpoint() - 5)
    assert len(again.next()) == 5


def test_manual_clock_moves_only_when_told():
    clock = ManualClock(dt.datetime(2030, 1, 1))
    assert clock.now() == clock.now() == dt.datetime(2030, 1, 1)
    clock.sleep(1.5)
    clock.advance(0.5)
    assert clock.now() == dt.datetime(2030, 1, 1, 0, 0, 2)


def test_recompute_is_the_from_scratch_oracle(make_ralf):
    with make_ralf() as server:
        server.create_source(ListSource, args=(RATINGS, ratings(50, users=3)), name="ratings")
        server.run()
        oracle = recompute(server, "ratings", AverageRating(AVERAGE), "user")
        truth = server.sql("SELECT user, avg(rating) AS a, count(*) AS n FROM ratings "
                           "GROUP BY user ORDER BY user")
        assert oracle["user"].tolist() == truth["user"].tolist()
        assert oracle["n"].tolist() == truth["n"].tolist()
        assert (abs(oracle["average"] - truth["a"]) < 1e-9).all()


def test_replay_staleness_reports_every_key_every_tick():
    rows = ratings(400, users=8)
    df = replay_staleness(RATINGS, rows, CountPerKey, (COUNT,), budget=2, batch_size=100)
    assert list(df.columns) == ["tick", "key", "pending", "staleness"]
    last = df[df.tick == df.tick.max()]
    assert set(last.key) == {r["user"] for r in rows}
    assert (last.pending == 0).all()  # drained at the end
    assert df.groupby("tick").size().is_monotonic_increasing
    # staleness grows by one clock second per tick while a key waits: every run of
    # consecutive ticks with pending appends reads 0, 1, 2, ... seconds
    runs = 0
    for _, key_rows in df.sort_values("tick").groupby("key"):
        waiting = key_rows[key_rows.pending > 0]
        streak = (waiting.tick.diff() != 1).cumsum()
        for _, run in waiting.groupby(streak):
            assert run.staleness.tolist() == [float(i) for i in range(len(run))]
            runs += len(run) > 1
    assert runs > 0  # some key waited more than one tick (budget 2, 8 users)
    assert (df.loc[df.pending == 0, "staleness"] == 0).all()


def test_queue_source_emits_what_is_queued_and_waits_when_empty(make_ralf):
    from ralf.testing import QueueSource

    with make_ralf() as server:
        queue = QueueSource(RATINGS)
        server.create_source(queue, name="ratings")
        assert server.step() is False  # nothing queued: nothing yet, not exhausted
        queue.queue.append(ratings(5))
        assert server.step() is True
        assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == 5
        assert not server.metrics()["tables"]["ratings"]["exhausted"]
