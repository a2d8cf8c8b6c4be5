"""Shamir secret sharing: any t shares give the secret back, t - 1 shares are uniform whatever
the secret (checked by enumerating every polynomial over a small field), the field is prime."""

from __future__ import annotations

import itertools
import secrets

import numpy as np
import pytest
import sympy

from privkit.federated import shamir


def test_the_field_is_prime_and_holds_a_65_byte_secret() -> None:
    assert sympy.isprime(shamir.PRIME)  # an independent primality test
    assert 256**shamir.MAX_SECRET_BYTES <= shamir.PRIME < 256**shamir.SHARE_BYTES
    secret = b"\xff" * shamir.MAX_SECRET_BYTES
    assert (
        shamir.combine(shamir.split(secret, threshold=2, n_shares=2), length=len(secret)) == secret
    )


def test_lagrange_interpolation_against_a_hand_computed_polynomial() -> None:
    # f(x) = 7 + 3x + 5x^2 over GF(11): f(1) = 15 = 4, f(2) = 33 = 0, f(3) = 61 = 6 (mod 11).
    assert [shamir.evaluate([7, 3, 5], x, prime=11) for x in (1, 2, 3)] == [4, 0, 6]
    assert shamir.interpolate_at_zero([(1, 4), (2, 0), (3, 6)], prime=11) == 7
    assert (
        shamir.interpolate_at_zero([(3, 6), (1, 4), (2, 0)], prime=11) == 7
    )  # order does not matter


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_any_t_shares_reconstruct_and_fewer_do_not(threshold: int) -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, threshold=threshold, n_shares=5)
    assert [x for x, _ in shares] == [1, 2, 3, 4, 5]  # holders at x = 1..n, never at 0
    for k in range(threshold, 6):
        for subset in itertools.combinations(shares, k):
            assert shamir.combine(subset, length=32) == secret
    for subset in itertools.combinations(shares, threshold - 1):
        if subset:  # t - 1 shares interpolate to a uniform field element, not a 32-byte secret
            with pytest.raises(ValueError, match="do not reconstruct a 32-byte secret"):
                shamir.combine(subset, length=32)


def test_t_minus_1_shares_are_uniform_whatever_the_1_byte_secret() -> None:
    """Over GF(257), t = 3: for each secret, enumerate all 257^2 polynomials split can draw.
    The shares of any 2 holders then take every pair of values exactly once (no information),
    while 3 shares tell secrets apart (the same enumeration, so the check could fail)."""
    p = 257
    a1, a2 = np.meshgrid(
        np.arange(p), np.arange(p), indexing="ij"
    )  # (257, 257): every coefficient pair
    triples = {}
    for secret in range(256):
        y = {x: shamir.evaluate([secret, a1, a2], x, prime=p).ravel() for x in (1, 2, 3)}
        for u, v in itertools.combinations(y, 2):
            assert np.all(np.bincount(y[u] * p + y[v], minlength=p * p) == 1), (secret, u, v)
        if secret in (0, 1, 200):
            triples[secret] = set((y[1] * p + y[2]) * p + y[3])
    assert triples[0].isdisjoint(triples[1]) and triples[0].isdisjoint(triples[200])


def test_every_sharing_draws_fresh_coefficients() -> None:
    secret = bytes(32)
    first, second = (shamir.split(secret, threshold=3, n_shares=4) for _ in range(2))
    assert all(a != b and 0 <= a[1] < shamir.PRIME for a, b in zip(first, second))
    # t - 1 shares of the all-zero secret look like any other field element: top bits vary.
    tops = {shamir.split(secret, threshold=2, n_shares=2)[0][1] >> 517 for _ in range(64)}
    assert len(tops) > 8


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 65 bytes, got 66"):
        shamir.split(bytes(66), threshold=1, n_shares=1)
    with pytest.raises(ValueError, match="threshold=4 <= n_shares=3"):
        shamir.split(b"x", threshold=4, n_shares=3)
    with pytest.raises(ValueError, match="Expected threshold=0 to be an integer >= 1"):
        shamir.split(b"x", threshold=0, n_shares=3)
    with pytest.raises(ValueError, match=r"distinct points x in \[1, p\), got x = \[1, 1\]"):
        shamir.combine([(1, 5), (1, 6)], length=1)
    with pytest.raises(ValueError, match=r"got x = \[0, 1\]"):
        shamir.combine([(0, 5), (1, 6)], length=1)
