"""Fan cells out as Dask tasks (or run them in-process), with a progress bar over cells.

``Runner`` owns the compute: a ``LocalCluster`` sized for the machine by default
(``workers`` processes × ``threads_per_worker`` threads, with Polars / OpenMP / BLAS /
torch thread pools set to match in every worker), or an existing cluster joined by
address (``tcp://HOST:PORT``) or scheduler file, or no cluster at all (``workers=0``:
the calling process runs the cells one by one, for tests and small runs).

``map_cells(fn, items, compute)`` runs ``fn(item)`` for every item and returns
``[(item, result_or_CellError), ...]`` in input order. A failing cell becomes a
``CellError`` naming its key and a one-line error; the others' results are kept.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gla.pipeline.errors import UserError

THREAD_ENV_VARS = (
    "POLARS_MAX_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@dataclass
class ComputeOptions:
    """What the runner needs from ``config.compute`` (plus CLI overrides)."""

    workers: int | None = None  # None: sized for the machine; 0: in-process
    threads_per_worker: int = 1
    scheduler: str = ""  # tcp://host:port or a scheduler-file path; "" = Dask's config or LocalCluster
    memory_limit: str | float | None = "auto"
    worker_timeout: float = 60.0  # seconds a joined cluster may take to show its first worker
    progress: bool = True
    quiet: bool = False

    @classmethod
    def from_any(cls, compute: Any = None, **overrides: Any) -> ComputeOptions:
        """From a ComputeOptions, a pydantic ComputeSettings, a dict or None; ``None``
        values in ``overrides`` are ignored."""
        if isinstance(compute, ComputeOptions):
            base = dict(compute.__dict__)
        elif compute is None:
            base = {}
        elif isinstance(compute, dict):
            base = dict(compute)
        elif hasattr(compute, "model_dump"):
            base = compute.model_dump()
        else:
            base = {k: getattr(compute, k) for k in ("workers", "threads_per_worker", "scheduler") if hasattr(compute, k)}
        base.update({k: v for k, v in overrides.items() if v is not None})
        known = set(cls.__dataclass_fields__)
        opts = cls(**{k: v for k, v in base.items() if k in known})
        opts.scheduler = str(opts.scheduler or "")
        if opts.workers is not None and opts.workers < 0:
            raise UserError(f"compute.workers must be >= 0, got {opts.workers}")
        if opts.threads_per_worker < 1:
            raise UserError(f"compute.threads_per_worker must be >= 1, got {opts.threads_per_worker}")
        if not opts.worker_timeout > 0:
            raise UserError(f"compute.worker_timeout must be > 0 seconds, got {opts.worker_timeout}")
        return opts


def dask_scheduler_address() -> tuple[str, str]:
    """The scheduler Dask itself is configured to use, and where that was said:
    ``$DASK_SCHEDULER_ADDRESS`` or Dask's config key ``scheduler-address`` (a YAML file in
    ~/.config/dask, or ``dask.config.set``). ("", "") when neither is set."""
    env = os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
    if env:
        return env, "DASK_SCHEDULER_ADDRESS"
    import dask

    addr = dask.config.get("scheduler-address", None)
    return (str(addr), "dask config scheduler-address") if addr else ("", "")


def default_workers(threads_per_worker: int = 1) -> int:
    """Worker processes for this machine: one per usable core / threads_per_worker."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads_per_worker))


def thread_env(threads: int) -> dict[str, str]:
    return {k: str(threads) for k in THREAD_ENV_VARS}


def set_thread_limits(threads: int) -> None:
    """Limit the thread pools of this process (env for libraries not yet loaded; torch
    and BLAS directly if they already are)."""
    os.environ.update(thread_env(threads))
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.set_num_threads(threads)
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)


