"""Tests for privkit.data: loading, data root, download failures and file validation."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import N_LABELS, write_medmnist_npz

from privkit import data

SIZES = (256, 64, 128)  # synthetic train/val/test, as written by conftest's synthetic_root


@pytest.fixture(scope="module", autouse=True)
def _medmnist_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Import medmnist under a temporary HOME: its import creates ``~/.medmnist``."""
    if "medmnist" not in sys.modules:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
            import medmnist  # noqa: F401


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every urllib request fail; returns the URLs that were tried."""
    tried: list[str] = []

    def refuse(request, *args, **kwargs):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tried


def _medmnist_info(name: str) -> dict:
    from medmnist import INFO

    return INFO[name]


# --- loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", data.DATASETS)
def test_load_synthetic(synthetic_root: Path, name: str) -> None:
    ds = data.load(name, root=synthetic_root)
    path = synthetic_root / f"{name}.npz"
    assert ds.path == path
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ds.info.name == name and ds.info.n_labels == N_LABELS[name]
    with np.load(path) as raw:
        for split, n in zip(data.SPLITS, SIZES):
            s = ds.split(split)
            assert s is getattr(ds, split) and len(s) == n
            assert s.images.shape == (n, 1, 28, 28) and s.images.dtype == torch.float32
            assert s.labels.shape == (n, N_LABELS[name]) and s.labels.dtype == torch.float32
            assert s.images.device.type == "cpu" and s.labels.device.type == "cpu"
            assert -1.0 <= s.images.min() and s.images.max() <= 1.0
            expected = (raw[f"{split}_images"][:, None] / 255.0 - 0.5) / 0.5  # MedMNIST's recipe
            np.testing.assert_allclose(s.images.numpy(), expected, atol=1e-6)
            np.testing.assert_array_equal(s.labels.numpy(), raw[f"{split}_labels"])


def test_images_match_medmnist_transform_exactly(synthetic_root: Path) -> None:
    from PIL import Image
    from torchvision import transforms

    # The transform of MedMNIST's getting-started example, applied image by image.
    medmnist_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])]
    )
    ds = data.load("pneumoniamnist", root=synthetic_root)
    with np.load(synthetic_root / "pneumoniamnist.npz") as raw:
        expected = [medmnist_transform(Image.fromarray(img)) for img in raw["val_images"][:8]]
    assert torch.equal(ds.val.images[:8], torch.stack(expected))


def test_load_accepts_torch_device_and_repr_is_short(synthetic_root: Path) -> None:
    ds = data.load("pneumoniamnist", root=synthetic_root, device=torch.device("cpu"))
    assert "train=256" in repr(ds) and len(repr(ds)) < 300
    assert repr(ds.test) == "Split(images=(128, 1, 28, 28), labels=(128, 1), device=cpu)"


def test_split_rejects_unknown_name(synthetic_root: Path) -> None:
    ds = data.load("pneumoniamnist", root=synthetic_root)
    with pytest.raises(ValueError, match="split='validation'; expected one of: train, val, test"):
        ds.split("validation")


# --- metadata and names ------------------------------------------------------------------


def test_info_matches_medmnist() -> None:
    pneu, chest = data.info("pneumoniamnist"), data.info("chestmnist")
    assert (pneu.task, pneu.n_labels, pneu.label_names) == ("binary", 1, ("normal", "pneumonia"))
    assert dict(pneu.n_samples) == {"train": 4708, "val": 524, "test": 624}
    assert pneu.md5 == "28209eda62fecd6e6a2d98b1501bb15f" and pneu.python_class == "PneumoniaMNIST"
    assert (chest.task, chest.n_labels, chest.n_channels) == ("multi-label", 14, 1)
    assert chest.label_names[0] == "atelectasis" and chest.label_names[13] == "hernia"
    raw = _medmnist_info("chestmnist")
    assert (chest.url, chest.md5, chest.license) == (raw["url"], raw["MD5"], raw["license"])
    assert "4708/524/624" in repr(pneu) and "pneumonia" in str(pneu)


@pytest.mark.parametrize("call", [data.info, data.load, data.dataset_path])
def test_unknown_dataset_lists_known(call) -> None:
    with pytest.raises(ValueError, match="dataset='mnist'; expected one of: pneumoniamnist, chest"):
        call("mnist")


def test_dataset_path_follows_medmnist_naming(tmp_path: Path) -> None:
    from medmnist.dataset import MedMNIST2D

    assert data.SIZES == tuple(MedMNIST2D.available_sizes)
    assert data.dataset_path("pneumoniamnist", tmp_path) == tmp_path / "pneumoniamnist.npz"
    assert data.dataset_path("chestmnist", tmp_path, size=64) == tmp_path / "chestmnist_64.npz"
    with pytest.raises(ValueError, match="size=32; expected one of: 28, 64, 128, 224"):
        data.dataset_path("chestmnist", tmp_path, size=32)


# --- data root ---------------------------------------------------------------------------


def test_data_root_argument_beats_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRIVKIT_DATA", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data.data_root() == tmp_path / "env"
    assert data.data_root("") == tmp_path / "env"  # empty means not given
    assert data.dataset_path("chestmnist") == tmp_path / "env" / "chestmnist.npz"


def _run_python(code: str, home: Path, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "PRIVKIT_DATA"}
    environ.update(HOME=str(home), **env)
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_data_root_defaults_to_medmnist_root(tmp_path: Path) -> None:
    code = (
        "import os, privkit.data as d, medmnist.info as m\n"
        "unset = d.data_root()\n"
        "os.environ['PRIVKIT_DATA'] = ''  # empty counts as unset\n"
        "print(unset, d.data_root(), m.DEFAULT_ROOT)"
    )
    unset, empty, theirs = _run_python(code, tmp_path).split()
    assert unset == empty == theirs == str(tmp_path / ".medmnist")


def test_import_touches_no_disk(tmp_path: Path) -> None:
    code = "import privkit.data, sys; assert 'medmnist' not in sys.modules; print('ok')"
    assert _run_python(code, tmp_path) == "ok"
    assert list(tmp_path.iterdir()) == []


# --- download ----------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", ["", "new/folder"])
def test_missing_file_without_network(tmp_path: Path, no_network: list, subfolder: str) -> None:
    folder = tmp_path / subfolder
    url = _medmnist_info("pneumoniamnist")["url"]
    with pytest.raises(data.DataUnavailableError) as err:
        data.load("pneumoniamnist", root=folder)
    message = str(err.value)
    for part in ("pneumoniamnist.npz", str(folder), url, "PRIVKIT_DATA", "URLError"):
        assert part in message
    assert isinstance(err.value, FileNotFoundError)
    assert no_network and no_network[0].startswith("https://zenodo.org/")  # medmnist tried
    assert list(tmp_path.rglob("*")) == []  # no file, no temporary folder, no new folder


def _fake_download(monkeypatch, write) -> list[dict]:
    """Replace the torchvision helper medmnist downloads with; ``write(path)`` fakes it."""
    import torchvision.datasets.utils

    calls: list[dict] = []

    def download_url(url, root, filename=None, md5=None, **kwargs):
        calls.append({"url": url, "md5": md5})
        write(Path(root) / filename)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)
    return calls


def test_failed_download_leaves_no_partial_file(monkeypatch, tmp_path: Path) -> None:
    def write_half_then_fail(path: Path) -> None:
        path.write_bytes(b"PK\x03\x04 half a file")
        raise RuntimeError("File not found or corrupted.")

    _fake_download(monkeypatch, write_half_then_fail)
    with pytest.raises(data.DataUnavailableError, match="File not found or corrupted"):
        data.load("chestmnist", root=tmp_path)
    assert list(tmp_path.rglob("*")) == []


def test_download_puts_file_in_place(monkeypatch, tmp_path: Path) -> None:
    calls = _fake_download(
        monkeypatch, lambda p: write_medmnist_npz(p, n_labels=14, sizes=(8, 4, 4), image_size=64)
    )
    ds = data.load("chestmnist", root=tmp_path, size=64)
    raw = _medmnist_info("chestmnist")
    assert calls == [{"url": raw["url_64"], "md5": raw["MD5_64"]}]  # medmnist's URL and MD5
    assert ds.path == tmp_path / "chestmnist_64.npz" and ds.train.images.shape == (8, 1, 64, 64)
    assert list(tmp_path.iterdir()) == [ds.path]
    data.load("chestmnist", root=tmp_path, size=64)  # present now: no second download
    assert len(calls) == 1


# --- validation of present files ---------------------------------------------------------


def _rewrite(path: Path, **changes) -> None:
    """Rewrite a MedMNIST npz file with some arrays replaced (``None`` drops the key)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def _small(tmp_path: Path, name: str = "pneumoniamnist") -> Path:
    return write_medmnist_npz(tmp_path / f"{name}.npz", n_labels=N_LABELS[name], sizes=(6, 4, 5))


