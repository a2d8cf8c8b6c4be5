"""Every registered model trains with every backend (Opacus rejects BatchNorm and some
in-place operations, so a model zoo must be checked against each)."""

from __future__ import annotations

import pytest
import torch

from privkit.engine import DP_BACKENDS, create_backend
from privkit.models import MODELS, create_model


@pytest.mark.parametrize("backend", [*DP_BACKENDS, "nonprivate"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_with_every_backend(name: str, backend: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, n_outputs=2)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 2, (4, 2)).float()
    assert model(x).shape == (4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    engine = create_backend(
        backend, model, noise_multiplier=0.5, max_grad_norm=1.0, expected_batch_size=4,
        lr=0.1, momentum=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    loss = engine.step(x, y)
    assert loss > 0
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed), "every parameter receives an update"


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="model='vgg'.*cnn, resnet8, resnet18"):
        create_model("vgg")


def test_models_have_no_batchnorm_and_no_inplace_activations() -> None:
    for name in MODELS:
        for module in create_model(name).modules():
            assert not isinstance(module, torch.nn.modules.batchnorm._BatchNorm), name
            assert not getattr(module, "inplace", False), f"{name}: {module}"
