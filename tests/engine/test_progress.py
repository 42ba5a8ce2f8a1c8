import datetime as dt

import pyarrow as pa

from ralf.engine.progress import PendingIndex, Watermarks


def summary(rows: list[tuple]) -> pa.Table:
    """``pending_summary`` rows: (key, n, first_seq, last_seq, first_at)."""
    key, n, first_seq, last_seq, first_at = zip(*rows, strict=True)
    return pa.table({"key": pa.array(key, pa.int64()), "n": pa.array(n, pa.int64()),
                     "first_seq": pa.array(first_seq, pa.int64()),
                     "last_seq": pa.array(last_seq, pa.int64()),
                     "first_at": pa.array(first_at, pa.timestamp("us"))})


T1 = dt.datetime(2026, 11, 26, 13, 0, 0, 123_457)
T2 = dt.datetime(2026, 11, 26, 13, 0, 5, 1)


def test_add_merges_counts_and_keeps_the_oldest_append():
    index = PendingIndex()
    index.add(summary([(7, 2, 10, 11, T1)]))
    touched = index.add(summary([(7, 3, 20, 22, T2), (8, 1, 21, 21, T2)]))
    seven = index.keys[7]
    assert (seven.count, seven.first_seq, seven.last_seq, seven.first_at) == (5, 10, 22, T1)
    assert index.keys[8].first_at == T2
    assert touched == [8, 7]  # by newest append
    assert index.by_newest() == [8, 7]


def test_keys_are_listed_in_the_order_they_became_stale():
    index = PendingIndex()
    index.add(summary([(3, 1, 30, 30, T2), (1, 1, 10, 10, T1), (2, 1, 20, 20, T1)]))
    assert list(index.keys) == [1, 2, 3]
    assert index.pop(2).first_seq == 20 and 2 not in index and len(index) == 2


def test_watermarks_fall_back_to_the_floor():
    marks = Watermarks(floor=5, overrides={"a": 9})
    assert (marks.of("a"), marks.of("b")) == (9, 5)
    table = marks.arrow(pa.string(), ["a", "b"])
    assert table.to_pydict() == {"key": ["a", "b"], "wm": [9, 5]}


def test_a_refresh_that_drains_the_table_moves_the_floor():
    marks = Watermarks(floor=5, overrides={"held": 3, "done": 9})
    advance = marks.advance(["a"], still_stale=["held", "fresh"], high=12)
    # only a key still behind the new floor keeps a mark; the stored marks are rewritten
    assert (advance.floor, advance.changed, advance.clear) == (12, {"held": 3, "fresh": 5}, True)
    marks.move(advance)
    assert (marks.floor, marks.overrides) == (12, {"held": 3, "fresh": 5})
    assert Watermarks(floor=5).advance([], [], 12).clear is False  # nothing stored to clear


def test_a_partial_refresh_marks_its_keys():
    marks = Watermarks(floor=5, overrides={"b": 7})
    advance = marks.advance(["a"], still_stale=None, high=12)
    assert (advance.floor, advance.changed, advance.clear) == (5, {"a": 12}, False)
    marks.move(advance)
    assert (marks.of("a"), marks.of("b"), marks.of("c")) == (12, 7, 5)
