"""``cloudbench leaderboard run``: a spec expanded into runs, the finished ones skipped.

1. Datasets and source datasets given as recipes are built into ``OUT/datasets`` and
   ``OUT/sources`` (resumable builds; one dataset per sweep value).
2. Source models given as checkpoints are used as they are; the others are trained once per
   source domain (``OUT/sources/<name>/model.pt``).
3. Each run not yet in the results table is executed: load the splits onto the device, ``fit``,
   ``predict`` the test split (and the test split of every other dataset its dataset's ``test``
   names, standardised with the run's train statistics), compute the metrics once over each
   (with cloud strata and bootstrap CIs) and the profiler rows (speeds, memory, size, and the
   cost of the whole pipeline, ``cost.py``), and write them atomically (``results.py``). Runs
   go through the one executor (``cloudbench.build.run_tasks``): in this process, on local
   processes, or on a Dask cluster with one worker per device.
4. The leaderboard is rendered (``render.py``) and the folder made a results bundle
   (``bundle.py``: the whole table, the spec as run, versions and dataset fingerprints).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cloudbench import store
from cloudbench.build import git_revision, package_versions, run_build, run_tasks
from cloudbench.builders import builder_module
from cloudbench.config import load_recipe, recipe_builder
from cloudbench.datasets import RATIO_BAND
from cloudbench.errors import CloudbenchError
from cloudbench.harness import cost, results, stream
from cloudbench.harness.bundle import write_bundle
from cloudbench.harness.data import (
    GB,
    RECONSTRUCTION,
    SplitData,
    TargetData,
    check_in_flight,
    load_split,
    load_target,
    memory_budget,
    place,
    standardise,
)
from cloudbench.harness.engine import Engine, TrainConfig, describe_device, end_process_group
from cloudbench.harness.methods import FitContext, Method, create, discover
from cloudbench.harness.render import load_published, render
from cloudbench.harness.source import train_source
from cloudbench.harness.spec import (
    DataSpec,
    LeaderboardSpec,
    Run,
    check_sources,
    entry_factors,
    expand,
    labeled_count,
    run_bands,
    sweep_values,
)
from cloudbench.harness.stream import Stored, is_stored, resident, sample_bytes
from cloudbench.metrics import TASK_METRICS, evaluate
from cloudbench.reconstruction import IMAGE_METRICS
from cloudbench.store import S2_GROUPS, Store

SCORED_BY = {**TASK_METRICS, RECONSTRUCTION: IMAGE_METRICS}
"""The summary metrics of each harness task: a store without classes is ``reconstruction``,
scored by the pixel metrics of the methods that reconstruct images."""

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


def store_roots(spec: LeaderboardSpec, out: Path) -> dict[tuple[str, str, str], Path]:
    """Where the stores of ``spec`` are for a run into ``out``: (``datasets`` or ``sources``,
    name, sweep value) -> the store, its ``path`` or the folder a recipe is built into (one per
    sweep value for a dataset's recipe; "" otherwise). Sources given as a checkpoint
    (``model``) have none; a source is built only when a run needs it."""
    roots: dict[tuple[str, str, str], Path] = {}
    for name, data in spec.datasets.items():
        for sweep in sweep_values(spec) if data.recipe else [""]:
            roots[("datasets", name, sweep)] = _dataset_root(out, "datasets", name, data, sweep)
    for name, source in spec.sources.items():
        if source.model is None:
            root = _dataset_root(out, "sources", name, source, "")
            roots[("sources", name, "")] = root / "dataset" if source.recipe else root
    return roots


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
    builder = recipe_builder(spec.recipe)  # a shipped recipe's name, or a recipe file's builder
    config = load_recipe(builder_module(builder).Config, spec.recipe, [], values)
    run_build(builder, config, root, workers=workers, scheduler=scheduler, progress=progress)


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
    check_sources(spec)  # also for specs changed after loading (restrict, model_copy)
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
    located = store_roots(spec, out)
    roots: dict[tuple[str, str], Path] = {}
    for (folder, name, sweep), root in located.items():
        if folder == "datasets":
            _build(spec.datasets[name], root, sweep, None, scheduler, progress)
            roots[(name, sweep)] = root
    check_tasks(spec, {name: harness_task(Store(root)) for (name, _), root in roots.items()})
    check_tests(spec, roots)

    runs = expand(spec)
    todo = [run for run in runs if not results.done(out, run.key)]
    check_streaming(spec, todo, roots)
    check_data(spec, todo, roots)
    needs_source = {run.source for run in todo if create(run.method, run.params).needs_source}
    sources: dict[str, Path | None] = {name: None for name in spec.sources}
    for name in sorted(needs_source):
        source = spec.sources[name]
        if source.model is not None:
            sources[name] = source.model
            continue
        data_root = located[("sources", name, "")]
        _build(source, data_root, "", None, scheduler, progress)
        model_path = out / "sources" / name / "model.pt"
        train_source(data_root, model_path, Engine(spec.device, seed=0), source.train,
                     list(source.optical))
        sources[name] = model_path

    versions = json.dumps(package_versions(PACKAGES), sort_keys=True)
    context = {"git_revision": git_revision(), "packages": versions}
    calls = []
    for run in todo:
        root = _store_of(spec, roots, run.dataset, run.sweep)
        tests = {name: _store_of(spec, roots, name, run.sweep) for name in run.tests}
        calls.append((spec, run, root, sources.get(run.source), out, context, tests))
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
                      title=spec.title or spec.name, stores=roots, factors=entry_factors(spec))
    write_bundle(out, spec, located)
    return RunSummary(out, len(todo), len(runs) - len(todo), rendered)


def _store_of(spec: LeaderboardSpec, roots: Mapping[tuple[str, str], Path], name: str,
              sweep: str) -> Path:
    """The store of dataset ``name`` for a run of sweep value ``sweep`` (a dataset given by
    path has one store for every value)."""
    return roots[(name, sweep if spec.datasets[name].recipe else "")]


def harness_task(st: Store) -> str:
    """A store's task for the harness: its own (``multiclass``, ``multilabel``), or
    ``reconstruction`` for a store without classes (cloudy/clear pairs such as SEN12MS-CR)."""
    return st.task if st.classes else RECONSTRUCTION


def check_data(spec: LeaderboardSpec, runs: Sequence[Run],
               roots: Mapping[tuple[str, str], Path]) -> None:
    """Every run's :meth:`Method.check_data <cloudbench.harness.methods.Method.check_data>`
    (e.g. the cloud-removal leakage guard) before anything trains; the problems of all runs
    in one message."""
    problems: list[str] = []
    seen: set[str] = set()
    for run in runs:
        tests = {name: _store_of(spec, roots, name, run.sweep) for name in run.tests}
        try:
            create(run.method, run.params).check_data(
                _store_of(spec, roots, run.dataset, run.sweep), tests)
        except CloudbenchError as error:
            if str(error) not in seen:
                seen.add(str(error))
                problems.append(f"method {run.name!r} on {run.dataset!r}: {error}")
    if problems:
        raise CloudbenchError("; ".join(problems))


def check_tasks(spec: LeaderboardSpec, tasks: dict[str, str]) -> None:
    """Refuse a spec whose methods or metrics do not fit its datasets' tasks, in one message.

    ``tasks`` maps each dataset's name to its task (:func:`harness_task`: ``multiclass``,
    ``multilabel`` or ``reconstruction``). Every method entry must handle the task of every
    dataset (``Method.tasks``), and every dataset must be scored by at least one of the spec's
    metrics. The runner calls this once the datasets are built and before anything trains, so a
    mismatch costs no training.
    """
    problems = []
    for entry in spec.methods:
        handled = create(entry.method, entry.params).tasks
        who = f"method {entry.method!r}"
        if entry.name and entry.name != entry.method:
            who += f" (entry {entry.name!r})"
        for dataset, task in tasks.items():
            if entry.runs_on(dataset) and task not in handled:
                problems.append(f"{who} handles {' and '.join(handled)} datasets only; "
                                f"dataset {dataset!r} is {task}")
    for dataset, task in tasks.items():
        if not set(spec.metrics) & set(SCORED_BY[task]):
            problems.append(f"dataset {dataset!r} is {task}, scored by "
                            f"{', '.join(SCORED_BY[task])}, but the spec's metrics are "
                            f"{', '.join(spec.metrics)}")
    if problems:
        raise CloudbenchError("; ".join(problems))


def store_bands(st: Store) -> list[str]:
    """The band names a store can be read with: its S1 bands (and ``VV/VH`` when it has VV and
    VH), then the S2 bands of ``s2`` and of its native-resolution groups (``s2_20m``,
    ``s2_60m``)."""
    s1 = list(st.arrays["s1"].bands) if "s1" in st.arrays else []
    if {"VV", "VH"} <= set(s1):
        s1.append(RATIO_BAND)
    s2 = [b for name in ("s2", *S2_GROUPS) if name in st.arrays for b in st.arrays[name].bands]
    return [*s1, *s2]


def check_tests(spec: LeaderboardSpec, roots: Mapping[tuple[str, str], Path]) -> None:
    """Refuse, in one message and before anything trains, a dataset tested on another (its
    ``test``) whose store differs from its own in task or classes (names and order: labels
    are class indices), or lacks a band the trained-on dataset's ``optical`` or ``sar`` select
    for the spec's methods (a test split is read with the trained-on dataset's bands).

    ``roots`` maps (dataset, sweep value; "" for a dataset given by path) to its store, as the
    runner builds them; a swept run is tested on each test dataset's store of its sweep value.
    """
    methods = discover()
    problems: list[str] = []
    checked: set[tuple[Path, Path]] = set()
    for name, data in spec.datasets.items():
        # every band a method entry reads from this dataset (its own bands, else the dataset's)
        views: list[tuple[str, list[str]]] = []
        for entry in (e for e in spec.methods if e.runs_on(name)):
            modalities = methods[entry.method].modalities
            for view, modality, own, default in (("optical", "s2", entry.optical, data.optical),
                                                 ("sar", "s1", entry.sar, data.sar)):
                if modality in modalities:
                    views.append((view, list(own if own is not None else default)))
        views = [(view, list(dict.fromkeys(b for v, bands in views if v == view for b in bands)))
                 for view in ("optical", "sar") if any(v == view for v, _ in views)]
        for test in data.test or []:
            for sweep in sweep_values(spec):
                train_root = _store_of(spec, roots, name, sweep)
                test_root = _store_of(spec, roots, test, sweep)
                if test_root == train_root or (train_root, test_root) in checked:
                    continue
                checked.add((train_root, test_root))
                where = f" ({sweep})" if sweep and (data.recipe
                                                    or spec.datasets[test].recipe) else ""
                pair = f"dataset {name!r}{where} is tested on {test!r}, but"
                mine, theirs = Store(train_root), Store(test_root)
                if mine.task != theirs.task:
                    problems.append(f"{pair} {name!r} is {mine.task} and {test!r} is "
                                    f"{theirs.task}")
                    continue
                if mine.classes != theirs.classes:
                    only_mine = [c for c in mine.classes if c not in theirs.classes]
                    only_theirs = [c for c in theirs.classes if c not in mine.classes]
                    if not only_mine and not only_theirs:
                        differ = "the same classes in another order"
                    else:
                        differ = "; ".join(
                            f"only {who!r} has {', '.join(classes)}"
                            for who, classes in ((name, only_mine), (test, only_theirs))
                            if classes)
                    problems.append(f"{pair} their classes differ: {differ}")
                available = set(store_bands(theirs))
                for view, bands in views:
                    lacking = [b for b in bands if b not in available]
                    if lacking:
                        problems.append(
                            f"{pair} {test!r} lacks the {view} bands {', '.join(lacking)} that "
                            f"{name!r} selects ({name}.{view}); {test!r} has "
                            f"{', '.join(store_bands(theirs))}")
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
        bands = run_bands(spec, run, methods[run.method].modalities)
        splits = [load_split(_store_of(spec, roots, name, run.sweep), "test",
                             optical=bands["optical"], sar=bands["sar"],
                             labeled_per_class=labeled_count(spec, run.dataset),
                             seed=run.seed,
                             clear="s2_clear" in methods[run.method].modalities)
                  for name in run.tests]
        check_in_flight(splits, config, config.memory_budget_gb * GB,
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
    test_roots: Mapping[str, Path] | None = None,
) -> str:
    """:func:`run_one` on ``spec.devices`` processes per machine (``spec.num_nodes``
    machines) through Lightning Fabric; returns the run's key."""
    from lightning.fabric import Fabric

    accelerator = "cpu" if spec.device == "cpu" else "cuda"
    fabric = Fabric(accelerator=accelerator, devices=spec.devices, num_nodes=spec.num_nodes,
                    strategy=spec.strategy)
    fabric.launch(functools.partial(_run_rank, call=(spec, run, dataset_root, source_path, out,
                                                     context, test_roots)))
    return run.key


