-- Per-key incremental bookkeeping: watermarks, operator and source checkpoints.

-- Lookup-join side and lazy flag of a feature table; its watermark floor: every parent
-- append with _ralf_seq <= watermark is applied for every key, except the keys listed
-- in ralf.watermarks, whose own watermark overrides the floor.
ALTER TABLE ralf.tables ADD COLUMN lookup VARCHAR;
ALTER TABLE ralf.tables ADD COLUMN lookup_on VARCHAR;
ALTER TABLE ralf.tables ADD COLUMN lazy BOOLEAN DEFAULT false;
ALTER TABLE ralf.tables ADD COLUMN watermark BIGINT DEFAULT 0;

CREATE TABLE ralf.watermarks (
    table_name VARCHAR NOT NULL,
    key        VARCHAR NOT NULL,       -- Schema.key_to_text of the parent's key
    seq        BIGINT NOT NULL,
    PRIMARY KEY (table_name, key)
);

-- Pickled operator state, written in the same transaction as the watermarks it matches.
-- state IS NULL means "not picklable": the table is rebuilt by replay on reopen.
CREATE TABLE ralf.operator_state (
    table_name VARCHAR PRIMARY KEY,
    state      BLOB,
    updated_at TIMESTAMP NOT NULL
);

-- Where each source stopped: its own checkpoint if it offers one, else how many
-- records it had emitted (replayed and skipped on reopen).
CREATE TABLE ralf.source_state (
    table_name VARCHAR PRIMARY KEY,
    state      BLOB,
    emitted    BIGINT NOT NULL,
    exhausted  BOOLEAN NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
