"""Per-example scores of a sweep, and the fairness and calibration tables made from them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from privkit import fairness, metrics, trust
from privkit.train import TrainConfig


@pytest.fixture(scope="module")
def swept(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust")
    base = TrainConfig(data_root=str(synthetic_root), epochs=1, batch_size=64, device="cpu")
    # Private runs by noise multiplier (no noise calibration: fast); their epsilon_target is NaN.
    configs = [replace(base, epsilon=None, noise_multiplier=1.0, seed=s) for s in (0, 1)]
    configs.append(replace(base, epsilon=math.inf, seed=0))
    return configs, out, trust.scored_sweep(configs, experiment="t", out_dir=out, progress=False)


def test_scores_hold_every_run_split_and_example(swept):
    configs, out, scores = swept
    assert scores["run_id"].nunique() == 3
    sizes = scores.groupby(["run_id", "split"]).size().unstack()
    assert (sizes["val"] == 64).all() and (sizes["test"] == 128).all()  # synthetic split sizes
    private = scores["epsilon_target"].isna()
    assert (scores.loc[private, "noise_multiplier"] == 1.0).all()
    assert np.isfinite(scores.loc[private, "epsilon_spent"]).all()
    assert (scores.loc[~private, "epsilon_spent"] == math.inf).all()
    assert len(list((out / "runs").glob("*.json"))) == 3


def test_a_repeated_sweep_trains_nothing(swept, monkeypatch):
    configs, out, scores = swept

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(trust, "train_many", refuse)
    again = trust.scored_sweep(configs, experiment="t", out_dir=out, progress=False)
    pd.testing.assert_frame_equal(again, scores)


def test_metrics_from_scores_match_evaluate(swept):
    _, _, scores = swept
    table = trust.metrics_table(scores)
    run = scores["run_id"].iloc[0]
    rows = scores[(scores["run_id"] == run) & (scores["split"] == "test")]
    expected = metrics.evaluate(rows["label"], expit(rows["logit"]), task="binary")
    got = table[(table["run_id"] == run) & (table["split"] == "test")].set_index("metric")["value"]
    assert got.to_dict() == pytest.approx(expected)


def test_subgroup_table_averages_the_seeds_per_epsilon(swept):
    _, _, scores = swept
    table = trust.subgroup_table(scores, n_bootstrap=50)
    private = table["epsilon_target"].isna()
    assert set(table.loc[private, "n_models"]) == {2} and set(table.loc[~private, "n_models"]) == {
        1
    }
    test = scores[(scores["split"] == "test") & scores["epsilon_target"].isna()]
    per_seed = [
        fairness.subgroup_report(
            part["label"],
            expit(part["logit"]),
            fairness.class_groups(part["label"]),
            n_bootstrap=10,
        ).set_index(["kind", "group", "metric"])["value"]
        for _, part in test.sort_values("index").groupby("run_id")
    ]
    row = table[private & (table["kind"] == "gap") & (table["metric"] == "accuracy")]
    assert row["value"].item() == pytest.approx(
        np.mean([v["gap", "pneumonia", "accuracy"] for v in per_seed])
    )


def test_calibration_table_has_every_run_calibration_and_metric(swept):
    _, _, scores = swept
    table = trust.calibration_table(scores, temperature_epsilon=1.0)
    assert len(table) == 3 * 3 * 4  # runs x calibrations x metrics
    uncal = table[table["calibration"] == "uncalibrated"]
    assert (uncal["temperature"] == 1.0).all()
    assert set(
        table.loc[table["calibration"] == "temperature_dp", "temperature_epsilon"].round(2)
    ) <= {0.99, 1.0}
    calibrated = trust.calibrated_test_scores(scores, table)
    assert len(calibrated) == 3 * 128 * 3
    assert calibrated["probability"].between(0, 1).all()


def test_multi_label_datasets_are_refused(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="binary dataset"):
        trust.scored_sweep(
            [TrainConfig(dataset="chestmnist", data_root=str(synthetic_root))],
            experiment="t",
            out_dir=tmp_path,
            progress=False,
        )
