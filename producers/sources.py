"""Frame sources: iterators of :class:`SourceImage` that a camera producer publishes.

* :class:`FolderSource` - every image under a folder (sorted, recursive), or the
  ``test/`` split of an MVTec-AD category folder with the defect type as ground truth;
* :class:`VideoSource`  - the frames of a video file (anything OpenCV can open);
* :class:`SyntheticSource` - a :class:`~lineguard.producers.synthetic.SyntheticCamera`;
* live cameras, in their own modules: :class:`~lineguard.producers.rtsp.RtspSource` and
  :class:`~lineguard.producers.genicam.GenICamSource` (endless, reconnecting; see producers/live.py).

Every source has ``skipped``: files it could not read. A corrupt file on a
camera share is a fact of life; it is logged, counted and passed over, never fatal.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.schemas.image import read_file

from .synthetic import SyntheticCamera

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# Frame.meta values must be str/int/float/bool; a good part's "defect" reads "good", as MVTec names it.
GOOD = "good"


@dataclass
class SourceImage:
    image: np.ndarray                                 # H x W x 3 uint8 RGB
    name: str                                         # where it came from, for logs
    meta: dict[str, Any] = field(default_factory=dict)  # travels in Frame.meta
    # When the camera took it (UTC ns); None: when the producer sends it. Live sources set it.
    captured_at_ns: int | None = None


def is_mvtec_category(path: Path) -> bool:
    """An MVTec-AD category folder: ``test/good`` beside ``train/`` or ``ground_truth/``."""
    return (path / "test" / GOOD).is_dir() and ((path / "train").is_dir() or (path / "ground_truth").is_dir())


class FolderSource:
    """Replays the images of a folder in sorted order, optionally forever.

    For an MVTec category folder only ``test/`` is replayed (the split a line
    would see), each image with ``gt_defective`` and ``defect`` meta from its
    subfolder; any other folder is walked recursively.
    """

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder {self.path} does not exist")
        self.loop = loop
        self.mvtec = is_mvtec_category(self.path)
        self.skipped = 0

    def files(self) -> list[Path]:
        """The image files one pass replays, in order."""
        base = self.path / "test" if self.mvtec else self.path
        # Sort on the relative path's parts so the order is the same on every filesystem.
        found = (p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return sorted(found, key=lambda p: p.relative_to(base).parts)

    def _meta(self, path: Path) -> dict[str, Any]:
        meta: dict[str, Any] = {"source": str(path.relative_to(self.path))}
        if self.mvtec:
            defect = path.relative_to(self.path / "test").parts[0]
            meta["gt_defective"] = defect != GOOD
            meta["defect"] = defect
        return meta

    def __iter__(self) -> Iterator[SourceImage]:
        for _ in itertools.count():
            files = self.files()
            yielded = 0
            for path in files:
                try:
                    image = read_file(path)
                except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
                    self.skipped += 1
                    log.warning("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
                    continue
                yielded += 1
                yield SourceImage(image, str(path.relative_to(self.path)), self._meta(path))
            if not self.loop:
                return
            if yielded == 0:
                # Looping over nothing readable would spin forever.
                log.error("no readable images in %s; stopping the loop", self.path)
                return


class VideoSource:
    """The frames of a video file, RGB, optionally rewound at the end forever."""

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file {self.path} does not exist")
        self.loop = loop
        self.skipped = 0
        self.fps: float | None = None  # the file's own frame rate, known once opened

    def _open(self):  # noqa: ANN202 - cv2.VideoCapture
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise OSError(f"cannot open video {self.path} (unsupported container or codec?)")
        self.fps = capture.get(cv2.CAP_PROP_FPS) or None
        return capture

    def __iter__(self) -> Iterator[SourceImage]:
        import cv2

        for _ in itertools.count():
            # Reopening is the reliable rewind: seeking is approximate for many codecs.
            capture = self._open()
            index = 0
            try:
                while True:
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    yield SourceImage(rgb, f"{self.path.name}#{index}",
                                      {"source": self.path.name, "video_frame": index})
                    index += 1
            finally:
                capture.release()
            if not self.loop:
                return
            if index == 0:
                log.error("video %s yielded no frames; stopping the loop", self.path)
                return


class SyntheticSource:
    """Frames ``start, start+1, ...`` of a synthetic camera; endless unless ``count`` is given."""

    def __init__(self, camera: SyntheticCamera, count: int | None = None, start: int = 0) -> None:
        self.camera = camera
        self.count = count
        self.start = start
        self.skipped = 0

    def __iter__(self) -> Iterator[SourceImage]:
        indices = itertools.count(self.start)
        if self.count is not None:
            indices = itertools.islice(indices, self.count)
        cam = self.camera
        for index in indices:
            frame = cam.render(index)
            yield SourceImage(
                frame.image,
                f"{cam.product}-s{cam.seed}-{index:06d}",
                {"gt_defective": frame.defective, "defect": frame.defect or GOOD, "synthetic_index": index},
            )
