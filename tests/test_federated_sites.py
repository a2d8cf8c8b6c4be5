"""Sites: every record goes to exactly one hospital; skew does what its alpha says; bad input
is refused with the argument, its value and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privkit.data import Split
from privkit.federated.sites import Site, split_sites


def toy_split(n: int = 1000, positive: float = 0.3) -> Split:
    """Record i has image value i (so records can be traced) and label 1 for the first 30%."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
    labels = (torch.arange(n) < positive * n).float().view(n, 1)
    return Split(images, labels)


def ids(site: Site) -> np.ndarray:
    return site.train.images[:, 0, 0, 0].long().numpy()


@pytest.mark.parametrize("scheme", ["iid", "label_skew", "size_skew"])
def test_every_record_goes_to_exactly_one_site(scheme: str) -> None:
    sites = split_sites(toy_split(), n_sites=5, scheme=scheme, alpha=0.5, seed=1)
    together = np.concatenate([ids(s) for s in sites])
    assert sorted(together.tolist()) == list(range(1000))
    assert [s.name for s in sites] == ["site1", "site2", "site3", "site4", "site5"]
    for s in sites:  # labels travel with their images
        assert torch.equal(s.train.labels[:, 0], (torch.as_tensor(ids(s)) < 300).float())


def test_seeded() -> None:
    a = split_sites(toy_split(), n_sites=3, scheme="label_skew", seed=4)
    b = split_sites(toy_split(), n_sites=3, scheme="label_skew", seed=4)
    c = split_sites(toy_split(), n_sites=3, scheme="label_skew", seed=5)
    assert all(np.array_equal(ids(x), ids(y)) for x, y in zip(a, b))
    assert not all(np.array_equal(ids(x), ids(y)) for x, y in zip(a, c))


def test_iid_sites_have_equal_sizes_and_the_global_label_mix() -> None:
    sites = split_sites(toy_split(), n_sites=4, scheme="iid")
    assert [len(s) for s in sites] == [250] * 4
    assert all(abs(float(s.train.labels.mean()) - 0.3) < 0.1 for s in sites)


def test_label_skew_follows_alpha() -> None:
    def spread(alpha: float) -> float:  # sd over sites of the share of positives
        fractions = [
            float(s.train.labels.mean())
            for s in split_sites(toy_split(), n_sites=5, scheme="label_skew", alpha=alpha, seed=0)
        ]
        return float(np.std(fractions))

    assert spread(1000.0) < 0.03  # close to IID
    assert spread(0.1) > 0.25  # most sites see mostly one class


def test_size_skew_follows_alpha_and_keeps_min_size() -> None:
    skewed = [
        len(s)
        for s in split_sites(toy_split(), n_sites=5, scheme="size_skew", alpha=0.3, min_size=20)
    ]
    even = [len(s) for s in split_sites(toy_split(), n_sites=5, scheme="size_skew", alpha=1e4)]
    assert sum(skewed) == 1000 and min(skewed) >= 20 and max(skewed) > 3 * min(skewed)
    assert max(even) - min(even) < 30


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_sites=1001), r"Expected n_sites=1001 <= 1000, the number of training examples"),
        (dict(n_sites=101, min_size=10), r"Expected n_sites=101 <= 100"),
        (dict(n_sites=0), r"Expected n_sites=0 to be an integer >= 1"),
        (dict(n_sites=3, scheme="label_skew", alpha=0.0), r"Expected alpha=0.0 in \(0, inf\)"),
        (dict(n_sites=3, scheme="size_skew", alpha=-1.0), r"Expected alpha=-1.0 in \(0, inf\)"),
        (
            dict(n_sites=3, scheme="dirichlet"),
            r"Unknown scheme='dirichlet'; expected one of: iid, label_skew",
        ),
        (
            dict(n_sites=50, scheme="label_skew", alpha=0.01, min_size=15),
            r"alpha=0.01 left a site with",
        ),
    ],
)
def test_bad_partitions_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_sites(toy_split(), **kwargs)


def test_a_site_without_records_is_refused() -> None:
    empty = Split(torch.zeros(0, 1, 28, 28), torch.zeros(0, 1))
    with pytest.raises(ValueError, match="Site 'h3' has no training records"):
        Site("h3", empty)
    with pytest.raises(ValueError, match="Expected site name='h 3'"):
        Site("h 3", toy_split(5))
