"""``privkit bench``: epoch times of each training engine on one device, in one run.

Rows (all on the same data, model and batch size, measured in the same process):

- ``nonprivate``: ordinary SGD on Poisson batches, the baseline every ratio refers to;
- ``opacus``: DP-SGD through Opacus's hooks;
- ``fast``: DP-SGD with ``torch.func``, one model;
- ``fast-stack-K``: K models at once; ``per_model_epoch_s`` is the epoch time divided by K.

The first epoch of each row (warm-up, compilation) is reported apart and left out of
``epoch_s``, the median of the later epochs. This is a benchmark that prints numbers, not a test.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from privkit import data
from privkit._io import atomic_write_text
from privkit.train import TrainConfig, resolve_device, train_many


@dataclass(frozen=True)
class BenchRow:
    name: str
    models: int
    epoch_s: float  # median over timed epochs, all models of the row together
    per_model_epoch_s: float
    ratio_to_nonprivate: float  # per_model_epoch_s / nonprivate epoch_s
    first_epoch_s: float  # warm-up (compilation included)
    peak_memory_bytes: int | None  # peak accelerator memory; None on a CPU


def _bench_dataset(name: str, root: str | None, device: torch.device) -> tuple[data.Dataset, str]:
    """The real dataset when the data root has it, else random data of PneumoniaMNIST's size."""
    path = data.dataset_path(name, root)
    if path.exists():
        return data.load(name, root=root, device=device), f"{name} ({path})"
    info = data.info(name)
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> data.Split:
        images = torch.randn(n, info.n_channels, 28, 28, generator=gen)  # (n, C, 28, 28)
        labels = torch.randint(0, 2, (n, info.n_labels), generator=gen).float()
        return data.Split(images.to(device), labels.to(device))

    sizes = info.n_samples
    fake = data.Dataset(
        info,
        split(sizes["train"]),
        split(sizes["val"]),
        split(sizes["test"]),
        path=Path("random"),
        sha256="random",
    )
    return fake, f"random data shaped like {name} (no {path})"


def run(
    *,
    device: str = "auto",
    model: str = "cnn",
    dataset: str = "pneumoniamnist",
    data_root: str | None = None,
    batch_size: int = 256,
    epochs: int = 2,
    stacks: Sequence[int] = (8, 32),
    progress: bool = True,
) -> dict:
    """Time every engine; returns ``{"device", "model", "data", "rows": [...]}``.

    Args:
        epochs: timed epochs per row, after one warm-up epoch.
        stacks: the K of the ``fast-stack-K`` rows.
    """
    dev = resolve_device(device)
    ds, described = _bench_dataset(dataset, data_root, dev)
    base = TrainConfig(
        dataset=dataset,
        model=model,
        epsilon=None,
        noise_multiplier=1.0,
        batch_size=batch_size,
        epochs=epochs + 1,
        device=str(dev),
        delta=1e-5,
    )
    plan = [
        ("nonprivate", [replace(base, backend="opacus", noise_multiplier=0.0)]),
        ("opacus", [replace(base, backend="opacus")]),
        ("fast", [replace(base, backend="fast")]),
        *[
            (f"fast-stack-{k}", [replace(base, backend="fast", seed=s) for s in range(k)])
            for k in stacks
        ],
    ]
    rows: list[BenchRow] = []
    for name, configs in plan:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = train_many(configs, dataset=ds, progress=progress)[0].epoch_seconds
        epoch_s = statistics.median(times[1:])
        per_model = epoch_s / len(configs)
        baseline = rows[0].epoch_s if rows else per_model
        rows.append(
            BenchRow(
                name=name,
                models=len(configs),
                epoch_s=epoch_s,
                per_model_epoch_s=per_model,
                ratio_to_nonprivate=per_model / baseline,
                first_epoch_s=times[0],
                peak_memory_bytes=torch.cuda.max_memory_allocated(dev)
                if dev.type == "cuda"
                else None,
            )
        )
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    return {
        "device": name,
        "model": model,
        "data": described,
        "batch_size": batch_size,
        "torch": torch.__version__,
        "rows": [asdict(r) for r in rows],
    }


