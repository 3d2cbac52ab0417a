"""The method protocol and the registry.

A method is one file in ``methods/`` (proposed methods) or ``baselines/`` (comparators) that
defines a subclass of :class:`Method` decorated with :func:`register`. The runner finds it by
importing every module of those two packages; nothing else needs to change to add a method.
See ``docs/methods.md`` for a worked example.

A method declares what it needs (``modalities``, ``tasks``, ``needs_source``) and its
hyperparameters (``Params``, a pydantic model validated from the leaderboard spec), then
implements ``fit(context)`` and ``predict(split)``. It trains only through ``context.engine``
(the one training engine) and logs each training step's loss terms with ``context.log``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from cloudbench.config import validate
from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.source import SourceModel

METHOD_PACKAGES = ("cloudbench.methods", "cloudbench.baselines")


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class FitContext:
    """Everything a method may use to train."""

    labeled: SplitData
    unlabeled: SplitData
    source: SourceModel | None
    engine: Engine
    train: TrainConfig
    num_classes: int
    task: str
    seed: int
    log: Callable[[str, dict[str, Any]], None]
    """``log(stage, entry)``: record one epoch's history entry of a training stage."""
    workdir: Path | None = None
    """A folder for files the method keeps beside its results (the run's folder,
    ``OUT/runs/<key>``; e.g. a trained cloud-removal model); None outside a leaderboard run."""
    bootstrap: int = 0
    """Bootstrap resamples for the confidence intervals of metrics a method computes itself
    (the spec's ``bootstrap``; e.g. pixel metrics)."""


class Method:
    """Base class of every benchmark method (see the module docstring)."""

    name: ClassVar[str]
    modalities: ClassVar[tuple[str, ...]]
    """The views the method uses: ``s2`` (optical), ``s1`` (SAR)."""
    tasks: tuple[str, ...] = ("multiclass",)
    """The dataset tasks it handles (``multiclass``, ``multilabel``, ``reconstruction``); the
    runner refuses a spec that gives it a dataset of another task before any run trains. Read
    from an instance (a pipeline handles what its classifier handles)."""
    needs_source: bool = False
    """Whether ``fit`` gets a source model; read from an instance (a method whose parameters
    decide it, such as a pipeline around another method, sets it per instance)."""
    reads_cloud_mask: bool = False
    """Whether ``predict`` reads the test images' ``cloud_mask`` (e.g. as an input of its
    network): a mask that has to be computed for a new image, so the runner adds its
    s2cloudless cost to the method's (``cloud_mask_seconds``, :mod:`cloudbench.harness.cost`);
    read from an instance."""
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def check_data(self, dataset: Path, tests: Mapping[str, Path]) -> None:
        """Refuse data this run must not use, before anything trains (the runner calls it for
        every run first): ``dataset`` is the store trained on, ``tests`` maps each dataset the
        run is tested on to its store. Raises :class:`CloudbenchError`; nothing by default."""

    def fit(self, context: FitContext) -> None:
        raise NotImplementedError

    def predict(self, split: SplitData) -> Tensor:
        """Class scores (N, K) (or class indices (N,)) for every sample of ``split``."""
        raise NotImplementedError

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        """The trained inference model and its forward function, for the profiler rows."""
        raise NotImplementedError

    def extra_metrics(self, split: SplitData) -> dict[str, float] | pd.DataFrame:
        """Further metrics a method reports on a test split it predicted: ``{metric: value}``
        (stratum ``all``), or a long table with ``evaluate``'s columns (``stratum, metric,
        value, ci_low, ci_high, n``), e.g. pixel metrics per cloud stratum; none by default."""
        return {}


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to leaderboard specs under ``cls.name``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}: {METHODS[cls.name]} and {cls}")
    METHODS[cls.name] = cls
    return cls


def discover() -> dict[str, type[Method]]:
    """Import every module of the method packages (registering their methods)."""
    for package_name in METHOD_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{module.name}")
    return METHODS


def create(name: str, params: dict[str, Any]) -> Method:
    """A method by its registered name, with validated hyperparameters."""
    methods = discover()
    if name not in methods:
        raise CloudbenchError(f"unknown method {name!r}; available: {', '.join(sorted(methods))}")
    cls = methods[name]
    return cls(validate(cls.Params, params, f"parameters of method {name!r}"))
