-- Sharded workers: several processes on one PostgreSQL database, each owning a hash
-- partition of the keys (Ralf(..., shard=i, num_shards=n)). Shard i numbers what it writes
-- from i * 2^40 on, so its reads of the logs (floor < _ralf_seq <= high) see only its own
-- appends. Its watermark floor per table is kept here; its per-key watermarks, operator
-- state and source position are kept under the name '<table>#<shard>' in ralf.watermarks,
-- ralf.operator_state and ralf.source_state.
CREATE TABLE ralf.shard_floors (
    name       VARCHAR PRIMARY KEY,    -- '<table>#<shard>'
    num_shards INTEGER NOT NULL,
    watermark  BIGINT NOT NULL
);
