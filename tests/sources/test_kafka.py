"""Kafka sources against a real Kafka-protocol broker on loopback: exactly once into the
append table across restarts and kills; malformed messages to the dead-letter table."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ralf import Ralf, RalfClient, SchemaError
from tests.services import kafka_broker, unavailable
from tests.sources.kafka_pipeline import build

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bootstrap():
    if importlib.util.find_spec("confluent_kafka") is None:
        unavailable("confluent-kafka is not installed: pip install 'ralf[kafka]'")
    with kafka_broker() as servers:
        yield servers


def new_topic(bootstrap: str, partitions: int = 3) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"t{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                                replication_factor=1)]).values():
        future.result(timeout=30)
    return topic


def produce(bootstrap: str, topic: str, values: list) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        key = str(value.get("user")) if isinstance(value, dict) else None
        payload = value if isinstance(value, bytes) else json.dumps(value)
        producer.produce(topic, key=key, value=payload)
    producer.flush(30)


def events(start: int, n: int) -> list[dict]:
    return [{"user": i % 7, "id": i} for i in range(start, start + n)]


def assert_exactly_once(server: Ralf, n: int) -> None:
    ids = server.sql("SELECT id FROM events")["id"]
    assert sorted(ids) == list(range(n))
    counts = RalfClient(server).bulk_query("counts").set_index("user")["count"].to_dict()
    assert counts == pd.Series([i % 7 for i in range(n)]).value_counts().to_dict()


def test_a_topic_lands_once_in_the_append_table(bootstrap, make_ralf):
    topic = new_topic(bootstrap)
    produce(bootstrap, topic, events(0, 300))
    with make_ralf() as server:
        build(server, bootstrap, topic)
        server.run(timeout=60)
        assert_exactly_once(server, 300)
        state, emitted, exhausted = server.storage.load_source_state("events")
        offsets = pickle.loads(state)
        assert sum(offsets.values()) == 300 and len(offsets) == 3 and exhausted


def test_malformed_messages_go_to_the_dead_letter_table(bootstrap, make_ralf):
    topic = new_topic(bootstrap, partitions=1)
    produce(bootstrap, topic, [*events(0, 5), b"not json", b"[1, 2]", {"user": "x", "id": 9},
                               *events(5, 5)])
    with make_ralf() as server:
        build(server, bootstrap, topic)
        with pytest.raises(SchemaError):
            server.run(timeout=60)
        assert_exactly_once(server, 10)
        reasons = sorted(server.rejected().sort_values("id", ignore_index=True)["reason"])
        assert len(reasons) == 3
        assert any("not JSON" in r and "@5" in r for r in reasons)
        assert any("not a JSON object" in r and "@6" in r for r in reasons)
        assert any("column 'user'" in r for r in reasons)


def test_restart_in_the_middle_neither_loses_nor_duplicates(bootstrap, database):
    topic = new_topic(bootstrap)
    db = database
    produce(bootstrap, topic, events(0, 400))
    with Ralf(db) as server:
        build(server, bootstrap, topic)
        for _ in range(4):
            server.step()
        partial = server.sql("SELECT count(*) AS n FROM events")["n"][0]
        assert 0 < partial < 400
    produce(bootstrap, topic, events(400, 400))
    with Ralf(db) as server:
        build(server, bootstrap, topic)
        server.run(timeout=60)
        assert_exactly_once(server, 800)


@pytest.mark.parametrize("point", ["append.before_commit@3", "append.after_commit@2",
                                   "refresh.before_commit@2"])
def test_sigkill_mid_stream_then_restart_is_exactly_once(bootstrap, database, point):
    topic = new_topic(bootstrap)
    db = database
    produce(bootstrap, topic, events(0, 600))
    command = [sys.executable, "-m", "tests.sources.kafka_pipeline", db, bootstrap, topic]
    crashed = subprocess.run(command, cwd=ROOT, env={**os.environ, "RALF_CRASH_AT": point},
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    env = {k: v for k, v in os.environ.items() if k != "RALF_CRASH_AT"}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 0, finished.stderr
    with Ralf(db) as server:
        build(server, bootstrap, topic)
        server.run(timeout=60)
        assert_exactly_once(server, 600)


def test_the_message_timestamp_as_event_time(bootstrap, make_ralf):
    """``timestamp_column`` fills a column with each message's Kafka timestamp (set by the
    producer here), and naming it the event time makes the history answer by it."""
    from confluent_kafka import Producer

    from ralf import Schema

    topic = new_topic(bootstrap, partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap})
    base = dt.datetime(2021, 5, 1)
    for i in range(6):  # user 1 rates at base + 0 h, 1 h, ..., 5 h
        millis = int((base + dt.timedelta(hours=i) - dt.datetime(1970, 1, 1)).total_seconds()
                     * 1000)
        producer.produce(topic, value=json.dumps({"user": 1, "id": i}), timestamp=millis)
    producer.flush(30)
    schema = Schema("user", {"user": int, "id": int, "sent": dt.datetime})
    with make_ralf() as server:
        source = server.create_kafka_source(topic, schema, bootstrap_servers=bootstrap,
                                            until_end=True, name="events",
                                            timestamp_column="sent", event_time="sent")
        source.aggregate(by="user", name="n_by_user", n=("*", "count"))
        server.run(timeout=60)
        assert server.sql("SELECT max(sent) AS m FROM events")["m"][0] == (
            base + dt.timedelta(hours=5))
        assert server.point_query("n_by_user", 1, as_of=base + dt.timedelta(hours=2.5)).n == 3


def _debezium(op: str, before: dict | None, after: dict | None, envelope: bool) -> dict:
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1700000000000,
               "source": {"connector": "postgresql", "table": "ratings"}}
    return {"schema": {"type": "struct"}, "payload": payload} if envelope else payload


def test_a_debezium_topic_flows_through_to_the_served_features(bootstrap, make_ralf):
    """Debezium change events (create, snapshot read, update, delete, the Kafka tombstone
    after a delete, with and without the schema envelope) on the broker, through a
    changelog source to an aggregate and a Python table, as served."""
    from ralf import Schema
    from tests.pipelines import AVERAGE, AverageRating

    topic = new_topic(bootstrap, partitions=1)  # Debezium keeps a row's changes in order
    row = lambda user, movie, rating: {"user": user, "movie": movie, "rating": rating}  # noqa: E731
    produce(bootstrap, topic, [
        _debezium("r", None, row(1, 1, 4.0), True),
        _debezium("c", None, row(1, 2, 2.0), False),
        _debezium("c", None, row(2, 1, 5.0), True),
        _debezium("u", row(1, 1, 4.0), row(1, 1, 1.0), False),
        _debezium("d", row(2, 1, 5.0), None, True),
        _debezium("t", None, None, False),  # a truncate: refused, with the reason
    ])
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key="2", value=None)  # the tombstone after a delete
    producer.flush(30)
    with make_ralf() as server:
        source = server.create_kafka_source(
            topic, Schema("user", {"user": int, "movie": int, "rating": float}),
            bootstrap_servers=bootstrap, format="debezium", key=["user", "movie"],
            until_end=True, name="ratings")
        source.aggregate(by="user", n=("*", "count"), mean=("rating", "avg"), name="stats")
        source.map(AverageRating, args=(AVERAGE,), name="average")
        with pytest.raises(SchemaError, match="truncate event is not supported"):
            server.run(timeout=60)
        server.run(timeout=60)
        client = RalfClient(server)
        stats = client.bulk_query("stats")
        assert stats[["user", "n", "mean"]].values.tolist() == [[1, 2, 1.5]]
        assert client.point_query("average", 1).average == 1.5
        with pytest.raises(KeyError):
            client.point_query("average", 2)
        log = server.sql("SELECT _ralf_op AS op, _ralf_diff AS d FROM ratings ORDER BY _ralf_seq")
        assert log.values.tolist() == [["insert", 1], ["insert", 1], ["insert", 1],
                                       ["update", -1], ["update", 1], ["delete", -1]]
