"""Ralf: owns the storage, the pipeline and the scheduler; the façade of the public
contract (docs/contract.md §2)."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
from collections import deque
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ralf.clock import Clock, SystemClock
from ralf.engine.failures import WHOLE
from ralf.engine.histogram import STALENESS_BOUNDS, Histogram
from ralf.engine.node import FeatureNode, Node, OperatorNode, SourceNode
from ralf.engine.routing import KeyPartition
from ralf.engine.scheduler import Scheduler
from ralf.errors import KeyNotFound, OperatorError, RalfError, SchemaError
from ralf.features import (
    NOT_FOUND,
    OUTSIDE_MAX_AGE,
    PRESENT,
    FeatureVectors,
    TableAnswer,
    entity_columns,
    feature_refs,
    key_column,
)
from ralf.logs import Progress
from ralf.pipeline import Pipeline
from ralf.schema import Record, Schema, as_frame
from ralf.sources.csv import CsvSource
from ralf.storage import is_postgres_url, migrate, open_storage
from ralf.storage.units import EVENT_TIME
from ralf.table import Table

log = logging.getLogger("ralf")


_PROBLEM_ORDER = ("storage unreachable", "processing stopped", "given up", "failing",
                  "behind", "quarantined keys", "migrations pending",
                  "schema newer than this ralf")


def _raise_first(errors: list[RalfError]) -> None:
    if not errors:
        return
    first = errors[0]
    if len(errors) > 1:
        first.args = (f"{first.args[0]} (and {len(errors) - 1} more errors, see server.errors)",
                      *first.args[1:])
    raise first


class Ralf:
    """A ralf instance: ``Ralf()`` in memory, ``Ralf("features.duckdb")`` on a file,
    ``Ralf("postgresql://user@host:port/db")`` in a PostgreSQL database.

    Reopening a file with the same pipeline definition resumes where it stopped.
    ``max_failures``: after that many failures an operator key is quarantined and a
    source is given up on. ``clock``: where timestamps and waits come from (default: the
    system clock; ``ralf.testing.ManualClock`` for deterministic tests).
    ``history_retention``: seconds of feature history to keep for ``as_of`` and
    ``historical_query`` (None: keep everything). ``memory_limit``: DuckDB's buffer
    memory (e.g. ``"1GB"``; default: DuckDB's, 80% of RAM). ``executor="ray"`` runs each
    Python operator as ``num_replicas`` Ray actors, keys routed by a stable hash.
    ``shard``/``num_shards``: this process is one of ``num_shards`` workers sharing a
    PostgreSQL database; it ingests and refreshes only the keys its shard owns (a stable
    hash of the routing key), and together the shards produce the one-process result.
    ``query_timeout``: seconds a client SQL query may run (None: no limit).
    ``evolve``: what a table the database stores with another definition meets (a new
    column, another query, an edited operator; docs/evolve.md): ``"refuse"`` (an error
    saying what changed) or ``"rebuild"`` (it and the tables reading it are rebuilt by
    replay from the log as shadow tables, the old versions serving until each new one has
    caught up and is swapped in by one transaction).
    """

    def __init__(self, path: str | None = None, *, max_failures: int = 3,
                 clock: Clock | None = None, history_retention: float | None = None,
                 memory_limit: str | None = None, executor: str = "local",
                 num_replicas: int = 1, shard: int = 0, num_shards: int = 1,
                 query_timeout: float | None = 30.0, evolve: str = "refuse") -> None:
        if executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {num_replicas!r}")
        if query_timeout is not None and not query_timeout > 0:
            raise ValueError(f"query_timeout must be a positive number of seconds or None, "
                             f"got {query_timeout!r}")
        self.executor, self.num_replicas = executor, num_replicas
        self.query_timeout = query_timeout
        self.partition = KeyPartition.of(shard, num_shards)
        if self.partition is not None and not is_postgres_url(path):
            raise ValueError("shards share one PostgreSQL database: "
                             "Ralf('postgresql://...', shard=i, num_shards=n)")
        self.path = path
        self.storage = open_storage(path, memory_limit=memory_limit, shard=shard,
                                    num_shards=num_shards)
        self._schema_version = self.storage.schema_version()  # migrated as it opened
        self._scheduler = Scheduler(max_failures=max_failures, clock=clock,
                                    history_retention=history_retention)
        self.clock = self._scheduler.clock
        self.pipeline = Pipeline(self.storage, self._scheduler, path=path,
                                 partition=self.partition, executor=executor,
                                 num_replicas=num_replicas, evolve=evolve)
        self.errors: deque[RalfError] = deque(maxlen=1000)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ticked = threading.Condition()  # notified after each background tick
        self._background_drained = False
        self._http: Any = None
        self._closed = False

    # ---- defining the pipeline ------------------------------------------------------------
    def create_source(self, source: Any, args: tuple = (), kwargs: dict | None = None, *,
                      schema: Schema | None = None, name: str | None = None,
                      event_time: str | None = None, allowed_lateness: Any = None,
                      mode: str = "append", key: str | list[str] | None = None) -> Table:
        """A source table fed by a :class:`SourceOperator` (a class with args, or an instance).

        ``event_time``: the datetime column saying when each record happened (or name it
        in the schema); the tables derived from the source then keep their history by
        event time (see docs/time.md). ``allowed_lateness`` (``"10m"``, seconds, a
        timedelta): a record whose event time is more than that before the newest event
        time already appended is filed in ``ralf.rejected`` as late instead of applied
        (None: every record is applied, in arrival order).

        ``mode``: ``"append"`` (every record is a new row), ``"upsert"`` (a record replaces
        the row with the same ``key``, default the primary key; ``op="delete"`` in a record
        is a tombstone) or ``"changelog"`` (each record's field ``op`` says insert, update
        or delete, with the old values in ``before`` where there is no ``key``): updates
        and deletes then flow through every table derived from the source, and the source
        can :meth:`forget` a key (docs/changelog.md)."""
        node = self.pipeline.add_source(source, args, kwargs or {}, schema=schema, name=name,
                                        event_time=event_time,
                                        allowed_lateness=allowed_lateness, mode=mode, key=key)
        return Table(self.pipeline, node)

    def create_csv_source(self, path: str, schema: Schema, *, name: str | None = None,
                          event_time: str | None = None, allowed_lateness: Any = None,
                          mode: str = "append", key: str | list[str] | None = None
                          ) -> Table:
        """A batch source: the CSV file as it is, read by DuckDB's CSV reader in one append
        (and, after a reopen, what was appended to it since). ``event_time``,
        ``allowed_lateness``, ``mode``, ``key``: as for :meth:`create_source` (a
        changelog's operation is its column ``op``)."""
        if event_time is not None:
            schema = schema.with_event_time(event_time)
        return self.create_source(CsvSource, args=(path, schema), schema=schema,
                                  name=name or _csv_name(path),
                                  allowed_lateness=allowed_lateness, mode=mode, key=key)

    def create_kafka_source(self, topic: str, schema: Schema, *, bootstrap_servers: str,
                            group_id: str = "ralf", format: str = "json",
                            name: str | None = None, event_time: str | None = None,
                            allowed_lateness: Any = None, mode: str | None = None,
                            key: str | list[str] | None = None, **options: Any) -> Table:
        """A streaming source on a Kafka topic, exactly once into the append table (the
        partition offsets commit with the records). ``options``: ``batch_size``,
        ``poll_timeout``, ``until_end`` (end the source once the topic has been quiet for
        ``idle_polls`` polls), ``config`` (more librdkafka settings), ``timestamp_column``
        (a datetime column the source fills with each message's Kafka timestamp, e.g. to
        name as ``event_time``). ``event_time``, ``allowed_lateness``, ``mode``, ``key``: as
        for :meth:`create_source`. ``format="debezium"``: each message is a Debezium change
        event (its ``before``, ``after`` and ``op``; a schema envelope's ``payload`` too),
        and the source is a changelog (``mode`` defaults to ``"changelog"``)."""
        from ralf.sources.kafka import KafkaSource

        if event_time is not None:
            schema = schema.with_event_time(event_time)
        if mode is None:
            mode = "changelog" if format == "debezium" else "append"
        return self.create_source(
            KafkaSource, args=(topic, schema),
            kwargs={"bootstrap_servers": bootstrap_servers, "group_id": group_id,
                    "format": format, **options},
            schema=schema, name=name or re.sub(r"\W+", "_", topic),
            allowed_lateness=allowed_lateness, mode=mode, key=key)

    def table(self, name: str) -> Table:
        """The table (or alias) named ``name``: its schema, kind, and the methods that
        derive tables from it."""
        return Table(self.pipeline, self._defined(name))

    def tables(self) -> list[dict[str, Any]]:
        """Names, kinds and row counts of the defined tables (and aliases)."""
        pipeline, out = self.pipeline, []
        for name in pipeline.nodes:
            node = pipeline.served(name)
            out.append({"name": name, "kind": node.info.kind, "lazy": node.info.lazy,
                        "rows": self.storage.count_rows(node.info)})
        for alias, node in pipeline.aliases.items():
            out.append({"name": alias, "kind": "alias", "of": node.name, "lazy": node.info.lazy,
                        "rows": self.storage.count_rows(node.info)})
        for name, info in pipeline.catalog.items():
            if name not in pipeline.nodes:
                out.append({"name": name, "kind": info.kind, "lazy": info.lazy, "stored": True,
                            "rows": self.storage.count_rows(info)})
        return out

    def _node(self, name: str) -> Node:
        """The table queries of ``name`` read (during a rebuild: the old version)."""
        return self.pipeline.served(name)

    def _defined(self, name: str) -> Node:
        """The table ``name`` as this pipeline defines it (during a rebuild: the new
        version being built, whose progress, quarantine and feedback these are)."""
        return self.pipeline.node(name)

    def stale_keys(self, table: str) -> list[Any]:
        """The parent keys whose appends a feature table has not applied yet (quarantined
        and backing-off keys included); empty for a source."""
        return self.staleness(table)["key"].tolist()

    def staleness(self, table: str) -> pd.DataFrame:
        """Per stale key of a feature table (quarantined and backing-off keys included):
        ``pending`` parent appends, the ingestion time of the oldest (``since``, processing
        time) and ``staleness``, seconds from then to the server clock's now."""
        node = self._defined(table)
        keys, counts, since = [], [], []
        with self._scheduler.turn():
            now = self.clock.now()
            if isinstance(node, FeatureNode):
                keys, counts, since = _pending_of(node)
        return pd.DataFrame({"key": pd.Series(keys, dtype=object), "pending": counts,
                             "since": pd.Series(since, dtype="datetime64[us]"),
                             "staleness": [(now - t).total_seconds() for t in since]})

    def drained(self) -> bool:
        """Whether every source is exhausted (or given up on) and no eager table has work
        left: what :meth:`run` waits for."""
        with self._scheduler.turn():
            return self._scheduler.drained()

    def quarantined(self, table: str) -> list[Any]:
        """Keys of a feature table held back after ``max_failures`` operator failures."""
        node = self._defined(table)
        return sorted(getattr(node, "quarantined", ()), key=repr)

    def release(self, table: str, key: Any = None) -> int:
        """Give quarantined keys (one, or all with ``key=None``) — or a source or table that
        was given up on — another chance; returns how many were released."""
        node = self._defined(table)
        with self._scheduler.lock:
            released = int(node.failures.release(WHOLE))
            if key is None and isinstance(node, FeatureNode):
                keys = list(node.quarantined)
            elif key is not None:
                keys = [node.schema.parse_key(key)]
            else:
                keys = []
            return released + sum(node.failures.release(k) for k in keys)

    def forget(self, table: str, key: Any) -> dict[str, int]:
        """Forget a key of a changelog source: its records, every row derived from them in
        every table, the history versions of the tables keyed like the source and the
        key's part of operator state go, durably and exactly once (a crash in the middle
        is finished on reopen); ``ralf.forgotten`` keeps an audit row saying what was
        removed and when, not the data. Returns rows removed per table (docs/changelog.md
        says what a forget cannot reach)."""
        self._check_open()
        node = self._node(table)
        if not isinstance(node, SourceNode):
            raise SchemaError(f"forget: {table!r} is not a source of this pipeline; forget a "
                              "key of the source its records come from", table=table)
        return self._scheduler.forget(node, key)

    def forgotten(self) -> pd.DataFrame:
        """The audit of forgets: per request, the table, a SHA-256 of the key, when it was
        asked and done, and what it removed (JSON)."""
        return self.storage.forgotten().to_pandas()

    def removed_tables(self) -> list[str]:
        """Tables the database stores that this pipeline has not defined (docs/evolve.md):
        kept, and answered from the database, until :meth:`drop_table`."""
        return self.pipeline.removed()

    def rebuilt_tables(self) -> list[str]:
        """Tables this run found changed and is rebuilding by replay (``evolve="rebuild"``)."""
        return list(self.pipeline.rebuilt)

    def drop_table(self, name: str) -> None:
        """Drop a stored table this pipeline no longer defines, its history and progress
        with it (in one transaction)."""
        self._check_open()
        self.pipeline.drop(name)

    def snapshot(self, directory: str | None = None) -> str:
        """A consistent copy of the database file (for ``ralf shell`` while serving). On
        PostgreSQL, which gives every session a consistent view itself, the database's URL
        (without its password)."""
        return self.storage.snapshot(directory)

    def drop_snapshot(self, path: str) -> bool:
        """Delete a snapshot :meth:`snapshot` made (any other path is left alone); True if
        there was one. Snapshots older than ten minutes go when a newer one is made, and
        all of them when the instance closes."""
        return self.storage.drop_snapshot(path)

    # ---- processing ---------------------------------------------------------------------
    def step(self) -> bool:
        """One tick: a batch per source, then eager refreshes within budgets.

        Returns whether anything was ingested or refreshed. Errors met (rejected records,
        failing operators) are raised after the tick has committed everything else.
        """
        self._check_open()
        worked, errors = self._scheduler.tick()
        self._note(errors)
        _raise_first(errors)
        return worked

    def run(self, timeout: float | None = None, *, progress_every: float | None = 10.0
            ) -> None:
        """Process until every source is exhausted and eager tables are drained (a backfill
        of a new table included).

        Errors do not stop the run; the first is raised at the end (all are in ``errors``).
        Every ``progress_every`` seconds (None: never) the ``ralf.progress`` logger writes
        :meth:`summary` at info level.
        """
        self._check_open()
        progress = Progress(logging.getLogger("ralf.progress"), self.summary, progress_every)
        errors = self._scheduler.run(timeout, after_tick=progress.maybe)
        self._note(errors)
        _raise_first(errors)

    def start(self, interval: float = 0.0) -> None:
        """Process in a background thread, a tick every ``interval`` seconds (0: as fast as
        there is work) until :meth:`stop`."""
        self._check_open()
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="ralf-ticks",
                                        daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.is_set():
            try:  # the scheduler resumes whatever failed; errors are logged where met
                worked, errors = self._scheduler.tick()
                self._note(errors)
            except Exception:  # between nodes (the tick's end): nothing in flight
                log.exception("tick failed")
                worked = False
            with self._ticked:
                self._background_drained = self._scheduler.drained()
                self._ticked.notify_all()
            self._scheduler.make_way()
            if interval or not worked:
                self._wait(interval or 0.01)

    def _wait(self, seconds: float) -> None:
        if isinstance(self.clock, SystemClock):
            self._stop.wait(seconds)  # wakes up at once on stop()
        else:
            self.clock.sleep(seconds)

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Block until background processing (:meth:`start`) has drained: every source
        exhausted and no eager table with work left. Returns False if ``timeout`` seconds
        passed first (or nothing processes in the background)."""
        if self._thread is None:
            return False
        with self._ticked:
            self._background_drained = False  # judged anew by the next tick
            return self._ticked.wait_for(lambda: self._background_drained, timeout)

    def stop(self) -> None:
        """Stop background processing after the tick in progress (a no-op if none runs)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def serve(self, host: str = "127.0.0.1", port: int = 8000, *, token: str | None = None,
              access_log: bool = False) -> str:
        """Serve the HTTP API (docs/contract.md §4) in a background thread; returns its URL.

        Non-blocking: keep calling ``step``/``run``, or ``start()`` background processing.
        ``port=0`` picks a free port. With ``token`` (or ``RALF_TOKEN`` in the
        environment) every request needs ``Authorization: Bearer <token>`` but the probes
        (``/health``, ``/ready``) and the API description (``/docs``, ``/openapi.json``).
        With ``access_log`` each request is logged at info level on ``uvicorn.access``.
        """
        self._check_open()
        if self._http is not None:
            raise RalfError(f"already serving on {self._http.url}")
        from ralf.http.runner import HttpServer  # the serving stack loads only when used

        http = HttpServer(self, host, port, token, access_log=access_log)
        url = http.start()
        self._http = http
        return url

    def _note(self, errors: list[RalfError]) -> None:
        for error in errors:
            self.errors.append(error)

    # ---- queries (the in-process client and the HTTP layer call these) --------------------
    def point_query(self, table: str, key: Any, *, with_metadata: bool = False,
                    as_of: Any = None, by: str = "event") -> Record:
        """The row of ``table`` for ``key`` (a lazy table first applies the key's pending appends);
        ``as_of`` gives the row as it was then, from the history — by event time where the
        table has it (``by="processing"``: as ralf had written it by then). A row older
        than the table's TTL is missing. Raises KeyNotFound."""
        node = self._node(table)
        key = node.schema.parse_key(key)
        node.metrics.queries += 1
        if as_of is not None:
            return self._point_as_of(node, table, key, _utc_naive(as_of), with_metadata, by)
        if isinstance(node, FeatureNode):
            if node.policies.priority is not None:
                with self._scheduler.lock:
                    self._tell_policy(node, "on_query", key, self.clock.now())
            self._refresh_for_query(node, key)
        entry = self._served(node, key)
        if entry is None:
            raise KeyNotFound(f"table {table!r} has no row for key {key!r}")
        ttl = _ttl(node)
        if ttl is not None:
            age = self.clock.now() - _stamp(node, entry)
            if age > ttl:
                raise KeyNotFound(f"table {table!r}: the row for key {key!r} has expired (it "
                                  f"is {age} old, past the table's TTL of {ttl})")
        record = node.record(entry[0])
        if with_metadata:
            self._add_metadata(node, key, record, entry[1])
            if node.info.event_column is not None:
                record.__dict__[EVENT_TIME] = entry[2]
        return record

    def _served(self, node: Node, key: Any) -> tuple[tuple, Any, Any] | None:
        """A key's served (values, updated_at, event time), or None: from the serving
        cache; not cached, or (sharded) a key another shard keeps, as the database has it."""
        entry = None if node.cache is None else node.cache.get(key)
        if entry is None and (node.cache is None or self.partition is not None):
            row = self.storage.point(node.info, key)
            entry = None if row is None else (
                tuple(row[n] for n in node.schema.names), row["_ralf_updated_at"],
                row.get(EVENT_TIME))
        return entry

    def record_error(self, table: str, key: Any, error: float) -> None:
        """Feedback: the prediction error a client observed using ``key``'s features (e.g.
        prediction minus truth). Kept per key for prioritization policies
        (``AccuracyAware``) and counted in metrics; not persisted."""
        node = self._defined(table)
        key = node.schema.parse_key(key)
        try:
            error = float(error)
        except (TypeError, ValueError):
            raise SchemaError(f"record_error: error must be a number, got {error!r}") from None
        if not math.isfinite(error):
            raise SchemaError(f"record_error: error must be finite, got {error!r}")
        node.metrics.errors_reported += 1
        node.metrics.squared_error += error * error
        if isinstance(node, FeatureNode) and node.policies.priority is not None:
            with self._scheduler.lock:
                self._tell_policy(node, "on_error", key, error, self.clock.now())

    def _tell_policy(self, node: FeatureNode, hook: str, *args: Any) -> None:
        """A query's news for the policy; if the policy raises, the query is still
        answered and the failure is reported like the table's other errors."""
        try:
            node.tell_policy(hook, *args)
        except OperatorError as exc:
            log.error("%s", exc)
            self._note([exc])

    def _point_as_of(self, node: Node, table: str, key: Any, at: dt.datetime,
                     with_metadata: bool, by: str) -> Record:
        if _windowed(node) and by == "event":  # the window as of then, from the records
            entity = pa.table({node.schema.primary_key: pa.array(
                [key], node.schema.arrow.field(node.schema.primary_key).type),
                "at": pa.array([at], pa.timestamp("us")), "__ralf_row": pa.array([0])})
            row = self.storage.window_rows(node.info, node.plan, node.parent.info, entity,
                                           "at").to_pylist()[0]
            return Record.from_dict({n: row[n] for n in node.schema.names if n in row}
                                    | {node.schema.primary_key: key})
        row = self.storage.point_as_of(node.info, key, at, by)
        if row is None:
            raise KeyNotFound(f"table {table!r} has no row for key {key!r} as of {at}")
        ttl = _ttl(node)
        if ttl is not None:
            age = at - (row[EVENT_TIME] if node.info.timed else row["_ralf_updated_at"])
            if age > ttl:
                raise KeyNotFound(f"table {table!r}: the row for key {key!r} as of {at} had "
                                  f"expired ({age} old, past the table's TTL of {ttl})")
        fields = {n: row[n] for n in node.schema.names}
        if with_metadata:
            fields["_ralf_updated_at"] = row["_ralf_updated_at"]
            if node.info.event_column is not None:
                fields[EVENT_TIME] = row[EVENT_TIME]
        return Record.from_dict(fields)

    def history(self, table: str, key: Any, limit: int = 100) -> pd.DataFrame:
        """A key's newest ``limit`` versions, newest first: each row a feature table wrote
        for it (``_ralf_deleted``: the version recording its deletion), or each record a
        source appended, with ``_ralf_seq`` and ``_ralf_updated_at`` (processing time;
        ``_ralf_event_time`` too where the table has event time)."""
        node = self._node(table)
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        return self.storage.versions(node.info, node.schema.parse_key(key), limit).to_pandas()

    def historical_query(self, entity_df: pd.DataFrame, features: list[str],
                         timestamp_column: str = "event_timestamp", *, by: str = "event"
                         ) -> pd.DataFrame:
        """Point-in-time-correct features for training data: each row of ``entity_df`` (a
        key column per table and ``timestamp_column``) gets each ``"table.column"`` as it
        was at the row's timestamp — never a value from after it. Tables with event time
        answer by it (``by="processing"``: as ralf had written them by then); a value
        older than its table's TTL at the row's timestamp is missing (null)."""
        return self.historical_arrow(
            pa.Table.from_pandas(entity_df, preserve_index=False), features, timestamp_column,
            by=by).to_pandas()

    def historical_arrow(self, entities: pa.Table, features: list[str],
                         timestamp_column: str = "event_timestamp", *, by: str = "event"
                         ) -> pa.Table:
        """:meth:`historical_query` on Arrow entity rows, answering Arrow."""
        if by not in ("event", "processing"):
            raise ValueError(f"historical_query: by must be 'event' or 'processing', got "
                             f"{by!r}")
        if timestamp_column not in entities.column_names:
            raise SchemaError(f"historical_query: the entity rows have no column "
                              f"{timestamp_column!r}", column=timestamp_column)
        wanted = []
        for feature in features:
            table, _, column = str(feature).rpartition(".")
            node = self._node(table) if table else None
            if node is None or column not in node.schema.columns:
                raise SchemaError(f"historical_query: {feature!r} is not 'table.column' of a "
                                  "defined table", column=str(feature))
            if node.schema.primary_key not in entities.column_names:
                raise SchemaError(f"historical_query: the entity rows need the key column "
                                  f"{node.schema.primary_key!r} of {table!r}",
                                  column=node.schema.primary_key)
            wanted.append((node, column))
        columns = [c for _, c in wanted]
        out_names = [c if columns.count(c) == 1 else f"{n.name}__{c}" for n, c in wanted]
        entities = _entity_column(entities, timestamp_column, pa.timestamp("us"), "timestamp")
        for node, _ in wanted:
            key = node.schema.primary_key
            entities = _entity_column(entities, key, node.schema.arrow.field(key).type,
                                      f"key of {node.name!r}")
        entities = entities.append_column(
            "__ralf_row", pa.array(np.arange(entities.num_rows, dtype=np.int64)))
        for node, _ in wanted:
            if isinstance(node, FeatureNode) and node.on_lazy_path:
                self._note(self._scheduler.ensure_fresh(node, None))
        ttls = {n.name: _ttl(n) for n, _ in wanted if _ttl(n) is not None}
        windows = {n.name: n for n, _ in wanted if _windowed(n) and by == "event"}
        kept = [(n.info, c, o) for (n, c), o in zip(wanted, out_names, strict=True)
                if n.name not in windows]
        result = self.storage.historical(entities, timestamp_column, kept, by, ttls)
        for node in windows.values():  # the windows as of each row, from the records
            rows = self.storage.window_rows(node.info, node.plan, node.parent.info,
                                            entities, timestamp_column)
            for (n, column), out in zip(wanted, out_names, strict=True):
                if n is node:
                    result = result.append_column(out, rows.column(column))
        order = [c for c in entities.column_names if c != "__ralf_row"] + out_names
        return result.select(order)

    def get_features(self, entities: Any, features: list[str], *,
                     with_staleness: bool = False) -> pd.DataFrame:
        """The current values of several features of several tables for a batch of
        entities, one row per entity row: the entity columns, then ``"table.column"`` per
        feature (docs/features.md). ``entities``: a DataFrame, a dict of lists (``{"user":
        [1, 2]}``) or a list of dicts; each table is looked up by the entity column named
        like its primary key (or the only entity column). ``features``: ``"table.column"``
        or Feast's ``"table:column"``. A key without a row (or past the table's TTL) gets
        nulls. Lazy tables first apply the asked keys' pending appends, in one refresh per
        table. ``with_staleness`` adds per table ``table._ralf_status`` (PRESENT,
        NOT_FOUND, OUTSIDE_MAX_AGE), ``table._ralf_updated_at`` and
        ``table._ralf_staleness`` (seconds of processing time since the oldest append the
        row has not applied; 0: fresh)."""
        return as_frame(self.get_features_arrow(entities, features,
                                                with_staleness=with_staleness))

    def get_features_arrow(self, entities: Any, features: list[str], *,
                           with_staleness: bool = False) -> pa.Table:
        """:meth:`get_features` as Arrow."""
        return self.feature_vectors(entities, features,
                                    with_staleness=with_staleness).to_arrow(with_staleness)

    def feature_vectors(self, entities: Any, features: list[str], *,
                        with_staleness: bool = True) -> FeatureVectors:
        """:meth:`get_features`'s answer before it is encoded (the HTTP routes encode it
        as Arrow, JSON or Feast's response)."""
        columns = entity_columns(entities)
        refs = feature_refs(features)
        asked: dict[str, list[str]] = {}
        for table, column in refs:
            node = self._node(table)
            if column not in node.schema.columns:
                raise SchemaError(f"get_features: table {table!r} has no column {column!r} "
                                  f"(it has {node.schema.names})", table=table, column=column)
            asked.setdefault(table, []).append(column)
        answer = FeatureVectors(columns, {}, refs)
        for table, wanted in asked.items():
            node = self._node(table)
            by = key_column(columns, table, node.schema.primary_key)
            keys = [None if k is None else node.schema.parse_key(k) for k in columns[by]]
            key_type = node.schema.arrow.field(node.schema.primary_key).type
            answer.entity_types.setdefault(by, key_type)
            if answer.entity_types[by] == key_type:
                columns[by] = keys
            answer.tables[table] = self._table_answer(node, wanted, keys, with_staleness)
        return answer

    def _table_answer(self, node: Node, wanted: list[str], keys: list[Any],
                      with_staleness: bool) -> TableAnswer:
        unique = list(dict.fromkeys(k for k in keys if k is not None))
        node.metrics.queries += 1
        if isinstance(node, FeatureNode):
            if node.policies.priority is not None:
                with self._scheduler.lock:
                    now = self.clock.now()
                    for key in unique:
                        self._tell_policy(node, "on_query", key, now)
            if node.on_lazy_path:
                errors = self._scheduler.ensure_fresh(node, keys=unique)
                self._note(errors)
                _raise_first([e for e in errors
                              if isinstance(e, OperatorError) and e.table == node.name])
        entries = {}
        for key in unique:
            entries[key] = self._served(node, key)
        ttl, now = _ttl(node), self.clock.now()
        positions = [node.schema.names.index(c) for c in wanted]
        values: list[list[Any]] = [[] for _ in wanted]
        status, updated, event = [], [], []
        for key in keys:
            entry = entries.get(key)
            if entry is not None and ttl is not None and now - _stamp(node, entry) > ttl:
                status.append(OUTSIDE_MAX_AGE)
                entry = None
            else:
                status.append(NOT_FOUND if entry is None else PRESENT)
            for out, i in zip(values, positions, strict=True):
                out.append(None if entry is None else entry[0][i])
            updated.append(None if entry is None else entry[1])
            event.append(None if entry is None else entry[2])
        arrow = node.schema.arrow
        return TableAnswer(
            node.name, wanted, [arrow.field(c).type for c in wanted], values, status, updated,
            event if node.info.event_column is not None else None,
            self._staleness_of(node, keys, now) if with_staleness else None)

    def _staleness_of(self, node: Node, keys: list[Any], now: dt.datetime) -> list[float]:
        """Per key, seconds (processing time) since the oldest append its row has not
        applied; 0 when fresh."""
        if not isinstance(node, FeatureNode):
            return [0.0] * len(keys)
        if node.pending is not None:
            pending = node.pending.keys
            since = {k: p.first_at for k in keys if (p := pending.get(k)) is not None}
        elif node.aligned:
            summary = self.storage.pending_summary(node.read_keys(
                [k for k in dict.fromkeys(keys) if k is not None])).to_pydict()
            since = dict(zip(summary["key"], summary["first_at"], strict=True))
        else:
            since = {}
        return [(now - since[k]).total_seconds() if k in since else 0.0 for k in keys]

    def _refresh_for_query(self, node: FeatureNode, key: Any) -> None:
        if not node.on_lazy_path:
            return
        errors = self._scheduler.ensure_fresh(node, key)
        self._note(errors)
        mine = [e for e in errors if isinstance(e, OperatorError) and e.table == node.name]
        _raise_first(mine)

    def _add_metadata(self, node: Node, key: Any, record: Record, updated_at: Any) -> None:
        meta = {"_ralf_updated_at": updated_at, "_ralf_pending": 0, "_ralf_quarantined": False}
        if isinstance(node, FeatureNode):
            if node.pending is not None:
                entry = node.pending.keys.get(key)
                meta["_ralf_pending"] = entry.count if entry else 0
            elif node.aligned:
                summary = self.storage.pending_summary(node.read_keys([key]))
                meta["_ralf_pending"] = int(sum(summary.column("n").to_pylist()))
            meta["_ralf_quarantined"] = key in node.quarantined
        meta["_ralf_stale"] = meta["_ralf_pending"] > 0
        record.__dict__.update(meta)

    def bulk_query(self, table: str, *, with_metadata: bool = False) -> pd.DataFrame:
        """Every row of ``table``, one per key, sorted by key (a lazy table is refreshed first)."""
        return self.bulk_arrow(table, with_metadata=with_metadata).to_pandas()

    def bulk_arrow(self, table: str, *, with_metadata: bool = False) -> pa.Table:
        """:meth:`bulk_query` as Arrow."""
        node = self._node(table)
        node.metrics.queries += 1
        if isinstance(node, FeatureNode) and node.on_lazy_path:
            errors = self._scheduler.ensure_fresh(node, None)
            self._note(errors)
        ttl = _ttl(node)
        return self.storage.bulk(node.info, with_metadata=with_metadata,
                                 live_since=None if ttl is None else self.clock.now() - ttl)

    def sql(self, query: str) -> pd.DataFrame:
        """One read-only SQL query over the database (tables are named as in the pipeline;
        what may be read and run: docs/serving.md). Stopped after ``query_timeout``."""
        return as_frame(self.sql_arrow(query))

    def sql_arrow(self, query: str, *, max_rows: int | None = None,
                  cancel: threading.Event | None = None) -> pa.Table:
        """:meth:`sql` as Arrow; refused past ``max_rows`` rows (checked while fetching),
        interrupted when ``cancel`` is set."""
        return self.storage.sql(query, max_rows=max_rows, timeout=self.query_timeout,
                                cancel=cancel)

    def problems(self, max_staleness: float | None = None) -> list[dict[str, Any]]:
        """What keeps this instance from serving fresh features, worst first: the database
        unreachable, background processing (:meth:`start`) stopped by an error, sources
        and tables given up on or failing now (with the last reason), eager tables whose
        oldest pending append waits more than ``max_staleness`` seconds (None: not
        checked), quarantined keys, a database schema other than this ralf's migrations
        make. Empty when all is well (``GET /ready`` answers 503 otherwise)."""
        found = self._instance_problems()
        # a table refreshed in full counts its pending appends in the database
        check_behind = max_staleness is not None and not any(
            p["problem"] == "storage unreachable" for p in found)
        with self._scheduler.turn():
            for name, node in self.pipeline.nodes.items():
                failures = node.failures
                reason = failures.last_error.get(WHOLE)
                if self._scheduler.failed(node):
                    found.append({"table": name, "kind": node.info.kind, "problem": "given up",
                                  "reason": reason})
                elif WHOLE in failures.count or node.broken:
                    found.append({"table": name, "kind": node.info.kind, "problem": "failing",
                                  "reason": reason, "failures": failures.count.get(WHOLE, 0)})
                if (check_behind and isinstance(node, FeatureNode)
                        and not node.on_lazy_path):  # a lazy table waits for queries
                    behind = _staleness(node, self.clock.now())["staleness_max"]
                    if behind > max_staleness:
                        found.append({"table": name, "kind": node.info.kind,
                                      "problem": "behind", "staleness_max": behind,
                                      "reason": f"an append has waited {behind:.1f} s "
                                                f"(more than {max_staleness:g} s)"})
                quarantined = getattr(node, "quarantined", ())
                if quarantined:
                    found.append({"table": name, "kind": node.info.kind,
                                  "problem": "quarantined keys", "keys": len(quarantined),
                                  "reason": next(iter(failures.last_error.values()), None)})
        return sorted(found, key=lambda p: _PROBLEM_ORDER.index(p["problem"]))

    def _instance_problems(self) -> list[dict[str, Any]]:
        found = []
        try:  # a read of the reader session: the database answers, and with which schema
            version = self.storage.schema_version()
        except Exception as exc:  # whatever the driver raises when the database is gone
            version = None
            found.append({"table": None, "kind": "storage", "problem": "storage unreachable",
                          "reason": f"{type(exc).__name__}: {exc}".strip()})
        expected = len(migrate.available())
        if version is not None and version != expected:
            found.append({"table": None, "kind": "schema", "problem": "migrations pending"
                          if version < expected else "schema newer than this ralf",
                          "reason": f"the database is at migration {version}, this ralf's "
                                    f"code expects {expected}"})
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stop.is_set():
            found.append({"table": None, "kind": "processing", "problem": "processing stopped",
                          "reason": "the background processing thread ended on an error "
                                    "(see the log); restart the process"})
        return found

    def rejected(self, table: str | None = None, limit: int = 1000) -> pd.DataFrame:
        """Records refused at the door of a table (or of any table): the newest ``limit``,
        newest first, with the reason, the column and the raw record as JSON. (Kept out
        of :meth:`sql`, which reads no bookkeeping but the catalog.)"""
        if table is not None:
            self._node(table)  # TableNotFound for a table that does not exist
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        return self.storage.rejected(table, limit).to_pandas()

    def metrics(self) -> dict[str, Any]:
        """Per-table counters and staleness (seconds since each stale key's oldest pending
        append: p50, p99, max and a histogram over stale keys); ``refresh_latency``: a
        histogram of the seconds each refresh took; ``budget``: keys a feature table may
        refresh per tick (None: all); the tick count and the database's
        ``schema_version`` (the newest migration applied)."""
        tables = {}
        with self._scheduler.turn():
            now = self.clock.now()
            for name, node in self.pipeline.nodes.items():
                m: dict[str, Any] = {"kind": node.info.kind, **vars(node.metrics)}
                failing = node.failures.count.get(WHOLE, 0)
                m["last_error"] = node.failures.last_error.get(WHOLE)
                if isinstance(node, FeatureNode):
                    m.update(_staleness(node, now))
                    m["quarantined_keys"] = len(node.quarantined)
                    m["retrying_keys"] = len(node.failures.retry_tick) - (
                        WHOLE in node.failures.retry_tick)
                    m["table_failures"] = failing
                    m["table_failed"] = self._scheduler.failed(node)
                    m["budget"] = node.budget
                    m["refresh_latency"] = node.refresh_latency.cumulative()
                elif isinstance(node, SourceNode):
                    m["source_failures"] = failing
                    m["source_failed"] = self._scheduler.failed(node)
                    m["exhausted"] = node.exhausted
                tables[name] = m
        return {"ticks": self._scheduler.ticks, "schema_version": self._schema_version,
                "tables": tables}

    def summary(self) -> str:
        """One line on how far processing got: ticks, records ingested and processed, stale
        keys (the progress line of :meth:`run` and ``ralf serve``)."""
        metrics = self.metrics()
        tables = metrics["tables"].values()
        ingested = sum(t.get("ingested", 0) for t in tables)
        processed = sum(t.get("processed", 0) for t in tables)
        stale = sum(t.get("stale_keys") or 0 for t in tables)
        return (f"tick {metrics['ticks']}, {ingested:,} records ingested, "
                f"{processed:,} processed, {stale:,} stale keys")

    # ---- lifecycle --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RalfError("this Ralf instance is closed")

    def close(self) -> None:
        """Stop serving and processing, close sources and the database; idempotent."""
        if self._closed:
            return
        if self._http is not None:
            self._http.stop()
            self._http = None
        self.stop()
        for source in self._scheduler.sources:
            close = getattr(source.source, "close", None)
            if callable(close):
                close()  # e.g. a Kafka consumer
        for node in self._scheduler.features:
            if isinstance(node, OperatorNode) and node.replicas is not None:
                node.replicas.close()
        with self._scheduler.lock:
            self._closed = True
            self.storage.close()

    def __enter__(self) -> Ralf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ralf({self.path!r}, tables={list(self.pipeline.nodes)})"


def _entity_column(entities: pa.Table, name: str, typ: pa.DataType, what: str) -> pa.Table:
    """The entity rows with column ``name`` as ``typ`` (timestamps: UTC, without a zone);
    a column that does not convert exactly is refused, naming it."""
    column = entities.column(name)
    try:
        if pa.types.is_timestamp(typ):
            if pa.types.is_timestamp(column.type) and column.type.tz is not None:
                column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
                column = column.cast(pa.timestamp(column.type.unit))
            elif not (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)
                      or pa.types.is_string(column.type)
                      or pa.types.is_large_string(column.type)):
                raise pa.ArrowInvalid(f"a {column.type} column holds no times")
        if pa.types.is_integer(typ) and not pa.types.is_integer(column.type):
            raise pa.ArrowInvalid(f"a {column.type} column holds no integers")
        converted = column.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"historical_query: entity column {name!r} (the {what}) cannot be "
                          f"read as {typ}: {exc}", column=name) from None
    return entities.set_column(entities.column_names.index(name), name, converted)


