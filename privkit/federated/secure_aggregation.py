"""Secure aggregation by pairwise additive masking: the server learns only the sum of updates.

Bonawitz et al. (2017), "Practical secure aggregation for privacy-preserving machine
learning" (CCS). Every pair of sites (i, j) shares a secret seed s_ij; each site encodes its
update as fixed-point integers in the ring Z_(2^64) and adds, for every other site j, the
pseudo-random mask PRG(s_ij) if i < j and subtracts it if i > j, plus a self-mask PRG(b_i)
from a seed of its own. In the sum over all sites the pairwise masks cancel exactly (integer
arithmetic mod 2^64 has no rounding); the self-masks are removed with the seeds b_i that the
surviving sites reveal. A single masked update is a uniformly random ring element to anyone
without the seeds (a one-time pad).

**Drop-outs.** A site that sends nothing leaves its pairwise masks in the others' inputs. The
survivors then reveal their seeds shared with the dropped site, and the server removes those
masks (in Bonawitz et al. the seeds are recovered from Shamir shares; here each survivor holds
its own). Each site reveals seeds for one announced survivor set per round only: its self-seed
if it is a survivor, its seeds shared with the others otherwise; so a dropped site's update that
arrives late stays masked. This is the honest-but-curious server of Bonawitz et al.; a server
that lies about drop-outs needs their extra consistency round. Fewer than ``min_survivors`` inputs: the round is
refused (the sum of one update is that update).

**Simulation.** The pairwise seeds stand for what Diffie-Hellman key agreement gives each pair
(server relays public keys only); :func:`setup` draws them from ``secrets`` (or a seed, for
repeatable tests). The PRG is SHAKE-256, an extendable-output function (FIPS 202).

>>> import numpy as np
>>> keys = setup(["a", "b", "c"], seed=0)
>>> updates = {n: np.full(3, v) for n, v in zip("abc", [0.5, -1.25, 2.0])}
>>> masked = {n: mask(updates[n], keys[n], round_index=0) for n in "abc"}
>>> aggregate(masked, keys, round_index=0, length=3)
array([1.25, 1.25, 1.25])
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from privkit import _validate

FRACTION_BITS = 32  # fixed point: x -> round(x * 2^32) in Z_(2^64)
_SCALE = float(2**FRACTION_BITS)


class DropoutError(RuntimeError):
    """Too few sites sent their masked update for the sum to be revealed safely."""


@dataclass(frozen=True)
class SiteKeys:
    """What one site holds: its name, its seed shared with each other site, its self-mask seed.

    A site reveals seeds only for the survivor set the server announces, and only for one
    such set per round: told it is a survivor, it gives its self-seed; told another site
    dropped, the seed it shares with that one. So no one learns both masks of one update.
    """

    name: str
    pairwise: Mapping[str, bytes] = field(repr=False)
    self_seed: bytes = field(repr=False)
    _told: dict[int, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)

    def _announce(self, survivors: frozenset[str], round_index: int) -> None:
        if self.name not in survivors:
            raise PermissionError(f"{self.name} is not among the survivors {sorted(survivors)}; it reveals nothing.")
        if self._told.setdefault(round_index, survivors) != survivors:
            raise PermissionError(
                f"{self.name} was told two survivor sets in round {round_index}: "
                f"{sorted(self._told[round_index])} and {sorted(survivors)}; it reveals nothing more."
            )

    def reveal_self(self, *, survivors: frozenset[str], round_index: int) -> bytes:
        """The self-mask seed, to a server that counts this site among the survivors."""
        self._announce(survivors, round_index)
        return self.self_seed

    def reveal_pairwise(self, dropped: str, *, survivors: frozenset[str], round_index: int) -> bytes:
        """The seed shared with ``dropped``, a site outside the announced survivors."""
        self._announce(survivors, round_index)
        if dropped in survivors:
            raise PermissionError(f"{self.name} will not reveal its seed with {dropped}, a survivor.")
        return self.pairwise[dropped]


def setup(names: Sequence[str], *, seed: int | None = None) -> dict[str, SiteKeys]:
    """Pairwise seeds s_ij = s_ji for every pair of sites, and a self-seed each.

    ``seed=None`` draws them from ``secrets`` (what a deployment needs); an integer makes them
    repeatable (tests, simulations).
    """
    names = list(names)
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"Expected names={names!r} to be at least 2 distinct site names.")
    rng = np.random.default_rng(seed) if seed is not None else None
    draw = (lambda: rng.bytes(32)) if rng is not None else (lambda: secrets.token_bytes(32))  # noqa: E731
    pair = {frozenset((a, b)): draw() for i, a in enumerate(names) for b in names[i + 1 :]}
    return {
        a: SiteKeys(a, {b: pair[frozenset((a, b))] for b in names if b != a}, draw()) for a in names
    }


def prg(seed: bytes, round_index: int, length: int) -> np.ndarray:
    """``length`` pseudo-random uniform elements of Z_(2^64) (uint64) from SHAKE-256(seed, round)."""
    stream = hashlib.shake_256(seed + round_index.to_bytes(8, "little")).digest(8 * length)
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def encode(values: np.ndarray, *, max_abs: float) -> np.ndarray:
    """Fixed-point: ``round(x * 2^32)`` as an element of Z_(2^64) (two's complement, uint64).

    ``max_abs`` bounds every value of every site, so that the sum of ``n`` sites cannot wrap:
    ``n * max_abs * 2^32 < 2^63``.

    >>> decode(encode(np.array([-1.5, 0.25]), max_abs=2.0))
    array([-1.5 ,  0.25])
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.abs(values).max(initial=0.0) > max_abs:
        raise ValueError(
            f"Expected finite values with |x| <= max_abs={max_abs}; got max |x| = "
            f"{np.abs(values).max(initial=0.0):.4g} (clip or rescale the update first)."
        )
    return np.round(values * _SCALE).astype(np.int64).view(np.uint64)


def decode(ring: np.ndarray) -> np.ndarray:
    """Ring elements back to floats (the inverse of :func:`encode`, also for sums)."""
    return ring.view(np.int64).astype(np.float64) / _SCALE


def mask(
    update: np.ndarray, keys: SiteKeys, *, round_index: int, max_abs: float = 2.0**20
) -> np.ndarray:
    """A site's masked update: encode(update) + PRG(b_i) + sum_j +-PRG(s_ij) mod 2^64.

    Args:
        update: the site's update as a flat float vector.
        keys: the site's seeds, from :func:`setup`.
        round_index: fresh masks each round (never reuse a one-time pad).
        max_abs: bound on |update| (see :func:`encode`).
    """
    n = len(update)
    out = encode(update, max_abs=max_abs) + prg(keys.self_seed, round_index, n)
    for other, seed in keys.pairwise.items():
        pad = prg(seed, round_index, n)
        out = out + pad if keys.name < other else out - pad  # uint64: wraps mod 2^64
    return out


def aggregate(
    masked: Mapping[str, np.ndarray],
    keys: Mapping[str, SiteKeys],
    *,
    round_index: int,
    length: int,
    min_survivors: int = 2,
    max_abs: float = 2.0**20,
) -> np.ndarray:
    """The server's side: the sum of the updates that arrived, and nothing else.

    The server adds the masked inputs, asks each survivor for its self-seed and for its seeds
    shared with every site that dropped out, and removes those masks.

    Args:
        masked: site name -> masked update, for the sites whose update arrived.
        keys: every site's :class:`SiteKeys`; the server only calls their ``reveal_*`` methods.
        round_index: the round the inputs were masked for.
        length: the update's length.
        min_survivors: fewer arrivals than this and the round is refused.
        max_abs: the bound the sites encoded with (checked: the sum cannot have wrapped).

    Returns:
        The float sum over the survivors, exact up to fixed-point rounding (each value off by
        at most ``0.5 * 2^-32``, so the sum by ``len(masked) * 2^-33``).

    Raises:
        DropoutError: fewer than ``min_survivors`` updates arrived.
        ValueError: an input of the wrong length, or from an unknown site.
    """
    _validate.positive_int(min_survivors=min_survivors)
    unknown = sorted(set(masked) - set(keys))
    if unknown:
        raise ValueError(f"Masked updates from unknown sites {unknown}; known: {sorted(keys)}.")
    if len(masked) < max(2, min_survivors):
        raise DropoutError(
            f"Only {len(masked)} of {len(keys)} sites sent their update in round {round_index}; "
            f"at least {max(2, min_survivors)} are needed to reveal a sum. Redo the round."
        )
    if len(keys) * max_abs * _SCALE >= 2.0**63:
        raise ValueError(f"max_abs={max_abs} is too large for {len(keys)} sites: the sum could wrap.")
    total = np.zeros(length, dtype=np.uint64)
    for name, values in masked.items():
        if values.shape != (length,) or values.dtype != np.uint64:
            raise ValueError(f"Expected {name}'s masked update as uint64 of shape ({length},).")
        total = total + values
    survivors = frozenset(masked)
    dropped = [name for name in keys if name not in survivors]
    for survivor in masked:
        seed = keys[survivor].reveal_self(survivors=survivors, round_index=round_index)
        total = total - prg(seed, round_index, length)
        for gone in dropped:  # the survivor's mask with the dropped site is left in the total
            seed = keys[survivor].reveal_pairwise(gone, survivors=survivors, round_index=round_index)
            pad = prg(seed, round_index, length)
            total = total - pad if survivor < gone else total + pad
    return decode(total)
