-- A SQL table that looks up another table by its key (a JOIN, EXISTS or IN): the other
-- table's log is followed up to lookup_watermark; the parent keys its newer changes reach
-- are made stale (their watermark lowered) in the same transaction that moves it.
ALTER TABLE ralf.tables ADD COLUMN lookup_watermark BIGINT DEFAULT 0;
