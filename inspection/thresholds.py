"""Where a score becomes a verdict: the threshold in force on a line, and the comparison with it."""

from __future__ import annotations

import math

from lineguard.config import ProcessorConfig


class NonFiniteScore(ValueError):
    """The engine returned NaN or infinity: no verdict can be given."""


def threshold_for(config: ProcessorConfig, line_id: str | None, product: str, manifest_value: float) -> float:
    """A per-line override for ``product`` (or ``"*"``, any product) if one is set, else the manifest's."""
    per_line = config.threshold_overrides.get(line_id, {}) if line_id else {}
    return float(per_line.get(product, per_line.get("*", manifest_value)))


def is_defective(score: float, threshold: float) -> bool:
    """Defective means strictly above the threshold; raises :class:`NonFiniteScore` for NaN or infinity."""
    if not math.isfinite(score):
        raise NonFiniteScore("the engine returned a non-finite score")
    return score > threshold
