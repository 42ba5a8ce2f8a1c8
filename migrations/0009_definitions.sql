-- What computes a table's rows, beyond its schema (ralf/evolve.py): a feature table's
-- operator identity (the version its author set, or a hash of its code), its SQL query,
-- and the digests of the tables it reads, as JSON. NULL for a table stored before this
-- migration: its next definition is adopted as it is (ralf plan says so).
ALTER TABLE ralf.tables ADD COLUMN definition VARCHAR;
