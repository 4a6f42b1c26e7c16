"""Spruce service shared package: settings, database rows, job states, object storage."""
