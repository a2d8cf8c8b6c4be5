"""The `privkit` command: a training that prints its result, and bad input that exits
non-zero with a message and leaves no files behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from privkit.cli import main

ARGS = [
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--delta",
    "1e-3",
    "--device",
    "cpu",
    "--no-progress",
]


def test_train_prints_the_result_and_appends_to_the_table(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "train",
                "--epsilon",
                "4",
                "--data-root",
                str(synthetic_root),
                "--out",
                str(out),
                *ARGS,
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert 0 < printed["epsilon_spent"] <= 4
    assert 0 <= printed["metrics"]["test_auc"] <= 1
    table = pd.read_csv(out / "metrics.csv")
    assert table["run_id"].nunique() == 1 and (table["epsilon_target"] == 4).all()


def test_infinite_epsilon_trains_without_privacy(
    synthetic_root: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", "--epsilon", "inf", "--data-root", str(synthetic_root), *ARGS]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["backend"] == "nonprivate" and printed["noise_multiplier"] == 0


def test_a_fixed_noise_multiplier_replaces_the_default_epsilon(
    synthetic_root: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every TrainConfig field reaches the run from its option: here --noise-multiplier (which
    drops the default --epsilon) and --randomness."""
    args = ["--noise-multiplier", "2.5", "--randomness", "seeded"]
    assert main(["train", "--data-root", str(synthetic_root), *ARGS, *args]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["noise_multiplier"] == 2.5 and printed["randomness"] == "seeded"
    assert printed["delta"] == 1e-3 and 0 < printed["epsilon_spent"] < 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilon", "0"], "epsilon=0.0 > 0"),
        (["--delta", "2"], r"delta=2.0 in (0, 1)"),
        (["--epochs", "0"], "epochs=0 to be an integer >= 1"),
        (["--batch-size", "100000"], "batch_size=100000 <= 256"),
    ],
)
def test_bad_input_exits_non_zero_and_writes_nothing(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    code = main(["train", "--data-root", str(synthetic_root), "--out", str(out), *ARGS, *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_without_network_names_file_and_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data-root", str(empty), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "pneumoniamnist.npz" in err and str(empty) in err
    assert list(empty.iterdir()) == []


def test_unknown_dataset_is_refused_by_the_parser(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "cifar10"])
    assert exit_info.value.code == 2
    assert "pneumoniamnist" in capsys.readouterr().err


def test_help_runs_as_a_console_script() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for args in (["--help"], ["train", "--help"], ["reproduce", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "privkit", *args], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0 and "usage: privkit" in done.stdout
