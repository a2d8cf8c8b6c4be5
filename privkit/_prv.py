"""PRV composition of Poisson-subsampled Gaussian mechanisms, read at many step counts.

The numerical composition of privacy loss random variables of Gopi, Lee & Wutschitz 2021
(https://arxiv.org/abs/2106.02848) as Opacus's ``PRVAccountant`` does it: its PRV and truncation,
its mean-preserving discretisation (the CDF read once per grid edge; the mean by Gauss-Legendre,
:func:`truncated_mean`), its epsilon read-out, at its errors (``eps_error``, ``delta_error``).
What changes is the grid, and only towards a finer mesh and a wider domain, for which the
paper's error band still holds:

* The grid of ``steps`` steps is the one Opacus would pick for ``bucket(steps)`` steps, the next
  power of two (the mesh shrinks as 1/sqrt(steps), the domain grows with it). Every step count in a
  bucket then shares one discretised PRV and its Fourier transform (cached), so a curve costs one
  inverse FFT per point, and a step count gives the same epsilon wherever it is asked.
  ``privkit.accounting`` adds a margin for the estimate's move from Opacus's grid to this one.
* The domain's half-width comes from RDP at integer orders 2 to 63 (a closed form, vectorised;
  Mironov, Talwar & Zhang 2019, https://arxiv.org/abs/1908.10530, Sec. 3.3) instead of Opacus's
  fractional orders, which is never narrower; its length is then rounded up to a fast FFT size by
  extending it to the right.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.fft
from opacus.accountants.analysis import rdp as _rdp
from opacus.accountants.analysis.prv import (
    DiscretePRV,
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
)
from scipy.special import gammaln, logsumexp, xlog1py, xlogy

# The integer orders among Opacus's default RDP orders (2-10, 12-63): epsilon at a subset of its
# orders is never below Opacus's, so neither is the domain sized with it.
ORDERS = np.array([a for a in range(2, 64) if a != 11])
MAX_GRID = 2e7  # grid points; each million costs ~0.1 s and 8 MB per array


@dataclass(frozen=True)
class Grid:
    """``size`` points ``t_min + i * dt`` on which every PRV of one composition is discretised."""

    t_min: float
    dt: float
    size: int

    @property
    def domain(self) -> Domain:
        return Domain(self.t_min, self.t_min + (self.size - 1) * self.dt, self.size)


def bucket(steps: int) -> int:
    """The step count whose grid serves ``steps``: the next power of two, at least ``steps``."""
    return 1 << (steps - 1).bit_length()


@functools.lru_cache(maxsize=4096)
def rdp_one_step(sigma: float, q: float) -> np.ndarray:
    """RDP of one step at :data:`ORDERS`, (61,): log A_a / (a - 1) with the binomial sum
    A_a = sum_k C(a, k) (1 - q)^(a - k) q^k exp((k^2 - k) / (2 sigma^2)) of Mironov et al. 2019."""
    a = ORDERS[:, None]  # (61, 1)
    k = np.arange(ORDERS[-1] + 1)[None, :]  # (1, 64)
    j = np.minimum(k, a)  # (61, 64); terms with k > a are dropped below
    with np.errstate(divide="ignore"):  # (1 - q)^0 = 1 even for q = 1
        log_binomial = gammaln(a + 1) - gammaln(j + 1) - gammaln(a - j + 1)
        log_terms = log_binomial + xlogy(j, q) + xlog1py(a - j, -q) + (j * j - j) / (2 * sigma**2)
    rdp = logsumexp(np.where(k <= a, log_terms, -np.inf), axis=1) / (ORDERS - 1)
    rdp.flags.writeable = False
    return rdp


def rdp_epsilon(rdp: np.ndarray, delta: float) -> float:
    """Epsilon of an RDP curve at :data:`ORDERS` (Balle et al. 2020's conversion, via Opacus)."""
    with warnings.catch_warnings():  # "optimal order is the largest alpha": fine for sizing
        warnings.filterwarnings("ignore", "Optimal order", UserWarning)
        return float(_rdp.get_privacy_spent(orders=ORDERS.tolist(), rdp=rdp, delta=delta)[0])


def grid(
    history: tuple[tuple[float, float, int], ...], *, eps_error: float, delta_error: float
) -> Grid:
    """The grid for composing ``history``, ``(sigma, q, steps)`` entries, scaled up to its bucket.

    Opacus's choices (``PRVAccountant._get_domain``, Gopi et al. Remark 5.6), made for
    ``bucket(total)`` steps in the same proportions: mesh ``eps_error / sqrt(T log(12 /
    delta_error) / 2)``, half-width 3 + the larger of the composition's RDP epsilon at
    ``delta_error / 4`` and each mechanism's one-step RDP epsilon at ``delta_error / (8 T)``.

    Raises:
        RuntimeError: If the grid would exceed :data:`MAX_GRID` points (epsilon in the hundreds).
    """
    total = sum(n for _, _, n in history)
    scale = bucket(total) / total
    composed = sum(n * scale * rdp_one_step(s, q) for s, q, n in history)
    half = 3 + max(
        rdp_epsilon(composed, delta_error / 4),
        *(
            rdp_epsilon(rdp_one_step(s, q), delta_error / (8 * bucket(total)))
            for s, q, _ in history
        ),
        eps_error,
    ) * (1 + 1e-9)  # covers round-off between this sum and Opacus's
    dt = eps_error / math.sqrt(bucket(total) * math.log(12 / delta_error) / 2)
    points = 2 * half / dt + 2
    if not points <= MAX_GRID:
        raise RuntimeError(f"{points:.3g} grid points needed")
    t_min = math.floor(-half / dt) * dt
    size = scipy.fft.next_fast_len(math.ceil(half / dt) - math.floor(-half / dt) + 2, real=True)
    return Grid(t_min, dt, size + size % 2)


@dataclass(frozen=True)
class Transform:
    """One step's discretised PRV on a grid, in Fourier space."""

    spectrum: np.ndarray  # (size // 2 + 1,) real FFT of the pmf
    log_envelope: np.ndarray  # (size // 2 + 1,) max of log|spectrum| from each frequency up
    shift: float  # the mean-preserving shift of the domain (Opacus's ``discretize``)

    def power(self, n: int) -> np.ndarray:
        """``spectrum ** n``, computed only where it does not underflow to 0 (below e^-745)."""
        keep = int(np.searchsorted(-n * self.log_envelope, 745.0))
        out = np.zeros_like(self.spectrum)
        out[:keep] = self.spectrum[:keep] ** n
        return out


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)


