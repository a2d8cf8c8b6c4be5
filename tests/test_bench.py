"""`privkit bench` measures every engine in one run and reports the agreed keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privkit import bench, experiments


def test_bench_reports_every_row_with_ratios(synthetic_root: Path, tmp_path: Path) -> None:
    report = bench.run(
        device="cpu",
        data_root=str(synthetic_root),
        batch_size=32,
        epochs=1,
        stacks=(2,),
        progress=False,
    )
    assert [r["name"] for r in report["rows"]] == ["nonprivate", "opacus", "fast", "fast-stack-2"]
    assert "pneumoniamnist" in report["data"] and report["model"] == "cnn"
    for row in report["rows"]:
        assert row["epoch_s"] > 0 and row["peak_memory_bytes"] is None  # no GPU here
        assert row["ratio_to_nonprivate"] == pytest.approx(
            row["per_model_epoch_s"] / report["rows"][0]["epoch_s"]
        )
    stack = report["rows"][-1]
    assert stack["per_model_epoch_s"] == pytest.approx(stack["epoch_s"] / 2)
    path = bench.write_json(report, tmp_path / "bench.json")
    keys = set(json.loads(path.read_text())["rows"][0])
    assert {
        "name",
        "epoch_s",
        "per_model_epoch_s",
        "ratio_to_nonprivate",
        "peak_memory_bytes",
    } <= keys
    assert "fast-stack-2" in bench.format_table(report)


def test_bench_falls_back_to_random_data_of_the_real_size(tmp_path: Path) -> None:
    ds, described = bench._bench_dataset(
        "pneumoniamnist", str(tmp_path), __import__("torch").device("cpu")
    )
    assert "random data" in described
    assert len(ds.train) == 4708 and tuple(ds.train.images.shape[1:]) == (1, 28, 28)


def test_time_sweep_runs_the_experiments_sweep(synthetic_root: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    spec = tmp_path / "experiments" / "privacy_utility.yaml"
    spec.parent.mkdir()
    spec.write_text(
        "notebook: privacy_utility.ipynb\nparameters: {epsilons: [4.0], seeds: [0, 1], "
        "overrides: {epochs: 1, batch_size: 32}, delta: 0.001}\n"
    )
    (tmp_path / "notebooks").symlink_to(repo / "notebooks")
    timing = experiments.time_sweep(
        spec, device="cpu", data_root=str(synthetic_root), progress=False
    )
    # Both recipes of the notebook, each at epsilon 4 and without privacy, two seeds.
    assert timing["models"] == 8 and timing["epochs"] == [1] and timing["seconds"] > 0
