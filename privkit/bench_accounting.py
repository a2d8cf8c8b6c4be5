"""``privkit bench --accounting``: the accountant's speed, against the way privkit computed it before.

Every row times one task twice in the same process, each time cold (caches cleared): ``new_s``,
what privkit does now, and ``old_s``, what it did up to commit dab6b09: one fresh Opacus
``PRVAccountant`` per epsilon, calibration by doubling and geometric bisection from sigma = 1,
individualised plans by nested regula falsi over such epsilons. The old paths live only here,
as the baseline. ``speedup`` is old_s / new_s. ``change`` is the range of new - old over the
row's epsilons (absolute), or of new / old - 1 over its noise multipliers (relative): the new
accountant may report slightly more, never less (``privkit.accounting._PRV_MARGIN``).

Settings are the tutorials' (PneumoniaMNIST: q = 256 / 4708, 18 steps per epoch, delta = 1e-5).
This is a benchmark that prints numbers, not a test.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from opacus.accountants import PRVAccountant

from privkit import accounting, individual

Q, STEPS_PER_EPOCH, DELTA = 256 / 4708, 18, 1e-5
PLANS = {  # groups: (epsilon budgets, group sizes, steps)
    2: ((1.0, 8.0), (1412, 3296), 3 * STEPS_PER_EPOCH),  # tutorial 03
    3: ((0.5, 2.0, 8.0), (1000, 2000, 1708), 10 * STEPS_PER_EPOCH),
    5: ((0.5, 1.0, 2.0, 4.0, 8.0), (900, 900, 900, 900, 1108), 30 * STEPS_PER_EPOCH),
}


@dataclass(frozen=True)
class AccountingRow:
    name: str
    setting: str
    new_s: float
    old_s: float | None  # None: the old path was not run (it takes minutes)
    speedup: float | None  # old_s / new_s
    compared: str  # "epsilon" (change: new - old) or "sigma" (change: new / old - 1)
    change_min: float | None
    change_max: float | None


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float = DELTA) -> float:
    """Epsilon as privkit reported it up to dab6b09: a fresh Opacus PRVAccountant per call."""
    prv = PRVAccountant()
    prv.history = [(sigma, q, steps)]
    with (
        warnings.catch_warnings(),
        np.errstate(divide="ignore"),
    ):  # as privkit did: RDP orders, log(1 - q)
        warnings.filterwarnings("ignore", "Optimal order", UserWarning)
        try:
            return float(prv.get_epsilon(delta, eps_error=0.01))
        except RuntimeError:
            return math.inf


def _opacus_calibrate(target: float, q: float, steps: int, tolerance: float = 0.01) -> float:
    """calibrate_noise up to dab6b09: double sigma from 1, then bisect it geometrically."""
    lo, hi, e_hi = 0.0, 1.0, _opacus_epsilon(1.0, q, steps)
    while e_hi > target:
        lo, hi = hi, 2 * hi
        e_hi = _opacus_epsilon(hi, q, steps)
    while e_hi < (1 - tolerance) * target:
        mid = hi / 2 if lo == 0.0 else math.sqrt(lo * hi)
        e_mid = _opacus_epsilon(mid, q, steps)
        if e_mid > target:
            lo = mid
        else:
            hi, e_hi = mid, e_mid
    return hi


def _old_solve(f: Callable[[float], float], lo: float, hi: float, tolerance: float = 1e-3) -> float:
    """The regula falsi (Illinois) of individual.py up to dab6b09."""
    f_lo, f_hi, side = f(lo), f(hi), 0
    while f_lo <= -tolerance and hi - lo > 1e-12 * hi:
        x = min(
            max(hi - f_hi * (hi - lo) / (f_hi - f_lo), lo + 1e-3 * (hi - lo)), hi - 1e-3 * (hi - lo)
        )
        f_x = f(x)
        if f_x <= 0:
            lo, f_lo = x, f_x
            f_hi, side = (f_hi / 2, 0) if side == -1 else (f_hi, -1)
        else:
            hi, f_hi = x, f_x
            f_lo, side = (f_lo / 2, 0) if side == 1 else (f_lo, 1)
    return lo


def _old_plan_sigma(
    targets: Sequence[float], sizes: Sequence[int], batch_size: int, steps: int
) -> float:
    """individual.plan's noise multiplier up to dab6b09 (bracketing by doubling, nested regula falsi)."""

    def rate(sigma: float, target: float) -> float:
        def f(log_q: float) -> float:
            return math.log(_opacus_epsilon(sigma, math.exp(log_q), steps) / target)

        if f(0.0) <= 0:
            return 1.0
        log_lo = -1.0
        while f(log_lo) > 0:
            log_lo -= 2.0
        return math.exp(_old_solve(f, log_lo, 0.0))

    @functools.cache
    def batch(sigma: float) -> float:
        return sum(n * rate(sigma, t) for n, t in zip(sizes, targets))

    hi = 1.0
    while batch(hi) < batch_size:
        hi *= 2
    lo = hi / 2
    while batch(lo) >= batch_size:
        lo /= 2
    return -_old_solve(lambda x: math.log(batch_size / batch(-x)), -hi, -lo)


