"""Where a sweep's units of work run: here, one after another (the default), or as Ray tasks.

A unit of work is one call ``fn(data, *args)`` of a module-level function on plain values: a
stack of models' configs and the data they read (``privkit.stacks.train_stack``). A unit reads
no ledger and writes no file. The *driver*, the process that runs the sweep, charges the ledger
before it dispatches a unit and writes the unit's results when they come back
(``privkit.results.Store.run``), so it is the single writer of every table whichever executor
ran the units.

* :class:`LocalExecutor` runs the units in this process, in order; it needs no Ray.
* :class:`RayExecutor` runs each unit as a Ray task (Moritz et al. 2018, "Ray: a distributed
  framework for emerging AI applications", OSDI) with its resource request: on a cluster with
  GPUs a stack of k models asks for ``min(1, k / models_per_gpu)`` of a GPU, elsewhere
  ``cpus_per_unit`` CPUs. The data go into Ray's object store once per sweep, and each node
  fetches them once. Ray retries a task whose worker died (``max_retries``); ``ray.wait`` hands
  each unit back as it finishes. At most ``max_in_flight`` units are dispatched at a time (by
  default what the cluster can run at once: Ray's "limit pending tasks" pattern), so what the
  driver charged ahead of finished work is one wave of units.

A unit that fails for good (an exception in it, or a worker that died on every try) is named in
a :class:`UnitsFailedError` once every other unit has finished and been written. An error at the
driver (a budget that refuses a unit) stops dispatching, waits for the units already running,
writes them, and is then raised.

Executors are named by strings: ``"local"``; ``"ray"`` (``ray.init()``: ``$RAY_ADDRESS``, else
the cluster last started on this machine, else a new one here); ``"ray:<address>"`` such as
``"ray:auto"``, ``"ray:10.0.0.5:6379"`` or ``"ray:ray://head:10001"``. ``None`` reads
``$PRIVKIT_EXECUTOR`` (default ``"local"``), which ``privkit reproduce --ray`` sets for every
notebook it runs.

>>> resolve("local").name, resolve("ray:auto").address
('local', 'auto')
>>> resolve("spark")
Traceback (most recent call last):
...
ValueError: Expected executor='spark' to be 'local', 'ray' or 'ray:<address>' (e.g. 'ray:auto').
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm.auto import tqdm

from privkit import _validate

ENV = "PRIVKIT_EXECUTOR"


@dataclass(frozen=True, eq=False)
class Unit:
    """One call ``fn(data, *args)``: ``fn`` defined at a module's top level, ``args`` plain values.

    Attributes:
        name: what it trains (its run ids), for progress, Ray's task name and errors.
        models: how many models it trains together; sizes its GPU request.
        gpu: whether it trains on a GPU where one is given to it (False: a CPU unit).
    """

    name: str
    fn: Callable[..., Any]
    data: Any
    args: tuple = ()
    models: int = 1
    gpu: bool = True


@dataclass(frozen=True, eq=False)
class Finished:
    """A unit's return value and where it ran.

    Attributes:
        where: ``executor``, ``hostname`` and ``pid``; on Ray also ``node_id``, ``node_ip``,
            ``task_id`` and ``gpu_ids``.
        seconds: the unit's own wall time, where it ran.
        wall_seconds: from dispatch until the driver held the result (transfers, scheduling,
            retries included).
    """

    unit: Unit
    value: Any
    where: dict[str, Any]
    seconds: float
    wall_seconds: float


class UnitsFailedError(RuntimeError):
    """Units that failed for good, by name; every other unit's results were written."""

    def __init__(self, failures: dict[str, BaseException], total: int):
        self.failures = failures
        lines = [f"  {name}: {_reason(err)}" for name, err in failures.items()]
        super().__init__(
            f"{len(failures)} of {total} unit(s) failed for good; every other result is kept, and "
            "running the sweep again trains only these:\n" + "\n".join(lines)
        )