def time_ray(
    *,
    address: str | None = None,
    units: int = 8,
    epochs: int = 1,
    data_root: str | None = None,
    progress: bool = True,
) -> dict:
    """What running units of work as Ray tasks costs, in one run: the same ``units`` (one
    DP-SGD model each, ``stacks.train_stack`` on the CPU) here with torch's threads and with
    one (as a Ray task of one CPU runs), then on the Ray cluster at ``address`` (None:
    ``ray.init()``'s choice, a new local one if none runs) with 1 and then 2 units at a time
    (``max_in_flight``; each task asks for one CPU).

    Per-unit dispatch overhead is the driver's wall time from dispatch to result less the unit's
    own time where it ran (transfers, scheduling, the result's way back), measured with one unit
    at a time, after a warm-up that starts two workers (their imports are reported apart).
    """
    from privkit import executors, stacks

    ds, described = _bench_dataset("pneumoniamnist", data_root, torch.device("cpu"))
    base = TrainConfig(epsilon=None, noise_multiplier=1.0, epochs=epochs, device="cpu", delta=1e-5)
    work = [
        executors.Unit(
            name=f"bench {k}",
            fn=stacks.train_stack,
            data=ds,
            args=([replace(base, seed=k)], [f"bench-{k}"], "bench", False),
        )
        for k in range(units)
    ]

    def timed(executor: executors.Executor, batch: list) -> dict:
        done: list[executors.Finished] = []
        start = time.perf_counter()
        executors.run(
            batch, executor=executor, on_finished=done.append, desc=executor.name, progress=progress
        )
        wall = time.perf_counter() - start
        unit_s = [f.seconds for f in done]
        overhead_ms = [1000 * (f.wall_seconds - f.seconds) for f in done]
        return {
            "units": len(done),
            "wall_s": wall,
            "runs_per_minute": 60 * len(done) / wall,
            "unit_s": statistics.median(unit_s),
            "overhead_ms": statistics.median(overhead_ms),
            "nodes": sorted({f.where["hostname"] for f in done}),
        }

    threads, rows = torch.get_num_threads(), []
    for n in (threads, 1):  # 1: as a Ray task of one CPU runs
        torch.set_num_threads(n)
        row = timed(executors.LocalExecutor(), work)
        rows.append({"executor": "local", "workers": 1, "threads": n, **row})
    torch.set_num_threads(threads)
    warm = timed(executors.RayExecutor(address, max_in_flight=2), work[:2])
    for workers in (1, 2):
        executor = executors.RayExecutor(address, max_in_flight=workers)
        rows.append({"executor": "ray", "workers": workers, "threads": 1, **timed(executor, work)})
    import ray

    return {
        "data": described,
        "epochs": epochs,
        "cluster": ray.cluster_resources(),
        "warm_up_s": warm["wall_s"],
        "rows": rows,
    }


def format_ray(report: dict) -> str:
    """:func:`time_ray`'s report as a plain-text table."""
    cpus = report["cluster"].get("CPU", 0)
    lines = [
        f"units of work: 1 model x {report['epochs']} epoch(s) on {report['data']}; Ray cluster of {cpus:g} "
        f"CPU(s); first two Ray units (worker start, imports) {report['warm_up_s']:.1f} s",
        f"{'executor':<10}{'workers':>8}{'threads':>8}{'units':>7}{'wall_s':>9}{'runs/min':>10}{'unit_s':>9}"
        f"{'overhead_ms':>13}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['executor']:<10}{r['workers']:>8}{r['threads']:>8}{r['units']:>7}{r['wall_s']:>9.1f}"
            f"{r['runs_per_minute']:>10.1f}{r['unit_s']:>9.2f}{r['overhead_ms']:>13.1f}"
        )
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """The report as a plain-text table."""
    lines = [
        f"device: {report['device']}   model: {report['model']}   "
        f"batch: {report['batch_size']}   data: {report['data']}",
        f"{'name':<14}{'models':>7}{'epoch_s':>10}{'per_model_s':>13}{'x nonprivate':>14}"
        f"{'first_epoch_s':>15}{'peak_mem_MB':>13}",
    ]
    for r in report["rows"]:
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}"
        lines.append(
            f"{r['name']:<14}{r['models']:>7}{r['epoch_s']:>10.4f}{r['per_model_epoch_s']:>13.4f}"
            f"{r['ratio_to_nonprivate']:>14.2f}{r['first_epoch_s']:>15.3f}{mem:>13}"
        )
    if "sweep" in report:
        w = report["sweep"]
        lines.append(
            f"epsilon sweep {w['experiment']} ({w['profile']}): {w['models']} models x "
            f"{w['epochs']} epochs in {w['seconds']:.1f} s, compilation included"
        )
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(report, indent=2))
