"""Median-of-repeats timing with a warm-up, the one timer every benchmark item uses.

Variants that are compared with each other run interleaved (a, b, a, b, ...), so load drifting on the
machine during a measurement touches them alike, and their ratio is what the suite reports. Each call
has an untimed `prepare` (resetting weights, building frozen copies: work both sides would do
identically) and a timed `run`. The first `warmup` rounds are not timed: they pay lazy imports, thread
pool start-up and allocator growth, which no repeated step of a real run pays.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Variant:
    run: Callable[[Any], Any]
    prepare: Callable[[], Any] = lambda: None


@dataclass
class Timed:
    samples: list[float] = field(default_factory=list)
    result: Any = None  # what the last timed run returned

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def time_interleaved(variants: Mapping[str, Variant], repeats: int, warmup: int = 1) -> dict[str, Timed]:
    """Median wall time of each variant over `repeats` interleaved rounds, after `warmup` untimed rounds."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be at least 1")
    timed = {name: Timed() for name in variants}
    for round_index in range(warmup + repeats):
        for name, variant in variants.items():
            state = variant.prepare()
            start = time.perf_counter()
            result = variant.run(state)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                timed[name].samples.append(elapsed)
                timed[name].result = result
    return timed


def overhead_percent(ours: float, baseline: float) -> float:
    """(t_ours / t_baseline - 1) in percent: how much longer ours takes for the same work."""
    return 100.0 * (ours / baseline - 1.0)
