"""The scoring engine: preprocessing (the table lookup equals the float arithmetic it replaces), and the
provider options it hands ONNX Runtime (TensorRT profiles and caches, CUDA settings), checked without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lineguard.engines.manifest import InputSpec, Manifest, Thresholds
from lineguard.engines.runtime import preprocess


def _manifest(height: int, width: int) -> Manifest:
    return Manifest(kind="baseline", name="t", version="1",
                    input=InputSpec(height=height, width=width, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                    thresholds=Thresholds(value=1.0, method="normal_quantile"))


def test_preprocess_is_the_normalised_chw_batch() -> None:
    rng = np.random.default_rng(0)
    manifest = _manifest(48, 64)
    images = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    mean = np.asarray(manifest.input.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(manifest.input.std, np.float32) * 255.0)
    expected = ((images.astype(np.float32) - mean) * inv_std).transpose(0, 3, 1, 2)
    got = preprocess(images, manifest)
    assert got.dtype == np.float32 and got.shape == (4, 3, 48, 64) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


def test_preprocess_resizes_and_takes_grayscale() -> None:
    rng = np.random.default_rng(1)
    manifest = _manifest(32, 32)
    gray = rng.integers(0, 256, (64, 80), dtype=np.uint8)  # larger: area-resized
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)  # smaller: linear-resized
    got = preprocess([gray, small], manifest)
    assert got.shape == (2, 3, 32, 32)
    # Grayscale becomes three equal planes before normalisation: undo it and compare the planes.
    std = np.asarray(manifest.input.std, np.float32)[:, None, None] * 255.0
    mean = np.asarray(manifest.input.mean, np.float32)[:, None, None] * 255.0
    levels = got[0] * std + mean
    np.testing.assert_allclose(levels[0], levels[1], atol=1e-3)
    np.testing.assert_allclose(levels[1], levels[2], atol=1e-3)


# --- Provider options: what ONNX Runtime is handed, checked without a GPU ---------------------------------

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def _graph_folder(folder, height=48, width=64, input_name="pixels", offset=0.0) -> None:
    """A tiny scoring graph (anomaly map = channel mean + offset, score = its max) and its manifest."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", [input_name, "channels"], ["mean"], keepdims=1),
             helper.make_node("Add", ["mean", "offset"], ["anomaly_map"]),
             helper.make_node("ReduceMax", ["anomaly_map", "spatial"], ["score"], keepdims=0)]
    inits = [helper.make_tensor("channels", TensorProto.INT64, [1], [1]),
             helper.make_tensor("spatial", TensorProto.INT64, [3], [1, 2, 3]),
             helper.make_tensor("offset", TensorProto.FLOAT, [], [offset])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, height, width])], inits)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(folder / "model.onnx"))
    _manifest(height, width).save(folder)


class _FakeSession:
    """Stands in for ort.InferenceSession: keeps the providers it was given and the batch sizes it ran."""

    made: list["_FakeSession"] = []

    def __init__(self, path, sess_options=None, providers=None) -> None:
        self.path, self.providers, self.batches = path, providers, []
        _FakeSession.made.append(self)

    def get_providers(self) -> list[str]:
        return [name for name, _ in self.providers]

    def get_inputs(self):
        import types

        return [types.SimpleNamespace(name="pixels")]

    def run(self, outputs, feed):
        (tensor,) = feed.values()
        self.batches.append(len(tensor))
        return np.zeros(len(tensor), np.float32), np.zeros((len(tensor), 1, *tensor.shape[2:]), np.float32)


@pytest.fixture
def fake_ort(monkeypatch):
    import lineguard.engines.runtime as runtime

    _FakeSession.made = []
    monkeypatch.setattr(runtime.ort, "InferenceSession", _FakeSession)
    monkeypatch.setattr(runtime, "gpu_name", lambda device_id: "NVIDIA H200")
    monkeypatch.setattr(runtime, "tensorrt_version", lambda: "10.9.0")
    return _FakeSession


