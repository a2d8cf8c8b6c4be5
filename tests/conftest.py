from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthetic import N_LABELS, write_medmnist_npz


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
