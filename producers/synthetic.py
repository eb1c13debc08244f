"""A synthetic camera: deterministic images of machined metal parts on a conveyor belt.

Every image is a pure function of ``(product, size, seed, defect_rate, index)``:
the same arguments give the same bytes, so demos, tests and benchmark runs are
reproducible without shipping a dataset. Rendering is vectorised numpy over a
few full-frame float32 planes (a few milliseconds per 256 px frame).

A frame shows one part (washer, nut or bolt head) with slight pose and lighting
jitter over a textured, moving belt, plus sensor noise. A ``defect_rate``
fraction of frames carry one defect with a pixel-exact ground-truth mask:

* ``scratch`` - a thin bright or dark straight line on the surface;
* ``dent``    - a round depression, shaded dark on one side and bright on the other;
* ``crack``   - a jagged dark line running inward from the outer edge;
* ``chunk``   - a bite missing from the outer edge (the belt shows through);
* ``stain``   - a translucent rust or oil blot with a wobbly outline.

``write_mvtec`` lays frames out like the MVTec AD dataset, so engines can be
trained and evaluated on them with the same loaders they use for MVTec.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
from PIL import Image

DEFECT_KINDS: Final[tuple[str, ...]] = ("scratch", "dent", "crack", "chunk", "stain")
# ``render(index)`` decides defective-or-not from the seed; pass defect=... to force.
AUTO: Final = "auto"


@dataclass(frozen=True)
class ProductShape:
    """Geometry and finish of a part, as fractions of the frame size."""

    outline: str                        # "circle" or "hex"
    outer: float                        # circle radius, or hexagon apothem
    hole: float                         # bore radius; 0 for none
    tint: tuple[float, float, float]    # RGB multipliers of the metal finish
    lathe_rings: float                  # amplitude of concentric machining marks
    center_dimple: float = 0.0          # radius of a pressed centre mark (bolt heads)


PRODUCTS: Final[dict[str, ProductShape]] = {
    "washer": ProductShape("circle", 0.34, 0.15, (0.97, 0.99, 1.03), lathe_rings=5.0),
    "nut": ProductShape("hex", 0.30, 0.14, (1.02, 0.99, 0.92), lathe_rings=3.0),
    "bolt": ProductShape("hex", 0.27, 0.0, (0.98, 0.98, 1.0), lathe_rings=4.0, center_dimple=0.05),
}

_BELT_TINT = np.array([0.90, 1.0, 0.94], dtype=np.float32)
_STAIN_COLORS = np.array([[150.0, 92.0, 48.0], [62.0, 52.0, 70.0], [120.0, 110.0, 40.0]], dtype=np.float32)
_SQRT3_2 = math.sqrt(3.0) / 2.0


@dataclass
class SyntheticImage:
    image: np.ndarray          # H x W x 3 uint8 RGB
    defective: bool
    defect: str | None         # one of DEFECT_KINDS, None when good
    mask: np.ndarray           # H x W uint8, 255 on the defect, 0 elsewhere


def _edge(signed_inside: np.ndarray, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (positive inside, in pixels)."""
    return np.clip(signed_inside / softness + 0.5, 0.0, 1.0)


def _bump(t: np.ndarray) -> np.ndarray:
    """A smooth-ish ridge, 1 at t=0 falling to 0 at |t|>=1 (a cheap stand-in for a Gaussian)."""
    return np.maximum(np.float32(1.0) - t * t, np.float32(0.0))


