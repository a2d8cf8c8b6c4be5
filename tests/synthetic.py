"""Tiny synthetic files in MedMNIST's npz format, learnable, for tests that must not download."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Number of labels per dataset, as in MedMNIST's INFO (binary sets store one 0/1 column).
N_LABELS = {"pneumoniamnist": 1, "chestmnist": 14}


def write_medmnist_npz(
    path: Path,
    *,
    n_labels: int = 1,
    sizes: tuple[int, int, int] = (256, 64, 128),
    image_size: int = 28,
    seed: int = 0,
) -> Path:
    """Write train/val/test splits whose label ``k`` brightens image block ``k``.

    Images are uint8 (n, H, W), labels uint8 (n, n_labels), as MedMNIST stores them.
    A small CNN separates the classes in a few epochs, so tests can check learning.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = rng.integers(0, 2, size=(n, n_labels), dtype=np.uint8)
        images = rng.normal(100, 30, size=(n, image_size, image_size))
        block = image_size // 4
        for k in range(n_labels):
            r, c = divmod(k % 16, 4)
            images[:, r * block : (r + 1) * block, c * block : (c + 1) * block] += (
                90.0 * labels[:, k, None, None]
            )
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path
