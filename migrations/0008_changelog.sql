-- Changelog sources (mode "upsert" or "changelog"): a change is logged as signed rows
-- (_ralf_diff +1 / -1 in the source's append table) and the source's current state is kept
-- beside it in ralf."<source>__current". ``changelog`` is the mode and the identity key,
-- as JSON (ralf/storage/units.py, Changelog); NULL for an append-only source.
ALTER TABLE ralf.tables ADD COLUMN changelog VARCHAR;

-- What forget() removed: one row per request, written when it is asked (done_at NULL) and
-- completed when everything derived from the key is gone (a request a crash interrupted is
-- finished on reopen, from key_text). Done, it says what was removed and when, never the
-- removed data: key_text is cleared, only a SHA-256 of it stays.
CREATE SEQUENCE ralf.forgotten_id;

CREATE TABLE ralf.forgotten (
    id           BIGINT PRIMARY KEY DEFAULT nextval('ralf.forgotten_id'),
    table_name   VARCHAR NOT NULL,
    key_text     VARCHAR,              -- Schema.key_to_text of the key, until done
    key_sha256   VARCHAR NOT NULL,
    seq          BIGINT NOT NULL,      -- the source's _ralf_seq before the retraction
    requested_at TIMESTAMP NOT NULL,
    done_at      TIMESTAMP,
    removed      VARCHAR               -- JSON: table -> rows removed (records, rows, versions)
);
