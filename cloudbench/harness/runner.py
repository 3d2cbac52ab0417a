"""``cloudbench leaderboard run``: a spec expanded into runs, the finished ones skipped.

1. Datasets and source datasets given as recipes are built into ``OUT/datasets`` and
   ``OUT/sources`` (resumable builds; one dataset per sweep value).
2. Source models given as checkpoints are used as they are; the others are trained once per
   source domain (``OUT/sources/<name>/model.pt``).
3. Each run not yet in the results table is executed: load the splits onto the device, ``fit``,
   ``predict`` the test split, compute the metrics once over it (with cloud strata and bootstrap
   CIs) and the profiler rows, and write them atomically (``results.py``). Runs go through the
   one executor (``cloudbench.build.run_tasks``): in this process, on local processes, or on a
   Dask cluster with one worker per device.
4. The leaderboard is rendered (``render.py``).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cloudbench import store
from cloudbench.build import package_versions, run_build, run_tasks
from cloudbench.builders import builder_module
from cloudbench.config import load_recipe
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results, stream
from cloudbench.harness.data import GB, check_in_flight, load_split, load_target, place
from cloudbench.harness.engine import Engine, describe_device, end_process_group
from cloudbench.harness.methods import FitContext, create, discover
from cloudbench.harness.render import load_published, render
from cloudbench.harness.source import train_source
from cloudbench.harness.spec import DataSpec, LeaderboardSpec, Run, expand, sweep_values
from cloudbench.metrics import TASK_METRICS, evaluate
from cloudbench.store import Store

PACKAGES = ("cloudbench", "torch", "torchvision", "torchmetrics", "numpy")


@dataclass(frozen=True)
class RunSummary:
    out: Path
    runs: int
    skipped: int
    rendered: list[Path]


def _dataset_root(out: Path, folder: str, name: str, spec: DataSpec, sweep: str) -> Path:
    if spec.path is not None:
        return spec.path
    suffix = f"-{sweep.replace('=', '-')}" if sweep else ""
    return out / folder / f"{name}{suffix}"


def _build(spec: DataSpec, root: Path, sweep: str, workers: int | None, scheduler: str | None,
           progress: bool) -> None:
    if spec.path is not None:
        Store(spec.path)  # validates; a clear error if it is missing
        return
    assert spec.recipe is not None
    values = dict(spec.set)
    if sweep:
        parameter, _, value = sweep.partition("=")
        values[parameter] = value
    module = builder_module(spec.recipe)
    config = load_recipe(module.Config, spec.recipe, [], values)
    run_build(spec.recipe, config, root, workers=workers, scheduler=scheduler, progress=progress)


def git_revision() -> str:
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def run_leaderboard(
    spec: LeaderboardSpec,
    out: str | Path,
    *,
    workers: int | None = 1,
    scheduler: str | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run every run of ``spec`` not yet in ``out``'s results, then render the leaderboard.

    Runs go through ``workers`` local processes or a Dask ``scheduler``, or, when the spec
    asks for ``devices`` (and ``num_nodes``) beyond one, each in turn on all of them.
    """
    out = Path(out)
    if (spec.devices > 1 or spec.num_nodes > 1) and (scheduler is not None or (workers or 1) > 1):
        raise CloudbenchError(
            f"devices: {spec.devices} trains each run on all the devices; run the runs one at a "
            "time (--workers 1, no --scheduler)"
        )
    for name, source in spec.sources.items():
        if source.model is not None and not source.model.is_file():
            raise CloudbenchError(f"source {name!r}: no source model at {source.model} "
                                  "(train one with `cloudbench source train`)")
    out.mkdir(parents=True, exist_ok=True)
    roots: dict[tuple[str, str], Path] = {}
    for name, data in spec.datasets.items():
        for sweep in sweep_values(spec) if data.recipe else [""]:
            root = _dataset_root(out, "datasets", name, data, sweep)
            _build(data, root, sweep, None, scheduler, progress)
            roots[(name, sweep)] = root
    check_tasks(spec, {name: Store(root).task for (name, _), root in roots.items()})

    runs = expand(spec)
    todo = [run for run in runs if not results.done(out, run.key)]
    methods = discover()
    check_streaming(spec, todo, roots)
    needs_source = {run.source for run in todo if methods[run.method].needs_source}
    sources: dict[str, Path | None] = {name: None for name in spec.sources}
    for name in sorted(needs_source):
        source = spec.sources[name]
        if source.model is not None:
            sources[name] = source.model
            continue
        data_root = _dataset_root(out, "sources", name, source, "")
        if source.recipe:
            data_root = data_root / "dataset"
        _build(source, data_root, "", None, scheduler, progress)
        model_path = out / "sources" / name / "model.pt"
        train_source(data_root, model_path, Engine(spec.device, seed=0), source.train,
                     list(source.optical))
        sources[name] = model_path

    versions = json.dumps(package_versions(PACKAGES), sort_keys=True)
    context = {"git_revision": git_revision(), "packages": versions}
    calls = []
    for run in todo:
        dataset = spec.datasets[run.dataset]
        root = roots[(run.dataset, run.sweep if dataset.recipe else "")]
        calls.append((spec, run, root, sources[run.source], out, context))
    parallel = spec.devices > 1 or spec.num_nodes > 1
    with tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"leaderboard {spec.name}",
              unit="run", disable=not progress) as bar:
        if parallel:  # each run takes every device: one at a time
            for call in calls:
                run_distributed(*call)
                bar.update()
        else:
            for _ in run_tasks(run_one, calls, workers=workers, scheduler=scheduler):
                bar.update()
    published = load_published(spec.published) if spec.published else None
    rendered = render(out, metrics=list(spec.metrics), published=published,
                      title=spec.title or spec.name)
    return RunSummary(out, len(todo), len(runs) - len(todo), rendered)