def _reason(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err  # a RayTaskError carries the task's own exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


# What an executor hands back for a unit: (value, where, seconds, wall_seconds), or its error.
Outcome = tuple[Any, dict[str, Any], float, float] | BaseException


class Executor(Protocol):
    name: str
    data_device: str | None  # where a sweep loads the data it ships; None: each config's device
    inner_progress: bool  # whether units may draw their own progress bars

    def has_gpus(self) -> bool | None: ...  # None: decide here, on the driver
    def gpu_stack(self) -> int | None: ...  # models per stack on a GPU; None: all of them
    def slots(self, units: Sequence[Unit]) -> int: ...
    def submit(self, unit: Unit) -> Any: ...
    def next_finished(self, handles: Sequence[Any]) -> tuple[Any, Outcome]: ...
    def close(self, pending: Sequence[Any]) -> None: ...  # stop what still runs, drop shared data


def _where(executor: str) -> dict[str, Any]:
    return {"executor": executor, "hostname": socket.gethostname(), "pid": os.getpid()}


class LocalExecutor:
    """The units in this process, one after another (each is done when ``submit`` returns)."""

    name = "local"
    data_device = None
    inner_progress = True

    def __init__(self) -> None:
        self._outcomes: dict[int, Outcome] = {}

    def has_gpus(self) -> bool | None:
        return None

    def gpu_stack(self) -> int | None:
        return None

    def slots(self, units: Sequence[Unit]) -> int:
        return 1

    def submit(self, unit: Unit) -> int:
        start = time.perf_counter()
        try:
            value = unit.fn(unit.data, *unit.args)
        except Exception as err:  # a failed unit; KeyboardInterrupt stops the sweep instead
            outcome: Outcome = err
        else:
            seconds = time.perf_counter() - start
            outcome = (value, _where(self.name), seconds, seconds)
        handle = len(self._outcomes)
        self._outcomes[handle] = outcome
        return handle

    def next_finished(self, handles: Sequence[int]) -> tuple[int, Outcome]:
        return handles[0], self._outcomes.pop(handles[0])

    def close(self, pending: Sequence[int]) -> None:
        for handle in pending:
            self._outcomes.pop(handle, None)


def gpu_share(models: int, models_per_gpu: int) -> float:
    """The GPU a stack of ``models`` asks for: ``models / models_per_gpu``, at most one, rounded
    to Ray's resolution (1e-4) and never below it.

    >>> [gpu_share(k, 32) for k in (1, 8, 32, 100)]
    [0.0312, 0.25, 1.0, 1.0]
    """
    return max(min(1.0, round(models / models_per_gpu, 4)), 1e-4)


def _ray_call(fn: Callable[..., Any], data: Any, *args: Any) -> tuple[Any, dict[str, Any], float]:
    """What a Ray task runs: the unit, timed, and where it ran."""
    import ray

    start = time.perf_counter()
    value = fn(data, *args)
    seconds = time.perf_counter() - start
    context = ray.get_runtime_context()
    where = _where("ray") | {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "task_id": context.get_task_id(),
        "gpu_ids": [str(g) for g in context.get_accelerator_ids().get("GPU", [])],
    }
    return value, where, seconds


@dataclass
class RayExecutor:
    """Units as Ray tasks on the cluster at ``address`` (see the module's docstring).

    Args:
        address: what ``ray.init`` connects to; None: ``$RAY_ADDRESS``, the cluster started on
            this machine, else a new local one. Ignored when Ray is already initialised here.
        cpus_per_unit: CPUs each task asks for (its torch threads).
        models_per_gpu: models of a stack that fill a GPU: a stack of k asks for
            ``min(1, k / models_per_gpu)`` of one, and sweeps stack at most this many on GPUs
            (32 small CNNs filled an H200: DESIGN.md's measurements).
        max_retries: Ray's retries of a task whose worker or node died.
        max_in_flight: most units dispatched (and charged) at once; None: as many as the
            cluster runs at once now. Set it on an autoscaling cluster, which grows only for
            tasks that wait.
    """

    address: str | None = None
    cpus_per_unit: float = 1.0
    models_per_gpu: int = 32
    max_retries: int = 3
    max_in_flight: int | None = None
    name: str = field(default="ray", init=False)
    data_device: str = field(default="cpu", init=False)
    inner_progress: bool = field(default=False, init=False)
    _resources: dict[str, float] | None = field(default=None, init=False, repr=False)
    _task: Any = field(default=None, init=False, repr=False)
    _shared: dict[int, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)
    _started: dict[Any, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        _validate.positive(cpus_per_unit=self.cpus_per_unit)
        _validate.positive_int(models_per_gpu=self.models_per_gpu)
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Expected max_retries={self.max_retries!r} to be an integer >= 0.")
        if self.max_in_flight is not None:
            _validate.positive_int(max_in_flight=self.max_in_flight)

    def _ray(self):
        try:
            import ray
        except ImportError as err:
            raise ImportError(
                "executor='ray' needs Ray: pip install 'privkit[ray]' (or run with executor='local')."
            ) from err
        if not ray.is_initialized():
            ray.init(address=self.address)
        if self._task is None:
            self._task = ray.remote(_ray_call)
            self._resources = ray.cluster_resources()  # as the sweep starts
        return ray

    def _have(self, resource: str) -> float:
        self._ray()
        return self._resources.get(resource, 0.0)

    def has_gpus(self) -> bool:
        return self._have("GPU") > 0

    def gpu_stack(self) -> int | None:
        return self.models_per_gpu if self.has_gpus() else None

    def _gpus(self, unit: Unit) -> float:
        return gpu_share(unit.models, self.models_per_gpu) if unit.gpu and self.has_gpus() else 0.0

    def slots(self, units: Sequence[Unit]) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        fits = self._have("CPU") / self.cpus_per_unit
        smallest = min((self._gpus(u) for u in units), default=0.0)
        if smallest > 0:
            fits = min(fits, self._have("GPU") / smallest)
        return max(1, math.floor(fits))

    def submit(self, unit: Unit) -> Any:
        ray = self._ray()
        if id(unit.data) not in self._shared:  # into the object store once per sweep
            self._shared[id(unit.data)] = (unit.data, ray.put(unit.data))
        task = self._task.options(
            name=unit.name,
            num_cpus=self.cpus_per_unit,
            num_gpus=self._gpus(unit),
            max_retries=self.max_retries,
        )
        ref = task.remote(unit.fn, self._shared[id(unit.data)][1], *unit.args)
        self._started[ref] = time.perf_counter()
        return ref

    def next_finished(self, handles: Sequence[Any]) -> tuple[Any, Outcome]:
        ray = self._ray()
        (ref,), _ = ray.wait(list(handles), num_returns=1)
        wall = time.perf_counter() - self._started.pop(ref)
        try:
            value, where, seconds = ray.get(ref)
        except ray.exceptions.RayError as err:  # the task's own exception, or retries exhausted
            return ref, err
        return ref, (value, where, seconds, wall)

    def close(self, pending: Sequence[Any]) -> None:
        if pending:
            ray = self._ray()
            for ref in pending:
                ray.cancel(ref, force=True)
                self._started.pop(ref, None)
        self._shared.clear()  # the data leave the object store with their last reference


def resolve(executor: str | Executor | None = None) -> Executor:
    """An executor from its name (see the module), ``$PRIVKIT_EXECUTOR`` when None."""
    if executor is None:
        executor = os.environ.get(ENV) or "local"
    if not isinstance(executor, str):
        return executor
    if executor == "local":
        return LocalExecutor()
    if executor == "ray":
        return RayExecutor()
    if executor.startswith("ray:") and len(executor) > 4:
        return RayExecutor(address=executor[4:])
    raise ValueError(
        f"Expected executor={executor!r} to be 'local', 'ray' or 'ray:<address>' (e.g. 'ray:auto')."
    )


def run(
    units: Sequence[Unit],
    *,
    executor: Executor,
    on_finished: Callable[[Finished], None],
    before_dispatch: Callable[[Unit], None] | None = None,
    desc: str | None = None,
    progress: bool = True,
) -> None:
    """Run ``units`` on ``executor``; the driver calls ``before_dispatch`` (the ledger) before
    each unit leaves and ``on_finished`` (the tables) as each comes back, one bar over the units.

    Raises:
        UnitsFailedError: after every other unit finished, naming the units that failed for good.
        Exception: whatever ``before_dispatch`` raised, after the units already dispatched
            finished and were handed to ``on_finished``; nothing more is dispatched.
    """
    units = list(units)
    failures: dict[str, BaseException] = {}
    stopped: BaseException | None = None
    pending: dict[Any, Unit] = {}
    queue = iter(units)
    slots = executor.slots(units) if units else 1
    with tqdm(total=len(units), desc=desc, disable=not progress) as bar:
        try:
            while True:
                while (
                    stopped is None
                    and len(pending) < slots
                    and (unit := next(queue, None)) is not None
                ):
                    try:
                        if before_dispatch is not None:
                            before_dispatch(unit)
                    except Exception as err:  # e.g. a budget refused it: dispatch nothing more
                        stopped = err
                        break
                    pending[executor.submit(unit)] = unit
                if not pending:
                    break
                handle, outcome = executor.next_finished(list(pending))
                unit = pending.pop(handle)
                if isinstance(outcome, BaseException):
                    failures[unit.name] = outcome
                else:
                    on_finished(Finished(unit, *outcome))
                    bar.set_postfix_str(outcome[1]["hostname"], refresh=False)
                bar.update()
        finally:  # if interrupted, what still runs stops: it was charged, and trains again on resume
            executor.close(list(pending))
    if stopped is not None:
        raise stopped
    if failures:
        raise UnitsFailedError(failures, len(units)) from next(iter(failures.values()))