def truncated_mean(sigma: float, q: float, t_min: float, t_max: float) -> float:
    """Mean of one step's PRV Y truncated to [t_min, t_max], as an integral over the Gaussian.

    Y = log(1 - q + q exp((2X - 1) / (2 sigma^2))) with X ~ (1 - q) N(0, sigma^2) + q N(1,
    sigma^2) (the pair of Gopi et al., App. B, whose CDF Opacus uses). The integrand is smooth
    in u = (X - c) / sigma, so composite 16-point Gauss-Legendre on panels of width <= 0.1 and
    <= sigma / 4 is accurate to ~1e-15, where Opacus's ``TruncatedPrivacyRandomVariable.mean``
    (adaptive quadrature of the CDF, ~20 ms) is accurate to ~1e-9.
    """

    def x_of(t: float) -> float:  # the X at which Y = t
        if q == 1:
            return sigma**2 * t + 0.5
        if t <= math.log1p(-q):
            return -math.inf
        return sigma**2 * (t - math.log(q) + math.log1p((q - 1) * math.exp(-t))) + 0.5

    prv = PoissonSubsampledGaussianPRV(q, sigma)
    with np.errstate(divide="ignore"):  # log(1 - q) for q = 1
        mass = float(prv.cdf(t_max) - prv.cdf(t_min))  # as TruncatedPrivacyRandomVariable
    lo, hi, total = x_of(t_min), x_of(t_max), 0.0
    for center, weight in ((0.0, 1 - q), (1.0, q)):
        a, b = max((lo - center) / sigma, -40.0), min((hi - center) / sigma, 40.0)  # phi(40) = 0
        if weight == 0 or not a < b:
            continue
        edges = np.linspace(a, b, math.ceil((b - a) / min(0.1, sigma / 4)) + 1)
        half = (edges[1:] - edges[:-1])[:, None] / 2  # (panels, 1)
        u = edges[:-1, None] + half * (1 + _NODES)  # (panels, 16)
        with np.errstate(divide="ignore"):  # log(1 - q) = -inf for q = 1
            y = np.logaddexp(
                np.log1p(-q), math.log(q) + (2 * (center + sigma * u) - 1) / (2 * sigma**2)
            )
        total += (
            weight
            * float(np.sum(half * _WEIGHTS * y * np.exp(-u * u / 2)))
            / math.sqrt(2 * math.pi)
        )
    return total / mass


