"""Fairness and calibration of a sweep of trained models, from their per-example scores.

``privkit.experiments.sweep`` keeps each run's summary metrics; the questions here (is the
model as good for normal as for pneumonia cases? is its 90% right 90% of the time?) need every
example's score. :func:`scored_sweep` trains the configs not yet finished and keeps each
model's logit for every validation and test example in ``<out_dir>/scores.csv`` (one row per
run, split and example), so a repeated call trains nothing. From that table:

* :func:`subgroup_table`: ``privkit.fairness.subgroup_report`` per target epsilon, the seeds'
  scores averaged metric by metric (the class as the group on PneumoniaMNIST);
* :func:`calibration_table`: ECE, Brier score and NLL per run, before and after temperature
  scaling fitted on the validation split, without and with differential privacy;
* :func:`metrics_table`: ``privkit.metrics.evaluate`` per run and split, in the layout of
  ``privkit.results`` (so ``privkit.plots.privacy_utility`` draws it).

Binary datasets only (PneumoniaMNIST): the reports are about one decision per case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from privkit import (
    _validate,
    budget,
    calibration,
    data,
    executors,
    fairness,
    private_calibration,
    results,
    stacks,
)
from privkit.metrics import evaluate
from privkit.train import TrainConfig, logits, resolve_device, train_many

SCORE_COLUMNS = (
    "run_id",
    "experiment",
    "dataset",
    "model",
    "seed",
    "randomness",
    "epsilon_target",
    "epsilon_spent",
    "delta",
    "noise_multiplier",
    "split",
    "index",
    "label",
    "logit",
)
SPLITS = ("val", "test")
CALIBRATIONS = ("uncalibrated", "temperature", "temperature_dp")


def scores_table(out_dir: str | Path) -> results.Table:
    """``<out_dir>/scores.csv`` in the results store: columns ``SCORE_COLUMNS``, logits with
    nine significant digits."""
    return results.Store(out_dir).table("scores", SCORE_COLUMNS, float_format="%.9g")


def read_scores(out_dir: str | Path) -> pd.DataFrame:
    """The scores table of ``out_dir`` (:func:`scored_sweep`), or an empty one with its columns."""
    return scores_table(out_dir).read()


def scored_sweep(
    configs: Sequence[TrainConfig],
    *,
    experiment: str,
    out_dir: str | Path,
    max_stack: int | None = None,
    ledger: budget.Ledger | None = None,
    allow_seeded: bool = False,
    executor: str | executors.Executor | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every config whose scores are not yet in ``<out_dir>/scores.csv``; return their scores.

    The driver of ``privkit.experiments.sweep`` (``privkit.stacks.sweep``) with this module's
    unit of work (:func:`score_stack`) and table: run ids from ``privkit.results.run_id`` (same
    config, same data, same id), models that can share a stack train together (all on a GPU,
    one at a time on a CPU, or ``max_stack``), the ledger is charged before a stack is
    dispatched (``allow_seeded`` as there), and this process alone writes each run's
    ``runs/<run_id>.json`` (provenance, where it ran, ledger anchor) and then the stack's rows,
    appended atomically.

    Returns:
        The scores of ``configs``: columns ``SCORE_COLUMNS``, one row per run, split (``val``,
        ``test``) and example (``index`` in the split).

    Raises:
        ValueError: a config's dataset is not binary.
        privkit.executors.UnitsFailedError: stacks that failed for good, once the others are written.
    """
    for config in configs:
        if data.info(config.dataset).task != "binary":
            raise ValueError(
                f"Expected a binary dataset; got dataset={config.dataset!r} "
                "(per-case reports need one label)."
            )
    return stacks.sweep(
        configs,
        unit=score_stack,
        table=scores_table(out_dir),
        experiment=experiment,
        max_stack=max_stack,
        ledger=ledger,
        allow_seeded=allow_seeded,
        executor=executor,
        progress=progress,
    )


def score_stack(
    dataset: data.Dataset,
    configs: Sequence[TrainConfig],
    runs: Sequence[str],
    experiment: str,
    progress: bool = False,
) -> list[results.Output]:
    """:func:`scored_sweep`'s unit of work: train one stack where it runs; per run, its
    ``scores`` rows (``SCORE_COLUMNS``) and its record (``results.run_record``); nothing
    written."""
    dataset = dataset.to(resolve_device(configs[0].device))
    trained = train_many(configs, dataset=dataset, progress=progress)
    outputs = []
    for run, config, result in zip(runs, configs, trained):
        record = results.run_record(
            result, data_sha256=dataset.sha256, trained_together_with=len(configs)
        )
        frames = []
        for split in SPLITS:
            part = dataset.split(split)
            z = logits(result.model, part.images)[:, 0].double().cpu().numpy()  # (n,)
            frames.append(
                pd.DataFrame(
                    {
                        "run_id": run,
                        "experiment": experiment,
                        "dataset": config.dataset,
                        "model": config.model,
                        "seed": config.seed,
                        "randomness": config.randomness,
                        "epsilon_target": config.epsilon
                        if config.epsilon is not None
                        else math.nan,
                        "epsilon_spent": result.mechanism.epsilon,
                        "delta": result.mechanism.delta,
                        "noise_multiplier": result.mechanism.noise_multiplier,
                        "split": split,
                        "index": np.arange(len(z)),
                        "label": part.labels[:, 0].long().cpu().numpy(),
                        "logit": z,
                    }
                )
            )
        scores = pd.concat(frames, ignore_index=True)[list(SCORE_COLUMNS)]
        outputs.append(results.Output(run, {"scores": scores}, record))
    return outputs