def _windowed(node: Node) -> bool:
    """A windowed aggregate: its value at a time is computed, not looked up."""
    return bool(getattr(node, "windowed", False))


def _stamp(node: Node, entry: tuple[tuple, Any, Any]) -> dt.datetime:
    """The time a served entry's age (against the TTL) counts from: its event time where the
    table has one, else when ralf wrote it."""
    return entry[2] if node.info.timed else entry[1]


def _ttl(node: Node) -> dt.timedelta | None:
    """A feature table's TTL (None: its rows never expire)."""
    return getattr(node, "ttl", None)


def _utc_naive(value: Any) -> dt.datetime:
    """A timestamp as stored: UTC without tzinfo (accepts datetimes, pandas and ISO text)."""
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def _pending_of(node: FeatureNode) -> tuple[list[Any], list[int], list[dt.datetime]]:
    """Each stale key of a feature table (held ones too), its pending appends and the
    ingestion time of the oldest."""
    if node.pending is not None:
        keys = list(node.pending.keys)
        entries = [node.pending.keys[k] for k in keys]
        return keys, [p.count for p in entries], [p.first_at for p in entries]
    # a table refreshed in full keeps no index: ask the database
    summary = node.storage.pending_summary(node.read_all()).to_pydict()
    return summary["key"], summary["n"], summary["first_at"]


def _staleness(node: FeatureNode, now: Any) -> dict[str, Any]:
    keys, counts, since = _pending_of(node)
    held = [i for i, k in enumerate(keys) if k not in node.quarantined]
    counts, since = [counts[i] for i in held], [since[i] for i in held]
    ages = np.array([(now - t).total_seconds() for t in since], dtype=float)
    return {
        "staleness": Histogram.of(STALENESS_BOUNDS, ages).cumulative(),
        "stale_keys": len(counts),
        "pending_appends": int(sum(counts)),
        "staleness_p50": float(np.percentile(ages, 50)) if len(ages) else 0.0,
        "staleness_p99": float(np.percentile(ages, 99)) if len(ages) else 0.0,
        "staleness_max": float(ages.max()) if len(ages) else 0.0,
    }


def _csv_name(path: str) -> str:
    stem = re.sub(r"\W+", "_", path.rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("_")
    return stem or "csv"