def _norm(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # sqrt(x*x + y*y): np.hypot's overflow care costs ~7x here, and we never overflow.
    return np.sqrt(x * x + y * y)


def _segment_distance(xs: np.ndarray, ys: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre to the segment p0-p1 (broadcast over the grids)."""
    d = p1 - p0
    length2 = float(d @ d) or 1e-6
    px = xs - np.float32(p0[0])
    py = ys - np.float32(p0[1])
    t = np.clip((px * np.float32(d[0]) + py * np.float32(d[1])) / np.float32(length2), 0.0, 1.0)
    return _norm(px - t * np.float32(d[0]), py - t * np.float32(d[1]))


class SyntheticCamera:
    """Renders frame ``index`` of a seeded, endless production run of one product."""

    def __init__(self, product: str = "washer", size: int = 256, seed: int = 0, defect_rate: float = 0.1) -> None:
        if product not in PRODUCTS:
            raise ValueError(f"unknown synthetic product {product!r}; choose from {sorted(PRODUCTS)}")
        if not 32 <= size <= 4096:
            raise ValueError(f"size must be 32..4096 pixels, got {size}")
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be within [0, 1], got {defect_rate}")
        self.product = product
        self.size = size
        self.seed = seed
        self.defect_rate = defect_rate
        self.shape = PRODUCTS[product]
        # crc32, not hash(): Python salts str hashes per process, which would break determinism.
        self._product_code = zlib.crc32(product.encode())
        coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
        self._xs = coords[None, :]
        self._ys = coords[:, None]
        rng = np.random.default_rng((seed, self._product_code, 1))
        self._belt = self._belt_texture(rng)
        # Sensor noise, sigma 2.5 grey levels; frames read it at random offsets.
        self._noise_bank = rng.standard_normal((3, 2 * size, 2 * size), dtype=np.float32)
        self._noise_bank *= np.float32(2.5)
        self._ring_phase = float(rng.uniform(0, 2 * math.pi))

    # -- camera-level textures, computed once ------------------------------------------------

    def _belt_texture(self, rng: np.random.Generator) -> np.ndarray:
        """Belt intensity, three frames wide: streaks along the running direction plus mottling."""
        size = self.size
        width = 3 * size
        grain = rng.standard_normal((size, width + 32)).astype(np.float32)
        # A running mean along x turns white noise into streaks, as a fabric belt shows.
        csum = np.cumsum(grain, axis=1)
        streaks = (csum[:, 32:] - csum[:, :-32]) / np.float32(math.sqrt(32))
        cell = max(4, size // 16)
        coarse = rng.standard_normal((size // cell + 2, width // cell + 2)).astype(np.float32)
        mottle = cv2.resize(coarse, (width, size), interpolation=cv2.INTER_CUBIC)
        texture = 70.0 + 5.0 * streaks + 4.0 * mottle
        return texture.astype(np.float32)

    # -- one frame ------------------------------------------------------------------------

    def _frame_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self._product_code, 0, index))

    def is_defective(self, index: int) -> bool:
        """Whether ``render(index)`` yields a defective part, without rendering it."""
        return bool(self._frame_rng(index).random() < self.defect_rate)

    def render(self, index: int, defect: str | None = AUTO) -> SyntheticImage:
        """Render frame ``index``; ``defect`` forces a kind (or None for a good part)."""
        if index < 0:
            raise ValueError("frame index must be non-negative")
        rng = self._frame_rng(index)
        defective_draw = rng.random() < self.defect_rate
        kind_draw = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
        if defect == AUTO:
            defect = kind_draw if defective_draw else None
        elif defect is not None and defect not in DEFECT_KINDS:
            raise ValueError(f"unknown defect kind {defect!r}; choose from {DEFECT_KINDS}")

        size = np.float32(self.size)
        shape = self.shape

        # Pose and lighting jitter: slight and bounded, as on a fixtured line (a fixture
        # holds a part within a tolerance; it has no Gaussian tails).
        cx = size / 2 + np.float32(rng.uniform(-0.006, 0.006) * size)
        cy = size / 2 + np.float32(rng.uniform(-0.006, 0.006) * size)
        scale = 1.0 + rng.uniform(-0.008, 0.008)
        angle = rng.uniform(-1.0, 1.0) * math.radians(1.5)
        light = math.radians(225.0) + rng.uniform(-1.0, 1.0) * math.radians(8.0)  # from the top left
        gain = np.float32(1.0 + rng.uniform(-0.05, 0.05))
        lx, ly = np.float32(math.cos(light)), np.float32(math.sin(light))
        outer = np.float32(shape.outer * size * scale)
        hole = np.float32(shape.hole * size * scale)

        # The belt runs left to right under a fixed camera. Outside the part's bounding
        # box (plus room for its shadow) the frame is only belt, so the part is drawn on
        # that crop alone: about half the pixels of the frame.
        shift = (index * 7) % (2 * self.size)
        belt = self._belt[:, shift:shift + self.size]
        planes = _BELT_TINT[:, None, None] * belt[None]
        reach = float(outer) * (1.16 if shape.outline == "hex" else 1.0) + 12.0
        y0, y1 = max(0, int(cy - reach)), min(self.size, int(cy + reach) + 1)
        x0, x1 = max(0, int(cx - reach)), min(self.size, int(cx + reach) + 1)
        xs, ys = self._xs[:, x0:x1], self._ys[y0:y1]

        dx = xs - cx
        dy = ys - cy
        rho = _norm(dx, dy)
        outer_distance = self._outline_distance(dx, dy, rho, angle)  # "radius" in the part's metric
        coverage = _edge(outer - outer_distance)
        if hole > 0:
            coverage *= _edge(rho - hole)

        # Metal surface: light falloff across the part, machining rings, bright outer bevel,
        # dark bore edge.
        surface = np.float32(165.0) + (dx * lx + dy * ly) * (np.float32(24.0) / outer)
        surface += np.float32(shape.lathe_rings) * np.sin(rho * np.float32(1.7) + np.float32(self._ring_phase))
        surface += np.float32(38.0) * _bump((outer - outer_distance - 2.0) / np.float32(2.2))
        if hole > 0:
            surface -= np.float32(30.0) * _bump((rho - hole - 1.5) / np.float32(2.5))
        if shape.center_dimple > 0:
            dimple = np.float32(shape.center_dimple * size * scale)
            surface -= np.float32(35.0) * _edge(dimple - rho, 2.0)
        if shape.outline == "hex":
            # Chamfered corners: the hexagon's corners fall away from the light.
            surface -= np.float32(28.0) * np.clip((rho - np.float32(1.02) * outer) / (np.float32(0.12) * outer), 0, 1)

        # A soft shadow down and to the right, away from the light.
        sdx = dx - np.float32(3.0)
        sdy = dy - np.float32(4.0)
        srho = _norm(sdx, sdy)
        shadow = _edge(outer + 2.0 - self._outline_distance(sdx, sdy, srho, angle), 5.0)
        if hole > 0:
            shadow *= _edge(srho - hole + 2.0, 5.0)
        background = belt[y0:y1, x0:x1] * (np.float32(1.0) - np.float32(0.45) * shadow)

        mask = np.zeros((self.size, self.size), dtype=np.uint8)
        stain_alpha = None
        if defect is not None:
            surface, coverage, crop_mask, stain_alpha, stain_color = self._apply_defect(
                defect, rng, xs, ys, surface, coverage, cx, cy, outer, hole, lx, ly,
            )
            mask[y0:y1, x0:x1][crop_mask] = 255

        # Colour planes are composed channel-first (3 x H x W): numpy broadcasts a
        # length-3 last axis an order of magnitude slower.
        crop = planes[:, y0:y1, x0:x1]
        crop *= (1 - coverage)[None]
        crop += np.asarray(shape.tint, dtype=np.float32)[:, None, None] * (surface * gain * coverage)[None]
        if stain_alpha is not None:
            crop += stain_alpha[None] * (stain_color[:, None, None] - crop)

        # Sensor noise from a pre-drawn bank at a random offset: as random as fresh draws
        # for any single frame, several times cheaper.
        oy, ox = rng.integers(0, self.size, size=2)
        planes += self._noise_bank[:, oy:oy + self.size, ox:ox + self.size]
        planes += np.float32(0.5)
        np.clip(planes, 0, 255, out=planes)
        pixels = planes.astype(np.uint8)
        return SyntheticImage(
            image=np.dstack((pixels[0], pixels[1], pixels[2])),
            defective=defect is not None,
            defect=defect,
            mask=mask,
        )

    def _outline_distance(self, dx: np.ndarray, dy: np.ndarray, rho: np.ndarray, angle: float) -> np.ndarray:
        """Distance in the outline's own metric: radius for a circle, hexagonal norm for a hex."""
        if self.shape.outline == "circle":
            return rho
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        u = np.abs(dx * c + dy * s)
        v = np.abs(dy * c - dx * s)
        return np.maximum(v, u * np.float32(_SQRT3_2) + v * np.float32(0.5))

    def _surface_point(self, rng: np.random.Generator, cx: float, cy: float, outer: float,
                       hole: float) -> np.ndarray:
        """A random point well inside the part's material (between bore and outline)."""
        size = self.size
        low = hole + 0.04 * size if hole > 0 else 0.06 * size
        high = outer - 0.05 * size
        r = rng.uniform(low, max(high, low + 1))
        theta = rng.uniform(0, 2 * math.pi)
        return np.array([cx + r * math.cos(theta), cy + r * math.sin(theta)], dtype=np.float64)

    def _apply_defect(self, defect: str, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray,
                      surface: np.ndarray, coverage: np.ndarray, cx: float, cy: float, outer: float,
                      hole: float, lx: float, ly: float):  # noqa: ANN202 - internal tuple
        """Draw one defect into the crop's planes; returns them with the crop's boolean mask."""
        size = self.size
        on_part = coverage > 0.5
        stain_alpha = None
        stain_color = None

        if defect == "scratch":
            center = self._surface_point(rng, cx, cy, outer, hole)
            direction = rng.uniform(0, math.pi)
            half = rng.uniform(0.07, 0.14) * size
            offset = half * np.array([math.cos(direction), math.sin(direction)])
            dist = _segment_distance(xs, ys, center - offset, center + offset)
            width = rng.uniform(1.0, 1.6)
            line = _edge(np.float32(width) - dist)
            contrast = rng.choice([1.0, -1.0]) * rng.uniform(55.0, 75.0)
            surface = surface + np.float32(contrast) * line
            mask = (dist < width + 1.5) & on_part

        elif defect == "dent":
            center = self._surface_point(rng, cx, cy, outer, hole)
            radius = np.float32(rng.uniform(0.03, 0.05) * size)
            ddx = xs - np.float32(center[0])
            ddy = ys - np.float32(center[1])
            dist = _norm(ddx, ddy)
            profile = np.clip(1 - np.square(dist / radius), 0, 1)
            # The wall facing the light is lit, the far wall is in shade: a dent's signature.
            shading = -np.float32(45.0) * (ddx * lx + ddy * ly) / radius
            surface = surface + (shading - np.float32(40.0)) * profile
            mask = (dist < radius * 1.1) & on_part

        elif defect == "crack":
            theta = rng.uniform(0, 2 * math.pi)
            inward = np.array([-math.cos(theta), -math.sin(theta)])
            point = np.array([cx, cy]) - inward * float(outer) * 1.02
            total = rng.uniform(0.15, 0.24) * size
            inward_heading = math.atan2(inward[1], inward[0])
            dist = np.full(coverage.shape, np.inf, dtype=np.float32)
            for _ in range(6):  # a jagged polyline of six segments, each roughly inward
                heading = inward_heading + rng.normal(0, math.radians(35.0))
                step = total / 6 * np.array([math.cos(heading), math.sin(heading)])
                dist = np.minimum(dist, _segment_distance(xs, ys, point, point + step))
                point = point + step
            width = rng.uniform(1.0, 1.5)
            surface = surface - np.float32(100.0) * _edge(np.float32(width) - dist)
            mask = (dist < width + 1.5) & on_part

        elif defect == "chunk":
            theta = rng.uniform(0, 2 * math.pi)
            radius = np.float32(rng.uniform(0.05, 0.085) * size)
            bite_x = np.float32(cx + float(outer) * math.cos(theta))
            bite_y = np.float32(cy + float(outer) * math.sin(theta))
            dist = _norm(xs - bite_x, ys - bite_y)
            bite = _edge(radius - dist)
            mask = (bite > 0.5) & on_part
            coverage = coverage * (1 - bite)
            # The fresh fracture face catches the light along the bite's rim.
            surface = surface + np.float32(40.0) * _bump((dist - radius - 1.5) / np.float32(2.0))

        elif defect == "stain":
            center = self._surface_point(rng, cx, cy, outer, hole)
            radius = rng.uniform(0.04, 0.075) * size
            ddx = xs - np.float32(center[0])
            ddy = ys - np.float32(center[1])
            dist = _norm(ddx, ddy)
            bearing = np.arctan2(ddy, ddx)
            wobble = (1.0 + 0.22 * np.sin(3 * bearing + rng.uniform(0, 6.3))
                      + 0.12 * np.sin(5 * bearing + rng.uniform(0, 6.3)))
            inside = np.float32(radius) * wobble - dist
            alpha = np.float32(rng.uniform(0.55, 0.75)) * _edge(inside, 3.0) * coverage
            stain_alpha = alpha.astype(np.float32)
            stain_color = _STAIN_COLORS[int(rng.integers(len(_STAIN_COLORS)))]
            mask = (stain_alpha > 0.15) & on_part

        else:  # pragma: no cover - render() validated the kind
            raise ValueError(defect)
        return surface, coverage, mask, stain_alpha, stain_color

    # -- datasets -------------------------------------------------------------------------

    def write_mvtec(self, root: str | Path, n_train: int, n_test_good: int, n_test_defect: int) -> dict[str, int]:
        """Write an MVTec-AD-layout category folder; returns image counts per subfolder.

        ``root/train/good``, ``root/test/good``, ``root/test/<kind>`` and
        ``root/ground_truth/<kind>/<name>_mask.png``. ``n_test_defect`` defective
        test images in all, dealt round-robin over the defect kinds. Train and
        test frames come from disjoint index ranges, so no image appears twice.
        """
        root = Path(root)
        counts: dict[str, int] = {}

        def save(folder: Path, name: str, array: np.ndarray) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / name, format="PNG", compress_level=1)

        for i in range(n_train):
            save(root / "train" / "good", f"{i:03d}.png", self.render(i, defect=None).image)
        counts["train/good"] = n_train
        for i in range(n_test_good):
            save(root / "test" / "good", f"{i:03d}.png", self.render(1_000_000 + i, defect=None).image)
        counts["test/good"] = n_test_good
        per_kind = {kind: 0 for kind in DEFECT_KINDS}
        for i in range(n_test_defect):
            kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
            frame = self.render(2_000_000 + i, defect=kind)
            name = f"{per_kind[kind]:03d}"
            save(root / "test" / kind, f"{name}.png", frame.image)
            save(root / "ground_truth" / kind, f"{name}_mask.png", frame.mask)
            per_kind[kind] += 1
        counts.update({f"test/{kind}": n for kind, n in per_kind.items() if n})
        return counts
