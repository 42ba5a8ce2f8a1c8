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
    failures.record("a", 0, 2, "x")
    failures.record("b", 0, 1, "y")
    failures.succeeded(["a"])
    assert "a" not in failures.count and not failures.is_held("a", 0)
    assert failures.release("b") and not failures.release("b")
    assert failures.held(0) == set() and len(failures) == 0
