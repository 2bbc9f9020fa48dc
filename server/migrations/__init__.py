"""Alembic migrations of the control plane's schema (applied at startup by db.Database.migrate)."""
