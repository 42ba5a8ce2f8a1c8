-- The ralf schema holds everything that is not a user table: first, the catalog.
CREATE SCHEMA IF NOT EXISTS ralf;

CREATE TABLE ralf.schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    applied_at TIMESTAMP NOT NULL
);

-- One row per source or feature table. schema_json is Schema.to_json().
CREATE TABLE ralf.tables (
    name        VARCHAR PRIMARY KEY,
    kind        VARCHAR NOT NULL,      -- 'source' | 'feature'
    schema_json VARCHAR NOT NULL,
    parent      VARCHAR,               -- driving parent of a feature table
    created_at  TIMESTAMP NOT NULL
);
