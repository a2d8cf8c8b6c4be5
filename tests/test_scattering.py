"""The scattering transform against Kymatio's, and ScatterNet's training shortcut (features
computed once, head trained) against gradients through the whole model."""

from __future__ import annotations

import pytest
import torch
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
from torch.func import functional_call, grad

from privkit.engine.per_sample import per_sample_gradients, per_sample_loss
from privkit.models import ScatterNet, create_model
from privkit.scattering import Scattering, n_coefficients


@pytest.mark.parametrize(
    ("size", "J", "L", "channels"), [(28, 2, 8, 1), (28, 2, 8, 3), (32, 1, 4, 1), (32, 3, 6, 2)]
)
def test_scattering_equals_kymatio(size: int, J: int, L: int, channels: int) -> None:
    x = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(J)) * 2 - 1
    reference = ScatteringTorch2D(J=J, shape=(size, size), L=L)((x + 1) / 2)  # (B, C, K, H', W')
    ours = Scattering(size, J=J, L=L)(x)
    assert ours.shape == (4, channels * n_coefficients(J, L), size // 2**J, size // 2**J)
    torch.testing.assert_close(ours, reference.flatten(1, 2), atol=1e-6, rtol=1e-5)


def test_scattering_has_nothing_to_learn_and_moves_with_the_module() -> None:
    scattering = Scattering(28)
    assert list(scattering.parameters()) == []
    assert scattering.state_dict() == {}  # filters are rebuilt, not saved with a model
    assert all(b.dtype == torch.float64 for b in scattering.double().buffers())


def test_scattering_rejects_a_size_it_cannot_subsample() -> None:
    with pytest.raises(ValueError, match="image_size=30 to be a multiple of 2\\*\\*J = 4"):
        Scattering(30, J=2)
    with pytest.raises(ValueError, match="J=0"):
        Scattering(28, J=0)


def test_per_sample_gradients_through_scatternet_equal_batch_of_one_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("scatternet")
    x, y = torch.rand(5, 1, 28, 28) * 2 - 1, torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0]])
    batched = per_sample_gradients(model, x, y)  # vmap through the scattering transform
    params = dict(model.named_parameters())
    for i in range(len(x)):

        def loss(p: dict, i: int = i) -> torch.Tensor:
            return per_sample_loss(functional_call(model, p, (x[i : i + 1],)), y[i : i + 1]).sum()

        alone = grad(loss)({k: v.detach() for k, v in params.items()})
        for name in params:
            torch.testing.assert_close(batched[name][i], alone[name], atol=1e-6, rtol=1e-5)


def test_head_on_precomputed_features_has_the_whole_models_gradients() -> None:
    """What privkit.train relies on to train a ScatterNet's head on features computed once."""
    torch.manual_seed(1)
    model = create_model("scatternet")
    assert isinstance(model, ScatterNet)
    x, y = torch.rand(6, 1, 28, 28) * 2 - 1, (torch.rand(6, 1) > 0.5).float()
    whole = per_sample_gradients(model, x, y)
    head = per_sample_gradients(model.head, model.features(x), y)
    assert set(whole) == {f"head.{k}" for k in head}
    for name, g in head.items():
        torch.testing.assert_close(whole[f"head.{name}"], g)