def _cold(task: Callable[[], object]) -> tuple[float, object]:
    """Seconds and result of ``task`` with every accounting cache cleared first."""
    accounting.cache_clear()
    individual._solve_plan.cache_clear()
    start = time.perf_counter()
    result = task()
    return time.perf_counter() - start, result


def _row(
    name: str,
    setting: str,
    new: Callable[[], object],
    old: Callable[[], object] | None,
    compared: str,
) -> AccountingRow:
    new_s, new_value = _cold(new)
    if old is None:
        return AccountingRow(name, setting, new_s, None, None, compared, None, None)
    old_s, old_value = _cold(old)
    pairs = list(zip(*(v if isinstance(v, (list, tuple)) else [v] for v in (new_value, old_value))))
    change = [a - b if compared == "epsilon" else a / b - 1 for a, b in pairs]
    return AccountingRow(
        name, setting, new_s, old_s, old_s / new_s, compared, min(change), max(change)
    )


def run(*, plan_groups: Sequence[int] = (2, 3, 5), all_baselines: bool = False) -> dict:
    """Time the accountant's tasks, new and old; returns ``{"rows": [...]}``.

    Args:
        plan_groups: numbers of privacy groups of the ``individual.plan`` rows (keys of :data:`PLANS`).
        all_baselines: also run the old plan for more than 2 groups (minutes each).
    """
    curve = [STEPS_PER_EPOCH * e for e in range(1, 31)]  # epsilon after each of 30 epochs
    sigmas = (0.6, 1.0, 2.0)  # tutorial 01's figure: three such curves

    def epsilon_new() -> float:
        return accounting.epsilon(noise_multiplier=1.0, sample_rate=Q, steps=370, delta=DELTA)

    def calibrate_new() -> float:
        return accounting.calibrate_noise(
            target_epsilon=1.0, target_delta=DELTA, sample_rate=Q, steps=370
        )

    def curves_new(sigmas: Sequence[float]) -> list[float]:
        curves = [
            accounting.epsilon_curve(noise_multiplier=s, sample_rate=Q, steps=curve, delta=DELTA)
            for s in sigmas
        ]
        return [e for c in curves for e in c.tolist()]

    def curves_old(sigmas: Sequence[float]) -> list[float]:
        return [_opacus_epsilon(s, Q, n) for s in sigmas for n in curve]

    def plan_new(targets: Sequence[float], sizes: Sequence[int], steps: int) -> float:
        names = [f"g{i}" for i in range(len(targets))]
        plan = individual.plan(
            group_epsilons=dict(zip(names, targets)),
            group_sizes=dict(zip(names, sizes)),
            batch_size=256,
            steps=steps,
            delta=DELTA,
        )
        return plan.noise_multiplier

    rows = [
        _row(
            "epsilon",
            "sigma 1, 370 steps",
            epsilon_new,
            lambda: _opacus_epsilon(1.0, Q, 370),
            "epsilon",
        ),
        _row(
            "calibrate_noise",
            "epsilon 1, 370 steps",
            calibrate_new,
            lambda: _opacus_calibrate(1.0, Q, 370),
            "sigma",
        ),
        _row(
            "curve-30",
            "sigma 1, epochs 1-30",
            lambda: curves_new([1.0]),
            lambda: curves_old([1.0]),
            "epsilon",
        ),
        _row(
            "curve-90",
            "sigma 0.6/1/2, epochs 1-30",
            lambda: curves_new(sigmas),
            lambda: curves_old(sigmas),
            "epsilon",
        ),
    ]
    for groups in plan_groups:
        targets, sizes, steps = PLANS[groups]
        old = None
        if groups == 2 or all_baselines:
            old = functools.partial(_old_plan_sigma, targets, sizes, 256, steps)
        setting = f"epsilons {'/'.join(f'{t:g}' for t in targets)}, {steps} steps"
        new = functools.partial(plan_new, targets, sizes, steps)
        rows.append(_row(f"plan-{groups}", setting, new, old, "sigma"))
    return {"rows": [asdict(r) for r in rows]}


def format_table(report: dict) -> str:
    """The report as a plain-text table."""
    lines = [
        f"{'task':<16}{'setting':<32}{'new_s':>8}{'old_s':>8}{'speedup':>9}  change (new - old)"
    ]
    for r in report["rows"]:
        old = "-" if r["old_s"] is None else f"{r['old_s']:.2f}"
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.0f}x"
        if r["change_min"] is None:
            change = "-"
        elif r["compared"] == "epsilon":
            change = f"epsilon {r['change_min']:+.1e} to {r['change_max']:+.1e}"
        else:
            change = f"sigma {100 * r['change_min']:+.2f}% to {100 * r['change_max']:+.2f}%"
        lines.append(
            f"{r['name']:<16}{r['setting']:<32}{r['new_s']:>8.3f}{old:>8}{speedup:>9}  {change}"
        )
    return "\n".join(lines)
