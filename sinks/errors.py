"""Which write failures are permanent: the records can never be written, so retrying is pointless.

A writer wraps its store calls in :func:`classified`; a failure this module recognises as
permanent comes out as :class:`PermanentWriteError` (the runner dead-letters the records it
cannot write, and the stream goes on), anything else unchanged (the runner retries it with
back-off). Unknown failures count as transient: retrying forever loses nothing, while
dead-lettering a record the store would have taken a minute later puts it beside the table.
"""

from __future__ import annotations

import errno
import re
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lineguard.schemas import Reason, SchemaError

# ClickHouse errors about the data or its fit to the table, never about the server's state:
# the same rows fail the same way on every retry. (Server-state errors such as
# MEMORY_LIMIT_EXCEEDED, TOO_MANY_PARTS, TIMEOUT_EXCEEDED or a missing table stay transient.)
PERMANENT_CLICKHOUSE_ERRORS = frozenset({
    "CANNOT_PARSE_TEXT", "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER", "CANNOT_PARSE_BOOL",
    "CANNOT_PARSE_UUID", "CANNOT_PARSE_ESCAPE_SEQUENCE", "CANNOT_CONVERT_TYPE", "TYPE_MISMATCH",
    "ILLEGAL_TYPE_OF_ARGUMENT", "ILLEGAL_COLUMN", "NO_SUCH_COLUMN_IN_TABLE", "THERE_IS_NO_COLUMN",
    "UNKNOWN_IDENTIFIER", "INCORRECT_DATA", "INCORRECT_NUMBER_OF_COLUMNS", "TOO_LARGE_STRING_SIZE",
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN", "DECIMAL_OVERFLOW",
    "ARGUMENT_OUT_OF_BOUND", "VIOLATED_CONSTRAINT", "CANNOT_READ_ALL_DATA",
})
# The symbolic name ClickHouse ends its messages with: "... (TYPE_MISMATCH)".
_CLICKHOUSE_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")

# S3 error codes about the request's object itself (its key, its size), not about the service.
# SlowDown, InternalError, ServiceUnavailable, RequestTimeout, AccessDenied... stay transient.
PERMANENT_S3_ERRORS = frozenset({
    "InvalidArgument", "InvalidObjectName", "KeyTooLongError", "EntityTooLarge", "MetadataTooLarge",
    "InvalidURI",
})

# A local file the key can never become (a name too long, a directory in the way); a full or
# read-only disk stays transient.
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EINVAL, errno.EILSEQ})

# Python's own "this value cannot be converted" errors, raised before a byte is sent
# (a verdict field that does not fit its column type, a key the client refuses).
_CONVERSION_ERRORS = (TypeError, ValueError, OverflowError, struct.error)


class PermanentWriteError(Exception):
    """The store refused these records for good; ``reason`` is the dead-letter reason code."""

    def __init__(self, message: str, reason: str = Reason.WRITE_REJECTED) -> None:
        super().__init__(message)
        self.reason = str(reason)


def clickhouse_error_name(exc: BaseException) -> str | None:
    """The ClickHouse error name (``TYPE_MISMATCH``) of a chdb or clickhouse-connect error, if any."""
    name = getattr(exc, "name", None)  # clickhouse-connect sets it when the server answered
    if isinstance(name, str) and name:
        return name
    if "DB::Exception" not in str(exc):
        return None
    names = _CLICKHOUSE_ERROR_NAME.findall(str(exc))
    return names[-1] if names else None


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying the write that raised ``exc`` can never succeed."""
    if isinstance(exc, (PermanentWriteError, SchemaError)):
        return True
    name = clickhouse_error_name(exc)
    if name is not None:
        return name in PERMANENT_CLICKHOUSE_ERRORS
    minio_errors = sys.modules.get("minio.error")  # not imported: no S3 store, no S3Error
    if minio_errors is not None and isinstance(exc, minio_errors.S3Error):
        return exc.code in PERMANENT_S3_ERRORS
    if isinstance(exc, OSError):  # also ConnectionError and timeouts: errno decides
        return exc.errno in PERMANENT_ERRNOS
    return isinstance(exc, _CONVERSION_ERRORS)


@contextmanager
def classified(what: str) -> Iterator[None]:
    """Run a store call; re-raise a permanent failure as :class:`PermanentWriteError`."""
    try:
        yield
    except PermanentWriteError:
        raise
    except Exception as exc:
        if not is_permanent(exc):
            raise
        reason = exc.reason if isinstance(exc, SchemaError) else Reason.WRITE_REJECTED
        raise PermanentWriteError(f"{what}: {type(exc).__name__}: {exc}", reason) from exc
