"""What a training process reports to the driver: phase timings and a digest of its weights."""

from __future__ import annotations

import hashlib
import time
from typing import Any


class PhaseClock:
    """Seconds spent in each phase of the worker process, reported to the driver."""

    def __init__(self, started: float) -> None:
        self.phases: dict[str, float] = {}
        self._last = started

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self._last, 4)
        self._last = now


def weights_digest(model: Any) -> str:
    """SHA-256 of the model's weights: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()
