-- Dead letters: records refused at the door of a table, with the reason.
CREATE SEQUENCE ralf.rejected_id;

CREATE TABLE ralf.rejected (
    id          BIGINT PRIMARY KEY DEFAULT nextval('ralf.rejected_id'),
    table_name  VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL,
    column_name VARCHAR,
    record      VARCHAR NOT NULL,      -- the raw record as JSON
    rejected_at TIMESTAMP NOT NULL
);
