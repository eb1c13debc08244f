"""Fixtures and data builders for the sink tests (imported by tests/test_sinks_*.py).

``verdict_store`` is parametrised over both VerdictStore backends, so every store
test runs once against embedded chdb and once through clickhouse-connect
against the chdb-backed HTTP fixture (tests/chdb_http.py, in its own process
because chdb allows one data path per process).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineguard.schemas import Verdict
from lineguard.stores import ChdbStore, ServerStore, VerdictStore

_CHDB_HTTP_SCRIPT = Path(__file__).with_name("chdb_http.py")
HOUR_NS = 3600 * 10**9
# 2024-05-06 07:00:00 UTC: a fixed start so partitions and hours are predictable.
BASE_NS = 1_714_978_800 * 10**9


def make_verdicts(
    count: int,
    lines: tuple[str, ...] = ("lineA", "lineB"),
    products: tuple[str, ...] = ("washer", "nut"),
    hours: int = 3,
    seed: int = 7,
) -> list[Verdict]:
    """Deterministic verdicts spread over lines, products and ``hours`` hours."""
    rng = random.Random(seed)
    verdicts = []
    for i in range(count):
        line = lines[i % len(lines)]
        captured = BASE_NS + rng.randrange(hours * HOUR_NS)
        score = rng.random()
        verdicts.append(
            Verdict(
                frame_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                line_id=line,
                camera_id=f"{line}-cam{i % 2}",
                product=products[(i // len(lines)) % len(products)],
                seq=i,
                captured_at_ns=captured,
                scored_at_ns=captured + rng.randrange(1, 50_000_000),
                model_name="patchcore",
                model_version="2024.05.1",
                score=score,
                threshold=0.7,
                is_defective=score >= 0.7,
                heatmap_key=f"{line}/2024/05/06/{i}.png" if score >= 0.7 else None,
                queue_wait_ms=rng.uniform(0, 20),
                inference_ms=rng.uniform(1, 9),
                processor_id="proc-1",
                # the compatible v1 additions on some rows (string meta values: the column is Map(String, String))
                part_id=f"part-{i // 2}" if i % 3 == 0 else None,
                meta={"serial": f"SN{i:06d}"} if i % 3 == 0 else None,
                late=(i % 6 == 0) if i % 3 == 0 else None,
            )
        )
    return verdicts


@pytest.fixture(scope="session")
def chdb_http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the chdb-backed ClickHouse HTTP test fixture, running in a child process."""
    data_dir = tmp_path_factory.mktemp("chdb-http")
    proc = subprocess.Popen(
        [sys.executable, str(_CHDB_HTTP_SCRIPT), "--path", str(data_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("listening on ") or (not line and proc.poll() is not None):
                break
        if not line.startswith("listening on "):
            raise RuntimeError(f"chdb HTTP fixture did not start: {line!r} (exit {proc.poll()})")
        yield line.split("listening on ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_test_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> VerdictStore:
    if backend == "chdb":
        return ChdbStore(tmp_path / "chdb", database="lineguard")
    url = request.getfixturevalue("chdb_http_url")
    # One server for the whole session: each test gets its own database.
    return ServerStore(url, database=f"lineguard_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["chdb", "server"])
def verdict_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VerdictStore]:
    """A VerdictStore with the schema created, once per backend."""
    store = open_test_store(request.param, tmp_path, request)
    try:
        store.create_schema()
        yield store
    finally:
        store.close()
