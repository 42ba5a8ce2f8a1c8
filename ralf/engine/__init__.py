"""The scheduler's machinery: ingestion, staleness, refresh, lazy refresh, checkpoints."""
