"""A Kafka-fed pipeline run in a subprocess by test_kafka (and SIGKILLed there).

Usage: python -m tests.sources.kafka_pipeline DB BOOTSTRAP TOPIC
"""

from __future__ import annotations

import sys

from ralf import Ralf, Schema
from tests.pipelines import COUNT, CountPerKey

EVENTS = Schema("user", {"user": int, "id": int})


def build(server: Ralf, bootstrap: str, topic: str) -> None:
    source = server.create_kafka_source(topic, EVENTS, bootstrap_servers=bootstrap,
                                        name="events", batch_size=40, until_end=True)
    source.map(CountPerKey, args=(COUNT,), name="counts")


if __name__ == "__main__":
    with Ralf(sys.argv[1]) as server:
        build(server, sys.argv[2], sys.argv[3])
        server.run(timeout=120)
    print("done", flush=True)
