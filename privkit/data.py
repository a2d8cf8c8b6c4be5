"""MedMNIST chest X-ray sets as whole-split tensors, with checked files and provenance.

Files are MedMNIST's own npz files (``pneumoniamnist.npz``, ``chestmnist_64.npz``, ...) under a
data root: the ``root`` argument, else the environment variable ``PRIVKIT_DATA``, else
MedMNIST's default (``~/.medmnist``). A missing file is downloaded through ``medmnist``; a file
already present is validated for shape and content but never against the official MD5, so
local copies rebuilt from other sources load as they are.

``medmnist`` is imported inside functions only: it creates ``~/.medmnist`` when imported, and
importing this module must touch no disk.

>>> from privkit import data
>>> data.dataset_path("chestmnist", root="/data", size=64).name
'chestmnist_64.npz'
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import types
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from privkit import _validate

DATASETS = ("pneumoniamnist", "chestmnist")
SIZES = (28, 64, 128, 224)  # medmnist.dataset.MedMNIST2D.available_sizes
SPLITS = ("train", "val", "test")
ENV_VAR = "PRIVKIT_DATA"
_TASKS = {"binary-class": "binary", "multi-label, binary-class": "multi-label"}


class DataUnavailableError(FileNotFoundError):
    """A dataset file is missing and could not be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    """What MedMNIST's ``INFO`` says about one dataset, in privkit's terms.

    Attributes:
        name: MedMNIST's flag, e.g. ``"pneumoniamnist"``.
        description: MedMNIST's description of the source data.
        task: ``"binary"`` (one 0/1 label column) or ``"multi-label"`` (one 0/1 column per label).
        n_labels: Number of label columns: 1 for PneumoniaMNIST, 14 for ChestMNIST.
        label_names: For binary, the names of classes 0 and 1; for multi-label, one per column.
        n_channels: 1 for grey images, 3 for RGB.
        n_samples: Official split sizes, ``{"train": ..., "val": ..., "test": ...}``.
        license: The data license, e.g. ``"CC BY 4.0"``.
        url: Download URL of the 28x28 file (other sizes: ``_64`` etc. before ``.npz``).
        md5: Official MD5 of the 28x28 file.
        python_class: MedMNIST's dataset class name, e.g. ``"PneumoniaMNIST"``.
    """

    name: str
    description: str
    task: str
    n_labels: int
    label_names: tuple[str, ...]
    n_channels: int
    n_samples: Mapping[str, int] = field(hash=False)
    license: str
    url: str
    md5: str
    python_class: str

    def __repr__(self) -> str:
        sizes = "/".join(str(self.n_samples[s]) for s in SPLITS)
        return (
            f"DatasetInfo({self.name!r}, task={self.task!r}, n_labels={self.n_labels}, "
            f"n_channels={self.n_channels}, train/val/test={sizes}, license={self.license!r})"
        )

    def __str__(self) -> str:
        sizes = ", ".join(f"{s} {self.n_samples[s]}" for s in SPLITS)
        return "\n".join(
            [
                f"{self.python_class} ({self.name}): {self.task}, {self.n_labels} label column(s)",
                f"    labels: {', '.join(self.label_names)}",
                f"    channels: {self.n_channels}; official splits: {sizes}",
                f"    license: {self.license}; url: {self.url}",
                f"    {self.description}",
            ]
        )


@dataclass(frozen=True, eq=False)
class Split:
    """One split as tensors on one device.

    Attributes:
        images: float32 (N, C, H, W), scaled to [-1, 1] as ``(x / 255 - 0.5) / 0.5``.
        labels: float32 (N, n_labels) of 0.0 / 1.0.
    """

    images: torch.Tensor  # (N, C, H, W)
    labels: torch.Tensor  # (N, n_labels)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (
            f"Split(images={tuple(self.images.shape)}, labels={tuple(self.labels.shape)}, "
            f"device={self.images.device})"
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: its ``info``, splits ``train``, ``val``, ``test``, and the npz file
    they came from (``path``, with ``sha256`` the hex SHA-256 of its bytes, for provenance)."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    path: Path
    sha256: str

    def split(self, name: str) -> Split:
        """Return the split called ``"train"``, ``"val"`` or ``"test"``."""
        return getattr(self, _validate.one_of(SPLITS, split=name))

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with its splits on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.train.images.device == device:
            return self
        moved = {
            s: Split(self.split(s).images.to(device), self.split(s).labels.to(device))
            for s in SPLITS
        }
        return replace(self, **moved)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLITS)
        return (
            f"Dataset({self.info.name!r}, {sizes}, image={tuple(self.train.images.shape[1:])}, "
            f"device={self.train.images.device}, path='{self.path}', sha256={self.sha256[:12]}...)"
        )


