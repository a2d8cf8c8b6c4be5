"""Every experiment notebook runs end to end on tiny synthetic data (so none of them rots),
and leaves its tables and figures where `make reproduce` expects them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from tutorials import SOLUTIONS, TUTORIALS, TUTORIALS_DIR, tiny_parameters

from privkit import experiments

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=1, batch_size=32, delta=0.001, device="cpu")


def _run(name: str, root: Path, tmp_path: Path, **parameters) -> Path:
    out = tmp_path / name
    experiments.run_notebook(
        REPO / "notebooks" / f"{name}.ipynb",
        out / f"{name}.ipynb",
        {"data_root": str(root), "out_dir": str(out), **parameters},
        progress=False,
    )
    return out


@pytest.mark.slow
def test_privacy_budget_notebook(synthetic_root: Path, tmp_path: Path) -> None:
    out = _run(
        "privacy_budget",
        synthetic_root,
        tmp_path,
        **TINY,
        seeds=[0],
        max_runs=4,
        accountants=["prv", "rdp"],
        risk_epsilons=[1.0, 8.0],
    )
    for stem in (
        "epsilon_over_training",
        "budget_spending",
        "individualised_privacy",
        "risk_bounds",
    ):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000
    risk = pd.read_csv(out / "risk_bounds.csv")
    assert (risk["tpr"] >= risk["fpr"]).all() and len(risk) == 2 * 2 * 2
    assert set(pd.read_csv(out / "individualised.csv")["metric"]) >= {"auc", "accuracy"}
    runs = {p.stem for p in (out / "runs").glob("*.json")}
    for table in ("epsilon_over_training", "individualised", "risk_bounds"):  # every run recorded
        assert set(pd.read_csv(out / f"{table}.csv")["run_id"]) <= runs, table
    assert pd.read_csv(out / "individualised.csv")["run_id"].nunique() == 3  # strict, loose, groups
    assert "exceeded" in (out / "privacy_budget.ipynb").read_text()  # a budget refused a run


@pytest.mark.slow
@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_on_a_cpu(name: str, synthetic_root: Path, tmp_path: Path) -> None:
    """Each tutorial end to end (the browser test runs them in JupyterLab instead, when it runs)."""
    out = experiments.run_notebook(
        TUTORIALS_DIR / f"{name}.ipynb",
        tmp_path / "tutorial.ipynb",
        tiny_parameters(name, synthetic_root),
        progress=False,
    )
    assert TUTORIALS[name][1] in out.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", SOLUTIONS)
def test_solutions_run_on_a_cpu(name: str, synthetic_root: Path, tmp_path: Path) -> None:
    notebook = TUTORIALS_DIR / "solutions" / f"{name}.ipynb"
    out = experiments.run_notebook(
        notebook,
        tmp_path / "solutions.ipynb",
        tiny_parameters(name, synthetic_root, solutions=True),
        progress=False,
    )
    assert SOLUTIONS[name][1] in out.read_text()


def test_every_tutorial_has_its_solutions_and_tiny_parameters() -> None:
    names = sorted(p.stem for p in TUTORIALS_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert names == sorted(TUTORIALS) == sorted(SOLUTIONS)
    assert names == sorted(p.stem for p in (TUTORIALS_DIR / "solutions").glob("*.ipynb"))
    for name in names:  # every tiny parameter exists in the notebook's parameters cell
        for path, given in (
            (TUTORIALS_DIR / f"{name}.ipynb", TUTORIALS[name][0]),
            (TUTORIALS_DIR / "solutions" / f"{name}.ipynb", SOLUTIONS[name][0]),
        ):
            assert set(given) | {"data_root", "delta"} <= set(
                experiments.notebook_parameters(path)
            ), path
