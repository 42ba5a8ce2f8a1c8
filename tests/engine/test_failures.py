"""Failure tracking (ralf/engine/failures.py): backoff, quarantine, release."""

from __future__ import annotations

from ralf.engine.failures import MAX_BACKOFF_TICKS, WHOLE, Failures


def test_user_code_backs_off_one_two_four_ticks_then_is_quarantined():
    failures = Failures()
    assert not failures.record("k", 10, 3, "boom") and failures.retry_tick["k"] == 11
    assert failures.is_held("k", 10) and not failures.is_held("k", 11)
    assert not failures.record("k", 11, 3, "boom") and failures.retry_tick["k"] == 13
    assert failures.record("k", 13, 3, "boom")  # the third: quarantined
    assert failures.is_held("k", 10**6) and failures.held(10**6) == {"k"}
    assert failures.last_error["k"] == "boom" and len(failures) == 1


def test_the_environment_is_never_quarantined_and_waits_at_most_the_cap():
    failures = Failures()
    for tick in range(40):
        assert not failures.record(WHOLE, tick, 3, "disk full", user_code=False)
    assert WHOLE not in failures.quarantined
    assert failures.retry_tick[WHOLE] == 39 + MAX_BACKOFF_TICKS


def test_success_and_release_start_the_count_again():
    failures = Failures()
    assert not failures.is_held("never failed", 0) and not failures.is_held("never", 1)
    failures.record("a", 0, 2, "x")
    failures.record("b", 0, 1, "y")
    failures.record("c", 0, 5, "z")
    assert len(failures) == 3  # b quarantined, a and c backing off
    failures.succeeded(["a"])
    assert "a" not in failures.count and not failures.is_held("a", 0)
    assert "a" not in failures.last_error and "a" not in failures.retry_tick
    assert failures.release("b") and not failures.release("b")
    assert failures.release("c")
    for table in (failures.count, failures.last_error, failures.retry_tick):
        assert "b" not in table and "c" not in table
    assert failures.held(0) == set() and len(failures) == 0
    # counted from one again: the next failure backs off one tick, it does not quarantine
    assert not failures.record("a", 5, 2, "x") and failures.retry_tick["a"] == 6
    assert not failures.record("b", 5, 2, "y") and failures.retry_tick["b"] == 6


def test_a_key_that_fails_now_and_then_is_never_quarantined(make_ralf):
    """Each success starts a key's count again (``max_failures`` counts failures in a
    row), so a key whose refreshes fail now and then is retried, never quarantined."""
    from ralf import Operator, OperatorError, Record, Schema
    from ralf.testing import ListSource

    schema = Schema("k", {"k": int, "v": int})

    calls = [0]  # outside the operator's state, which a failure rolls back

    class FailsNowAndThen(Operator):
        def on_record(self, record):
            calls[0] += 1
            if calls[0] % 3 == 2:
                raise ValueError("now and then")
            return Record(k=record.k, v=record.v)

    with make_ralf(max_failures=2) as server:
        rows = [{"k": 1, "v": v} for v in range(6)]
        source = server.create_source(ListSource, args=(schema, rows, 1), name="src")
        source.map(FailsNowAndThen, schema=schema, name="t")
        failures = 0
        while not server.drained():
            try:
                server.step()
            except OperatorError:
                failures += 1
        assert failures >= 3 and server.quarantined("t") == []
        assert server.point_query("t", 1).v == 5