def info(name: str) -> DatasetInfo:
    """Return what ``medmnist.INFO[name]`` says about dataset ``name`` (one of ``DATASETS``).

    Raises:
        ValueError: ``name`` is not one of ``DATASETS``.

    >>> info("mnist")
    Traceback (most recent call last):
    ...
    ValueError: Unknown dataset='mnist'; expected one of: pneumoniamnist, chestmnist.
    """
    _validate.one_of(DATASETS, dataset=name)
    from medmnist.info import INFO  # lazy: importing medmnist creates ~/.medmnist

    raw = INFO[name]
    labels = tuple(raw["label"][str(i)] for i in range(len(raw["label"])))
    task = _TASKS[raw["task"]]
    return DatasetInfo(
        name=name,
        description=raw["description"],
        task=task,
        n_labels=1 if task == "binary" else len(labels),
        label_names=labels,
        n_channels=raw["n_channels"],
        n_samples=types.MappingProxyType(dict(raw["n_samples"])),
        license=raw["license"],
        url=raw["url"],
        md5=raw["MD5"],
        python_class=raw["python_class"],
    )


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds the npz files.

    Args:
        root: The folder; if ``None`` or ``""``, the environment variable ``PRIVKIT_DATA``;
            if that is unset or empty, MedMNIST's default root (``~/.medmnist``).

    >>> data_root("/data/medmnist").as_posix()
    '/data/medmnist'
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    from medmnist.info import DEFAULT_ROOT  # creates ~/.medmnist, as medmnist always does

    # DEFAULT_ROOT is None when medmnist failed to create it; the path it tried is this one.
    return Path(DEFAULT_ROOT) if DEFAULT_ROOT else Path.home() / ".medmnist"


def dataset_path(name: str, root: str | os.PathLike[str] | None = None, size: int = 28) -> Path:
    """Return where MedMNIST keeps ``name`` at ``size``: ``<root>/<name>[_<size>].npz``.

    Size 28 has no suffix (``pneumoniamnist.npz``); others have one (``pneumoniamnist_64.npz``).

    Raises:
        ValueError: Unknown ``name`` or a size not in ``SIZES``.

    >>> dataset_path("pneumoniamnist", root="/data").name
    'pneumoniamnist.npz'
    """
    _validate.one_of(DATASETS, dataset=name)
    _validate.one_of(SIZES, size=size)
    suffix = "" if size == 28 else f"_{size}"
    return data_root(root) / f"{name}{suffix}.npz"


def _root_cause(exc: BaseException) -> BaseException:
    while (nxt := exc.__cause__ or exc.__context__) is not None:
        exc = nxt
    return exc


