"""The membership-inference and privacy-audit notebooks run end to end on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from privkit import experiments

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
def test_membership_notebook_runs_on_a_cpu(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    experiments.run_notebook(
        NOTEBOOKS / "membership_inference.ipynb",
        tmp_path / "mi.ipynb",
        {
            "data_root": str(synthetic_root),
            "out_dir": str(out),
            "epsilons": [4.0],
            "n_models": 6,
            "pool_size": 64,
            "epochs": 1,
            "batch_size": 16,
        },
        progress=False,
    )
    table = pd.read_csv(out / "metrics.csv")
    assert set(table["attack"]) == {"LiRA online", "LiRA offline", "loss threshold", "none"}
    assert _provenance(out) == set(table["run_id"]) and table["run_id"].nunique() == 2
    assert (out / "figures" / "roc_loglog.png").exists()
    assert (out / "figures" / "tpr_at_fpr_0.001.png").exists()


@pytest.mark.slow
def test_audit_notebook_runs_on_a_cpu(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    experiments.run_notebook(
        NOTEBOOKS / "privacy_audit.ipynb",
        tmp_path / "audit.ipynb",
        {
            "data_root": str(synthetic_root),
            "out_dir": str(out),
            "epsilons": [4.0],
            "n_canaries": 40,
            "train_records": 64,
            "epochs": 1,
            "batch_size": 32,
            "k_values": [5, 10],
        },
        progress=False,
    )
    table = pd.read_csv(out / "audit.csv")
    assert len(table) == 2 and table["passes"].all()
    assert _provenance(out) == set(table["run_id"]) and table["run_id"].nunique() == 2
    assert (out / "figures" / "audit_epsilons.png").exists()


def _provenance(out: Path) -> set[str]:
    """The runs with a provenance record (``results.Store``) that names the data they read."""
    records = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert all(len(r["data_sha256"]) == 64 and r["parameters"] for r in records.values())
    return set(records)
