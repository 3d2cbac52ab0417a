"""The build engine: turn a builder's tasks into store shards, in parallel, resumably.

A builder is a module in ``builders/`` (see ``cloudbench.builders``) with:

* ``Config``: a pydantic model of the recipe (``catalogs/recipes/<name>.yaml``);
* ``plan(config, root, *, workers, scheduler, progress) -> list[Task]``: deterministic, ordered
  units of work, each with a ``shard_id``; it may first prepare what every task needs (e.g. a
  cloud-mask library under ``root``), using the same executor;
* ``build_shard(config, task) -> Shard``: the samples of one task (pure: same input, same bytes);
* ``metadata(config) -> dict``: the ``dataset.json`` fields it knows (kind, task, classes, ...);
* ``provenance(config) -> dict``: where its pixels came from (source name, ids, synthetic or not);
* ``assign_split(config, table) -> array``: the train/test split of the finished sample table;
* ``select(config)`` (optional) ``-> (reason, keep) | None``: rows to keep among all samples
  (e.g. per-class caps), see ``store.finalize``;
* ``report(config, records, table)`` (optional) ``-> dict``: the builder's own fields of
  ``build_report.json``, from the ``records`` its shards kept (``Shard.records``) and the final
  sample table.

The engine skips shards already on disk (a killed build resumes), runs the rest on local
processes or a Dask cluster, and finalises the store in task order, so the result does not depend
on the order in which tasks finished or on how many times the build was interrupted.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import multiprocessing
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

import geopandas as gpd
import numpy as np
from pydantic import BaseModel
from tqdm.auto import tqdm

from cloudbench import store
from cloudbench.builders import builder_module
from cloudbench.errors import CloudbenchError

T = TypeVar("T")
PROVENANCE_PACKAGES = (
    "cloudbench", "numpy", "rasterio", "geopandas", "s2cloudless", "lightgbm", "sentinelhub",
    "pyarrow",
)


class Task(Protocol):
    shard_id: str


@dataclass
class Shard:
    """What one task produced: the sample rows, their arrays, and a report for the build."""

    table: gpd.GeoDataFrame
    arrays: dict[str, np.ndarray]
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    """JSON-able facts about the task kept for the build report (e.g. the product a tile used)."""


@dataclass(frozen=True)
class BuildResult:
    root: Path
    built_shards: int
    skipped_shards: int
    already_complete: bool


def _run_task(name: str, config: BaseModel, task: Task, root: Path) -> tuple[str, str | None]:
    """Build one shard and write it; runs in a worker process. Returns the shard id and the
    reason when the shard failed for a reason outside the program (a CloudbenchError: a service
    that keeps failing, an unreadable input), None when it was written; other exceptions (bugs)
    propagate."""
    module = builder_module(name)
    try:
        shard = module.build_shard(config, task)
    except CloudbenchError as err:
        return task.shard_id, str(err)
    store.write_shard(
        root, task.shard_id, shard.table, shard.arrays,
        {"dropped": shard.dropped, "seconds": shard.seconds, "records": shard.records},
    )
    return task.shard_id, None


def run_tasks(
    fn: Callable[..., T],
    calls: Sequence[tuple[Any, ...]],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Iterator[T]:
    """Run ``fn(*args)`` for every ``args`` in ``calls`` and yield the results as they finish.

    In this process when ``workers`` is 1 (or there is one call), on ``workers`` local spawned
    processes (default: all cores), or on the Dask scheduler at ``scheduler``. ``fn`` must be a
    module-level function and its arguments picklable. The first failure is raised and the
    calls not yet started are cancelled.
    """
    workers = workers or os.cpu_count() or 1
    if scheduler:
        from distributed import Client
        from distributed import as_completed as dask_completed

        with Client(scheduler) as client:
            futures = [client.submit(fn, *args, pure=False) for args in calls]
            for future in dask_completed(futures):
                yield future.result()
    elif workers <= 1 or len(calls) <= 1:
        for args in calls:
            yield fn(*args)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = [pool.submit(fn, *args) for args in calls]
            try:
                for future in as_completed(pending):
                    yield future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def package_versions(packages: Sequence[str] = PROVENANCE_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (default: those that shape a build's bytes)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str:
    """The commit of the cloudbench checkout (``git rev-parse HEAD``), "unknown" outside one."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def provenance(module: ModuleType, config: BaseModel) -> dict[str, Any]:
    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "packages": package_versions(),
        **module.provenance(config),
    }


def run_build(
    name: str,
    config: BaseModel,
    out: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> BuildResult:
    """Build (or resume building) dataset ``name`` with ``config`` into ``out``.

    ``workers`` local processes (default: all cores; 1 runs in this process), or the Dask
    scheduler at ``scheduler`` (its workers must see ``out`` on a shared filesystem).
    """
    module = builder_module(name)
    root = Path(out)
    config_json = config.model_dump(mode="json")
    if not store.start_build(root, name, config_json):
        return BuildResult(root, 0, 0, already_complete=True)
    tasks: list[Task] = list(
        module.plan(config, root, workers=workers, scheduler=scheduler, progress=progress)
    )
    todo = [t for t in tasks if not store.shard_done(root, t.shard_id)]
    started = time.perf_counter()
    calls = [(name, config, task, root) for task in todo]
    with tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=f"build {name}",
              unit="shard", disable=not progress) as bar:
        failures = {}
        for shard_id, failure in run_tasks(_run_task, calls, workers=workers,
                                           scheduler=scheduler):
            if failure is not None:
                failures[shard_id] = failure
            bar.update()
    if failures:
        listed = "; ".join(f"{shard}: {why}" for shard, why in sorted(failures.items()))
        raise CloudbenchError(
            f"{len(failures)} of {len(tasks)} shards failed (the others are written; re-run the "
            f"same command to retry only these): {listed}"
        )
    meta = {
        **module.metadata(config),
        "builder": {"name": name, "config": config_json},
        "provenance": provenance(module, config),
    }
    meta["provenance"]["build_seconds"] = round(time.perf_counter() - started, 2)
    select = module.select(config) if hasattr(module, "select") else None
    report = partial(module.report, config) if hasattr(module, "report") else None
    store.finalize(
        root, [t.shard_id for t in tasks], meta, partial(module.assign_split, config), select,
        report,
    )
    return BuildResult(root, len(todo), len(tasks) - len(todo), already_complete=False)
