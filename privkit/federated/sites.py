"""Simulated hospitals: a training split divided among N sites that keep their records.

Three ways to divide, all seeded:

* ``"iid"``: a random permutation cut into N (nearly) equal parts.
* ``"label_skew"``: for each class, the share of its records going to each site is drawn from
  a symmetric Dirichlet(alpha) (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical
  data distribution for federated visual classification"; the NIID-Bench recipe of Li et al.
  2022): small alpha, each hospital sees mostly one class; large alpha, close to IID.
  Multi-label sets (ChestMNIST) are split on "any finding" against "no finding".
* ``"size_skew"``: labels IID, but site sizes are proportional to a Dirichlet(alpha) draw
  (plus ``min_size`` each): a few large hospitals and several small ones.

A :class:`Site` holds its own records; in privkit's simulation only the site-side code
(:mod:`privkit.federated.local`) reads them, the server sees model updates only.

>>> import torch
>>> from privkit.data import Split
>>> split = Split(torch.zeros(10, 1, 28, 28), torch.tensor([[0.0]] * 6 + [[1.0]] * 4))
>>> [len(s) for s in split_sites(split, n_sites=3, scheme="iid")]
[4, 3, 3]
>>> split_sites(split, n_sites=11)
Traceback (most recent call last):
...
ValueError: Expected n_sites=11 <= 10, the number of training examples (each site needs at least min_size=1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from privkit import _validate
from privkit.data import Split

SCHEMES = ("iid", "label_skew", "size_skew")
MAX_DRAWS = 1000  # label_skew redraws until every site has min_size records, at most this often
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # what a ledger scope accepts as an institution id


@dataclass(frozen=True, eq=False)
class Site:
    """One hospital: a name (its ledger institution id) and its own training records.

    Raises:
        ValueError: on a name a ledger scope cannot hold, or a site with no records.
    """

    name: str
    train: Split = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"Expected site name={self.name!r} of letters, digits, '_', '.', '-'.")
        if len(self.train) == 0:
            raise ValueError(
                f"Site {self.name!r} has no training records; every site needs at least one "
                "(drop it, or partition with fewer sites or a larger alpha)."
            )

    def __len__(self) -> int:
        return len(self.train)

    def __repr__(self) -> str:
        return f"Site({self.name!r}, n={len(self)})"


def class_key(labels: torch.Tensor) -> np.ndarray:
    """One class per record for label skew: the label (binary), else any finding: (N, L) -> (N,)."""
    y = labels.detach().cpu().numpy()
    return (y.max(axis=1) > 0).astype(np.int64)


def split_sites(
    split: Split,
    *,
    n_sites: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    min_size: int = 1,
    seed: int = 0,
    prefix: str = "site",
) -> list[Site]:
    """Divide ``split`` among ``n_sites`` hospitals named ``<prefix>1`` ... ``<prefix>N``.

    Args:
        split: the training records to divide (each goes to exactly one site).
        n_sites: number of sites, an integer >= 1.
        scheme: one of :data:`SCHEMES`.
        alpha: Dirichlet concentration for ``label_skew`` and ``size_skew``, > 0; ignored
            for ``iid``.
        min_size: the fewest records a site may hold, >= 1.
        seed: seeds the permutation and the Dirichlet draws.
        prefix: site names start with it.

    Returns:
        The sites, each with its records in the split's original order.

    Raises:
        ValueError: on an unknown scheme, ``alpha <= 0``, ``n_sites * min_size`` above the
            number of records, or (``label_skew``) no draw in :data:`MAX_DRAWS` giving every
            site ``min_size`` records.
    """
    _validate.positive_int(n_sites=n_sites)
    _validate.one_of(SCHEMES, scheme=scheme)
    _validate.positive_int(min_size=min_size)
    if scheme != "iid":
        _validate.in_range(0, float("inf"), low_inclusive=False, high_inclusive=False, alpha=alpha)
    n = len(split)
    if n_sites * min_size > n:
        raise ValueError(
            f"Expected n_sites={n_sites} <= {n // min_size}, the number of training examples"
            f"{' / min_size' if min_size > 1 else ''} (each site needs at least min_size={min_size})."
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), n_sites)
    elif scheme == "size_skew":
        sizes = _skewed_sizes(n, n_sites, alpha, min_size, rng)
        parts = np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
    else:
        parts = _label_skew(class_key(split.labels), n_sites, alpha, min_size, rng)
    return [Site(f"{prefix}{k + 1}", _subset(split, np.sort(part))) for k, part in enumerate(parts)]


def _subset(split: Split, index: np.ndarray) -> Split:
    idx = torch.as_tensor(index, dtype=torch.long, device=split.images.device)
    return Split(images=split.images[idx], labels=split.labels[idx])


def _skewed_sizes(
    n: int, n_sites: int, alpha: float, min_size: int, rng: np.random.Generator
) -> np.ndarray:
    """``min_size`` each, the rest shared in proportion to a Dirichlet(alpha) draw."""
    rest = n - n_sites * min_size
    shares = rng.dirichlet(np.full(n_sites, alpha)) * rest
    sizes = np.floor(shares).astype(np.int64)
    leftover = rest - sizes.sum()  # < n_sites: to the largest fractional parts
    sizes[np.argsort(shares - sizes)[::-1][:leftover]] += 1
    return sizes + min_size


def _label_skew(
    key: np.ndarray, n_sites: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, Dirichlet(alpha) shares over the sites; redrawn until every site has min_size."""
    smallest = 0
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
        for c in np.unique(key):
            members = rng.permutation(np.flatnonzero(key == c))
            shares = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for k, chunk in enumerate(np.split(members, cuts)):
                parts[k].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        smallest = min(len(p) for p in merged)
        if smallest >= min_size:
            return merged
    raise ValueError(
        f"label_skew with alpha={alpha} left a site with {smallest} < min_size={min_size} records "
        f"in each of {MAX_DRAWS} draws over n_sites={n_sites}; use a larger alpha or fewer sites."
    )
