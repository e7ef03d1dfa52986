"""The PostgreSQL data layer: connections, migrations, writers, the local cluster."""

from .connection import connect, database_url, get_session
from .migrate import migrate

__all__ = ["connect", "database_url", "get_session", "migrate"]