def _run_rank(fabric: Any, call: tuple[Any, ...]) -> str:
    spec, run, dataset_root, source_path, out, context, test_roots = call
    try:
        return run_one(spec, run, dataset_root, source_path, out, context, test_roots,
                       fabric=fabric)
    finally:
        end_process_group()



def load_run_data(
    root: Path,
    tests: Mapping[str, Path],
    *,
    optical: Sequence[str],
    sar: Sequence[str],
    labeled_per_class: int,
    seed: int,
    clear: bool = False,
) -> tuple[TargetData, dict[str, SplitData]]:
    """A run's splits: the target's (:func:`~cloudbench.harness.data.load_target`) and the test
    split of each store of ``tests`` (dataset name -> store), read with the same ``optical`` and
    ``sar`` bands and standardised with the target's train statistics, the very mean and
    standard deviation its own test split gets: every split is standardised at once, before
    any statistics exist on the reference splits (whose stored columns would otherwise decode
    to standardised values). Everything is left in the store, not yet placed. ``clear`` loads
    the cloud-free targets where the stores hold them
    (:func:`~cloudbench.harness.data.load_split`).
    """
    if not tests:
        return load_target(root, optical=optical, sar=sar,
                           labeled_per_class=labeled_per_class, seed=seed, clear=clear), {}
    # load_target's steps, with the other test splits standardised in the same call
    def split(store: Path, name: str) -> SplitData:
        return load_split(store, name, optical=optical, sar=sar,
                          labeled_per_class=labeled_per_class, seed=seed, clear=clear)

    target = [split(root, name) for name in ("labeled", "unlabeled", "test")]
    others = {name: split(store, "test") for name, store in tests.items()}
    standardise([*target, *others.values()], reference=target[:2])
    return TargetData(*target), others


