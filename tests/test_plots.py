"""The privacy-utility figure, read back from the matplotlib objects it draws."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from privkit.plots import privacy_utility, save_figure
from privkit.plots.epsilon_axis import NONPRIVATE_TICK

EPSILONS = (0.5, 1, 2, 4, 8)
AUC = {0.5: 0.65, 1: 0.72, 2: 0.86, 4: 0.90, 8: 0.93, math.inf: 0.96}
SEED_OFFSET = (-0.01, 0.0, 0.01)  # spread over seeds: sd = 0.01


def tidy_table(*, epsilons=(*EPSILONS, math.inf), delta: float | None = 1e-5) -> pd.DataFrame:
    """3 seeds x each epsilon, metrics auc and accuracy, test and val splits."""
    rows = []
    for eps in epsilons:
        for seed, offset in enumerate(SEED_OFFSET):
            common = {
                "run_id": f"eps{eps}-s{seed}",
                "seed": seed,
                "epsilon_target": eps,
                "epsilon_spent": eps,
                "dataset": "pneumoniamnist",
                "model": "cnn",
            }
            if delta is not None:
                common["delta"] = delta
            for split, shift in (("test", 0.0), ("val", 0.02)):
                rows.append(
                    {**common, "split": split, "metric": "auc", "value": AUC[eps] + offset + shift}
                )
                rows.append(
                    {
                        **common,
                        "split": split,
                        "metric": "accuracy",
                        "value": AUC[eps] - 0.1 + offset,
                    }
                )
    return pd.DataFrame(rows)


NONPRIVATE_X = 8 * 4  # two octaves right of the largest epsilon


def nonprivate_points(ax) -> list:
    """The error-bar containers drawn at the non-private tick (one per series)."""
    ticks = dict(zip([t.get_text() for t in ax.get_xticklabels()], ax.get_xticks()))
    if NONPRIVATE_TICK not in ticks:
        return []
    x = ticks[NONPRIVATE_TICK]
    return [c for c in ax.containers if np.allclose(c.lines[0].get_xdata(), x, rtol=0.1)]


def nonprivate_levels(ax) -> list[float]:
    return [float(c.lines[0].get_ydata()[0]) for c in nonprivate_points(ax)]


def test_one_log_scaled_panel_per_metric_with_readable_labels():
    fig = privacy_utility(tidy_table(), metrics=("auc", "accuracy"))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    auc_ax, acc_ax = fig.axes
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["0.5", "1", "2", "4", "8", NONPRIVATE_TICK]
        assert "privacy budget ε" in ax.get_xlabel() and "more private" in ax.get_xlabel()
    assert "AUC" in auc_ax.get_ylabel() and auc_ax.get_ylabel().startswith("test")
    assert "accuracy" in acc_ax.get_ylabel()


def test_private_means_and_sd_error_bars_are_drawn_at_each_epsilon():
    fig = privacy_utility(tidy_table(), metrics=["auc"])
    ax = fig.axes[0]
    bars, _nonprivate = ax.containers
    xs, ys = bars.lines[0].get_data()
    np.testing.assert_allclose(xs, EPSILONS)
    np.testing.assert_allclose(ys, [AUC[e] for e in EPSILONS])
    # Error bar segments span mean ± sd, with sd = 0.01 over the three seeds.
    segments = bars.lines[2][0].get_segments()
    heights = [seg[1][1] - seg[0][1] for seg in segments]
    np.testing.assert_allclose(heights, 2 * 0.01, rtol=1e-6)


def test_non_private_runs_are_a_point_with_an_sd_bar_at_the_non_private_tick():
    fig = privacy_utility(tidy_table(), metrics=["auc", "accuracy"])
    auc_ax, acc_ax = fig.axes
    assert nonprivate_levels(auc_ax) == [pytest.approx(0.96)]
    assert nonprivate_levels(acc_ax) == [pytest.approx(0.86)]
    private, (level,) = auc_ax.containers[0], nonprivate_points(auc_ax)
    assert level.lines[0].get_xdata()[0] == pytest.approx(NONPRIVATE_X)
    assert level.lines[0].get_linestyle() == "None"  # not joined to the private curve
    assert NONPRIVATE_X not in private.lines[0].get_xdata()
    assert level.lines[0].get_color() == private.lines[0].get_color()
    ((low, high),) = [seg[:, 1] for seg in level.lines[2][0].get_segments()]  # mean ± sd
    assert low == pytest.approx(0.95) and high == pytest.approx(0.97)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["mean ± sd over 3 seeds"]


def test_split_selects_rows():
    fig = privacy_utility(tidy_table(), metrics=["auc"], split="val")
    assert nonprivate_levels(fig.axes[0]) == [pytest.approx(0.98)]
    assert fig.axes[0].get_ylabel() == "val ROC AUC"


def test_title_names_dataset_model_and_a_single_delta():
    assert privacy_utility(tidy_table()).get_suptitle() == "pneumoniamnist · cnn · δ = 1e-05"
    assert "δ" not in privacy_utility(tidy_table(delta=None)).get_suptitle()
    two_deltas = tidy_table()
    two_deltas.loc[two_deltas["seed"] == 0, "delta"] = 1e-6
    assert "δ" not in privacy_utility(two_deltas).get_suptitle()


def test_draws_into_given_axes():
    fig = Figure()
    ax = fig.subplots()
    assert privacy_utility(tidy_table(), metrics=["auc"], ax=ax) is fig
    assert ax.get_xscale() == "log" and ax.get_legend() is not None
    with pytest.raises(ValueError, match=r"one axes per panel \(2\); got 1"):
        privacy_utility(tidy_table(), metrics=["auc", "accuracy"], ax=ax)


def test_only_private_or_only_non_private_rows_still_plot():
    fig = privacy_utility(tidy_table(epsilons=EPSILONS))
    assert nonprivate_levels(fig.axes[0]) == []
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.5", "1", "2", "4", "8"]
    fig = privacy_utility(tidy_table(epsilons=(math.inf,)))
    assert nonprivate_levels(fig.axes[0]) == [pytest.approx(0.96)]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [NONPRIVATE_TICK]


def test_legend_names_the_non_private_seed_count_when_it_differs():
    table = tidy_table()
    table = table[~(np.isinf(table["epsilon_target"]) & (table["seed"] > 0))]
    fig = privacy_utility(table, metrics=["auc"])
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["mean ± sd over 3 seeds (1 non-private)"]
    ((low, high),) = [
        seg[:, 1] for seg in nonprivate_points(fig.axes[0])[0].lines[2][0].get_segments()
    ]
    assert low == high == pytest.approx(0.95)  # one seed: no spread to show


def test_a_missing_target_with_infinite_spent_epsilon_is_non_private():
    # privkit.results records a noise_multiplier=0 run with epsilon_target = NaN.
    table = tidy_table()
    table.loc[np.isinf(table["epsilon_target"]), "epsilon_target"] = np.nan
    assert nonprivate_levels(privacy_utility(table).axes[0]) == [pytest.approx(0.96)]


def test_leaves_global_matplotlib_state_alone():
    import matplotlib
    import matplotlib.pyplot as plt

    before = dict(matplotlib.rcParams)
    open_figures = plt.get_fignums()
    privacy_utility(tidy_table())
    assert dict(matplotlib.rcParams) == before
    assert plt.get_fignums() == open_figures


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = privacy_utility(tidy_table())
    paths = save_figure(fig, tmp_path / "figures" / "privacy_utility")
    assert paths == [
        tmp_path / "figures" / "privacy_utility.png",
        tmp_path / "figures" / "privacy_utility.pdf",
    ]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "privacy_utility.pdf",
        "privacy_utility.png",
    ]  # no temporary files left behind
    # A dot in the stem is kept; a .png suffix is not doubled.
    assert save_figure(fig, tmp_path / "eps0.5")[0].name == "eps0.5.png"
    assert save_figure(fig, tmp_path / "fig.png")[1].name == "fig.pdf"


@pytest.mark.parametrize(
    "change, kwargs, match",
    [
        (lambda t: t.drop(columns=["seed", "split"]), {}, r"missing: seed, split"),
        (lambda t: t, {"metrics": ["auc", "f1"]}, r"Unknown metric\(s\) 'f1'.*has: accuracy, auc"),
        (lambda t: t, {"split": "train"}, r"Unknown split='train'; the table has: test, val"),
        (lambda t: t.iloc[0:0], {}, r"Expected rows in table; it is empty"),
        (
            lambda t: t.assign(epsilon_target=np.nan, epsilon_spent=1.0),
            {},
            r"epsilon_target > 0.*18 run\(s\).*eps0.5-s0.* and 13 more",
        ),
        (lambda t: t, {"metrics": []}, r"at least one metric"),
    ],
)
def test_bad_tables_raise(change, kwargs, match):
    with pytest.raises(ValueError, match=match):
        privacy_utility(change(tidy_table()), **kwargs)


def test_by_draws_each_recipe_with_its_own_curve_level_and_colour():
    old = tidy_table()
    new = tidy_table().assign(model="scatternet", value=lambda t: t["value"] + 0.02)
    fig = privacy_utility(pd.concat([new, old]), metrics=["auc"], by="model")
    ax = fig.axes[0]
    levels = nonprivate_points(ax)
    curves = [c.lines[0] for c in ax.containers if c not in levels]
    assert len(curves) == 2 and curves[0].get_color() != curves[1].get_color()
    np.testing.assert_allclose(curves[0].get_ydata(), [AUC[e] + 0.02 for e in EPSILONS])
    np.testing.assert_allclose(curves[1].get_ydata(), [AUC[e] for e in EPSILONS])
    assert nonprivate_levels(ax) == [pytest.approx(0.98), pytest.approx(0.96)]
    assert [c.lines[0].get_color() for c in levels] == [c.get_color() for c in curves]
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["scatternet: mean ± sd over 3 seeds", "cnn: mean ± sd over 3 seeds"]
    assert fig.get_suptitle() == "pneumoniamnist · δ = 1e-05"  # the model is no longer one value
    with pytest.raises(ValueError, match="Unknown by='recipe'"):
        privacy_utility(old, by="recipe")
