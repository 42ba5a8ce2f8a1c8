"""Incremental view maintenance: feature tables maintained by SQL inside the database."""
