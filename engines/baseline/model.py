"""The baseline engine: per-pixel deviation from the mean normal image.

Named as the baseline it is: it works for fixtured parts photographed the
same way every time (the synthetic camera, many machined parts) and is the
floor the real engines (PatchCore, EfficientAD) must beat. It needs no
backbone and trains in a second, which is why the demo and the pipeline tests
use it.

map(x)  = box_blur( mean_c |x - mu| / (sigma + eps) )
score   = max(map)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..base import AnomalyModel

BLUR = 9  # box-blur size: suppresses single-pixel sensor noise, keeps defects of a few pixels


def _box_blur(maps: np.ndarray, k: int = BLUR) -> np.ndarray:
    """Average pooling with zero padding that counts the padding, like ONNX AveragePool(count_include_pad=1)."""
    pad = k // 2
    padded = np.pad(maps, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    csum = padded.cumsum(axis=2).cumsum(axis=3)
    csum = np.pad(csum, ((0, 0), (0, 0), (1, 0), (1, 0)))
    h, w = maps.shape[2], maps.shape[3]
    total = csum[:, :, k:k + h, k:k + w] - csum[:, :, :h, k:k + w] - csum[:, :, k:k + h, :w] + csum[:, :, :h, :w]
    return (total / (k * k)).astype(np.float32)


class BaselineModel(AnomalyModel):
    kind = "baseline"

    def __init__(self, input_size: tuple[int, int] = (128, 128)) -> None:
        super().__init__(input_size, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
        self.mu: np.ndarray | None = None
        self.sigma: np.ndarray | None = None

    def fit(self, images: Sequence[np.ndarray]) -> "BaselineModel":
        if len(images) < 2:
            raise ValueError("the baseline needs at least 2 normal images")
        x = self.preprocess(images).astype(np.float64)
        self.mu = x.mean(axis=0, keepdims=True).astype(np.float32)
        # Floor sigma: pixels that never vary must not turn every tiny change into a defect.
        self.sigma = np.maximum(x.std(axis=0, keepdims=True), 0.02).astype(np.float32)
        return self

    def score_tensor(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.mu is not None and self.sigma is not None, "fit() first"
        deviation = np.abs(x - self.mu) / self.sigma
        maps = _box_blur(deviation.mean(axis=1, keepdims=True))
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def score(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.score_tensor(self.preprocess(images))

    def export_onnx(self, path: Path) -> None:
        assert self.mu is not None and self.sigma is not None, "fit() first"
        h, w = self.input.height, self.input.width
        pad = BLUR // 2
        nodes = [
            helper.make_node("Sub", ["image", "mu"], ["centred"]),
            helper.make_node("Abs", ["centred"], ["absdev"]),
            helper.make_node("Div", ["absdev", "sigma"], ["zscore"]),
            helper.make_node("ReduceMean", ["zscore", "channel_axis"], ["zmean"], keepdims=1),
            helper.make_node("AveragePool", ["zmean"], ["anomaly_map"], kernel_shape=[BLUR, BLUR],
                             pads=[pad, pad, pad, pad], count_include_pad=1),
            helper.make_node("ReduceMax", ["anomaly_map", "spatial_axes"], ["score"], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes, "lineguard_baseline",
            inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, h, w])],
            outputs=[
                helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
                helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, h, w]),
            ],
            initializer=[
                numpy_helper.from_array(self.mu, "mu"),
                numpy_helper.from_array(self.sigma, "sigma"),
                numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
                numpy_helper.from_array(np.array([1, 2, 3], np.int64), "spatial_axes"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9  # readable by every onnxruntime >= 1.16
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
