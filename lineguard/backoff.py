"""The one retry back-off: exponential, capped, with jitter (used by the sinks and the processors)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Delays for retrying a failing call: ``initial_s`` doubled per attempt up to ``max_s``, each
    drawn from its upper half (``[0.5, 1.0] x``) so that clients failing together do not retry
    together."""

    initial_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s <= 0:
            raise ValueError(f"back-off delays must be positive, got {self.initial_s} and {self.max_s}")

    def ceiling(self, attempt: int) -> float:
        """The longest delay before retry ``attempt`` (0 for the first retry)."""
        return min(self.max_s, self.initial_s * 2 ** min(max(attempt, 0), 30))

    def delay(self, attempt: int) -> float:
        """The delay before retry ``attempt`` (0 for the first retry), jittered."""
        return self.ceiling(attempt) * self.rng.uniform(0.5, 1.0)
