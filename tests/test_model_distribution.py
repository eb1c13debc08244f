"""Models published once: checksums checked before every swap, partial and corrupted copies never score,
push / promote / rollback through the object store (a local folder, and the stack's real S3 server)."""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from test_processor_core import _frame, _normal, _save_baseline

from lineguard.cli import main as cli_main
from lineguard.config import ProcessorConfig
from lineguard.engines.manifest import MANIFEST_FILE, ONNX_FILE, Manifest
from lineguard.inspection import ModelRegistry
from lineguard.inspection.registry import CHECKSUMS_FILE, ModelCache, ModelStore, PublishError
from lineguard.processors.scoring import BatchScorer, Work
from lineguard.schemas import ImageLimits
from lineguard.stores import LocalFolderStore, S3Store

POLL_S = 0.01


def refusals(product: str, reason: str) -> float:
    return REGISTRY.get_sample_value("lineguard_model_refusals_total", {"product": product, "reason": reason}) or 0.0


class Line:
    """Frames scored the way the processors score them: BatchScorer over a ModelRegistry."""

    def __init__(self, registry: ModelRegistry, model_dir: Path, product: str, seed: int = 0) -> None:
        self.scorer = BatchScorer(ProcessorConfig(model_dir=model_dir), ImageLimits(), registry)
        self.product, self.rng = product, np.random.default_rng(seed)

    def score(self, line: str = "line1") -> str:
        outcome = self.scorer.score([Work(_frame(_normal(self.rng), product=self.product, line=line),
                                          time.time_ns())])[0]
        assert outcome.failure is None, outcome.failure
        return outcome.verdict.model_version

    def only(self, version: str, frames: int = 5, line: str = "line1") -> None:
        """Every one of ``frames`` frames is scored by ``version`` (polls pass meanwhile)."""
        for _ in range(frames):
            assert self.score(line) == version
            time.sleep(2 * POLL_S)

    def until(self, version: str, old: str, line: str = "line1", timeout_s: float = 20.0) -> None:
        """Frames are scored by ``old`` until ``version`` takes over, never by anything else."""
        deadline = time.monotonic() + timeout_s
        while (served := self.score(line)) != version:
            assert served == old and time.monotonic() < deadline, (served, version)
            time.sleep(2 * POLL_S)


def build(root: Path, product: str, version: str, seed: int) -> Path:
    """A real (baseline) model, trained where the test keeps its builds, never where one is served."""
    folder = root / "builds" / product / version
    _save_baseline(folder, np.random.default_rng(seed), version=version)
    return folder


