"""Operators on Ray: a table's operator runs as ``num_replicas`` Ray actors.

Keys are routed to replicas by a stable hash (CRC32 of the key's canonical text), so a
key's state always lives on the same replica. Each refresh sends every replica its share
of the pending records in one call and waits for all of them; the driver keeps doing
everything else (reading the log, load shedding, lookups, commits). The checkpoint is the
list of the replicas' pickled states, committed with the watermarks exactly as a local
operator's state is. ``ray.init(address=...)`` before creating the ``Ralf`` points it at a
cluster; otherwise a local Ray instance is started.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

from ralf.engine.apply import Applied, apply_records
from ralf.engine.routing import stable_hash
from ralf.schema import Record, Schema


class _Replica:
    """One operator instance, inside a Ray actor."""

    def __init__(self, factory: bytes) -> None:
        self.operator = pickle.loads(factory)

    def apply(self, records: list[dict], pk: str, out_pk: str, aligned: bool,
              others: list | None, skip: set) -> Applied:
        rows = [Record.from_dict(r) for r in records]
        result = apply_records(self.operator.on_record, rows, pk, out_pk, aligned,
                               others=others, skip=skip)
        # Exceptions of user classes may not unpickle in the driver: send their text.
        result.failed = {k: RuntimeError(f"{type(e).__name__}: {e}")
                         for k, e in result.failed.items()}
        return result

    def checkpoint(self) -> bytes:
        return pickle.dumps(self.operator.__getstate__(), protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, state: bytes) -> None:
        value = pickle.loads(state)
        if hasattr(type(self.operator), "__setstate__"):
            self.operator.__setstate__(value)
        else:
            self.operator.__dict__.update(value)


def ensure_ray(num_cpus: int | None = None) -> Any:
    """The ``ray`` module, with a local Ray instance started (``num_cpus``) unless Ray is
    already initialized, e.g. by ``ray.init(address=...)``."""
    import ray

    if not ray.is_initialized():
        path = os.pathsep.join(p for p in sys.path if p)  # workers import what we import
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}},
                 _node_ip_address="127.0.0.1")  # a local instance stays on loopback
    return ray


class Replicas:
    """A table's operator as ``n`` Ray actors; a key's records always go to the same
    replica, routed by a stable hash of the key (of ``key_schema``)."""

    def __init__(self, operator: Any, schema: Schema, key_schema: Schema, n: int) -> None:
        ray = ensure_ray()
        self._ray = ray
        self.key_schema = key_schema
        # num_cpus=0: replicas of several tables may share the cores; the OS schedules them.
        actor = ray.remote(num_cpus=0)(_Replica)
        # cloudpickle: operator classes defined in __main__ travel by value
        factory = ray.cloudpickle.dumps(operator)
        self.actors = [actor.remote(factory) for _ in range(n)]

    def replica_of(self, key: Any) -> int:
        """Index of the replica that holds ``key``'s state."""
        return stable_hash(self.key_schema, key) % len(self.actors)

    def apply(self, records: list[Record], pk: str, out_pk: str, aligned: bool, *,
              others: list | None, skip: set) -> Applied:
        """:func:`~ralf.engine.apply.apply_records`, each replica applying its share of the
        records, all at once; failures come back as RuntimeErrors carrying the original's text."""
        shares: list[tuple[list[dict], list]] = [([], []) for _ in self.actors]
        for i, record in enumerate(records):
            rows, lookups = shares[self.replica_of(getattr(record, pk))]
            rows.append(record.__dict__)
            if others is not None:
                lookups.append(others[i])
        calls = [actor.apply.remote(rows, pk, out_pk, aligned,
                                    lookups if others is not None else None, set(skip))
                 for actor, (rows, lookups) in zip(self.actors, shares, strict=True) if rows]
        result = Applied()
        for part in self._ray.get(calls):
            result.merge(part)
        return result

    def checkpoint(self) -> bytes:
        """The replicas' operator states, pickled together as one list."""
        states = self._ray.get([actor.checkpoint.remote() for actor in self.actors])
        return pickle.dumps(states, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, state: bytes) -> None:
        """Give each replica its state from a :meth:`checkpoint`; raises ValueError when the
        checkpoint holds another number of replicas."""
        states = pickle.loads(state)
        if len(states) != len(self.actors):
            raise ValueError(f"checkpoint has {len(states)} replicas, not {len(self.actors)}")
        self._ray.get([a.restore.remote(s) for a, s in zip(self.actors, states, strict=True)])

    def close(self) -> None:
        """Kill the replicas' actors."""
        for actor in self.actors:
            self._ray.kill(actor)
