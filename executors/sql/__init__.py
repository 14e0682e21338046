"""SQL databases: PostgreSQL and MySQL/MariaDB, sharing one script language."""

from executors.sql.mysql import MysqlExecutor
from executors.sql.postgresql import PostgresqlExecutor

__all__ = ["MysqlExecutor", "PostgresqlExecutor"]