def place_test(split: SplitData, data: TargetData, config: TrainConfig,
               device: torch.device) -> str:
    """Decode another dataset's test split onto ``device`` or leave it streamed, as
    :func:`~cloudbench.harness.data.place` does a run's own test split; returns the choice
    (``resident`` or ``stream``).

    ``config.data``: ``resident`` or ``stream``; ``auto`` keeps it resident when its decoded size
    fits :func:`~cloudbench.harness.data.memory_budget` beside the parts of ``data`` already
    resident (counted against a fixed ``memory_budget_gb``; free memory already leaves them
    out). One such split is placed at a time: the runner drops each once it is predicted.

    Raises:
        CloudbenchError: the budget cannot hold a streamed split's batches in flight.
    """
    budget = memory_budget(config, device)
    used = 0.0
    if config.memory_budget_gb is not None:
        used = float(sum(len(s) * sample_bytes(s.inputs)
                         for s in (data.labeled, data.unlabeled, data.test)
                         if not is_stored(s.inputs)))
    size = len(split) * sample_bytes(split.inputs)
    if config.data == "resident" or (config.data == "auto" and used + size <= budget):
        split.inputs = resident(split.inputs, device)
        return "resident"
    check_in_flight([split], config, budget - used,
                    f" (of {budget / GB:.3g} GB, {used / GB:.3g} GB resident)")
    split.inputs = {k: v if isinstance(v, Stored) else v.to(device)
                    for k, v in split.inputs.items()}
    return "stream"


