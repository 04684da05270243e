"""Persistence: the SQLite store (the daemon's store, the CLI's administration, the schema)
and the parts of the group commit every backend shares; PostgreSQL is in ``store.postgres``."""

from .admin import AdminStore
from .schema import SCHEMA_VERSION, create_private, migrate, open_sync
from .sqlite import SqliteStore

__all__ = ["SCHEMA_VERSION", "AdminStore", "SqliteStore", "create_private", "migrate", "open_sync"]