def _corrupt_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(2000))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _grey(n: int, size: int = 28) -> np.ndarray:
    return np.zeros((n, size, size), np.uint8)


BAD_FILES = {
    "random bytes": (_corrupt_bytes, "is not an npz file"),
    "truncated": (_truncate, "is not an npz file"),
    "bad crc": (_flip_byte, "is not a readable npz file"),
    "missing key": (lambda p: _rewrite(p, val_labels=None), "lacks key.s. val_labels;"),
    "float images": (
        lambda p: _rewrite(p, train_images=_grey(6).astype(np.float32)),
        r"train_images has dtype float32; expected uint8",
    ),
    "wrong size": (
        lambda p: _rewrite(p, val_images=_grey(4, 32)),
        r"val_images has shape \(4, 32, 32\); expected \(n, 28, 28\)",
    ),
    "rgb for grey": (
        lambda p: _rewrite(p, test_images=np.zeros((5, 28, 28, 3), np.uint8)),
        r"test_images has shape \(5, 28, 28, 3\); expected \(n, 28, 28\)",
    ),
    "float labels": (
        lambda p: _rewrite(p, train_labels=np.zeros((6, 1), np.float32)),
        "train_labels has dtype float32; expected integers",
    ),
    "flat labels": (
        lambda p: _rewrite(p, test_labels=np.zeros(5, np.uint8)),
        r"test_labels has shape \(5,\); expected \(n, 1\)",
    ),
    "label out of range": (
        lambda p: _rewrite(p, val_labels=np.array([[0], [1], [2], [1]], np.uint8)),
        r"val_labels has values \[2\]; expected only 0 and 1",
    ),
    "count mismatch": (
        lambda p: _rewrite(p, train_labels=np.zeros((7, 1), np.uint8)),
        "train_labels has 7 rows; expected 6, one per image in train_images",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_file_is_named_and_explained(tmp_path: Path, case: str) -> None:
    damage, pattern = BAD_FILES[case]
    path = _small(tmp_path)
    damage(path)
    with pytest.raises(ValueError, match=pattern) as err:
        data.load("pneumoniamnist", root=tmp_path)
    assert str(path) in str(err.value)
    assert path.exists()  # a present file is reported, never replaced by a download


def test_chestmnist_needs_fourteen_label_columns(tmp_path: Path) -> None:
    path = _small(tmp_path, "chestmnist")
    _rewrite(path, test_labels=np.zeros((5, 1), np.uint8))
    with pytest.raises(ValueError, match=r"test_labels has shape \(5, 1\); expected \(n, 14\)"):
        data.load("chestmnist", root=tmp_path)


def test_file_must_match_requested_size(tmp_path: Path) -> None:
    write_medmnist_npz(tmp_path / "pneumoniamnist_64.npz", sizes=(3, 3, 3), image_size=28)
    with pytest.raises(ValueError, match=r"pneumoniamnist_64.npz: train_images .* \(n, 64, 64\)"):
        data.load("pneumoniamnist", root=tmp_path, size=64)


# --- the real file -----------------------------------------------------------------------


def _real_root() -> Path | None:
    root = os.environ.get("PRIVKIT_DATA")
    return Path(root) if root and (Path(root) / "pneumoniamnist.npz").is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_real_root() is None, reason="PRIVKIT_DATA holds no pneumoniamnist.npz")
def test_real_pneumoniamnist() -> None:
    ds = data.load("pneumoniamnist")  # found through PRIVKIT_DATA, never downloaded
    assert ds.path == _real_root() / "pneumoniamnist.npz"
    counts = {s: (len(ds.split(s)), int(ds.split(s).labels.sum())) for s in data.SPLITS}
    # (images, pneumonia cases), from the official release: normal = images - pneumonia
    assert counts == {"train": (4708, 3494), "val": (524, 389), "test": (624, 390)}
    assert ds.train.images.shape == (4708, 1, 28, 28)
    assert ds.train.images.min() == -1.0 and ds.train.images.max() == 1.0
    assert ds.sha256 == hashlib.sha256(ds.path.read_bytes()).hexdigest()


def test_train_size_reads_only_the_header(
    synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = len(data.load("pneumoniamnist", root=synthetic_root).train)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("train_size read the arrays"))
    assert data.train_size("pneumoniamnist", root=synthetic_root) == expected == 256