def test_tensorrt_gets_a_profile_over_the_batch_range_and_a_writable_keyed_cache(tmp_path, fake_ort) -> None:
    import os

    from lineguard.engines.runtime import ScoringEngine

    model = tmp_path / "models" / "widget"
    _graph_folder(model)
    before = sorted(p.name for p in model.iterdir())
    engine = ScoringEngine(model, providers=[TRT, CUDA, CPU], max_batch=8, device_id=1,
                           trt_cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in model.iterdir()) == before  # model folders are mounted read-only
    session = fake_ort.made[-1]
    options = dict(session.providers)
    trt = options[TRT]
    # The graph's own input name and size, batch 1 to the processor's max_batch, tuned for the full batch.
    assert trt["trt_profile_min_shapes"] == "pixels:1x3x48x64"
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"] == "pixels:8x3x48x64"
    assert trt["trt_fp16_enable"] == "False" and trt["device_id"] == "1"
    cache = Path(trt["trt_engine_cache_path"])
    assert trt["trt_engine_cache_enable"] == trt["trt_timing_cache_enable"] == "True"
    assert Path(trt["trt_timing_cache_path"]) == cache
    assert cache.parent == tmp_path / "cache" and cache.is_dir() and os.access(cache, os.W_OK)
    assert not cache.is_relative_to(model)
    assert "nvidia-h200" in cache.name and cache.name.endswith("-trt10.9.0")
    assert options[CUDA] == {"device_id": "1", "arena_extend_strategy": "kSameAsRequested",
                             "cudnn_conv_algo_search": "HEURISTIC"}
    assert options[CPU] == {}
    # Warm-up at both ends of the profile: the first full batch in production builds nothing.
    assert session.batches == [1, 8] and engine.max_batch == 8

    # Another graph (another sha256) gets another cache folder; the same graph the same one.
    ScoringEngine(model, providers=[TRT, CPU], max_batch=8, trt_cache_dir=tmp_path / "cache")
    assert dict(fake_ort.made[-1].providers)[TRT]["trt_engine_cache_path"] == str(cache)
    _graph_folder(model, offset=1.0)
    ScoringEngine(model, providers=[TRT, CPU], max_batch=8, trt_cache_dir=tmp_path / "cache")
    other = Path(dict(fake_ort.made[-1].providers)[TRT]["trt_engine_cache_path"])
    assert other != cache and other.parent == cache.parent


def test_fp16_kernels_only_for_the_fp16_graph_and_cpu_warms_at_batch_one(tmp_path, fake_ort) -> None:
    import shutil

    from lineguard.engines.manifest import FP16_FILE
    from lineguard.engines.runtime import ScoringEngine

    _graph_folder(tmp_path / "m")
    shutil.copy(tmp_path / "m" / "model.onnx", tmp_path / "m" / FP16_FILE)  # stands in for an export
    engine = ScoringEngine(tmp_path / "m", providers=[TRT, CPU], onnx_file=FP16_FILE, trt_cache_dir=tmp_path / "c")
    assert engine.precision == "fp16"
    assert dict(fake_ort.made[-1].providers)[TRT]["trt_fp16_enable"] == "True"
    ScoringEngine(tmp_path / "m", providers=[CPU], max_batch=8)
    assert fake_ort.made[-1].batches == [1]  # the CPU compiles nothing per shape


def test_cache_key_falls_back_to_clear_tokens_and_defaults_to_the_user_cache(tmp_path, monkeypatch) -> None:
    import lineguard.engines.runtime as runtime

    key = runtime.trt_cache_key("ab" * 32, runtime.UNKNOWN_GPU, runtime.UNKNOWN_TENSORRT)
    assert key == "abababababababab-unknown-gpu-trtunknown"
    assert runtime.trt_cache_key("cd" * 32, "NVIDIA H200", "10.9") != runtime.trt_cache_key("ab" * 32, "NVIDIA H200",
                                                                                           "10.9")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.default_trt_cache_dir() == tmp_path / "lineguard" / "tensorrt"
    options = runtime.provider_options(TRT, input_name="image", height=256, width=256, max_batch=16,
                                       precision="fp32")
    assert "trt_engine_cache_path" not in options  # no writable cache: engines are built at load, not cached
