"""Tiny parameters for each tutorial (synthetic data, a few seconds of training), and a line of
output that shows it ran to its point; shared by the papermill and the browser tests."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUTORIALS_DIR = REPO / "notebooks" / "tutorials"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

TUTORIALS = {
    "01_dp_sgd_basics": ({"epochs": 1, "batch_size": 32, "curve_epochs": 3}, "non-private"),
    "02_membership_inference": (
        {"n_models": 6, "pool_size": 128, "epochs": 2, "batch_size": 16},
        "DP cap",
    ),
    "03_privacy_budgets": ({"epochs": 1, "batch_size": 32}, "REFUSED"),
    "04_federated_hospitals": (
        {"n_sites": 3, "rounds": 1, "batch_size": 32, "alpha": 1.0},
        "sum of the survivors",
    ),
}

# The solutions notebooks (notebooks/tutorials/solutions/<same name>), the same way.
SOLUTIONS = {
    "01_dp_sgd_basics": ({"epochs": 1, "batch_size": 32}, "reconstruction bound"),
    "02_membership_inference": (
        {"n_models": 6, "pool_size": 64, "large_pool_size": 128, "epochs": 2, "batch_size": 16},
        "excludes 0.1%",
    ),
    "03_privacy_budgets": (
        {"epochs": 1, "batch_size": 32},
        "largest epsilon with the cap below 1%",
    ),
    "04_federated_hospitals": (
        {"n_sites": 2, "many_sites": 4, "rounds": 1, "batch_size": 32},
        "epsilon budget",
    ),
}


def tiny_parameters(name: str, data_root: Path, *, solutions: bool = False) -> dict:
    """The parameters a test gives tutorial ``name`` (or its solutions notebook)."""
    return {
        "data_root": str(data_root),
        "delta": 0.001,
        **(SOLUTIONS if solutions else TUTORIALS)[name][0],
    }


def browser_available() -> bool:
    """Whether the browser test can run here: Debian's chromium and Playwright's Python package."""
    return CHROMIUM is not None and importlib.util.find_spec("playwright") is not None
