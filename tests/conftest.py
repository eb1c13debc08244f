"""Shared fixtures: one real local stack (Kafka + S3) per test session, and per-test settings.

``stack`` starts a dedicated LocalStack in a fresh /tmp state dir and stops it
at the end. For fast iteration, point LINEGUARD_TEST_STACK_DIR at a state dir
(``LINEGUARD_STATE_DIR=/tmp/lgdev lineguard stack up`` then
``LINEGUARD_TEST_STACK_DIR=/tmp/lgdev pytest``): that stack is reused (started
there if it isn't running) and left running afterwards.

``cluster_stack`` is the same for a 3-broker KRaft cluster (own state dir,
started only when a test asks for it; LINEGUARD_TEST_CLUSTER_DIR reuses one),
and ``cluster_settings`` points at it.

``settings`` is a ``lineguard.config.Settings`` pointing at the stack, with a
fresh state dir and line ids no other test uses, so topics never collide.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lineguard.config import Settings, load_settings
from lineguard.deploy.stack import LocalStack, StackError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The repo's cache, wherever pytest runs from: the jars and the versitygw build are shared.
CACHE_DIR = Path(os.environ.get("LINEGUARD_STACK__CACHE_DIR") or REPO_ROOT / ".cache")
SESSION_DIR_PREFIX = "lineguard-test-stack-"
CLUSTER_DIR_PREFIX = "lineguard-test-cluster-"
CLUSTER_BROKERS = 3


@dataclass
class RunningStack:
    """What tests need to reach the stack; ``local`` is the LocalStack behind it."""

    local: LocalStack
    kafka_bootstrap: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str

    @property
    def state_dir(self) -> Path:
        return self.local.state_dir

    def restart_kafka(self) -> None:
        """Stop and start the broker: same address, same data (for fault-injection tests)."""
        self.local.restart_kafka()


def _stack_from(local: LocalStack) -> RunningStack:
    info = json.loads(local.stack_json.read_text())
    return RunningStack(
        local=local,
        kafka_bootstrap=info["kafka_bootstrap"],
        s3_endpoint=info["s3_endpoint"],
        s3_access_key=info["s3_access_key"],
        s3_secret_key=info["s3_secret_key"],
    )


def _reap_abandoned_session_stacks() -> None:
    """Stop stacks left by test sessions that were killed before their teardown ran.

    Each session records its pid in its state dir; a dir whose owner is gone is
    stopped and removed, so interrupted runs don't pile up 512 MB brokers.
    """
    tmp = Path(tempfile.gettempdir())
    for state_dir in [*tmp.glob(SESSION_DIR_PREFIX + "*"), *tmp.glob(CLUSTER_DIR_PREFIX + "*")]:
        try:
            owner = int((state_dir / "owner.pid").read_text())
        except (FileNotFoundError, ValueError):
            continue
        if Path(f"/proc/{owner}").exists():
            continue
        LocalStack(state_dir, CACHE_DIR).down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[RunningStack]:
    yield from _session_stack("LINEGUARD_TEST_STACK_DIR", SESSION_DIR_PREFIX, brokers=None)


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[RunningStack]:
    """A 3-broker KRaft cluster and S3, for replication and broker-fault tests."""
    yield from _session_stack("LINEGUARD_TEST_CLUSTER_DIR", CLUSTER_DIR_PREFIX, brokers=CLUSTER_BROKERS)


def _session_stack(reuse_env: str, prefix: str, brokers: int | None) -> Iterator[RunningStack]:
    """A stack for the test session: the one in $``reuse_env`` (left running), else a fresh one."""
    reuse_dir = os.environ.get(reuse_env)
    if reuse_dir:
        local = LocalStack(Path(reuse_dir), CACHE_DIR, brokers=brokers)
        if local.stack_json.exists():
            # Restarts must keep the broker's size limit the stack was started with.
            local.message_max_bytes = json.loads(local.stack_json.read_text()).get(
                "kafka_message_max_bytes", local.message_max_bytes)
        try:
            local.up()
        except StackError as exc:
            pytest.fail(f"could not start the reused test stack in {reuse_dir}: {exc}", pytrace=False)
        yield _stack_from(local)
        return  # a reused stack stays up for the next run

    _reap_abandoned_session_stacks()
    state_dir = Path(tempfile.mkdtemp(prefix=prefix))
    (state_dir / "owner.pid").write_text(str(os.getpid()))
    local = LocalStack(state_dir, CACHE_DIR, brokers=brokers)
    try:
        try:
            local.up()
        except StackError as exc:
            pytest.fail(f"could not start the test stack: {exc}", pytrace=False)
        yield _stack_from(local)
    finally:
        local.down(purge=True)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def line_ids() -> list[str]:
    """Two line ids unique to this test (topics are per line, so tests never share one)."""
    tag = secrets.token_hex(3)
    return [f"t{tag}-1", f"t{tag}-2"]


@pytest.fixture
def settings(
    stack: RunningStack, line_ids: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings pointing at the session's stack, with a fresh state dir and this test's line ids."""
    return _settings_for(stack, line_ids, tmp_path, monkeypatch)


@pytest.fixture
def cluster_settings(
    cluster_stack: RunningStack, line_ids: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings pointing at the session's 3-broker cluster (bootstrap: every broker)."""
    return _settings_for(cluster_stack, line_ids, tmp_path, monkeypatch)


def _settings_for(stack: RunningStack, line_ids: list[str], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Settings:
    # The developer's LINEGUARD_* variables would outrank these values; tests must not see them.
    for name in list(os.environ):
        if name.startswith("LINEGUARD_") and not name.startswith("LINEGUARD_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("LINEGUARD_CONFIG", raising=False)
    return load_settings(
        state_dir=str(tmp_path / "state"),
        kafka={"bootstrap_servers": stack.kafka_bootstrap},
        processor={
            "lines": line_ids,
            "consumer_group": f"lineguard-processors-{line_ids[0]}",
            "model_dir": str(tmp_path / "models"),
        },
        sinks={
            "object_store": {
                "endpoint": stack.s3_endpoint,
                "access_key": stack.s3_access_key,
                "secret_key": stack.s3_secret_key,
                "bucket": f"lineguard-{line_ids[0]}",
            }
        },
        stack={"cache_dir": str(CACHE_DIR)},
    )