@functools.lru_cache(
    maxsize=8
)  # each holds 12 MB per million grid points; a curve uses one at a time
def transform(sigma: float, q: float, g: Grid) -> Transform:
    """Opacus's ``discretize`` of one step's truncated PRV on ``g``: the CDF read once per
    edge, the mean from :func:`truncated_mean`."""
    domain = g.domain
    prv = TruncatedPrivacyRandomVariable(
        PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max
    )
    edges = domain.t_min - g.dt / 2 + g.dt * np.arange(g.size + 1)  # (size + 1,)
    cdf = np.zeros_like(edges)  # the PRV is > log(1 - q): its CDF is 0 up to there
    start = 0 if q == 1 else int(np.searchsorted(edges, math.log1p(-q), side="right"))
    with np.errstate(divide="ignore", invalid="ignore"):  # log(1 - q) for q = 1
        cdf[start:] = prv.cdf(edges[start:])
    pmf = np.diff(cdf)  # (size,)
    shift = truncated_mean(sigma, q, domain.t_min, domain.t_max) - float(np.dot(domain.ts, pmf))
    if abs(shift) >= g.dt / 2:
        raise RuntimeError("Discrete mean differs significantly from continuous mean.")
    spectrum = scipy.fft.rfft(pmf)
    with np.errstate(divide="ignore"):
        envelope = np.maximum.accumulate(np.log(np.abs(spectrum))[::-1])[::-1]
    for a in (spectrum, envelope):
        a.flags.writeable = False
    return Transform(spectrum, envelope, shift)


def composed(history: tuple[tuple[float, float, int], ...], g: Grid) -> DiscretePRV:
    """The PRV of ``history`` composed on ``g``, as Opacus's ``compose_heterogeneous`` gives it.

    The steps of every entry are composed at once by raising its transform to their number: a
    circular convolution, like Opacus's ``_compose_fourier``. A sum of T grid values lands
    ``(T - 1) * t_min / dt`` places off the grid's index, which the roll undoes.
    """
    product, shift = 1.0, 0.0
    for sigma, q, n in history:
        t = transform(sigma, q, g)
        product = product * t.power(n)
        shift += n * t.shift
    total = sum(n for _, _, n in history)
    pmf = np.roll(scipy.fft.irfft(product, n=g.size), (total - 1) * round(g.t_min / g.dt) % g.size)
    return DiscretePRV(pmf=pmf, domain=g.domain.shift_right(shift))


def epsilon(history: tuple[tuple[float, float, int], ...], delta: float, eps_error: float) -> float:
    """Upper end of the PRV epsilon band of ``history`` (Opacus's ``eps_upper``), on its :func:`grid`.

    Opacus's read-out (``DiscretePRV.compute_epsilon``, ``delta_error = delta / 1000``) runs on
    the grid from t = -1 up, where epsilon lies (its sums run from the top down, so they do not
    change), else on the whole grid.

    Raises:
        RuntimeError: If the grid would be too large, or if the read-out cannot find epsilon.
    """
    g = grid(history, eps_error=eps_error, delta_error=delta / 1000)
    whole = composed(history, g)
    t_min = whole.domain.t_min

    def read(i: int) -> float:  # eps_upper from grid point i up (i even: sizes stay even)
        part = DiscretePRV(
            pmf=whole.pmf[i:], domain=Domain(t_min + i * g.dt, whole.domain.t_max, g.size - i)
        )
        return float(part.compute_epsilon(delta, delta / 1000, eps_error)[2])

    start = min(max(0, math.floor((-1 - t_min) / g.dt)), g.size - 2) // 2 * 2  # t = -1
    if start:
        try:
            return read(start)
        except RuntimeError:  # "Cannot compute epsilon": the answer lies below t = -1
            pass
    return read(0)
