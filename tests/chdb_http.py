"""TEST FIXTURE, NOT A SERVER: just enough of ClickHouse's HTTP interface, backed by chdb,
for clickhouse-connect (and so ``ServerStore``) to be tested without a ClickHouse server.

Every query runs in a chdb session, i.e. the real ClickHouse engine (same SQL,
same formats, same errors), so what the tests check about schemas, inserts,
``FINAL`` and views holds for a server too. What is *not* real here: there is
no authentication (credentials are ignored), no server sessions (``session_id``
is ignored), no HTTP response compression (request bodies may be compressed),
queries run one at a time under a lock, per-request settings are applied with
``SET`` on the one shared chdb session and so stay in force for later requests,
no ``client_protocol_version`` (clickhouse-connect then falls back to protocol 0,
which it supports), and no multipart/external data.

Run it in its own process (chdb allows one data path per process):

    python tests/chdb_http.py --path /tmp/chdb-http --port 0

It prints ``listening on http://127.0.0.1:<port>`` once ready and serves until killed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

# Request parameters that are about the HTTP exchange, not ClickHouse settings.
_TRANSPORT_PARAMS = {
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "session_id", "session_timeout", "session_check", "compress", "decompress",
    "buffer_size", "wait_end_of_query", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "enable_http_compression", "client_protocol_version",
    "http_wait_end_of_query", "http_response_buffer_size", "role",
}
# Formats whose header describes the columns, so a body can be read back with file().
_SELF_DESCRIBING_BINARY = {
    "Native", "RowBinaryWithNamesAndTypes", "Parquet", "Arrow", "ArrowStream", "ORC", "Avro",
}
_INSERT_HEAD = re.compile(rb"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)", re.IGNORECASE | re.DOTALL)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ChdbHttpFixture:
    """The chdb session and the translation from HTTP requests to chdb calls."""

    def __init__(self, path: Path) -> None:
        from chdb import session as chdb_session

        self.path = path
        self.tmp = path / "http-bodies"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.session = chdb_session.Session(str(path))
        self.lock = threading.Lock()
        self.timezone = str(self.session.query("SELECT timezone()", "TabSeparated")).strip() or "UTC"

    def execute(self, params: dict[str, str], body: bytes) -> tuple[bytes, str, dict[str, int]]:
        """Run one request; returns (response body, format, summary). Raises on SQL errors."""
        query = params.get("query", "")
        if query and body:
            # ClickHouse semantics: the query parameter, then the body (the insert's data).
            head = _INSERT_HEAD.match(query.encode())
            if head:
                return self._insert(params, head.group(1).decode(), head.group(2).decode(), body)
            query = f"{query}\n{body.decode()}"
        elif body:
            head = _INSERT_HEAD.match(body)
            if head:
                data = body[head.end():]
                # The data starts after the line that holds FORMAT <name>.
                newline = data.find(b"\n")
                data = data[newline + 1:] if newline >= 0 and not data[:newline].strip() else data.lstrip(b" ")
                return self._insert(params, head.group(1).decode(), head.group(2).decode(), data)
            query = body.decode()
        if not query.strip():
            raise ValueError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
        fmt_match = _TRAILING_FORMAT.search(query)
        fmt = fmt_match.group(1) if fmt_match else params.get("default_format", "TabSeparated")
        chdb_params = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        with self.lock:
            self._prepare(params)
            result = self.session.query(query, fmt, params=chdb_params)
            data = result.bytes()
            summary = self._summary(result)
        return data, fmt, summary

    def _insert(self, params: dict[str, str], target: str, fmt: str, data: bytes) -> tuple[bytes, str, dict[str, int]]:
        if fmt in _SELF_DESCRIBING_BINARY:
            # chdb takes a query string, not a binary stream: spill the body to a file and
            # read it back with the file() table function, which parses the same format.
            tmp = self.tmp / f"{uuid.uuid4().hex}.{fmt.lower()}"
            tmp.write_bytes(data)
            sql = f"{target} SELECT * FROM file('{tmp}', '{fmt}')"
        else:
            try:
                sql = f"{target} FORMAT {fmt}\n{data.decode()}"  # text formats go inline
            except UnicodeDecodeError:
                raise ValueError(
                    f"Code: 73. DB::Exception: this test fixture cannot take binary format {fmt} "
                    "(UNKNOWN_FORMAT)"
                ) from None
            tmp = None
        try:
            with self.lock:
                self._prepare(params)
                result = self.session.query(sql)
                summary = self._summary(result)
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return b"", "TabSeparated", summary

    def _prepare(self, params: dict[str, str]) -> None:
        """Database and settings of the request, applied to the shared session (lock held)."""
        database = params.get("database") or "default"
        if not _IDENT.match(database):
            raise ValueError(f"Code: 81. DB::Exception: Database {database!r} does not exist. (UNKNOWN_DATABASE)")
        self.session.query(f"USE `{database}`")
        for name, value in params.items():
            if name in _TRANSPORT_PARAMS or name.startswith("param_") or not _SETTING_NAME.match(name):
                continue
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")
            self.session.query(f"SET {name} = '{escaped}'")

    @staticmethod
    def _summary(result: object) -> dict[str, int]:
        def read(name: str) -> int:
            getter = getattr(result, name, None)
            return int(getter()) if callable(getter) else 0

        return {
            "read_rows": read("rows_read"),
            "read_bytes": read("bytes_read"),
            "written_rows": read("rows_written"),
            "written_bytes": read("bytes_written"),
            "elapsed_ns": int(float(getattr(result, "elapsed")() if hasattr(result, "elapsed") else 0) * 1e9),
        }


def _decompress(data: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if encoding == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]
        return zstd.decompress(data)
    raise ValueError(f"Code: 1. DB::Exception: this test fixture cannot decode Content-Encoding {encoding}")


def _http_status(code: int) -> int:
    if code in (62, 27, 26, 6, 41, 70, 53, 117):  # syntax/parse/type errors
        return 400
    if code in (60, 81, 46, 47):  # unknown table, database, function, identifier
        return 404
    return 500


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pool expects
    fixture: ChdbHttpFixture  # set on the subclass made by serve()

    def log_message(self, fmt: str, *args: object) -> None:  # quiet unless asked
        if getattr(self.server, "verbose", False):
            sys.stderr.write("chdb_http: " + (fmt % args) + "\n")

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._reply(200, b"", {})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        if url.path in ("/ping", "/replicas_status"):
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path not in ("", "/"):
            self._reply(404, b"There is no handle " + url.path.encode() + b"\n", {})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.fixture.timezone,
            "X-ClickHouse-Server-Display-Name": "chdb-http-test-fixture",
        }
        try:
            if self.headers.get("Content-Type", "").startswith("multipart/"):
                raise ValueError("Code: 1. DB::Exception: this test fixture does not take multipart requests")
            body = _decompress(body, self.headers.get("Content-Encoding"))
            data, fmt, summary = self.fixture.execute(params, body)
        except Exception as exc:  # chdb errors carry "Code: N. DB::Exception: ..."
            message = str(exc)
            code_match = _ERROR_CODE.search(message)
            code = int(code_match.group(1)) if code_match else 1
            if not code_match:
                message = f"Code: 1. DB::Exception: {message}"
            headers["X-ClickHouse-Exception-Code"] = str(code)
            self._reply(_http_status(code), (message + "\n").encode(), headers)
            return
        headers["X-ClickHouse-Format"] = fmt
        headers["X-ClickHouse-Summary"] = json.dumps({k: str(v) for k, v in summary.items()})
        headers["Content-Type"] = (
            "application/octet-stream" if fmt in _SELF_DESCRIBING_BINARY or fmt.startswith("RowBinary")
            else "text/plain; charset=UTF-8"
        )
        self._reply(200, data, headers)

    def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def serve(path: Path, port: int = 0, verbose: bool = False) -> ThreadingHTTPServer:
    """Build the server on 127.0.0.1 (call serve_forever on it)."""
    fixture = ChdbHttpFixture(path)
    handler = type("ChdbHttpHandler", (_Handler,), {"fixture": fixture})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.verbose = verbose  # type: ignore[attr-defined]
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path(tempfile.mkdtemp(prefix="chdb-http-")))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    server = serve(args.path, args.port, args.verbose)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
