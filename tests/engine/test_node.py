"""Nodes (ralf/engine/node.py): an operator table's checkpoint and restore, and resume —
the one path opening and every failure take — putting memory back as the database has it."""

from __future__ import annotations

import pytest

from ralf import Ralf, RalfError
from ralf.engine.node import OperatorNode, SourceNode
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, CountPerKey, ratings


def _counts(server: Ralf) -> OperatorNode:
    return server.pipeline.node("counts")


def test_a_checkpoint_restores_the_operators_attributes(make_ralf):
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(60), 20),
                                      name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.step()
        node = _counts(server)
        saved = node.checkpoint()
        before = dict(node.operator.counts)
        node.operator.counts.clear()
        node.restore(saved)
        assert node.operator.counts == before and node.committed_state == saved


def test_resume_puts_back_what_the_database_holds(make_ralf):
    """Whatever memory went through since the last commit, resume() gives the operator
    state, watermarks and cache the database has — as reopening would."""
    with make_ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(90), 30),
                                      name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts", budget=2)
        server.step()
        node = _counts(server)
        committed = (dict(node.operator.counts), node.marks.floor, dict(node.marks.overrides),
                     dict(node.cache.items()), set(node.pending.keys))
        node.operator.counts[999] = 1  # memory moved, the database did not
        node.marks.floor += 50
        node.cache.pop(next(iter(node.cache)))
        node.pending.keys.clear()
        node.touched = True
        node.resume()
        assert (dict(node.operator.counts), node.marks.floor, dict(node.marks.overrides),
                dict(node.cache.items()), set(node.pending.keys)) == committed


def test_a_source_resumes_from_its_checkpoint_or_is_made_again(make_ralf):
    with make_ralf() as server:
        server.create_source(ListSource, args=(RATINGS, ratings(50), 10), name="ratings")
        server.step()
        node: SourceNode = server.pipeline.node("ratings")
        node.source.position = 40  # moved past batches never appended
        node.resume()
        assert node.source.position == 10 and node.emitted == 10 and not node.exhausted


def test_user_code_that_cannot_be_made_again_says_so():
    with Ralf() as server:
        server.create_source(ListSource, args=(RATINGS, ratings(5)), name="ratings")
        node = server.pipeline.node("ratings")
        node.remake = None
        with pytest.raises(RalfError, match="cannot be made again in this process"):
            node.remade()
