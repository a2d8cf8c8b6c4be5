"""Secure aggregation: the revealed sum is exact (to fixed point), a masked update looks like
uniform noise, drop-outs still give the right sum or no sum, never a wrong one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privkit.federated import secure_aggregation as sa

NAMES = ["h1", "h2", "h3", "h4", "h5"]
LENGTH = 20_000


def updates(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 1, LENGTH) * 10.0 ** rng.integers(-6, 3) for n in NAMES}


def masked_round(values: dict[str, np.ndarray], keys: dict, round_index: int = 0) -> dict[str, np.ndarray]:
    return {n: sa.mask(v, keys[n], round_index=round_index) for n, v in values.items()}


def test_the_sum_is_exact_up_to_fixed_point() -> None:
    values, keys = updates(), sa.setup(NAMES, seed=1)
    revealed = sa.aggregate(masked_round(values, keys), keys, round_index=0, length=LENGTH)
    plain = np.sum(list(values.values()), axis=0)
    bound = len(NAMES) * 0.5 * 2.0**-sa.FRACTION_BITS  # each value rounds by at most half a unit
    assert np.abs(revealed - plain).max() <= bound
    # The masks cancel exactly: the revealed sum is the sum of the encoded values, bit for bit.
    encoded = sum((sa.encode(v, max_abs=2.0**20) for v in values.values()), np.zeros(LENGTH, np.uint64))
    assert np.array_equal(revealed, sa.decode(encoded))


def test_a_masked_update_is_uniform_on_the_ring_and_uncorrelated_with_the_update() -> None:
    keys = sa.setup(NAMES, seed=2)
    update = np.linspace(-1, 1, 100_000)  # a strongly structured update
    masked = sa.mask(update, keys["h3"], round_index=0)
    top = (masked >> np.uint64(60)).astype(np.int64)  # 16 bins of the ring
    assert stats.chisquare(np.bincount(top, minlength=16)).pvalue > 1e-3
    low = (masked & np.uint64(0xFFFF)).astype(np.int64)  # low bits are uniform too
    assert stats.chisquare(np.bincount(low % 64, minlength=64)).pvalue > 1e-3
    as_fraction = masked.astype(np.float64) / 2.0**64
    assert abs(stats.pearsonr(as_fraction, update).statistic) < 0.02
    # Without masks the same update is far from uniform: the test could fail.
    plain = (sa.encode(update, max_abs=2.0) >> np.uint64(60)).astype(np.int64)
    assert stats.chisquare(np.bincount(plain, minlength=16)).pvalue < 1e-10


def test_fresh_masks_every_round() -> None:
    keys = sa.setup(NAMES, seed=3)
    zero = np.zeros(1000)
    assert not np.array_equal(sa.mask(zero, keys["h1"], round_index=0), sa.mask(zero, keys["h1"], round_index=1))


@pytest.mark.parametrize("dropped", [["h2"], ["h1", "h5"], ["h2", "h3", "h4"]])
def test_dropouts_give_the_sum_of_the_survivors(dropped: list[str]) -> None:
    values, keys = updates(1), sa.setup(NAMES, seed=4)
    masked = masked_round(values, keys, round_index=7)
    arrived = {n: m for n, m in masked.items() if n not in dropped}
    revealed = sa.aggregate(arrived, keys, round_index=7, length=LENGTH)
    plain = np.sum([v for n, v in values.items() if n not in dropped], axis=0)
    assert np.abs(revealed - plain).max() <= len(arrived) * 2.0**-sa.FRACTION_BITS


def test_too_few_survivors_refuse_the_round() -> None:
    values, keys = updates(2), sa.setup(NAMES, seed=5)
    masked = masked_round(values, keys)
    with pytest.raises(sa.DropoutError, match="Only 1 of 5 sites sent their update in round 0"):
        sa.aggregate({"h1": masked["h1"]}, keys, round_index=0, length=LENGTH)
    with pytest.raises(sa.DropoutError, match="at least 4 are needed"):
        sa.aggregate({n: masked[n] for n in NAMES[:3]}, keys, round_index=0, length=LENGTH, min_survivors=4)


def test_a_dropped_site_arriving_late_stays_masked() -> None:
    values, keys = updates(3), sa.setup(NAMES, seed=6)
    masked = masked_round(values, keys)
    survivors = {n: masked[n] for n in NAMES if n != "h2"}
    sa.aggregate(survivors, keys, round_index=0, length=LENGTH)
    with pytest.raises(PermissionError, match="h2 is not among the survivors"):
        keys["h2"].reveal_self(survivors=frozenset(survivors), round_index=0)
    with pytest.raises(PermissionError, match="told two survivor sets"):  # no second story
        keys["h1"].reveal_self(survivors=frozenset(NAMES), round_index=0)
    with pytest.raises(PermissionError, match="will not reveal its seed with h3, a survivor"):
        keys["h1"].reveal_pairwise("h3", survivors=frozenset(NAMES), round_index=1)


def test_values_beyond_the_fixed_point_range_are_refused_not_wrapped() -> None:
    keys = sa.setup(NAMES, seed=7)
    with pytest.raises(ValueError, match=r"Expected finite values with \|x\| <= max_abs=1024"):
        sa.mask(np.array([0.0, 2000.0]), keys["h1"], round_index=0, max_abs=1024)
    with pytest.raises(ValueError, match="finite values"):
        sa.mask(np.array([np.nan]), keys["h1"], round_index=0)
    with pytest.raises(ValueError, match="at least 2 distinct site names"):
        sa.setup(["h1", "h1"])
