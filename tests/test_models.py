"""Every registered model trains with every backend (Opacus rejects BatchNorm and some
in-place operations, so a model zoo must be checked against each)."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import write_medmnist_npz

from privkit import data
from privkit.engine import DP_BACKENDS
from privkit.models import MODELS, create_model
from privkit.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> data.Dataset:
    root = tmp_path_factory.mktemp("tiny")
    write_medmnist_npz(root / "chestmnist.npz", n_labels=14, sizes=(24, 8, 8))
    return data.load("chestmnist", root=root)


@pytest.mark.parametrize("epsilon", [8.0, math.inf], ids=["private", "nonprivate"])
@pytest.mark.parametrize("backend", DP_BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_with_every_backend(
    tiny: data.Dataset, name: str, backend: str, epsilon: float
) -> None:
    config = TrainConfig(
        model=name,
        backend=backend,
        epsilon=epsilon,
        epochs=1,
        batch_size=8,
        lr=0.1,
        delta=1e-2,
        device="cpu",
    )
    torch.manual_seed(config.seed)
    initial = create_model(name, n_outputs=14)
    result = train(config, dataset=tiny, progress=False)
    trained = dict(result.model.named_parameters())
    for key, before in initial.named_parameters():
        assert not torch.equal(before, trained[key].detach().cpu()), f"{key} was not updated"
    assert math.isfinite(result.loss_per_epoch[0])


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="model='vgg'.*cnn, resnet8, resnet18"):
        create_model("vgg")


def test_models_have_no_batchnorm_and_no_inplace_activations() -> None:
    for name in MODELS:
        for module in create_model(name).modules():
            assert not isinstance(module, torch.nn.modules.batchnorm._BatchNorm), name
            assert not getattr(module, "inplace", False), f"{name}: {module}"