def check_tasks(spec: LeaderboardSpec, tasks: dict[str, str]) -> None:
    """Refuse a spec whose methods or metrics do not fit its datasets' tasks, in one message.

    ``tasks`` maps each dataset's name to its task (``multiclass`` or ``multilabel``, from its
    store). Every method entry must handle the task of every dataset (``Method.tasks``), and
    every dataset must be scored by at least one of the spec's metrics. The runner calls this
    once the datasets are built and before anything trains, so a mismatch costs no training.
    """
    methods = discover()
    problems = []
    for entry in spec.methods:
        handled = methods[entry.method].tasks
        who = f"method {entry.method!r}"
        if entry.name and entry.name != entry.method:
            who += f" (entry {entry.name!r})"
        for dataset, task in tasks.items():
            if task not in handled:
                problems.append(f"{who} handles {' and '.join(handled)} datasets only; "
                                f"dataset {dataset!r} is {task}")
    for dataset, task in tasks.items():
        if not set(spec.metrics) & set(TASK_METRICS[task]):
            problems.append(f"dataset {dataset!r} is {task}, scored by "
                            f"{', '.join(TASK_METRICS[task])}, but the spec's metrics are "
                            f"{', '.join(spec.metrics)}")
    if problems:
        raise CloudbenchError("; ".join(problems))


def check_streaming(spec: LeaderboardSpec, runs: list[Run],
                    roots: dict[tuple[str, str], Path]) -> None:
    """Refuse, before anything trains, a run told to stream (``train.data: stream``) within a
    ``train.memory_budget_gb`` that cannot hold its batches in flight
    (:func:`~cloudbench.harness.data.check_in_flight`). Budgets left to the device's free
    memory are checked when the run starts."""
    methods = discover()
    for run in runs:
        config = run.train
        if config.data != "stream" or config.memory_budget_gb is None:
            continue
        data = spec.datasets[run.dataset]
        modalities = methods[run.method].modalities
        root = roots[(run.dataset, run.sweep if data.recipe else "")]
        split = load_split(root, "test", optical=data.optical if "s2" in modalities else [],
                           sar=data.sar if "s1" in modalities else [],
                           labeled_per_class=spec.labeled_per_class, seed=run.seed)
        check_in_flight([split], config, config.memory_budget_gb * GB,
                        f" (method {run.name!r})")


def training_speed(history: list[dict[str, Any]]) -> tuple[float, float]:
    """Training samples/s and seconds per epoch over every stage a method trained.

    Per stage, the first epoch is left out when there are more (warm-up); samples/s is all
    samples trained over all seconds, and seconds per epoch sums each stage's mean epoch time
    (one epoch of every stage: what a method's epoch costs). NaN when nothing was logged.
    """
    frame = pd.DataFrame(history, columns=["stage", "epoch", "term", "value"])
    frame = frame[frame["term"].isin(["seconds", "samples_per_second"])]
    if frame.empty:
        return math.nan, math.nan
    table = frame.pivot_table(index=["stage", "epoch"], columns="term", values="value")
    samples = seconds = per_epoch = 0.0
    for _, stage in table.groupby(level="stage"):
        timed = stage.iloc[1:] if len(stage) > 1 else stage
        samples += float((timed["seconds"] * timed["samples_per_second"]).sum())
        seconds += float(timed["seconds"].sum())
        per_epoch += float(timed["seconds"].mean())
    return (samples / seconds if seconds else math.nan), per_epoch


def run_distributed(
    spec: LeaderboardSpec,
    run: Run,
    dataset_root: Path,
    source_path: Path | None,
    out: Path,
    context: dict[str, str],
) -> str:
    """:func:`run_one` on ``spec.devices`` processes per machine (``spec.num_nodes``
    machines) through Lightning Fabric; returns the run's key."""
    from lightning.fabric import Fabric

    accelerator = "cpu" if spec.device == "cpu" else "cuda"
    fabric = Fabric(accelerator=accelerator, devices=spec.devices, num_nodes=spec.num_nodes,
                    strategy=spec.strategy)
    fabric.launch(functools.partial(_run_rank, call=(spec, run, dataset_root, source_path, out,
                                                     context)))
    return run.key


