-- Settings a database keeps for its whole life, e.g. how many shards write it
-- (PostgreSQL): reopening it with another count would give keys to other shards than the
-- ones holding their state, so it is refused.
CREATE TABLE ralf.settings (
    name  VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
