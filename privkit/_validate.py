"""Argument checks whose errors name the argument, the value and what is allowed.

Modelled on jax_privacy's ``_validate``: ``in_range(0, 1, sample_rate=1.2)`` raises
``ValueError: Expected sample_rate=1.2 in [0, 1].``
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _one(kwargs: dict[str, Any]) -> tuple[str, Any]:
    if len(kwargs) != 1:
        raise TypeError(f"pass exactly one keyword argument, got {sorted(kwargs)}")
    return next(iter(kwargs.items()))


def in_range(
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    **kwargs: float,
) -> float:
    """Return the value if ``low <(=) value <(=) high``, else raise naming it.

    >>> in_range(0, 1, sample_rate=0.5)
    0.5
    >>> in_range(0, 1, low_inclusive=False, delta=0.0)
    Traceback (most recent call last):
    ...
    ValueError: Expected delta=0.0 in (0, 1].
    """
    name, value = _one(kwargs)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (
            value <= high if high_inclusive else value < high
        )
    if not ok:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ValueError(f"Expected {name}={value!r} in {left}{low}, {high}{right}.")
    return value


def positive(**kwargs: float) -> float:
    """Return the value if it is a number > 0 (inf allowed), else raise naming it.

    >>> positive(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: Expected epochs=0 > 0.
    """
    name, value = _one(kwargs)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Expected {name}={value!r} > 0.")
    return value


def positive_int(**kwargs: int) -> int:
    """Return the value if it is an integer >= 1, else raise naming it.

    >>> positive_int(batch_size=2.5)
    Traceback (most recent call last):
    ...
    ValueError: Expected batch_size=2.5 to be an integer >= 1.
    """
    name, value = _one(kwargs)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected {name}={value!r} to be an integer >= 1.")
    return value


def one_of(allowed: Iterable[Any], **kwargs: Any) -> Any:
    """Return the value if it is one of ``allowed``, else raise listing them.

    >>> one_of(["prv", "rdp"], accountant="moments")
    Traceback (most recent call last):
    ...
    ValueError: Unknown accountant='moments'; expected one of: prv, rdp.
    """
    name, value = _one(kwargs)
    allowed = list(allowed)
    if value not in allowed:
        known = ", ".join(str(a) for a in allowed)
        raise ValueError(f"Unknown {name}={value!r}; expected one of: {known}.")
    return value
