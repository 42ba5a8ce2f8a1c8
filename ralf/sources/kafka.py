"""A Kafka topic as a source, exactly once into the append table.

The consumer is assigned every partition of the topic explicitly; the offsets it reached
are the source's checkpoint, which ralf commits in the same transaction as the records
they produced. On restart the consumer resumes from the offsets in the database, so no
record is lost or appended twice; Kafka's own consumer-group offsets are not used.

Messages that are not JSON objects go to ``ralf.rejected`` with their partition and
offset; JSON objects that do not fit the schema are rejected by the schema as usual. With
``format="debezium"`` each message is a Debezium change event, turned into a changelog
record (:func:`debezium_change`) for a changelog source (docs/changelog.md).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ralf.operators import SourceOperator
from ralf.schema import Rejection, Schema

_EPOCH = dt.datetime(1970, 1, 1)


FORMATS = ("json", "debezium")
# Debezium's operations: create, read (a snapshot), update, delete
_DEBEZIUM_OPS = {"c": "insert", "r": "insert", "u": "update", "d": "delete"}


def debezium_change(event: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """A Debezium change event (its ``payload`` when the schema envelope is on) as a
    changelog record: the ``after`` row (the ``before`` one for a delete) with ``op`` and,
    for an update, ``before``. Returns (record, None) or (None, why it is refused)."""
    if "payload" in event and "schema" in event:
        event = event["payload"]
    if not isinstance(event, dict):
        return None, "a Debezium event's payload is not a JSON object"
    op = _DEBEZIUM_OPS.get(event.get("op"))
    if op is None:
        return None, (f"Debezium op {event.get('op')!r} is not c, r, u or d (a truncate "
                      "event is not supported: delete the rows)")
    row = event.get("before") if op == "delete" else event.get("after")
    if not isinstance(row, dict):
        side = "before" if op == "delete" else "after"
        return None, f"a Debezium {op} event without its {side!r} row"
    record = {**row, "op": op}
    if op == "update" and isinstance(event.get("before"), dict):
        record["before"] = event["before"]
    return record, None


class KafkaSource(SourceOperator):
    """A Kafka topic of JSON objects, every partition read from the offsets in the
    checkpoint; with ``until_end`` it ends once the topic stays quiet for ``idle_polls`` polls."""

    def __init__(self, topic: str, schema: Schema, *, bootstrap_servers: str,
                 group_id: str = "ralf", format: str = "json", batch_size: int = 1000,
                 poll_timeout: float = 0.2, until_end: bool = False, idle_polls: int = 3,
                 config: dict[str, Any] | None = None, timestamp_column: str | None = None
                 ) -> None:
        if format not in FORMATS:
            raise ValueError(f"KafkaSource: unsupported format {format!r} (supported: "
                             f"{', '.join(FORMATS)})")
        self.format = format
        if timestamp_column is not None and schema.columns.get(timestamp_column) is not (
                dt.datetime):
            raise ValueError(f"KafkaSource: timestamp_column {timestamp_column!r} must name a "
                             "datetime column of the schema")
        # filled with each message's Kafka timestamp (UTC), e.g. to use as event time
        self.timestamp_column = timestamp_column
        self.topic = topic
        self.schema = schema
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.until_end = until_end
        self.idle_polls = idle_polls
        self._idle = 0
        self.config = {"bootstrap.servers": bootstrap_servers, "group.id": group_id,
                       "enable.auto.commit": False, "session.timeout.ms": 6000,
                       **(config or {})}
        self.offsets: dict[int, int] = {}  # partition -> next offset to read
        self.rejected: list[Rejection] = []
        self._consumer: Any = None

    # ---- checkpoint ------------------------------------------------------------------------
    def checkpoint(self) -> dict[int, int]:
        """The next offset to read in each partition."""
        return dict(self.offsets)

    def restore(self, offsets: dict[int, int]) -> None:
        """Resume from a :meth:`checkpoint` (the consumer is reassigned on the next read)."""
        self.offsets = {int(p): int(o) for p, o in offsets.items()}
        self.close()  # reassign from the restored offsets on the next read

    def take_rejected(self) -> list[Rejection]:
        """Messages read since the last call that were not JSON objects."""
        rejected, self.rejected = self.rejected, []
        return rejected

    # ---- reading ---------------------------------------------------------------------------
    def _connect(self) -> Any:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.config)
        metadata = consumer.list_topics(self.topic, timeout=10)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            consumer.close()
            raise ConnectionError(f"Kafka topic {self.topic!r} is not available "
                                  f"({topic.error if topic else 'unknown topic'})")
        partitions = sorted(topic.partitions)
        for p in partitions:
            self.offsets.setdefault(p, 0)
        consumer.assign([TopicPartition(self.topic, p, self.offsets[p]) for p in partitions])
        return consumer

    def next(self) -> list[dict[str, Any]] | None:
        """Up to ``batch_size`` decoded messages, ``[]`` if none came within ``poll_timeout``
        seconds, None when ``until_end`` is reached. Raises ConnectionError on a Kafka error."""
        from confluent_kafka import KafkaError

        if self._consumer is None:
            self._consumer = self._connect()
        messages = self._consumer.consume(self.batch_size, timeout=self.poll_timeout)
        if not messages and self.until_end:
            # Caught up: the topic stayed quiet for idle_polls polls. (Broker watermarks
            # would say it directly, but not every Kafka-protocol broker reports them.)
            self._idle += 1
            return None if self._idle >= self.idle_polls else []
        self._idle = 0
        rows = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise ConnectionError(f"Kafka topic {self.topic!r}: {error}")
            self.offsets[message.partition()] = message.offset() + 1
            row = self._decode(message)
            if row is not None:
                rows.append(row)
        return rows

    def _decode(self, message: Any) -> dict[str, Any] | None:
        if self.format == "debezium" and message.value() is None:
            return None  # the tombstone Kafka compaction gets after a delete: no change
        try:
            value = json.loads(message.value())
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            value, problem = None, f"not JSON ({exc})"
        else:
            problem = None if isinstance(value, dict) else "not a JSON object"
        if problem is None and self.format == "debezium":
            value, problem = debezium_change(value)
        if problem is None:
            if self.timestamp_column is not None:
                kind, millis = message.timestamp()
                value[self.timestamp_column] = None if kind == 0 else (
                    _EPOCH + dt.timedelta(milliseconds=millis))  # 0: no timestamp
            return value
        raw = message.value()
        self.rejected.append(Rejection(
            table="", column=None,
            reason=f"Kafka {self.topic}[{message.partition()}]@{message.offset()}: {problem}",
            raw={"partition": message.partition(), "offset": message.offset(),
                 "value": raw.decode("utf-8", "backslashreplace") if raw else None}))
        return None

    def close(self) -> None:
        """Close the consumer, if connected (the next read connects again)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_consumer"}