def flip_a_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def test_a_local_folder_copied_in_the_worst_order_or_corrupted_never_scores(tmp_path, caplog):
    served = tmp_path / "models"
    shutil.copytree(build(tmp_path, "widget", "v1", 1), served / "widget")
    registry = ModelRegistry(served, poll_s=POLL_S)
    line = Line(registry, served, "widget")
    line.only("v1", frames=1)

    # rsync order: the new manifest lands first, then the graph, half-written for a while.
    v2 = build(tmp_path, "widget", "v2", 2)
    before = refusals("widget", "checksum")
    with caplog.at_level(logging.ERROR, logger="lineguard.inspection.models"):
        shutil.copy(v2 / MANIFEST_FILE, served / "widget" / MANIFEST_FILE)
        line.only("v1")  # a new threshold with the old graph: refused
        graph = (v2 / ONNX_FILE).read_bytes()
        (served / "widget" / ONNX_FILE).write_bytes(graph[: len(graph) // 2])
        line.only("v1")
    assert refusals("widget", "checksum") >= before + 2  # retried, and refused, at each poll
    assert "refused" in caplog.text and "still serving version v1" in caplog.text
    (served / "widget" / ONNX_FILE).write_bytes(graph)
    line.until("v2", old="v1")  # picked up without a restart
    assert "widget" not in registry.errors

    # A copy with one flipped byte in the graph: refused until a good copy arrives.
    v3 = build(tmp_path, "widget", "v3", 3)
    before = refusals("widget", "checksum")
    (served / "widget" / ONNX_FILE).write_bytes(flip_a_byte((v3 / ONNX_FILE).read_bytes()))
    shutil.copy(v3 / MANIFEST_FILE, served / "widget" / MANIFEST_FILE)
    line.only("v2")
    assert refusals("widget", "checksum") > before
    shutil.copy(v3 / ONNX_FILE, served / "widget" / ONNX_FILE)
    line.until("v3", old="v2")


def test_a_manifest_from_before_the_files_map_is_checked_by_its_graph_digest(tmp_path):
    folder = build(tmp_path, "widget", "v1", 1)
    doc = json.loads((folder / MANIFEST_FILE).read_text())
    assert doc["files"] == {ONNX_FILE: doc["onnx_sha256"]}
    del doc["files"]  # as `lineguard train` wrote it before
    (folder / MANIFEST_FILE).write_text(json.dumps(doc))
    assert Manifest.load(folder).digests() == {ONNX_FILE: doc["onnx_sha256"]}
    Manifest.load(folder).verify(folder)
    (folder / ONNX_FILE).write_bytes(flip_a_byte((folder / ONNX_FILE).read_bytes()))
    with pytest.raises(ValueError, match="differs from the manifest"):
        Manifest.load(folder).verify(folder)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def object_store(request, tmp_path):
    if request.param == "local":
        return LocalFolderStore(tmp_path / "bucket")
    stack = request.getfixturevalue("stack")
    return S3Store(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key, f"lg-models-{uuid.uuid4().hex[:10]}")


def test_promoted_models_are_pulled_verified_and_swapped(tmp_path, object_store, caplog):
    product = f"gear{uuid.uuid4().hex[:6]}"  # its own metric labels
    models = ModelStore(object_store)
    builds = {v: build(tmp_path, product, v, seed) for seed, v in enumerate(["v1", "v2", "v3"], start=1)}
    assert models.push(builds["v1"], product=product) == (product, "v1")
    models.promote(product, "v1")
    cache = ModelCache(models, tmp_path / "cache")
    registry = ModelRegistry.from_config(ProcessorConfig(model_poll_s=POLL_S, model_source="object_store"), cache)
    line = Line(registry, cache.cache_dir, product)
    line.only("v1", frames=1)  # the first pull is waited for

    # v2 uploaded file by file in the worst order: manifest, checksums, then half the graph; promoted early.
    key = f"models/{product}/v2/"
    graph = (builds["v2"] / ONNX_FILE).read_bytes()
    manifest = (builds["v2"] / MANIFEST_FILE).read_bytes()
    checksums = {**Manifest.load(builds["v2"]).digests(), MANIFEST_FILE: _sha(manifest)}
    object_store.put(key + MANIFEST_FILE, manifest, "application/json")
    object_store.put(key + CHECKSUMS_FILE, json.dumps(checksums).encode(), "application/json")
    with caplog.at_level(logging.ERROR, logger="lineguard.inspection.models"):
        models.promote(product, "v2")
        _refused_while_serving(line, product, "missing", "v1")
        object_store.put(key + ONNX_FILE, graph[: len(graph) // 2], "application/octet-stream")
        _refused_while_serving(line, product, "checksum", "v1")
    assert f"refused {product} v2" in caplog.text
    object_store.put(key + ONNX_FILE, graph, "application/octet-stream")
    line.until("v2", old="v1")  # the good upload, picked up without a restart

    # v3 pushed, then one byte of its stored graph flipped: refused until repaired.
    models.push(builds["v3"], product=product)
    object_store.put(f"models/{product}/v3/{ONNX_FILE}", flip_a_byte((builds["v3"] / ONNX_FILE).read_bytes()),
                     "application/octet-stream")
    models.promote(product, "v3")
    _refused_while_serving(line, product, "checksum", "v2")
    with pytest.raises(PublishError, match="immutable"):
        models.push(build(tmp_path / "retrained", product, "v2", 9), product=product)  # never overwritten
    models.push(builds["v3"], product=product)  # the same content again: repairs the upload
    line.until("v3", old="v2")

    models.rollback(product)
    line.until("v2", old="v3")
    models.promote(product, "v1", line="line2")  # one line on its own version
    line.until("v1", old="v2", line="line2")
    line.only("v2", frames=2)  # the other lines keep the product-wide one
    assert models.rollback(product, line="line2") is None  # back to the product-wide version
    line.until("v2", old="v1", line="line2")
    assert models.versions(product) == {"v1": True, "v2": True, "v3": True}
    assert [h["version"] for h in models.pointer(product)["product"]] == ["v1", "v2"]
    assert models.products() == [product]


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _refused_while_serving(line: Line, product: str, reason: str, version: str, timeout_s: float = 20.0) -> None:
    """Frames keep being scored by ``version`` until the registry has refused the promoted one for ``reason``."""
    before = refusals(product, reason)
    deadline = time.monotonic() + timeout_s
    while refusals(product, reason) == before:
        assert time.monotonic() < deadline, f"no {reason} refusal counted"
        line.only(version, frames=1)
    line.only(version, frames=3)


def test_models_cli_push_list_promote_rollback(tmp_path, capsys):
    config = tmp_path / "lineguard.yml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n"
                      f"sinks: {{object_store: {{backend: local, local_dir: {tmp_path / 'bucket'}}}}}\n")
    for seed, version in enumerate(["v1", "v2"], start=1):
        assert cli_main(["models", "push", str(build(tmp_path, "widget", version, seed)), "--config", str(config)]) == 0
        assert cli_main(["models", "promote", "widget", version, "--config", str(config)]) == 0
    assert cli_main(["models", "rollback", "widget", "--config", str(config)]) == 0
    assert cli_main(["models", "promote", "widget", "v2", "--line", "line2", "--config", str(config)]) == 0
    capsys.readouterr()
    assert cli_main(["models", "list", "--json", "--config", str(config)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing == {"widget": {"versions": {"v1": True, "v2": True}, "promoted": "v1", "lines": {"line2": "v2"}}}
    assert cli_main(["models", "promote", "widget", "v9", "--config", str(config)]) == 2  # no such version
    assert "no complete version 'v9'" in capsys.readouterr().err