def run_one(
    spec: LeaderboardSpec,
    run: Run,
    dataset_root: Path,
    source_path: Path | None,
    out: Path,
    context: dict[str, str],
    test_roots: Mapping[str, Path] | None = None,
    fabric: Any = None,
) -> str:
    """Train and test one run and record it; returns its key. Runs in a worker, or in every
    process of a data-parallel run (``fabric``; process 0 scores and records it).

    The run is fitted once, then scored on the test split of each dataset of ``run.tests``:
    its own (``dataset_root``'s) and those of ``test_roots`` (dataset name -> store; needed for
    every test dataset but the run's own), read with the run's dataset's bands and
    standardised with its train statistics (:func:`load_run_data`). A run is recorded with
    all of them or not at all.

    With ``run.train.checkpoint_every`` set, the run's fits are checkpointed under
    ``OUT/runs/<key>/checkpoints`` and a killed run resumes from them; they are removed once the
    run is recorded.
    """
    from cloudbench.harness.source import load_source

    checkpoints = results.run_dir(out, run.key) / "checkpoints"
    engine = Engine(spec.device, seed=run.seed, fabric=fabric, checkpoints=checkpoints)
    method = create(run.method, run.params)
    method.check_data(dataset_root, {name: (test_roots or {}).get(name, dataset_root)
                                     for name in run.tests})
    others = [name for name in run.tests if name != run.dataset]
    missing = [name for name in others if name not in (test_roots or {})]
    if missing:
        raise CloudbenchError(f"run {run.key} is tested on {', '.join(missing)}: give their "
                              "stores (test_roots)")
    data, tests = load_run_data(
        dataset_root, {name: (test_roots or {})[name] for name in others},
        **run_bands(spec, run, method.modalities),
        labeled_per_class=labeled_count(spec, run.dataset), seed=run.seed,
        clear="s2_clear" in method.modalities,
    )
    placement = place(data, run.train, engine.device)
    task = data.test.task  # check_tasks refused the methods that do not handle it
    source = None
    if method.needs_source:
        assert source_path is not None
        source = load_source(source_path, engine.device)
    history: list[dict[str, Any]] = []
    resumed_seconds = 0.0  # training seconds of epochs done before a resumed run was stopped

    def log(stage: str, entry: dict[str, Any]) -> None:
        nonlocal resumed_seconds
        if entry.get("resumed"):
            resumed_seconds += float(entry.get("seconds", 0.0))
        for term, value in entry.items():
            if term not in ("epoch", "resumed") and isinstance(value, (int, float)):
                history.append({"stage": stage, "epoch": int(entry["epoch"]), "term": term,
                                "value": float(value)})

    started = time.perf_counter()
    torch.manual_seed(run.seed)  # model initialisation: the same whatever ran before here
    method.fit(FitContext(data.labeled, data.unlabeled, source, engine, run.train,
                          data.num_classes, task, run.seed, log,
                          workdir=results.run_dir(out, run.key), bootstrap=spec.bootstrap))
    wall = time.perf_counter() - started
    train_seconds = wall + resumed_seconds
    train_speed, epoch_seconds = training_speed(history)
    predict_speed: float | None = None
    predict_seconds, masks = math.nan, torch.Size()
    scored: list[tuple[str, pd.DataFrame, pd.DataFrame]] = []
    # the run's own test split first (its prediction speed is the profile's), then the others
    for i, name in enumerate(sorted(run.tests, key=lambda name: name != run.dataset)):
        started = time.perf_counter()
        if name == run.dataset:
            split, where = data.test, placement["test"]
        else:  # placed one at a time, dropped once predicted
            split = tests.pop(name)
            where = place_test(split, data, run.train, engine.device)
        predicting = time.perf_counter()
        outputs = method.predict(split)
        finished = time.perf_counter()
        wall += finished - started
        if i == 0:
            predict_speed = engine.predict_samples_per_second
            predict_seconds = finished - predicting
            masks = split.inputs["cloud_mask"].shape  # (N, H, W): the masks its images need
        if engine.rank == 0:
            rows, predictions = _score(spec, run, method, split, outputs, data.num_classes)
            scored.append((name, rows.assign(test=name, data=f"train={placement['train']} "
                                             f"test={where}"), predictions))
        del split, outputs
    if engine.rank != 0:
        return run.key

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
    mask_seconds = None
    if method.reads_cloud_mask:
        mask_seconds = masks[0] * cost.cloud_mask_seconds_per_image(masks[-2], masks[-1])
    profile_rows += cost.cost_rows(train_seconds, predict_seconds, engine.world_size,
                                   mask_seconds)
    profile_frame = pd.DataFrame(profile_rows).assign(
        kind="profile", stratum="all", n=len(data.test), test=run.dataset,
        data=" ".join(f"{k}={v}" for k, v in placement.items()))
    rows = pd.concat([*(frame for _, frame, _ in scored), profile_frame], ignore_index=True)
    identity = {"run": run.key, "dataset": Store(dataset_root).meta["builder"]}
    rows = rows.assign(
        run=run.key, leaderboard=run.leaderboard, dataset=run.dataset, source=run.source,
        method=run.name, seed=run.seed, sweep=run.sweep, split="test",
        config_hash=store.config_hash(identity), device=_devices(engine),
        wall_seconds=wall, **context,
    )
    history_frame = pd.DataFrame(history, columns=["stage", "epoch", "term", "value"]).assign(
        run=run.key, method=run.name, dataset=run.dataset, source=run.source, seed=run.seed,
        sweep=run.sweep)
    own = next((p for name, _, p in scored if name == run.dataset), None)
    cross = {name: p for name, _, p in scored if name != run.dataset and p is not None}
    results.write_run(out, run.key, rows, history_frame, own, cross)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return run.key


