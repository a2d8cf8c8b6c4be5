"""Metrics checked against values counted by hand, not against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privkit.metrics import evaluate


def test_binary_auc_counts_concordant_pairs():
    # Positives score 0.35 and 0.8; negatives 0.1 and 0.4. Of the 4 (positive, negative)
    # pairs, 3 are ordered correctly (0.35 < 0.4 is the one that is not): AUC = 3/4.
    # At 0.5: predictions 0, 0, 0, 1 -> TP=1, FN=1, TN=2, FP=0.
    r = evaluate(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), task="binary")
    assert r == pytest.approx(
        {
            "auc": 0.75,
            "accuracy": 0.75,
            "balanced_accuracy": 0.75,
            "sensitivity": 0.5,
            "specificity": 1.0,
        }
    )


def test_binary_auc_counts_ties_as_one_half():
    # Pairs (0.6 vs 0.6) tie -> 1/2, (0.6 vs 0.2) -> 1, (0.9 vs 0.6) -> 1, (0.9 vs 0.2) -> 1.
    r = evaluate([1, 1, 0, 0], [0.6, 0.9, 0.6, 0.2], task="binary")
    assert r["auc"] == pytest.approx(3.5 / 4)


def test_binary_thresholded_metrics_from_a_hand_built_confusion_matrix():
    # TP=3, FN=1 (positives) and TN=4, FP=2 (negatives) at threshold 0.7.
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.65, 0.75, 0.95]
    r = evaluate(labels, scores, task="binary", threshold=0.7)  # 0.7 itself counts as positive
    assert r["sensitivity"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(4 / 6)
    assert r["accuracy"] == pytest.approx(7 / 10)
    assert r["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # Concordant pairs: 0.9 beats 5 of the 6 negatives, 0.8 beats 5, 0.7 beats 4, 0.6 beats 3.
    assert r["auc"] == pytest.approx(17 / 24)


def test_binary_accepts_an_n_by_1_column_and_torch_tensors():
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0]])  # MedMNIST stores (n, 1)
    scores = torch.tensor([[0.1], [0.4], [0.35], [0.8]], requires_grad=True)
    assert evaluate(labels, scores, task="binary")["auc"] == pytest.approx(0.75)


def test_binary_with_one_class_gives_nan_auc_not_an_error():
    r = evaluate([1, 1, 1], [0.2, 0.7, 0.9], task="binary")
    assert math.isnan(r["auc"])
    assert math.isnan(r["specificity"]) and math.isnan(r["balanced_accuracy"])
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(2 / 3)


def test_multi_label_macro_auc_skips_a_constant_label():
    labels = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 0], [1, 0, 0]])  # label 2 is all 0
    scores = np.array([[0.1, 0.9, 0.6], [0.4, 0.2, 0.1], [0.35, 0.8, 0.2], [0.8, 0.3, 0.3]])
    r = evaluate(labels, scores, task="multi-label")
    # Label 0: AUC 3/4 (as in the binary case). Label 1: positives 0.9, 0.8 beat negatives
    # 0.2, 0.3: AUC 1. Label 2 has no positives: skipped, so the macro AUC is (3/4 + 1) / 2.
    assert r["auc_0"] == pytest.approx(0.75)
    assert r["auc_1"] == pytest.approx(1.0)
    assert math.isnan(r["auc_2"])
    assert r["auc"] == pytest.approx(0.875)
    # Accuracy at 0.5 per label: 3/4, 4/4, 3/4 (0.6 is a false positive); mean over all labels.
    assert r["accuracy"] == pytest.approx((0.75 + 1 + 0.75) / 3)
    # Balanced accuracy: label 0 (1/2 + 1) / 2, label 1: 1; label 2 skipped like the AUC.
    assert r["balanced_accuracy"] == pytest.approx((0.75 + 1) / 2)
    assert set(r) == {"auc", "accuracy", "balanced_accuracy", "auc_0", "auc_1", "auc_2"}


def test_multi_label_keys_use_label_names():
    labels = [[0, 1], [1, 0]]
    scores = [[0.2, 0.9], [0.8, 0.1]]
    r = evaluate(labels, scores, task="multi-label", label_names=["effusion", "hernia"])
    assert r["auc_effusion"] == 1.0 and r["auc_hernia"] == 1.0
    assert "auc_0" not in r


def test_multi_label_with_no_label_having_both_classes_gives_nan():
    r = evaluate([[0, 1], [0, 1]], [[0.2, 0.9], [0.1, 0.8]], task="multi-label")
    assert math.isnan(r["auc"]) and math.isnan(r["balanced_accuracy"])
    assert r["accuracy"] == 1.0


@pytest.mark.parametrize(
    "labels, scores, kwargs, match",
    [
        (
            [0, 1, 1],
            [0.1, 0.9],
            {"task": "binary"},
            r"same shape.*labels.shape=\(3,\).*scores.shape=\(2,\)",
        ),
        (
            [0, 1],
            [0.1, 0.9],
            {"task": "regression"},
            r"Unknown task='regression'; expected one of: binary, multi-label",
        ),
        ([0, 1], [0.1, 1.2], {"task": "binary"}, r"scores .*\[0, 1\].*max=1.2"),
        ([0, 1], [-0.5, 0.9], {"task": "binary"}, r"scores .*\[0, 1\].*min=-0.5"),
        ([0, 1], [float("nan"), 0.9], {"task": "binary"}, r"scores .*\[0, 1\].*NaN"),
        ([0, 2], [0.1, 0.9], {"task": "binary"}, r"labels to hold only 0 and 1; found 2"),
        ([0, 0.5], [0.1, 0.9], {"task": "binary"}, r"labels to hold only 0 and 1; found 0.5"),
        (
            [[0, 1], [1, 0]],
            [[0.1, 0.9], [0.8, 0.2]],
            {"task": "binary"},
            r"labels.shape=\(2, 2\).*\(n,\) or \(n, 1\)",
        ),
        ([0, 1], [0.1, 0.9], {"task": "multi-label"}, r"labels.shape=\(2,\).*\(n, n_labels\)"),
        ([0, 1], [0.1, 0.9], {"task": "binary", "threshold": 1.5}, r"threshold=1.5 in \[0, 1\]"),
        (
            [[0, 1], [1, 0]],
            [[0.1, 0.9], [0.8, 0.2]],
            {"task": "multi-label", "label_names": ["a"]},
            r"2 label_names.*got 1",
        ),
        (
            [[0, 1], [1, 0]],
            [[0.1, 0.9], [0.8, 0.2]],
            {"task": "multi-label", "label_names": ["a", "a"]},
            r"distinct label_names",
        ),
        ([], [], {"task": "binary"}, r"at least one example"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(labels, scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(np.array(labels), np.array(scores), **kwargs)
