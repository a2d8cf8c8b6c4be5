"""Model registry: networks that every DP-SGD backend can train.

DP-SGD needs per-sample gradients, which rules out BatchNorm (it mixes samples) and in-place
operations under Opacus's hooks. Every model here uses GroupNorm or no normalisation and
out-of-place activations; `tests/test_models.py` trains each one with every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from privkit import _validate
from privkit.scattering import Scattering, n_coefficients


class TramerBonehCNN(nn.Module):
    """The small CNN of Tramèr & Boneh (2021), "Differentially private learning needs better
    features (or much more data)", Table 9 (MNIST), also Opacus's MNIST example.

    Two strided convolutions with max-pooling, tanh activations (which the paper found better
    than ReLU under DP-SGD), and two linear layers. About 26k parameters at 28x28.
    """

    def __init__(self, in_channels: int = 1, n_outputs: int = 1, image_size: int = 28) -> None:
        super().__init__()
        if image_size != 28:
            raise ValueError(
                f"Expected image_size=28 for model 'cnn', got image_size={image_size}."
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=8, stride=2, padding=3),  # (B, 16, 14, 14)
            nn.Tanh(),
            nn.MaxPool2d(2, stride=1),  # (B, 16, 13, 13)
            nn.Conv2d(16, 32, kernel_size=4, stride=2),  # (B, 32, 5, 5)
            nn.Tanh(),
            nn.MaxPool2d(2, stride=1),  # (B, 32, 4, 4)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, n_outputs)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with GroupNorm and no in-place operations."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(groups, c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNetGN(nn.Module):
    """A ResNet for small images with GroupNorm instead of BatchNorm.

    The CIFAR-style stem (3x3 convolution, no max-pool) suits 28x28 inputs. GroupNorm is what
    De et al. (2022), "Unlocking high-accuracy differentially private image classification
    through scale", use for DP-SGD. ``blocks=(2, 2, 2, 2), width=64`` is ResNet-18's layout.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_outputs: int = 1,
        *,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 64,
        groups: int = 16,
        image_size: int | None = None,  # any size: global average pooling before the head
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.GroupNorm(groups, width),
            nn.ReLU(),
        )
        layers, c_in = [], width
        for stage, n_blocks in enumerate(blocks):
            c_out = width * 2**stage
            for b in range(n_blocks):
                layers.append(BasicBlock(c_in, c_out, 2 if (b == 0 and stage > 0) else 1, groups))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))  # (B, n_outputs)


class FixedFeatures(nn.Module):
    """A model ``head(features(x))`` whose ``features`` are fixed: no parameters and nothing
    learned from data. They cost no privacy, and training may compute them once per image and
    train only the ``head`` (``privkit.train`` does), which gives the same per-sample gradients."""

    features: nn.Module
    head: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ScatterNet(FixedFeatures):
    """ScatterNet features with a linear head, Tramèr & Boneh (2021), "Differentially private
    learning needs better features (or much more data)", Section 3: the wavelet scattering
    transform (J=2, L=8: 81 channels at a quarter of the side), GroupNorm without learned
    scale (groups of 3 channels, normalising each image on its own, so it costs no privacy),
    then one linear layer. 4k parameters at 28x28: little for DP-SGD's noise to drown.
    """

    def __init__(self, in_channels: int = 1, n_outputs: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.features = Scattering(image_size, J=2, L=8)
        channels, side = in_channels * n_coefficients(2, 8), image_size // 4
        self.head = nn.Sequential(
            nn.GroupNorm(channels // 3, channels, affine=False),
            nn.Flatten(),
            nn.Linear(channels * side * side, n_outputs),
        )


ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {
    "cnn": TramerBonehCNN,
    "resnet8": partial(ResNetGN, blocks=(1, 1, 1), width=16, groups=8),
    "resnet18": partial(ResNetGN, blocks=(2, 2, 2, 2), width=64, groups=16),
    "scatternet": ScatterNet,
}


def create_model(
    name: str, *, in_channels: int = 1, n_outputs: int = 1, image_size: int = 28
) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of ``MODELS``: ``cnn`` (Tramèr & Boneh), ``resnet8`` (small, CPU-friendly),
            ``resnet18`` (ResNet-18 layout), ``scatternet`` (fixed ScatterNet features and a
            linear head, the most accurate under DP on PneumoniaMNIST); all without BatchNorm.
        in_channels: image channels (1 for the chest X-ray sets).
        n_outputs: logits per image (1 for a binary task, 14 for ChestMNIST).
        image_size: side of the square input.

    >>> model = create_model("cnn", n_outputs=14)
    >>> sum(p.numel() for p in model.parameters())
    26142
    """
    _validate.one_of(MODELS, model=name)
    _validate.positive_int(in_channels=in_channels)
    _validate.positive_int(n_outputs=n_outputs)
    return MODELS[name](in_channels=in_channels, n_outputs=n_outputs, image_size=image_size)
