"""Alembic migrations for nanogen's tables (run by ``nanogen migrate``)."""
