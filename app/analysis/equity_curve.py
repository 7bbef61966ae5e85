"""An equity curve thinned for display, keeping what its figures are read from.

Owns `drawdown_extremes` (where the deepest drawdown peaks and bottoms, DESIGN.md's
definition: the fall from the running peak, which starts at 1.0, the equity before the
first bar) and `thin_indices` (at most `max_points` indices of a curve: evenly spaced,
plus the first, the last, and that peak and trough — so the thinned curve ends where the
run ends and its maximum drawdown is the full curve's, exactly). The version report's OOS
equity curve (app.ml.diagnostics) is thinned with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["drawdown_extremes", "thin_indices"]


def drawdown_extremes(equity: Sequence[float] | np.ndarray) -> tuple[int, int, float]:
    """(peak index, trough index, max drawdown) of a curve that starts from 1.0.

    max drawdown = max over t of 1 − E_t / max(1.0, E_0..E_t) (0.0 for a curve that never
    falls). The peak is the highest point up to the trough (index 0 when the 1.0 before
    the first bar was the peak).
    """
    e = np.asarray(equity, dtype=np.float64)
    if e.size == 0:
        raise ValueError("an empty equity curve has no drawdown")
    peaks = np.maximum.accumulate(np.maximum(e, 1.0))
    falls = 1.0 - e / peaks
    trough = int(np.argmax(falls))
    peak = int(np.argmax(e[: trough + 1]))
    return peak, trough, max(0.0, float(falls[trough]))


def thin_indices(equity: Sequence[float] | np.ndarray, max_points: int = 500) -> np.ndarray:
    """Sorted indices of at most `max_points` (>= 4) points of `equity`: every index when
    the curve is that short, else evenly spaced ones plus the first, last, and the
    deepest drawdown's peak and trough."""
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}")
    n = len(equity)
    if n <= max_points:
        return np.arange(n)
    peak, trough, _ = drawdown_extremes(equity)
    # Two slots are left for the peak and trough; linspace already holds 0 and n - 1.
    even = np.rint(np.linspace(0, n - 1, max_points - 2)).astype(np.int64)
    return np.unique(np.concatenate([even, [0, n - 1, peak, trough]]))