def _run_rank(fabric: Any, call: tuple[Any, ...]) -> str:
    spec, run, dataset_root, source_path, out, context = call
    try:
        return run_one(spec, run, dataset_root, source_path, out, context, fabric=fabric)
    finally:
        end_process_group()



def run_one(
    spec: LeaderboardSpec,
    run: Run,
    dataset_root: Path,
    source_path: Path | None,
    out: Path,
    context: dict[str, str],
    fabric: Any = None,
) -> str:
    """Train and test one run and record it; returns its key. Runs in a worker, or in every
    process of a data-parallel run (``fabric``; process 0 scores and records it).

    With ``run.train.checkpoint_every`` set, the run's fits are checkpointed under
    ``OUT/runs/<key>/checkpoints`` and a killed run resumes from them; they are removed once the
    run is recorded.
    """
    from cloudbench.harness.source import load_source

    checkpoints = results.run_dir(out, run.key) / "checkpoints"
    engine = Engine(spec.device, seed=run.seed, fabric=fabric, checkpoints=checkpoints)
    method = create(run.method, run.params)
    data_spec = spec.datasets[run.dataset]
    data = load_target(
        dataset_root,
        optical=data_spec.optical if "s2" in method.modalities else [],
        sar=data_spec.sar if "s1" in method.modalities else [],
        labeled_per_class=spec.labeled_per_class, seed=run.seed,
    )
    placement = place(data, run.train, engine.device)
    task = data.test.task  # check_tasks refused the methods that do not handle it
    source = None
    if method.needs_source:
        assert source_path is not None
        source = load_source(source_path, engine.device)
    history: list[dict[str, Any]] = []

    def log(stage: str, entry: dict[str, Any]) -> None:
        for term, value in entry.items():
            if term not in ("epoch", "resumed") and isinstance(value, (int, float)):
                history.append({"stage": stage, "epoch": int(entry["epoch"]), "term": term,
                                "value": float(value)})

    started = time.perf_counter()
    torch.manual_seed(run.seed)  # model initialisation: the same whatever ran before here
    method.fit(FitContext(data.labeled, data.unlabeled, source, engine, run.train,
                          data.num_classes, task, run.seed, log))
    train_speed, epoch_seconds = training_speed(history)
    outputs = method.predict(data.test)
    wall = time.perf_counter() - started
    predict_speed = engine.predict_samples_per_second
    if engine.rank != 0:
        return run.key

    scores = outputs.cpu().numpy()
    predictions = pd.DataFrame({"id": data.test.ids})
    if scores.ndim == 1:
        predictions["pred"] = scores.astype(np.int64)
    else:
        for k in range(scores.shape[1]):
            predictions[f"score_{k}"] = scores[:, k]
    target = data.test.labels.cpu().numpy()
    table = evaluate(task, outputs.cpu().numpy(), target, num_classes=data.num_classes,
                     class_names=data.test.classes, cloud_state=np.asarray(data.test.cloud_states),
                     cloud_fraction=data.test.cloud_fractions.cpu().numpy(),
                     bootstrap=spec.bootstrap, seed=run.seed)
    per_class = table["metric"].str.contains("/")
    table = table[table["metric"].isin(spec.metrics) | per_class].assign(kind="metric")
    extra = [{"metric": k, "value": v, "stratum": "all", "kind": "metric"}
             for k, v in method.extra_metrics(data.test).items()]
    model, forward = method.profile_target()
    example = stream.take(data.test.inputs, torch.arange(1))
    profile = engine.profile(model, example, forward)
    profile_rows = [
        {"metric": "train_samples_per_second", "value": train_speed},
        {"metric": "train_seconds_per_epoch", "value": epoch_seconds},
        {"metric": "predict_samples_per_second", "value": predict_speed},
        {"metric": "peak_memory_bytes", "value": float(engine.peak_memory_bytes())},
        {"metric": "parameters", "value": float(profile["parameters"])},
        {"metric": "gflops", "value": float(profile["gflops"])},
    ]
    profile_frame = pd.DataFrame(profile_rows).assign(kind="profile", stratum="all",
                                                      n=len(data.test))
    rows = pd.concat([table, pd.DataFrame(extra), profile_frame], ignore_index=True)
    identity = {"run": run.key, "dataset": Store(dataset_root).meta["builder"]}
    rows = rows.assign(
        run=run.key, leaderboard=run.leaderboard, dataset=run.dataset, source=run.source,
        method=run.name, seed=run.seed, sweep=run.sweep, split="test",
        config_hash=store.config_hash(identity), device=_devices(engine),
        wall_seconds=wall, data=" ".join(f"{k}={v}" for k, v in placement.items()),
        **context,
    )
    history_frame = pd.DataFrame(history, columns=["stage", "epoch", "term", "value"]).assign(
        run=run.key, method=run.name, dataset=run.dataset, source=run.source, seed=run.seed,
        sweep=run.sweep)
    results.write_run(out, run.key, rows, history_frame, predictions)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return run.key


def _devices(engine: Engine) -> str:
    """The device in words, with the number of processes of a data-parallel run."""
    name = describe_device(engine.device)
    return f"{name} × {engine.world_size}" if engine.world_size > 1 else name

