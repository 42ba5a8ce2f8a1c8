"""Which worker a key belongs to: a stable hash of the key, the same in every process and
on every run (Python's own hash() is salted per process)."""

from __future__ import annotations

import zlib
from typing import Any

import pyarrow as pa

from ralf.schema import Schema


def stable_hash(schema: Schema, key: Any) -> int:
    """CRC32 of the key's canonical text."""
    return zlib.crc32(schema.key_to_text(key).encode())


class KeyPartition:
    """The keys shard ``shard`` of ``num_shards`` owns."""

    def __init__(self, shard: int, num_shards: int) -> None:
        self.shard, self.num_shards = shard, num_shards

    @classmethod
    def of(cls, shard: int, num_shards: int) -> KeyPartition | None:
        """The partition, or None for one unsharded process; refuses impossible values."""
        if not (isinstance(num_shards, int) and num_shards >= 1):
            raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
        if not (isinstance(shard, int) and 0 <= shard < num_shards):
            raise ValueError(f"shard must be an integer in 0..{num_shards - 1}, got {shard!r}")
        return cls(shard, num_shards) if num_shards > 1 else None

    def owns(self, schema: Schema, key: Any) -> bool:
        """Whether ``key`` belongs to this shard."""
        return stable_hash(schema, key) % self.num_shards == self.shard

    def keep(self, schema: Schema, rows: pa.Table) -> pa.Table:
        """The rows whose routing key this shard owns."""
        keys = rows.column(schema.primary_key).to_pylist()
        return rows.filter(pa.array([self.owns(schema, k) for k in keys], pa.bool_()))
