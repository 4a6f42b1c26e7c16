"""Alembic migrations of the service database (``alembic upgrade head``; env.py reads settings)."""
