"""Checks shared by the metric modules: 0/1 labels and probabilities as numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device) or a nested sequence."""
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so this module does not import torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_labels(y: np.ndarray) -> np.ndarray:
    """The labels as int 0/1, or raise listing the values that are not 0 or 1."""
    if y.dtype == bool:
        return y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"Expected labels to be numbers 0 and 1; got dtype {y.dtype}.")
    bad = (y != 0) & (y != 1)  # NaN is caught here too
    if bad.any():
        found = ", ".join(f"{v:g}" for v in np.unique(y[bad])[:5])
        raise ValueError(f"Expected labels to hold only 0 and 1; found {found}.")
    return y.astype(np.int64)


def check_scores(p: np.ndarray, *, name: str = "scores") -> None:
    """Raise unless ``p`` holds probabilities in [0, 1] (no NaN)."""
    if not (np.issubdtype(p.dtype, np.integer) or np.issubdtype(p.dtype, np.floating)):
        raise ValueError(f"Expected {name} to be probabilities in [0, 1]; got dtype {p.dtype}.")
    if np.isnan(p).any():
        raise ValueError(
            f"Expected {name} to be probabilities in [0, 1]; found {int(np.isnan(p).sum())} NaN."
        )
    if p.min() < 0 or p.max() > 1:
        raise ValueError(
            f"Expected {name} to be probabilities in [0, 1]; found min={p.min():g}, "
            f"max={p.max():g} (pass sigmoid(logits), not logits)."
        )


def binary_pair(
    labels: Any, scores: Any, *, scores_name: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) int 0/1 and probabilities (n,) float of a binary task, checked.

    Accepts shapes (n,) or (n, 1) for both (MedMNIST stores (n, 1)).
    """
    y, p = as_array(labels), as_array(scores)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(
            f"Expected labels and {scores_name} shaped (n,) or (n, 1) alike; got "
            f"labels.shape={as_array(labels).shape}, {scores_name}.shape={as_array(scores).shape}."
        )
    if len(y) == 0:
        raise ValueError("Expected at least one example; got none.")
    y = check_labels(y)
    check_scores(p, name=scores_name)
    return y, p.astype(np.float64)
