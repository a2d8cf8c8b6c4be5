"""The study table: one row set per run, site budgets per hospital, finished runs reused
(neither trained nor charged again), and its figure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from privkit import budget, data
from privkit.federated import study
from privkit.plots import federated_comparison


def test_study_tables_reuse_and_figure(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    dataset = data.load("pneumoniamnist", root=synthetic_root)
    runs = study.settings(
        methods=["centralised", "fedavg"],
        partitions=["iid", "label_skew"],
        site_counts=[2],
        epsilons=[math.inf],
        seeds=[0],
    )
    ledger = budget.Ledger(tmp_path / "ledger.sqlite")
    kwargs = dict(
        out_dir=tmp_path,
        rounds=1,
        batch_size=64,
        delta=1e-3,
        alpha=1.0,
        ledger=ledger,
        progress=False,
    )
    table, sites = study.run_study(dataset, runs, **kwargs)
    assert table.run_id.nunique() == 3 and set(table.columns) == set(study.COLUMNS)
    assert sorted(sites.groupby("run_id").size()) == [1, 2, 2]  # pooled, then two hospitals each
    fed = sites[sites.method == "fedavg"]
    assert list(fed.sample_rate) == pytest.approx(list(32 / fed.n_records))  # batch 64 / 2 sites
    assert len(ledger.history()) == 5
    monkeypatch.setattr(
        study, "_train_one", lambda *a, **k: pytest.fail("a finished run was trained again")
    )
    again, _ = study.run_study(dataset, runs, **kwargs)
    assert again.equals(table) and len(ledger.history()) == 5
    fig = federated_comparison(table)
    assert [ax.get_title() for ax in fig.axes] == [
        "records spread IID",
        "label-skewed sites (Dirichlet)",
    ]
    with pytest.raises(ValueError, match="no rows of metric='f1'"):
        federated_comparison(table, metric="f1")


def test_unknown_methods_and_partitions_are_refused() -> None:
    with pytest.raises(ValueError, match="Unknown method='fedprox'"):
        study.settings(
            methods=["fedprox"], partitions=["iid"], site_counts=[2], epsilons=[1.0], seeds=[0]
        )
    with pytest.raises(ValueError, match="Unknown partition='pathological'"):
        study.settings(
            methods=["fedavg"],
            partitions=["pathological"],
            site_counts=[2],
            epsilons=[1.0],
            seeds=[0],
        )
