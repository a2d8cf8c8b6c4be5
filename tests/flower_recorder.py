"""The curious coordinator: privkit's ServerApp, with every message the server receives kept.

A coordinator controls its ServerApp entirely; this one serves the run as privkit's does and
also writes each reply's numbers (arrays, and SecAgg+'s masked vectors, which travel as
serialised NumPy arrays) to ``<folder>/<n>.npz`` (default folder: ``received`` beside ``out``).
Tests read them as an attacker would. Used in-process (Flower's simulation runtime) and,
copied into an app folder, by a SuperLink (the component ``flower_recorder:app``).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from privkit.federated import flower

_NPY = b"\x93NUMPY"


def numbers(message: Message) -> list[np.ndarray]:
    """Every array a reply carries: its ArrayRecords, and any serialised array in its ConfigRecords."""
    if message.has_error():
        return []
    found = [
        array.numpy()
        for record in message.content.array_records.values()
        for array in record.values()
    ]
    for record in message.content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes) and item.startswith(_NPY):
                    found.append(np.load(io.BytesIO(item), allow_pickle=False))
    return found


class RecordingGrid:
    """A Grid that keeps every reply it hands to the ServerApp."""

    def __init__(self, grid: Grid, folder: Path) -> None:
        self._grid, self._folder, self._count = grid, folder, itertools.count()
        folder.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _keep(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:
            np.savez(self._folder / f"{next(self._count)}.npz", *numbers(reply))
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return self._keep(self._grid.send_and_receive(messages, timeout=timeout))

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return self._keep(self._grid.pull_messages(message_ids))


def recording_app(run: Mapping[str, Any] | None = None, *, folder: Path | None = None) -> ServerApp:
    """privkit's ServerApp, keeping what it receives in ``folder`` (default: beside ``out``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        keep = folder or Path(str({**(run or {}), **context.run_config}["out"])).parent / "received"
        flower.serve(RecordingGrid(grid, keep), context, run=run)

    return app


def received(folder: Path) -> list[np.ndarray]:
    """Everything the recording server kept, flattened to float64 vectors."""
    vectors = []
    for path in sorted(folder.glob("*.npz"), key=lambda p: int(p.stem)):
        with np.load(path) as npz:
            vectors += [npz[k].astype(np.float64).ravel() for k in npz.files]
    return vectors


app = recording_app()
