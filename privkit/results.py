"""One results store: tidy tables, one run id, provenance for every run, atomic appends, resume.

An experiment's results live in one folder, ``results/<experiment>/`` (a :class:`Store`): tidy
long tables ``<name>.csv`` (:class:`Table`, each with a fixed column set, the shape seaborn and
pandas read directly) and ``runs/<run_id>.json``, the provenance of every run (git commit,
package versions, device, data checksum, parameters, and the ledger's head after the run's
charge). A run's id (:func:`run_id`) is a hash of its plain config and its data's checksum.

Sweeps write through :meth:`Store.run`: each unit of work returns its runs' rows and records
(:class:`Output`), and the driver alone writes them as the unit comes back, provenance first and
the rows of the table that marks a run finished last, each table replaced atomically under a
lock. So a table holds only finished runs: an interrupted sweep loses nothing already written
and resumes where it stopped (:meth:`Table.run_ids`), and a finished run is never trained twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd
import torch

from privkit import executors
from privkit._io import atomic_write, atomic_write_text, locked

if TYPE_CHECKING:
    from privkit.budget import Spend
    from privkit.train import TrainResult

COLUMNS = (
    "run_id",
    "experiment",
    "dataset",
    "model",
    "backend",
    "seed",
    "randomness",
    "epsilon_target",
    "epsilon_spent",
    "delta",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "split",
    "metric",
    "value",
)  # the metrics table of a training sweep (``metrics.csv``): one row per run, split and metric

# Settings that do not change what is trained: where the data lie, which device runs it.
_NOT_IN_RUN_ID = ("device", "data_root")

Rows = Sequence[Mapping[str, Any]] | pd.DataFrame


def plain(config: Any) -> Any:
    """A config as plain JSON-able values: dataclasses and mappings become dicts (recursively).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = 0.1
    >>> plain({"site": C(), "sizes": (1, 2)})
    {'site': {'lr': 0.1}, 'sizes': [1, 2]}
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return plain(dataclasses.asdict(config))
    if isinstance(config, Mapping):
        return {str(k): plain(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [plain(v) for v in config]
    return config


def run_id(config: Any, data_sha256: str | None) -> str:
    """A short hash of everything that determines a run's result, the data's bytes included.

    ``config`` is any plain config: a ``TrainConfig``, a ``FederatedConfig``, a dict of them
    and plain values. Its ``device`` and ``data_root`` (top-level keys) are left out: they say
    where a run trains, not what it is. The hash is of canonical JSON (sorted keys), so it is the
    same in every process and on every machine.

    >>> from privkit.train import TrainConfig
    >>> run_id(TrainConfig(), "0" * 64) == run_id(TrainConfig(device="cpu"), "0" * 64)
    True
    >>> run_id(TrainConfig(), "0" * 64) == run_id(TrainConfig(seed=1), "0" * 64)
    False
    """
    values = plain(config)
    if not isinstance(values, dict):
        raise ValueError(
            f"Expected config={config!r} to be a dataclass or a mapping of plain values."
        )
    params = {k: v for k, v in values.items() if k not in _NOT_IN_RUN_ID}
    blob = json.dumps({"config": params, "data_sha256": data_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provenance(config: Any, *, data_sha256: str | None, device: str) -> dict[str, Any]:
    """Where a result came from: code version, packages, device, data checksum (None: the run
    read no data, e.g. an accountant's curve), parameters (``config`` as plain values)."""
    return {
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {
            name: _version(name) for name in ("privkit", "torch", "opacus", "numpy", "medmnist")
        },
        "device": device,
        "device_name": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "data_sha256": data_sha256,
        "parameters": plain(config),
    }


def ledger_entry(spend: Spend | None) -> dict[str, Any]:
    """``{"ledger": {spend_id, head}}`` for a charged run: the ledger's head after its charge,
    an anchor kept outside the ledger (``privkit budget verify --head``); ``{}`` if uncharged."""
    return {} if spend is None else {"ledger": {"spend_id": spend.id, "head": spend.hash}}


def result_rows(result: TrainResult, *, experiment: str, run: str) -> list[dict[str, Any]]:
    """The tidy rows (:data:`COLUMNS`) of one finished training run."""
    cfg, mech = result.config, result.mechanism
    common = {
        "run_id": run,
        "experiment": experiment,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "backend": result.backend,
        "seed": cfg.seed,
        "randomness": cfg.randomness,
        "epsilon_target": cfg.epsilon if cfg.epsilon is not None else float("nan"),
        "epsilon_spent": mech.epsilon,
        "delta": mech.delta,
        "accountant": mech.accountant,
        "noise_multiplier": mech.noise_multiplier,
        "sample_rate": mech.sample_rate,
        "steps": mech.steps,
        "max_grad_norm": mech.max_grad_norm,
    }
    return [
        {**common, "split": split, "metric": metric, "value": value}
        for split, values in result.metrics.items()
        for metric, value in values.items()
    ]


def run_record(
    result: TrainResult, *, data_sha256: str, trained_together_with: int = 1, config: Any = None
) -> dict[str, Any]:
    """A trained run's provenance, wall time, stack size and ledger anchor, taken where it
    trained; its parameters are ``config`` when given (a run described by more than its
    ``TrainConfig``), else ``result.config``."""
    record = provenance(
        result.config if config is None else config, data_sha256=data_sha256, device=result.device
    )
    record["seconds"] = result.seconds
    record["trained_together_with"] = trained_together_with
    return record | ledger_entry(result.spend)


@dataclass(frozen=True)
class Table:
    """One tidy table, ``<store>/<name>.csv``, with a fixed column set.

    Every write holds ``<name>.csv.lock`` (``flock``) and replaces the file atomically
    (``privkit._io.atomic_write``): a reader sees the table before a write or after it, never
    half of one, and concurrent writers do not lose each other's rows.

    Attributes:
        path: the CSV file.
        columns: its columns, in order; None takes them from the first rows written (a
            notebook's table) and holds the table to them afterwards.
        float_format: ``to_csv``'s format of floats (None: Python's shortest round trip).
    """

    path: Path
    columns: tuple[str, ...] | None = None
    float_format: str | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    def read(self) -> pd.DataFrame:
        """The table, or an empty one with its columns. Run ids are read as text, also those
        that look like numbers (``"1234567890123456"``, ``"12e4567890123456"``)."""
        if self.path.exists():
            return pd.read_csv(self.path, dtype={"run_id": str})
        return pd.DataFrame(columns=list(self.columns or ()))

    def run_ids(self) -> set[str]:
        """The runs already in the table (finished, when it is the table a sweep finishes)."""
        table = self.read()
        return set(table["run_id"]) if "run_id" in table else set()

    def append(self, rows: Rows) -> None:
        """Append ``rows`` (dicts or a frame with exactly the table's columns)."""
        with locked(self.path):
            old = self.read() if self.path.exists() else None
            new = self._frame(rows, old)
            self._write(
                new if old is None or old.empty else pd.concat([old, new], ignore_index=True)
            )

    def replace(self, rows: Rows) -> None:
        """Replace the whole table by ``rows``: a table computed in one go (a notebook's view)."""
        with locked(self.path):
            self._write(self._frame(rows, None))

    def _frame(self, rows: Rows, old: pd.DataFrame | None) -> pd.DataFrame:
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        expected = self.columns or (tuple(old.columns) if old is not None else tuple(frame.columns))
        if frame.empty and not len(frame.columns):
            return pd.DataFrame(columns=list(expected))
        if set(frame.columns) != set(expected):
            raise ValueError(
                f"Expected the rows of {self.path} to have columns {list(expected)}; got "
                f"{list(frame.columns)} (missing {sorted(set(expected) - set(frame.columns))}, "
                f"unknown {sorted(set(frame.columns) - set(expected))})."
            )
        return frame[list(expected)]

    def _write(self, frame: pd.DataFrame) -> None:
        atomic_write(
            self.path, lambda tmp: frame.to_csv(tmp, index=False, float_format=self.float_format)
        )


class Output(NamedTuple):
    """What a unit of work returns for one run: its id, its rows per table name, its record
    (``provenance`` and whatever the unit measured where it ran)."""

    run_id: str
    rows: Mapping[str, Rows]
    record: Mapping[str, Any]


@dataclass(frozen=True)
class Store:
    """One experiment's results folder: its tables and every run's provenance.

    >>> import tempfile
    >>> store = Store(tempfile.mkdtemp())
    >>> table = store.table("scores", ("run_id", "value"))
    >>> store.write([Output("r1", {"scores": [{"run_id": "r1", "value": 0.5}]}, {})], [table])
    >>> table.run_ids(), sorted(p.name for p in (store.out_dir / "runs").iterdir())
    ({'r1'}, ['r1.json'])
    """

    out_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))  # a str is welcome too

    def table(
        self, name: str, columns: Iterable[str] | None = None, *, float_format: str | None = None
    ) -> Table:
        """The table ``<out_dir>/<name>.csv`` (see :class:`Table`)."""
        cols = tuple(columns) if columns is not None else None
        return Table(self.out_dir / f"{name}.csv", cols, float_format)

    def provenance_path(self, run: str) -> Path:
        return self.out_dir / "runs" / f"{run}.json"

    def write_provenance(self, run: str, record: Mapping[str, Any]) -> Path:
        """``runs/<run>.json``, written atomically."""
        text = json.dumps(record, indent=2, default=str)
        return atomic_write_text(self.provenance_path(run), text)

    def read_provenance(self, run: str) -> dict[str, Any]:
        return json.loads(self.provenance_path(run).read_text())

    def write(
        self,
        outputs: Sequence[Output],
        tables: Sequence[Table],
        *,
        extra: Callable[[str], Mapping[str, Any]] = lambda run: {},
    ) -> None:
        """Record finished runs: each run's provenance (its record, with ``extra(run_id)``),
        then the rows of each table in the order given. The last table is the one whose run ids
        are finished runs: its rows go last, so a run in it has everything else written."""
        by_name = {t.name: t for t in tables}
        for out in outputs:
            unknown = sorted(set(out.rows) - set(by_name))
            if unknown:
                raise ValueError(
                    f"Run {out.run_id} has rows for table(s) {unknown}; this store writes "
                    f"{sorted(by_name)}."
                )
            self.write_provenance(out.run_id, {**out.record, **extra(out.run_id)})
        for table in tables:
            parts = [out.rows[table.name] for out in outputs if table.name in out.rows]
            frames = [p if isinstance(p, pd.DataFrame) else pd.DataFrame(list(p)) for p in parts]
            frames = [f for f in frames if not f.empty]
            if frames:
                table.append(pd.concat(frames, ignore_index=True))

    def run(
        self,
        units: Sequence[executors.Unit],
        tables: Sequence[Table],
        *,
        executor: executors.Executor,
        charge: Callable[[executors.Unit], Mapping[str, Spend]] | None = None,
        desc: str | None = None,
        progress: bool = True,
    ) -> None:
        """Run ``units`` (each returning a list of :class:`Output`) on ``executor``; this process
        alone writes (:meth:`write`) each unit's runs as it comes back, their provenance with
        ``where`` they ran and the ledger's anchor of each run ``charge`` charged (called before
        the unit leaves, it returns the spends by run id). Errors as ``executors.run``'s."""
        spends: dict[str, Spend] = {}

        def before(unit: executors.Unit) -> None:
            spends.update(charge(unit))

        def finished(done: executors.Finished) -> None:
            where = {"where": done.where}
            self.write(done.value, tables, extra=lambda run: where | ledger_entry(spends.get(run)))

        executors.run(
            units,
            executor=executor,
            on_finished=finished,
            before_dispatch=before if charge else None,
            desc=desc,
            progress=progress,
        )

    def save_run(
        self,
        name: str,
        rows: Rows,
        *,
        config: Any,
        data_sha256: str | None,
        device: str = "cpu",
    ) -> str:
        """A table that one run computes in one go (an accountant's curve, a bound): its rows
        get the run's id (:func:`run_id` of ``config`` and the data), its provenance is written,
        then ``<name>.csv`` is replaced (:meth:`save`). Returns the run id."""
        run = run_id(config, data_sha256)
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        record = provenance(config, data_sha256=data_sha256, device=device)
        self.save(name, frame.assign(run_id=run)[["run_id", *frame.columns]], runs={run: record})
        return run

    def save(
        self, name: str, rows: Rows, *, runs: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Table:
        """A table computed in one go (a notebook's): ``runs`` (run id -> record) get their
        provenance first, then ``<name>.csv`` is replaced by ``rows``, whose columns it takes."""
        for run, record in (runs or {}).items():
            self.write_provenance(run, record)
        table = self.table(name)
        table.replace(rows)
        return table


def summary(table: pd.DataFrame, *, split: str = "test") -> pd.DataFrame:
    """Mean and standard deviation over seeds of each metric, per target epsilon.

    >>> t = pd.DataFrame({"epsilon_target": [1.0, 1.0], "epsilon_spent": [0.99, 0.98],
    ...                   "seed": [0, 1], "split": "test", "metric": "auc", "value": [0.8, 0.9]})
    >>> summary(t).loc[1.0, ("auc", "mean")].round(3)
    np.float64(0.85)
    """
    rows = table[table["split"] == split]
    stats = (
        rows.pivot_table(
            index="epsilon_target", columns="metric", values="value", aggfunc=["mean", "std"]
        )
        .swaplevel(axis=1)
        .sort_index(axis=1)
    )
    stats[("epsilon_spent", "max")] = rows.groupby("epsilon_target")["epsilon_spent"].max()
    stats[("runs", "n")] = rows.groupby("epsilon_target")["seed"].nunique()
    return stats


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    """The commit of the privkit checkout, with ``-dirty`` when it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}-dirty" if dirty else commit
