"""Latency samples and their summaries (pure; no I/O)."""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

GC_NOTE = (
    "Automatic garbage collection is off while a block of calls is timed (what `timeit` does); "
    "between blocks, untimed, a collection runs and the objects that survive it are frozen "
    "(`gc.freeze`), so that each collection looks at one block's objects only. Left on, a full "
    "collection of this process, which holds every contender's threads, took 100-250 ms here and "
    "landed on whichever row happened to be running."
)


@contextlib.contextmanager
def gc_section() -> Iterator[None]:
    """A timed section whose blocks run under :func:`collected_outside`: at its end the frozen
    objects are handed back to the collector and collected."""
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


@contextlib.contextmanager
def collected_outside() -> Iterator[None]:
    """Time the enclosed calls without cyclic-GC pauses: collect and freeze first, collector off.

    The benchmark process holds every contender's data, so a generation-2 collection (100-250 ms
    here) is the process's cost, not the cost of the call it interrupts; ``timeit`` turns the
    collector off for the same reason. Allocation and reference-counting frees stay in the timing.
    The survivors are frozen (``gc.freeze``), so the collection before the next block looks at
    what this block made only; call it inside :func:`gc_section`, which unfreezes them.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0..100) of already sorted values, linearly interpolated.

    Args:
        sorted_values: values in ascending order; must not be empty.
        q: percentile in [0, 100].

    Returns:
        The interpolated percentile.

    Raises:
        ValueError: ``sorted_values`` is empty or ``q`` is out of range.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi:
        return float(sorted_values[lo])
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


@dataclass(frozen=True, slots=True)
class Summary:
    """Latency summary in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    def as_dict(self) -> dict[str, float]:
        """Return the summary as a plain dict for JSON."""
        return {
            "n": self.n,
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "p99_ms": self.p99,
            "mean_ms": self.mean,
            "max_ms": self.max,
        }


@dataclass(slots=True)
class Sample:
    """Durations of one operation of one contender, in nanoseconds."""

    durations_ns: list[int] = field(default_factory=list)

    def add(self, ns: int) -> None:
        """Record one duration in nanoseconds."""
        self.durations_ns.append(ns)

    def summary(self) -> Summary:
        """Summarise the sample in milliseconds.

        Raises:
            ValueError: the sample is empty.
        """
        values = sorted(d / 1e6 for d in self.durations_ns)
        if not values:
            raise ValueError("summary of an empty sample")
        return Summary(
            n=len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            mean=sum(values) / len(values),
            max=values[-1],
        )


def ratio(numerator: float, denominator: float) -> float | None:
    """Return numerator / denominator, or None when the denominator is not positive."""
    if denominator <= 0:
        return None
    return numerator / denominator
