"""Persistence in SQLite: the daemon's store, the CLI's administration, the schema."""

from .admin import AdminStore
from .schema import SCHEMA_VERSION, create_private, migrate, open_sync
from .sqlite import SqliteStore

__all__ = ["SCHEMA_VERSION", "AdminStore", "SqliteStore", "create_private", "migrate", "open_sync"]