def _runs(scores: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return list(scores.groupby("run_id", sort=False))


def metrics_table(scores: pd.DataFrame) -> pd.DataFrame:
    """``privkit.metrics.evaluate`` of every run and split, as tidy rows (``privkit.results`` columns)."""
    rows = []
    for _, part in _runs(scores):
        first = part.iloc[0]
        for split, rows_split in part.groupby("split"):
            values = evaluate(
                rows_split["label"].to_numpy(), expit(rows_split["logit"].to_numpy()), task="binary"
            )
            common = {c: first[c] for c in SCORE_COLUMNS[: SCORE_COLUMNS.index("noise_multiplier")]}
            rows += [{**common, "split": split, "metric": m, "value": v} for m, v in values.items()]
    return pd.DataFrame(rows)


def subgroup_table(
    scores: pd.DataFrame,
    *,
    split: str = "test",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Per-class metrics and gaps with bootstrap CIs, for each target epsilon.

    The group of each example is its class (``fairness.class_groups``). At each epsilon the
    probabilities of all its seeds enter ``fairness.subgroup_report`` together: each metric
    is the mean over the seeds and the CI covers the evaluation set's sampling, not the
    seeds' spread (one resampling for all seeds).

    Returns:
        ``subgroup_report``'s rows with ``epsilon_target``, ``epsilon_spent`` (the largest
        spent by its runs) and ``n_models`` added.
    """
    _validate.one_of(SPLITS, split=split)
    part = scores[scores["split"] == split]
    frames = []
    for eps, rows in part.groupby("epsilon_target", dropna=False):
        wide = rows.pivot(index="index", columns="run_id", values="logit").sort_index()  # (n, k)
        labels = rows.drop_duplicates("index").set_index("index")["label"].sort_index()
        report = fairness.subgroup_report(
            labels.to_numpy(),
            expit(wide.to_numpy()),
            fairness.class_groups(labels.to_numpy()),
            threshold=threshold,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            method=method,
            seed=seed,
        )
        spent = rows["epsilon_spent"].max()
        frames.append(
            report.assign(epsilon_target=eps, epsilon_spent=spent, n_models=wide.shape[1])
        )
    return pd.concat(frames, ignore_index=True)


def calibration_table(
    scores: pd.DataFrame,
    *,
    n_bins: int = 15,
    temperature_epsilon: float = 1.0,
    temperature_delta: float = 1e-5,
    temperature_steps: int = 8,
    randomness: str = "secure",
    seed: int = 0,
) -> pd.DataFrame:
    """Calibration of every run on the test split, before and after temperature scaling.

    ``calibration`` is ``uncalibrated`` (T = 1), ``temperature`` (T fitted on the validation
    split without noise: the validation patients' privacy is spent and not accounted) or
    ``temperature_dp`` (``private_calibration.fit_temperature_dp`` on the validation split with
    (``temperature_epsilon``, ``temperature_delta``), its noise from the OS, or with
    ``randomness="seeded"`` from ``seed`` plus the run's seed and the run's scores).
    Each run's fit is a separate mechanism on the same validation patients: calibrating all
    the runs of a sweep spends the composition of all their fits; a deployed model spends one.

    Returns:
        Tidy rows: ``run_id, seed, epsilon_target, epsilon_spent, calibration, temperature,
        temperature_epsilon, metric, value`` with metrics ``ece`` (equal-width, ``n_bins``
        bins, top-label, Guo et al. 2017), ``ece_equal_mass``, ``brier``, ``nll``.
        ``temperature_epsilon`` is the validation split's privacy spent by the fit: 0 when
        uncalibrated, inf for the noiseless fit (spent, unaccounted), the accountant's epsilon
        for the DP fit.
    """
    rows = []
    for run, part in _runs(scores):
        val, test = part[part["split"] == "val"], part[part["split"] == "test"]
        first = part.iloc[0]
        private = private_calibration.fit_temperature_dp(
            val["label"].to_numpy(),
            val["logit"].to_numpy(),
            epsilon=temperature_epsilon,
            delta=temperature_delta,
            steps=temperature_steps,
            randomness=randomness,
            seed=seed + int(first["seed"]),
        )
        fits = {
            "uncalibrated": (1.0, 0.0),
            "temperature": (
                calibration.fit_temperature(val["label"], val["logit"]),
                math.inf,
            ),  # unaccounted
            "temperature_dp": (private.temperature, private.mechanism.epsilon),
        }
        y, z = test["label"].to_numpy(), test["logit"].to_numpy()
        for name, (t, eps_t) in fits.items():
            p = calibration.apply_temperature(z, t)
            values = {
                "ece": calibration.expected_calibration_error(y, p, n_bins=n_bins),
                "ece_equal_mass": calibration.expected_calibration_error(
                    y, p, n_bins=n_bins, binning="equal-mass"
                ),
                "brier": calibration.brier_score(y, p),
                "nll": calibration.negative_log_likelihood(y, z, temperature=t),
            }
            common = {
                "run_id": run,
                "seed": first["seed"],
                "epsilon_target": first["epsilon_target"],
                "epsilon_spent": first["epsilon_spent"],
                "calibration": name,
                "temperature": t,
                "temperature_epsilon": eps_t,
            }
            rows += [{**common, "metric": m, "value": v} for m, v in values.items()]
    return pd.DataFrame(rows)


def calibrated_test_scores(scores: pd.DataFrame, calib: pd.DataFrame) -> pd.DataFrame:
    """Test rows with ``probability`` under each calibration (one row per example and calibration).

    Temperatures come from ``calib`` (:func:`calibration_table`).
    """
    temps = calib.drop_duplicates(["run_id", "calibration"])[
        ["run_id", "calibration", "temperature"]
    ]
    test = scores[scores["split"] == "test"].merge(temps, on="run_id")
    return test.assign(probability=expit(test["logit"] / test["temperature"]))
