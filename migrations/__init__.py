"""Alembic migrations of Ferry's schema, installed as the ``models.migrations`` package (see models/migrate.py)."""