def _download(name: str, path: Path, size: int) -> None:
    """Fetch ``path`` with medmnist's own download, which checks the official MD5.

    The file lands in a temporary folder beside ``path`` and moves into place only when
    complete, so a failed download leaves nothing behind.
    """
    from medmnist.dataset import MedMNIST  # lazy, see module docstring
    from medmnist.info import INFO

    flag = "" if size == 28 else f"_{size}"
    folder, url = path.parent, INFO[name][f"url{flag}"]
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{path.stem}-download-") as tmp:
            # MedMNIST.download(self) reads only these attributes. Its constructor would also
            # load the whole train split into memory, and insists on the root existing.
            MedMNIST.download(
                types.SimpleNamespace(flag=name, size_flag=flag, info=INFO[name], root=tmp)
            )
            os.replace(Path(tmp) / path.name, path)
    except Exception as exc:  # medmnist turns every failure into a bare RuntimeError
        for made in created:  # remove the folders made here, if still empty
            try:
                made.rmdir()
            except OSError:
                break
        cause = _root_cause(exc)
        raise DataUnavailableError(
            f"{path.name} is not in {folder} and could not be downloaded "
            f"({type(cause).__name__}: {cause}). Download it from {url} and put it in {folder}, "
            f"or set {ENV_VAR} (or pass root=) to a folder that holds it."
        ) from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    keys = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
    advice = "delete it to download it again, or replace it with a good copy"
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an npz file (no zip archive: corrupt, truncated or another format); "
            f"{advice}."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            arrays = {} if missing else {k: npz[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable npz file ({exc}); {advice}.") from exc
    if missing:
        raise ValueError(f"{path} lacks key(s) {', '.join(missing)}; expected {', '.join(keys)}.")
    return arrays


def _check(arrays: dict[str, np.ndarray], meta: DatasetInfo, size: int, path: Path) -> None:
    image_shape = (size, size) if meta.n_channels == 1 else (size, size, meta.n_channels)

    def need(ok: bool, key: str, found: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"{path}: {key} has {found}; expected {expected}.")

    for split in SPLITS:
        ik, lk = f"{split}_images", f"{split}_labels"
        images, labels = arrays[ik], arrays[lk]
        need(images.dtype == np.uint8, ik, f"dtype {images.dtype}", "uint8")
        expected = "(n, " + ", ".join(map(str, image_shape)) + ")"
        need(images.shape[1:] == image_shape, ik, f"shape {images.shape}", expected)
        need(np.issubdtype(labels.dtype, np.integer), lk, f"dtype {labels.dtype}", "integers")
        shape_ok = labels.ndim == 2 and labels.shape[1] == meta.n_labels
        need(shape_ok, lk, f"shape {labels.shape}", f"(n, {meta.n_labels})")
        n, m = images.shape[0], labels.shape[0]
        need(m == n, lk, f"{m} rows", f"{n}, one per image in {ik}")
        bad = np.unique(labels[(labels != 0) & (labels != 1)])
        need(bad.size == 0, lk, f"values {bad[:5].tolist()}", "only 0 and 1")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# MedMNIST's ToTensor + Normalize(mean=[.5], std=[.5]) in float32, for each uint8 value. A
# lookup is bit-identical to computing (x / 255 - 0.5) / 0.5 and several times faster on a CPU.
_SCALE = (np.arange(256, dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def _to_split(images: np.ndarray, labels: np.ndarray, device: torch.device) -> Split:
    x = torch.from_numpy(_SCALE[images])  # (N, H, W) or (N, H, W, C), float32 in [-1, 1]
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    y = torch.from_numpy(labels.astype(np.float32))  # (N, n_labels)
    return Split(images=x.contiguous().to(device), labels=y.to(device))


def load(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    size: int = 28,
) -> Dataset:
    """Load a dataset's three splits onto ``device``, downloading the file if it is missing.

    Args:
        name: One of ``DATASETS``.
        root: Data folder; see ``data_root``.
        device: Anything ``torch.device`` accepts (``"cpu"``, ``"cuda:0"``, ...).
        size: Image side, one of ``SIZES``.

    Returns:
        A ``Dataset`` whose splits hold images float32 (N, C, size, size) in [-1, 1] and labels
        float32 (N, n_labels).

    Raises:
        ValueError: Unknown ``name`` or ``size``, or a file that is unreadable or not in
            MedMNIST's format (the message names the file, the key and what was expected).
        DataUnavailableError: The file is missing and the download failed.
    """
    device = torch.device(device)
    path = dataset_path(name, root, size)  # checks name and size
    meta = info(name)
    if not path.is_file():
        _download(name, path, size)
    arrays = _read_npz(path)
    _check(arrays, meta, size, path)
    splits = {s: _to_split(arrays[f"{s}_images"], arrays[f"{s}_labels"], device) for s in SPLITS}
    return Dataset(info=meta, path=path, sha256=_sha256(path), **splits)


def train_size(name: str, *, root: str | os.PathLike[str] | None = None, size: int = 28) -> int:
    """The number of training examples, read from the file's array header alone.

    Training asks the privacy ledger before it reads any patient data, but the sampling rate
    it asks about depends on this number; the header of ``train_labels.npy`` inside the npz
    holds it without a single label or image being read. Downloads a missing file, as ``load``.
    """
    path = dataset_path(name, root, size)
    if not path.is_file():
        _download(name, path, size)
    try:
        with zipfile.ZipFile(path) as archive, archive.open("train_labels.npy") as member:
            major, _ = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0
                if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(member)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read the header of train_labels ({exc}).") from exc
    return int(shape[0])
