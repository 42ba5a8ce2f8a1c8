"""The serving cache behaves as the dict ``key -> (values, updated_at)`` it replaced."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from ralf import Schema
from ralf.engine import cache as cache_module
from ralf.engine.cache import ServingCache

ALL_TYPES = Schema("k", {"k": str, "i": int, "f": float, "b": bool, "raw": bytes,
                         "at": dt.datetime, "v": list[float], "names": list[str]})
T0, T1 = dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)


def _rows(schema: Schema, rows: list[dict]) -> pa.Table:
    table, rejected = schema.to_arrow(rows, "t")
    assert not rejected
    return table


def _row(k: str, i: int | None = 1, f: float | None = 0.5) -> dict:
    return {"k": k, "i": i, "f": f, "b": None, "raw": b"\x00" + k.encode(),
            "at": T0, "v": [1.0, 2.0], "names": [k, k]}


def test_rows_read_back_as_python_values_with_their_nulls():
    cache = ServingCache(ALL_TYPES)
    cache.put(_rows(ALL_TYPES, [_row("a"), _row("b", i=None, f=None)]), T1)
    values, at, _ = cache["a"]
    assert values == ("a", 1, 0.5, None, b"\x00a", T0, [1.0, 2.0], ["a", "a"]) and at == T1
    assert [type(v) for v in values[:3]] == [str, int, float]
    assert cache.get("b")[0][1:3] == (None, None)
    assert cache.get("missing") is None and "missing" not in cache


def test_a_rewrite_replaces_values_and_a_key_twice_in_one_batch_keeps_its_last_row():
    cache = ServingCache(ALL_TYPES)
    cache.put(_rows(ALL_TYPES, [_row("a", i=None), _row("b")]), T0)
    cache.put(_rows(ALL_TYPES, [_row("a", i=2), _row("c", i=3), _row("a", i=4)]),
              [T0, T1, T1])
    assert cache["a"][0][1] == 4 and cache["a"][1] == T1
    assert cache["b"][0][1] == 1 and cache["c"][0][1] == 3
    assert list(cache) == ["a", "b", "c"] and len(cache) == 3


def test_popped_keys_are_gone_and_their_slots_serve_new_keys():
    schema = Schema("k", {"k": int, "x": float})
    cache = ServingCache(schema)
    cache.put(pa.table({"k": range(3000), "x": [float(i) for i in range(3000)]}), T0)
    assert cache.pop(7) == ((7, 7.0), T0, None) and cache.pop(7, "gone") == "gone"
    cache.put(pa.table({"k": [-1], "x": [None]}, schema=schema.arrow), T1)
    assert 7 not in cache and cache[-1] == ((-1, None), T1, None)
    assert cache[2999][0] == (2999, 2999.0)
    for k in list(cache):
        cache.pop(k)
    assert cache == {}


@pytest.mark.parametrize("reindex_min", [4096, 8])
def test_many_writes_pops_and_rewrites_agree_with_a_dict(reindex_min, monkeypatch):
    """The writer finds slots through a hash index kept beside the dict (and a dict of the
    keys added since; 8: the index is rebuilt every few writes); after any mix of new
    keys, rewrites and pops every key still reads its last row."""
    import random

    monkeypatch.setattr(cache_module, "_REINDEX_MIN", reindex_min)
    rng = random.Random(5)
    for key_type in (int, str):
        schema = Schema("k", {"k": key_type, "x": int})
        cache, model = ServingCache(schema), {}
        for step in range(60):
            keys = [key_type(rng.randrange(400)) for _ in range(rng.randrange(1, 120))]
            values = [None if rng.random() < 0.2 else step for _ in keys]  # x is nullable
            cache.put(pa.table({"k": keys, "x": values}, schema=schema.arrow), T0)
            model.update(zip(keys, values, strict=True))
            for k in rng.sample(sorted(model), k=min(len(model), rng.randrange(4))):
                cache.pop(k)
                del model[k]
        assert {k: cache[k][0][1] for k in cache} == model
        assert cache._used <= 400  # a known key never takes a second slot
