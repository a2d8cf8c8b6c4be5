"""Experiments: YAML files whose keys are real notebook parameters, notebooks that execute
under papermill, and `reproduce` that reruns only what is stale."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from privkit import experiments

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
@pytest.mark.parametrize("profile", experiments.PROFILES)
def test_yaml_keys_are_parameters_the_notebook_really_has(spec: Path, profile: str) -> None:
    exp = experiments.load_experiment(spec, profile=profile, notebooks_dir=REPO / "notebooks")
    known = experiments.notebook_parameters(exp.notebook)
    assert set(exp.parameters) <= set(known)
    assert exp.parameters or profile == "full"  # a full profile may be the notebook's defaults


def test_every_notebook_has_a_parameters_cell_and_no_outputs() -> None:
    import nbformat

    notebooks = sorted((REPO / "notebooks").rglob("*.ipynb"))
    assert len(notebooks) >= 2
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert any("parameters" in c.metadata.get("tags", []) for c in code), path
        assert not any(c.outputs for c in code), f"{path}: clear outputs before committing"


def _write_experiment(tmp_path: Path, text: str) -> Path:
    spec = tmp_path / "experiments" / "privacy_utility.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(text)
    return spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("notebook: privacy_utility.ipynb\nparameter: {}\n", r"unknown key\(s\) \['parameter'\]"),
        ("parameters: {}\n", r"missing key 'notebook'"),
        (
            "notebook: privacy_utility.ipynb\nparameters: {epsilon: 3}\n",
            r"parameters has unknown parameter\(s\) \['epsilon'\].*epsilons",
        ),
        (
            "notebook: privacy_utility.ipynb\nprofiles: {quick: {sed: [1]}}\n",
            r"profiles.quick has unknown parameter\(s\) \['sed'\]",
        ),
    ],
)
def test_bad_yaml_is_named(tmp_path: Path, text: str, message: str) -> None:
    spec = _write_experiment(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        experiments.load_experiment(spec, notebooks_dir=REPO / "notebooks")


def test_unknown_profile_lists_the_known(tmp_path: Path) -> None:
    spec = _write_experiment(tmp_path, "notebook: privacy_utility.ipynb\nprofiles: {quick: {}}\n")
    with pytest.raises(ValueError, match=r"profile='fast'.*full, quick"):
        experiments.load_experiment(spec, profile="fast", notebooks_dir=REPO / "notebooks")


TINY = """notebook: privacy_utility.ipynb
parameters:
  epsilons: [8.0]
  seeds: [0]
  overrides: {{epochs: 1, batch_size: 32}}
  delta: 0.001
  device: cpu
  data_root: {root}
"""


@pytest.mark.slow
def test_reproduce_runs_the_notebook_then_skips_it_until_something_changes(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_experiment(tmp_path, TINY.format(root=synthetic_root))
    dirs = dict(
        experiments_dir=tmp_path / "experiments",
        notebooks_dir=REPO / "notebooks",
        results_dir=tmp_path / "results",
        figures_dir=tmp_path / "figures",
    )
    [executed] = experiments.reproduce(**dirs)
    assert executed == tmp_path / "results" / "privacy_utility" / "privacy_utility-full.ipynb"
    table = pd.read_csv(tmp_path / "results" / "privacy_utility" / "metrics.csv")
    assert set(table["epsilon_target"]) == {8.0, float("inf")}
    for suffix in ("png", "pdf"):
        assert (tmp_path / "figures" / f"privacy_utility.{suffix}").stat().st_size > 1000

    ran = []
    monkeypatch.setattr(experiments, "run_notebook", lambda *a, **k: ran.append(a))
    experiments.reproduce(**dirs)
    assert ran == []  # up to date
    _write_experiment(tmp_path, TINY.format(root=synthetic_root).replace("epochs: 1", "epochs: 2"))
    experiments.reproduce(**dirs)
    assert len(ran) == 1  # the parameters changed
