from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthetic import N_LABELS, write_medmnist_npz
from tutorials import browser_available


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding synthetic ``pneumoniamnist.npz`` and ``chestmnist.npz``."""
    root = tmp_path_factory.mktemp("medmnist")
    for name, n_labels in N_LABELS.items():
        write_medmnist_npz(root / f"{name}.npz", n_labels=n_labels)
    return root


@pytest.fixture(autouse=True)
def _no_gpu_needed(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the browser test is selected and can run, it runs every tutorial in JupyterLab;
    running them again with papermill would only repeat it."""
    if browser_available() and any(item.get_closest_marker("browser") for item in items):
        skip = pytest.mark.skip(reason="run in JupyterLab by tests/test_browser.py")
        for item in items:
            if getattr(item, "originalname", "") == "test_tutorial_runs_on_a_cpu":
                item.add_marker(skip)