def thread_limit_plugin(threads: int) -> Any:
    """A Dask worker plugin: thread pools match the worker's threads (for joined
    clusters, whose workers we did not start). Built lazily: no dask import at module
    level."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class ThreadLimitPlugin(WorkerPlugin):
        name = "gla-thread-limits"
        idempotent = True

        def __init__(self, n: int):
            self.n = n

        def setup(self, worker: Any) -> None:
            # A joined cluster's workers have their own thread count: match that.
            state = getattr(worker, "state", None)
            set_thread_limits(int(getattr(state, "nthreads", 0) or self.n))

    return ThreadLimitPlugin(threads)


@dataclass
class CellError:
    """A cell that failed: its key and a one-line error (full traceback kept aside)."""

    key: str
    error: str
    traceback: str = field(default="", repr=False)
    user: bool = False  # bad input (UserError / ExtractError): the message names the file

    def __str__(self) -> str:
        return f"{self.key}: {self.error}"


USER_ERRORS = ("UserError", "ExtractError", "StoreLocked")


def is_user_error(exc: BaseException) -> bool:
    return any(t.__name__ in USER_ERRORS for t in type(exc).__mro__)


def one_line(exc: BaseException) -> str:
    """The first line of the message; bad-input errors already name their file, others
    get their type in front."""
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else ""
    if is_user_error(exc) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def cell_error(key: str, exc: BaseException) -> CellError:
    return CellError(key, one_line(exc), traceback.format_exc(), is_user_error(exc))


def item_key(item: Any) -> str:
    """A readable key for a cell: 'model/dataset' for (model, dataset) pairs and dicts."""
    if isinstance(item, dict) and "model" in item and "dataset" in item:
        m, d = item["model"], item["dataset"]
        m = m.get("name", m) if isinstance(m, dict) else getattr(m, "name", m)
        d = d.get("name", d) if isinstance(d, dict) else getattr(d, "name", d)
        return f"{m}/{d}"
    if isinstance(item, tuple | list) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return f"{item[0]}/{item[1]}"
    for attr in ("key", "name"):
        if hasattr(item, attr):
            return str(getattr(item, attr))
    return str(item)


def _guarded(fn: Callable[[Any], Any], item: Any, key: str) -> Any:
    """Run one cell; an exception becomes a CellError value (always picklable)."""
    try:
        return fn(item)
    except Exception as e:  # noqa: BLE001 - a failing cell must not lose the others
        return cell_error(key, e)


def _dashboard_note(link: str | None) -> str:
    if not link:
        return "dashboard: not available"
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"dashboard: {link} (install bokeh>=3.1 for the live pages)"
    return f"dashboard: {link}"


class Runner:
    """``with Runner(ComputeOptions(...)) as r: r.map(fn, items)``."""

    def __init__(self, compute: Any = None, *, log: Callable[[str], None] | None = None, **overrides: Any):
        self.opts = ComputeOptions.from_any(compute, **overrides)
        self._log = log
        self.client: Any = None
        self.cluster: Any = None
        self._stack = contextlib.ExitStack()

    @functools.cached_property
    def _scheduler(self) -> tuple[str, str]:
        """The cluster to join and where it was named: the option, else Dask's own setting
        (an explicit workers=0, in-process, wins over Dask's). Read when first needed, so a
        run with nothing to do never imports dask."""
        if self.opts.scheduler:
            return self.opts.scheduler, "--scheduler / compute.scheduler"
        return dask_scheduler_address() if self.opts.workers != 0 else ("", "")

    @property
    def scheduler(self) -> str:
        return self._scheduler[0]

    @property
    def scheduler_source(self) -> str:
        return self._scheduler[1]

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def in_process(self) -> bool:
        return self.opts.workers == 0 and not self.opts.scheduler

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client is not None else None

    def runs_here(self, small: bool = False) -> bool:
        """Whether a ``map(..., small=small)`` would run in this process."""
        return self.in_process or (
            small and self.client is None and self.opts.workers is None and not self.scheduler
        )

    def log(self, msg: str) -> None:
        if self.opts.quiet:
            return
        if self._log is not None:
            self._log(msg)
        else:
            print(f"gla: {msg}", file=sys.stderr)

    def __enter__(self) -> Runner:
        """Nothing starts yet: the cluster starts with the first non-empty ``map``, so a
        run with nothing to do never pays for it."""
        return self

    def start(self) -> Runner:
        opts = self.opts
        if self.client is not None or self.in_process:
            return self
        from dask.distributed import Client, LocalCluster

        threads = opts.threads_per_worker
        try:
            if self.scheduler:
                self._join(self.scheduler, threads)
            else:
                n = opts.workers or default_workers(threads)
                # Thread env for the worker processes is set before they import anything.
                import dask

                # Non-daemonic workers: extraction's DataLoader may start its own processes.
                with dask.config.set({"distributed.worker.daemon": False}):
                    self.cluster = LocalCluster(
                        n_workers=n,
                        threads_per_worker=threads,
                        processes=True,
                        memory_limit=opts.memory_limit,
                        dashboard_address=":0",
                        env=thread_env(threads),
                        silence_logs=40,  # logging.ERROR
                    )
                self._stack.callback(self.cluster.close)
                self.client = Client(self.cluster)
                self._stack.callback(self.client.close)
                self.client.register_plugin(thread_limit_plugin(threads))
                self.log(f"local cluster: {n} worker(s) × {threads} thread(s)")
        except UserError:
            self._stack.close()
            raise
        except OSError as e:
            self._stack.close()
            raise UserError(f"cannot connect to scheduler {self.scheduler!r} ({self.scheduler_source}): {e}") from e
        self.log(_dashboard_note(getattr(self.client, "dashboard_link", None)))
        return self

    def _join(self, target: str, threads: int) -> None:
        """Join a running cluster; with no worker there yet, wait ``worker_timeout`` for one."""
        from dask.distributed import Client

        if "://" in target:
            self.client = Client(target, timeout="20s")
        elif Path(target).is_file():
            self.client = Client(scheduler_file=target, timeout="20s")
        else:
            raise UserError(
                f"scheduler {target!r} ({self.scheduler_source}) is neither an address "
                "(tcp://HOST:PORT) nor an existing scheduler file"
            )
        self._stack.callback(self.client.close)
        address = self.client.scheduler.address
        n = len(self.client.scheduler_info().get("workers", {}))
        if n == 0:
            wait = self.opts.worker_timeout
            self.log(f"scheduler {address} has no workers yet: waiting up to {wait:g} s for one "
                     "(start them with `dask worker ADDRESS`; compute.worker_timeout sets the wait)")
            try:
                self.client.wait_for_workers(1, timeout=wait)
            except TimeoutError:
                raise UserError(
                    f"scheduler {address} ({self.scheduler_source}) has no workers after {wait:g} s "
                    "(compute.worker_timeout / --worker-timeout): start `dask worker` processes that can see the store"
                ) from None
            n = len(self.client.scheduler_info().get("workers", {}))
        self.client.register_plugin(thread_limit_plugin(threads))
        self.log(f"joined cluster {address} ({n} workers)")

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self.client = None
        self.cluster = None

    # -- work --------------------------------------------------------------------------
    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        key: Callable[[Any], str] = item_key,
        description: str = "cells",
        on_result: Callable[[Any, Any], None] | None = None,
        small: bool = False,
    ) -> list[tuple[Any, Any]]:
        """Run ``fn`` over ``items``; returns ``[(item, result | CellError)]`` in input order.

        ``on_result(item, outcome)`` is called in this process as each cell finishes.
        ``small=True`` says the work is too little to pay for starting a cluster: when
        the worker count was left to the runner (``workers=None``) and no cluster is
        running yet, the items run in this process.
        """
        items = list(items)
        keys = [key(it) for it in items]
        outcomes: list[Any] = [None] * len(items)
        if not items:
            return []
        here = self.runs_here(small)
        if not here:
            self.start()
        with _progress(len(items), description, self.opts.progress and not self.opts.quiet, self.log) as advance:
            if here:
                for i, it in enumerate(items):
                    outcomes[i] = _guarded(fn, it, keys[i])
                    self._done(keys[i], outcomes[i], advance, on_result, it)
            else:
                outcomes = self._map_dask(fn, items, keys, advance, on_result)
        return list(zip(items, outcomes, strict=True))

    def _map_dask(self, fn, items, keys, advance, on_result) -> list[Any]:
        from dask.distributed import as_completed

        token = f"{os.getpid()}-{time.monotonic_ns()}"
        futures = [
            self.client.submit(_guarded, fn, it, k, key=f"gla-cell-{k}-{i}-{token}", pure=False, retries=0)
            for i, (it, k) in enumerate(zip(items, keys, strict=True))
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        outcomes: list[Any] = [None] * len(items)
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                out = fut.result()
            except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the worker died
                out = cell_error(keys[i], e)
            fut.release()
            outcomes[i] = out
            self._done(keys[i], out, advance, on_result, items[i])
        return outcomes

    def _done(self, key, outcome, advance, on_result, item) -> None:
        if isinstance(outcome, CellError):
            self.log(f"cell {outcome} — failed")
        advance(key)
        if on_result is not None:
            on_result(item, outcome)


@contextlib.contextmanager
def _progress(total: int, description: str, enabled: bool, log: Callable[[str], None] = print):
    """A rich bar on a terminal; in a log (no terminal), a line at every 10% of the cells
    (at most one per 10 s, plus the last)."""
    if not enabled:
        yield lambda key: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        state = {"done": 0, "next": max(1, total // 10), "t": time.monotonic(), "t0": time.monotonic()}

        def advance(key: str) -> None:
            state["done"] += 1
            done, now = state["done"], time.monotonic()
            if done == total or (done >= state["next"] and now - state["t"] >= 10):
                state["next"] = done + max(1, total // 10)
                state["t"] = now
                log(f"{description}: {done}/{total} cells ({now - state['t0']:.1f} s; last {key})")

        yield advance
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, last="")
        yield lambda key: bar.update(task, advance=1, last=key)


def map_cells(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    compute: Any = None,
    *,
    runner: Runner | None = None,
    key: Callable[[Any], str] = item_key,
    description: str = "cells",
    on_result: Callable[[Any, Any], None] | None = None,
    **overrides: Any,
) -> list[tuple[Any, Any]]:
    """Run ``fn(item)`` for every item on ``runner`` (or a fresh one built from
    ``compute``). Returns ``[(item, result | CellError)]`` in input order."""
    items = list(items)
    if runner is not None:
        return runner.map(fn, items, key=key, description=description, on_result=on_result)
    with Runner(compute, **overrides) as r:
        return r.map(fn, items, key=key, description=description, on_result=on_result)


def failures(outcomes: Iterable[tuple[Any, Any]]) -> list[CellError]:
    return [o for _, o in outcomes if isinstance(o, CellError)]
