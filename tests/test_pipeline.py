"""The pipeline graph (ralf/pipeline.py): names, definitions checked against the catalog,
aliases, and tables an earlier run stored."""

from __future__ import annotations

import pytest

from ralf import Ralf, SchemaError, TableNotFound
from ralf.pipeline import check_budget, default_name
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, AverageRating, CountPerKey, ratings


def test_default_names_are_the_class_in_snake_case_and_made_unique(server):
    source = server.create_source(ListSource, args=(RATINGS, ratings(5)))
    first = source.map(AverageRating, args=(COUNT,))
    second = source.map(AverageRating, args=(COUNT,))
    assert (source.name, first.name, second.name) == (
        "list_source", "average_rating", "average_rating_2")
    assert default_name(CountPerKey) == "count_per_key"


def test_a_stored_table_this_run_does_not_define_is_still_answered(database):
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(30)), name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.run()
    with Ralf(database) as server:
        assert server.pipeline.node("counts").info.parent == "ratings"
        assert len(server.bulk_query("counts")) > 0
        with pytest.raises(TableNotFound):
            server.pipeline.node("nope")


def test_another_definition_under_a_stored_name_is_refused(database):
    with Ralf(database) as server:
        server.create_source(ListSource, args=(RATINGS, []), name="ratings").map(
            CountPerKey, args=(COUNT,), name="counts")
    with Ralf(database) as server:
        source = server.create_source(ListSource, args=(RATINGS, []), name="ratings")
        with pytest.raises(SchemaError, match="another definition"):
            source.map(AverageRating, args=(RATINGS,), name="counts")


def test_aliases_and_budgets_are_checked(server):
    source = server.create_source(ListSource, args=(RATINGS, ratings(5)), name="ratings")
    counts = source.map(CountPerKey, args=(COUNT,), name="counts")
    counts.as_queryable("counts_too")
    with pytest.raises(ValueError, match="already defined"):
        source.as_queryable("counts_too")
    for bad in (0, -1, 1.5, "3"):
        with pytest.raises(ValueError, match="budget"):
            check_budget(bad)
