"""Every experiment notebook runs end to end on tiny synthetic data (so none of them rots),
and leaves its tables and figures where `make reproduce` expects them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from privkit import experiments

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=1, batch_size=32, delta=0.001, device="cpu")


def _run(name: str, root: Path, tmp_path: Path, **parameters) -> Path:
    out = tmp_path / name
    experiments.run_notebook(
        REPO / "notebooks" / f"{name}.ipynb", out / f"{name}.ipynb",
        {"data_root": str(root), "out_dir": str(out), **parameters}, progress=False,
    )  # fmt: skip
    return out


@pytest.mark.slow
def test_privacy_budget_notebook(synthetic_root: Path, tmp_path: Path) -> None:
    out = _run("privacy_budget", synthetic_root, tmp_path, **TINY, seeds=[0], max_runs=4,
               accountants=["prv", "rdp"], risk_epsilons=[1.0, 8.0])  # fmt: skip
    for stem in ("epsilon_over_training", "budget_spending", "individualised_privacy", "risk_bounds"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
    risk = pd.read_csv(out / "risk_bounds.csv")
    assert (risk["tpr"] >= risk["fpr"]).all() and len(risk) == 2 * 2 * 2
    assert set(pd.read_csv(out / "individualised.csv")["metric"]) >= {"auc", "accuracy"}
    assert "exceeded" in (out / "privacy_budget.ipynb").read_text()  # a budget refused a run


# Each tutorial with tiny parameters, and a line of output that shows it ran to its point.
TUTORIALS = {
    "02_membership_inference": ({"n_models": 6, "pool_size": 128, "epochs": 2, "batch_size": 16}, "DP bound"),
    "03_privacy_budgets": ({"epochs": 1, "batch_size": 32}, "REFUSED"),
    "04_federated_hospitals": ({"n_sites": 3, "rounds": 1, "batch_size": 32, "alpha": 1.0}, "sum of the survivors"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_on_a_cpu(name: str, synthetic_root: Path, tmp_path: Path) -> None:
    parameters, expected = TUTORIALS[name]
    out = experiments.run_notebook(
        REPO / "notebooks" / "tutorials" / f"{name}.ipynb", tmp_path / "tutorial.ipynb",
        {"data_root": str(synthetic_root), "delta": 0.001, **parameters}, progress=False,
    )  # fmt: skip
    assert expected in out.read_text()
