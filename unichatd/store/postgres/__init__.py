"""Persistence in PostgreSQL, through asyncpg: the scale-out store (operations.md, "More
than one process").  The same operations, group commit and answers as the SQLite store;
what differs is the SQL and that the database, not one process, hands out the numbers.
"""

from .admin import PostgresAdmin
from .schema import SCHEMA_VERSION, migrate_database
from .store import PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresAdmin", "PostgresStore", "migrate_database"]
