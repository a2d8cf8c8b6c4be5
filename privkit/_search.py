"""One root finder for the privacy searches, whose answer never lands on the unsafe side.

Used by :func:`privkit.accounting.calibrate_noise` and :func:`privkit.individual.plan`: each
asks for the largest ``x`` with ``f(x) <= 0`` (epsilon within its budget, a batch at least its
size), for an increasing ``f`` that costs an accountant evaluation per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def solve_below(
    f: Callable[[float], float],
    x0: float,
    *,
    scale: float,
    tolerance: float,
    low: float = -math.inf,
    high: float = math.inf,
) -> tuple[float, float] | None:
    """``(x, f(x))`` with ``-tolerance < f(x) <= 0`` for an increasing ``f``, from a guess ``x0``.

    Every step aims at the middle of that band, ``f = -tolerance / 2``. From ``x0`` the search
    walks within ``[low, high]``, first by ``scale * |f(x0) + tolerance / 2|`` (``scale``: a
    guess of dx per unit of f), then as far as the secant through the last two points says (at
    most 4 times the last step), until it lands in the band or across the root; then regula
    falsi with the Illinois modification keeps ``f(lo) <= 0 < f(hi)`` (a few evaluations from a
    good guess, where bisection needs ten or more). The answer is always a point where ``f``
    was evaluated and found ``<= 0``. ``f`` may be ``inf`` (bisection steps then) or ``-inf``.

    Returns:
        ``(high, f(high))`` if ``f(high) <= 0`` (all of the range is safe); ``None`` if
        ``f(low) > 0`` (none of it is).

    >>> x, fx = solve_below(lambda x: x**3 - 2, 0.0, scale=0.5, tolerance=1e-6)
    >>> round(x, 5), -1e-6 < fx <= 0
    (1.25992, True)
    """
    x, d, prev = min(max(x0, low), high), math.nan, None
    lo = hi = f_lo = f_hi = math.nan
    while True:  # walk until f changes sign (or close enough, or at an end of the range)
        fx = f(x)
        if fx <= 0:
            lo, f_lo = x, fx
        else:
            hi, f_hi = x, fx
        if not (math.isnan(lo) or math.isnan(hi)):
            break
        if fx <= 0 and (fx > -tolerance or x == high):
            return x, fx
        if fx > 0 and x == low:
            return None
        g = fx + tolerance / 2  # aim at the middle of the band, as below
        if prev is None:
            step = scale * abs(g) if math.isfinite(g) else scale
        else:  # as far as the secant through the last two points puts the aim, else double
            step, (xp, gp) = 2 * d, prev
            if math.isfinite(g) and math.isfinite(gp) and g != gp:
                aim = x - g * (x - xp) / (g - gp)
                if (aim - x) * (1 if fx <= 0 else -1) > 0:
                    step = min(abs(aim - x), 4 * d)
        prev, d = (x, g), step
        x = min(x + step, high) if fx <= 0 else max(x - step, low)
    # Illinois on g = f + tolerance / 2, aiming at the middle of the band -tolerance < f <= 0
    # rather than its edge; a weight halves when its end of the bracket is kept twice.
    w_lo, w_hi, side = f_lo + tolerance / 2, f_hi + tolerance / 2, 0
    while f_lo <= -tolerance and hi - lo > 1e-12 * max(1.0, abs(hi)):
        if math.isfinite(w_lo) and math.isfinite(w_hi):
            x = hi - w_hi * (hi - lo) / (w_hi - w_lo)
            x = min(max(x, lo + 1e-3 * (hi - lo)), hi - 1e-3 * (hi - lo))  # stay inside
        else:
            x = (lo + hi) / 2
        fx = f(x)
        if fx <= 0:
            lo, f_lo, w_lo = x, fx, fx + tolerance / 2
            w_hi, side = (w_hi / 2, 0) if side == -1 else (w_hi, -1)
        else:
            hi, w_hi = x, fx + tolerance / 2
            w_lo, side = (w_lo / 2, 0) if side == 1 else (w_lo, 1)
    return lo, f_lo
