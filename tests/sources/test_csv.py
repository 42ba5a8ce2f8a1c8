"""CSV files as batch sources, parsed by DuckDB."""

import pytest

from ralf import Operator, Ralf, RalfClient, Record, Schema, SchemaError
from tests.pipelines import COUNT, RATINGS, CountPerKey

VECTORS = Schema("movie", {"movie": int, "vector": list[float]})


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_a_csv_file_lands_in_an_append_table_and_feeds_tables(server, tmp_path):
    lines = "user,movie,rating\n" + "".join(f"{i % 3},{i},{i % 5}.5\n" for i in range(30))
    source = server.create_csv_source(_write(tmp_path / "ratings.csv", lines), RATINGS)
    assert source.name == "ratings"
    source.map(CountPerKey, args=(COUNT,), name="counts")
    server.run()
    client = RalfClient(server)
    assert client.bulk_query("counts")["count"].tolist() == [10, 10, 10]
    assert client.sql("SELECT sum(rating) AS s FROM ratings")["s"][0] == pytest.approx(
        sum(i % 5 + 0.5 for i in range(30)))


def test_bad_lines_go_to_the_dead_letter_table_and_the_rest_loads(server, tmp_path):
    path = _write(tmp_path / "r.csv", "user,movie,rating\n1,1,4.5\n2,1,abc\n3,1,3.0\n,4,2.0\n")
    server.create_csv_source(path, RATINGS, name="ratings")
    with pytest.raises(SchemaError, match="rating"):
        server.run()
    assert RalfClient(server).sql("SELECT user FROM ratings ORDER BY user")["user"].tolist() \
        == [1, 3]
    rejected = server.rejected().sort_values("id", ignore_index=True)
    assert rejected["table_name"].tolist() == ["ratings", "ratings"]
    assert set(rejected["column_name"]) == {"rating", "user"}
    assert any("2,1,abc" in r for r in rejected["record"])


def test_a_header_that_does_not_match_the_schema_is_refused(server, tmp_path):
    path = _write(tmp_path / "r.csv", "user,film,rating\n1,1,4.5\n")
    server.create_csv_source(path, RATINGS, name="ratings")
    with pytest.raises(SchemaError, match="no column 'movie'"):
        server.step()


def test_vector_columns_and_lookup_joins_on_a_csv_table(server, tmp_path):
    vectors = _write(tmp_path / "movie_vectors.csv",
                     'movie,vector\n1,"[1.0, 0.0]"\n2,"[0.0, 2.0]"\n')
    movies = server.create_csv_source(vectors, VECTORS)
    ratings_path = _write(tmp_path / "ratings.csv", "user,movie,rating\n7,1,5\n7,2,3\n8,2,1\n")
    ratings = server.create_csv_source(ratings_path, RATINGS)

    class Score(Operator):
        def on_record(self, rating, movie):
            return Record(user=rating.user, score=rating.rating * sum(movie.vector))

    ratings.join(movies, Score, args=(Schema("user", {"user": int, "score": float}),),
                 on="movie", name="score")
    server.run()
    client = RalfClient(server)
    assert client.point_query("score", 7).score == 6.0
    assert client.point_query("score", 8).score == 2.0
    assert client.point_query("movie_vectors", 2).vector == [0.0, 2.0]


def test_a_csv_source_is_read_once_across_restarts(tmp_path):
    path = _write(tmp_path / "r.csv", "user,movie,rating\n1,1,1\n1,2,2\n")
    db = str(tmp_path / "db.duckdb")
    for _ in range(2):
        with Ralf(db) as server:
            server.create_csv_source(path, RATINGS, name="ratings").map(
                CountPerKey, args=(COUNT,), name="counts")
            server.run()
            assert RalfClient(server).point_query("counts", 1).count == 2


def test_ragged_lines_are_rejected_with_their_line_numbers_and_the_rest_loads(server,
                                                                               tmp_path):
    path = _write(tmp_path / "r.csv", "user,movie,rating\n1,1,4.5\n2,2,3.0,9\n3,3\n4,4,1.0\n")
    server.create_csv_source(path, RATINGS, name="ratings")
    with pytest.raises(SchemaError):
        server.run()
    assert server.sql("SELECT user FROM ratings ORDER BY user")["user"].tolist() == [1, 4]
    reasons = server.rejected("ratings").sort_values("id")["reason"].tolist()
    assert len(reasons) == 2
    assert "line 3" in reasons[0] and "Found: 4" in reasons[0]
    assert "line 4" in reasons[1] and "Found: 2" in reasons[1]


def test_a_csv_that_has_grown_is_read_on_after_a_reopen(database, tmp_path):
    """Reopened, an exhausted source is polled again: the lines appended since are read,
    the ones read before are not read twice, and their line numbers are the file's."""
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("user,movie,rating\n1,1,1.0\n2,2,2.0\n")
    with Ralf(database) as server:
        server.create_csv_source(str(csv_path), RATINGS, name="ratings").map(
            CountPerKey, args=(COUNT,), name="counts")
        server.run()
    with csv_path.open("a") as more:
        more.write("1,3,3.0\n3,4,x\n3,5,5.0\n")
    with Ralf(database) as server:
        server.create_csv_source(str(csv_path), RATINGS, name="ratings").map(
            CountPerKey, args=(COUNT,), name="counts")
        with pytest.raises(SchemaError, match="line 5"):
            server.run()
        assert server.sql("SELECT movie FROM ratings ORDER BY _ralf_seq")["movie"].tolist() \
            == [1, 2, 3, 5]
        counts = server.bulk_query("counts").set_index("user")["count"].to_dict()
        assert counts == {1: 2, 2: 1, 3: 1}


def test_a_list_source_given_more_rows_is_read_on_after_a_reopen(database):
    from ralf.testing import ListSource
    from tests.pipelines import ratings

    rows = ratings(300)
    with Ralf(database) as server:
        server.create_source(ListSource, args=(RATINGS, rows[:200], 50), name="ratings")
        server.run()
    with Ralf(database) as server:
        server.create_source(ListSource, args=(RATINGS, rows, 50), name="ratings")
        server.run()
        assert server.sql("SELECT count(*) AS n FROM ratings")["n"][0] == 300
