"""Shamir's t-out-of-n secret sharing over the prime field GF(2^521 - 1).

Shamir (1979), "How to share a secret" (Communications of the ACM 22(11)). A secret s is the
constant term of a polynomial f of degree t - 1 over GF(p) whose other coefficients are drawn
uniformly from the OS's entropy; holder x (x = 1..n) gets the share (x, f(x)). Any t shares
determine f, hence s = f(0), by Lagrange interpolation. Any t - 1 shares tell nothing about s:
for every candidate secret exactly one such polynomial passes through them, so they are
uniformly distributed whatever s is. p = 2^521 - 1 is a Mersenne prime above 256^65, so a
secret of up to 65 bytes (an X25519 key, a 32-byte seed) is one field element.

>>> shares = split(b"a 32-byte seed, or any <=65 byte", threshold=2, n_shares=3)
>>> combine(shares[1:], length=32)
b'a 32-byte seed, or any <=65 byte'
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from privkit import _validate

PRIME = 2**521 - 1
MAX_SECRET_BYTES = 65  # 256^65 = 2^520 < PRIME
SHARE_BYTES = 66  # a field element, big-endian (2^528 > PRIME)

Share = tuple[int, int]  # (x, f(x)), x in 1..n


def evaluate(coefficients: Sequence[int], x: int, *, prime: int = PRIME) -> int:
    """f(x) mod ``prime`` for f = coefficients[0] + coefficients[1] x + ... (Horner's rule).

    Written with ``+``, ``*`` and ``%`` only, so integer arrays work too (small primes).

    >>> evaluate([5, 0, 1], 3, prime=7)  # 5 + 3^2 = 14 = 0 mod 7
    0
    """
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % prime
    return value


def split(secret: bytes, *, threshold: int, n_shares: int) -> list[Share]:
    """``n_shares`` shares of ``secret``, any ``threshold`` of which reconstruct it.

    Args:
        secret: at most 65 bytes.
        threshold: t, the degree of the polynomial plus one; 1 <= t <= n_shares.
        n_shares: n, one share per holder, at x = 1, ..., n.

    Returns:
        ``[(1, f(1)), ..., (n, f(n))]``; share x goes to holder x.
    """
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(
            f"Expected a secret of at most {MAX_SECRET_BYTES} bytes, got {len(secret)}."
        )
    _validate.positive_int(n_shares=n_shares)
    _validate.positive_int(threshold=threshold)
    if threshold > n_shares:
        raise ValueError(f"Expected threshold={threshold} <= n_shares={n_shares}.")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    return [(x, evaluate(coefficients, x)) for x in range(1, n_shares + 1)]


def interpolate_at_zero(shares: Sequence[Share], *, prime: int = PRIME) -> int:
    """f(0) of the polynomial of degree < len(shares) through ``shares`` (Lagrange).

    f(0) = sum_j y_j prod_{m != j} x_m / (x_m - x_j)  (mod prime).
    """
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs) or not all(0 < x < prime for x in xs):
        raise ValueError(f"Expected shares at distinct points x in [1, p), got x = {xs}.")
    total = 0
    for j, (xj, yj) in enumerate(shares):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                numerator = numerator * xm % prime
                denominator = denominator * (xm - xj) % prime
        total = (total + yj * numerator * pow(denominator, -1, prime)) % prime
    return total


def combine(shares: Sequence[Share], *, length: int) -> bytes:
    """The ``length``-byte secret behind ``shares`` (at least the threshold of them).

    Raises:
        ValueError: repeated or invalid points, or shares that do not interpolate to a
            ``length``-byte secret: fewer than the threshold (their interpolation is a uniform
            field element, below 256^length with probability 256^length / p, 2^-265 for 32
            bytes), or shares of different secrets.
    """
    value = interpolate_at_zero(shares)
    if value >= 256**length:
        raise ValueError(
            f"These {len(shares)} shares do not reconstruct a {length}-byte secret: fewer than the "
            f"threshold, or not shares of one secret."
        )
    return value.to_bytes(length, "big")
