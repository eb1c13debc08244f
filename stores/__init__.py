"""Stores: where verdicts and heatmaps live (ClickHouse, object storage). Read and written by name, never through Kafka.

The heavy clients (chdb, clickhouse-connect, minio) are imported only when a store is opened.
"""

from .clickhouse import ChdbPathInUseError, ChdbStore, ServerStore, VerdictStore, open_store
from .objects import LocalFolderStore, ObjectStore, S3Store, check_key, open_object_store
from .verdict_schema import VERDICT_COLUMNS, schema_statements, verdict_row

__all__ = [
    "VERDICT_COLUMNS", "ChdbPathInUseError", "ChdbStore", "LocalFolderStore", "ObjectStore", "S3Store",
    "ServerStore", "VerdictStore", "check_key", "open_object_store", "open_store", "schema_statements",
    "verdict_row",
]