def _score(spec: LeaderboardSpec, run: Run, method: Method, split: SplitData, outputs: Tensor,
           num_classes: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The metric rows (every metric of the spec, per-class and per stratum, the method's
    extra metrics) and the predictions (``cloudbench eval``'s format) of one test split; a
    ``reconstruction`` split has only the method's extra metrics (its pixel metrics) and no
    predictions."""
    extra = method.extra_metrics(split)
    if isinstance(extra, dict):
        extra = pd.DataFrame([{"metric": k, "value": v, "stratum": "all"}
                              for k, v in extra.items()])
    extra = extra.assign(kind="metric")
    if split.task == RECONSTRUCTION:
        return extra.reset_index(drop=True), None
    scores = outputs.cpu().numpy()
    predictions = pd.DataFrame({"id": split.ids})
    if scores.ndim == 1:
        predictions["pred"] = scores.astype(np.int64)
    else:
        for k in range(scores.shape[1]):
            predictions[f"score_{k}"] = scores[:, k]
    target = split.labels.cpu().numpy()
    table = evaluate(split.task, scores, target, num_classes=num_classes,
                     class_names=split.classes, cloud_state=np.asarray(split.cloud_states),
                     cloud_fraction=split.cloud_fractions.cpu().numpy(),
                     bootstrap=spec.bootstrap, seed=run.seed)
    per_class = table["metric"].str.contains("/")
    table = table[table["metric"].isin(spec.metrics) | per_class].assign(kind="metric")
    if len(extra):
        table = pd.concat([table, extra], ignore_index=True)
    return table.reset_index(drop=True), predictions


def _devices(engine: Engine) -> str:
    """The device in words, with the number of processes of a data-parallel run."""
    name = describe_device(engine.device)
    return f"{name} × {engine.world_size}" if engine.world_size > 1 else name

