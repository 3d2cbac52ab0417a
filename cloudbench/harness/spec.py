"""Leaderboard specs (``catalogs/leaderboards/<name>.yaml``) and their expansion into runs.

A spec names datasets (a store path, or a recipe built into the output folder), source models
(a checkpoint of ``cloudbench source train``, or a recipe or store to train one on), methods
with their hyperparameters and training settings, seeds, metrics, and an optional sweep over a
recipe parameter (for example ``clouded_fraction`` from 0.1 to 1.0). ``expand`` turns it into
one run per (dataset, source, method, seed, sweep value). Every field is validated on load;
errors name the field and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloudbench.config import load_yaml, merge, parse_overrides, validate
from cloudbench.errors import CloudbenchError
from cloudbench.harness.engine import PLACEMENT_SETTINGS, TrainConfig

Metric = Literal["OA", "AA", "Kappa", "AP_macro", "AP_micro"]
DEFAULT_METRICS: tuple[Metric, ...] = ("OA", "AA", "Kappa", "AP_macro", "AP_micro")
"""Every metric: each dataset is scored with those of its task (OA, AA, Kappa for multiclass,
AP_macro, AP_micro for multilabel)."""
ESCCS_OPTICAL = ["B04", "B03", "B02"]
ESCCS_SAR = ["VV", "VH", "VV/VH"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """A dataset: an existing store (``path``) or a recipe built into the output folder."""

    path: Path | None = None
    recipe: str | None = None
    set: dict[str, Any] = Field(default_factory=dict, description="recipe overrides")
    optical: list[str] = Field(default_factory=lambda: list(ESCCS_OPTICAL))
    sar: list[str] = Field(default_factory=lambda: list(ESCCS_SAR))

    @model_validator(mode="after")
    def _one_origin(self) -> DataSpec:
        if (self.path is None) == (self.recipe is None):
            raise ValueError("give exactly one of 'path' (a built dataset) or 'recipe'")
        if self.path is not None and self.set:
            raise ValueError("'set' only applies to a 'recipe'")
        return self


class SourceSpec(DataSpec):
    """A source model: a trained checkpoint (``model``, from ``cloudbench source train``), or a
    dataset (``path`` or ``recipe``) the harness trains the source ResNet-50 on."""

    path: Path | None = None
    recipe: str | None = None
    model: Path | None = Field(None, description="a source checkpoint (cloudbench source train)")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5))

    @model_validator(mode="after")
    def _one_origin(self) -> SourceSpec:
        given = [k for k in ("path", "recipe", "model") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'model' (a trained source checkpoint), "
                             "'path' (a built dataset) or 'recipe'")
        if self.recipe is None and self.set:
            raise ValueError("'set' only applies to a 'recipe'")
        return self


class MethodSpec(_Strict):
    method: str
    name: str | None = Field(None, description="the row's name (default: the method's)")
    params: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides")


class SweepSpec(_Strict):
    parameter: str
    values: list[Any] = Field(min_length=1)


class LeaderboardSpec(_Strict):
    name: str
    title: str = ""
    datasets: dict[str, DataSpec] = Field(min_length=1)
    sources: dict[str, SourceSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metrics: list[Metric] = Field(default_factory=lambda: list(DEFAULT_METRICS),
                                  description="reported where they apply to a dataset's task")
    train: TrainConfig = Field(default_factory=TrainConfig, description="defaults per method")
    labeled_per_class: int = Field(20, ge=1)
    bootstrap: int = Field(1000, ge=0)
    device: str = "auto"
    devices: int = Field(1, ge=1, description="processes (GPUs, or CPU processes with device "
                         "cpu) that train each run together, data-parallel")
    num_nodes: int = Field(1, ge=1, description="machines those processes span")
    strategy: Literal["ddp_spawn", "ddp"] = Field(
        "ddp_spawn", description="Lightning Fabric strategy: ddp_spawn starts the processes "
        "from this one; ddp expects a launcher (torchrun, SLURM) to have started them")
    sweep: SweepSpec | None = None
    published: str | None = Field(None, description="catalogs/published/<name>.yaml")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[MethodSpec]) -> list[MethodSpec]:
        from cloudbench.harness.methods import discover

        known = discover()
        for entry in methods:
            if entry.method not in known:
                raise ValueError(f"unknown method {entry.method!r}; available: "
                                 f"{', '.join(sorted(known))}")
        for entry in methods:
            params = known[entry.method].Params
            validate(params, entry.params, f"params of method {entry.name or entry.method!r}")
        names = [entry.name or entry.method for entry in methods]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"several entries are named {', '.join(repeated)}: give each "
                             "entry of the same method its own 'name'")
        return methods

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        import torch

        if device == "auto":
            return device
        try:
            parsed = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"{device!r} is not a device; use auto, cpu, cuda or cuda:N") from err
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{device!r} asked for, but no CUDA GPU is available here")
        return device

    @model_validator(mode="after")
    def _devices_exist(self) -> LeaderboardSpec:
        import torch

        if self.devices == 1 and self.num_nodes == 1:
            return self
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"devices: {self.devices} needs device auto, cuda or cpu, not "
                             f"{self.device!r} (the processes take cuda:0 … cuda:N-1)")
        if self.device != "cpu":
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if found < self.devices:
                raise ValueError(
                    f"devices: {self.devices} asks for {self.devices} GPUs per machine, but "
                    f"this one has {found}; give fewer, or device: cpu to run {self.devices} "
                    "processes on the CPU"
                )
        return self

    @model_validator(mode="after")
    def _sweep_needs_recipes(self) -> LeaderboardSpec:
        if self.sweep and not any(d.recipe for d in self.datasets.values()):
            raise ValueError("a sweep changes a recipe parameter: give a dataset with 'recipe'")
        return self


@dataclass(frozen=True)
class Run:
    """One cell of the leaderboard: a method trained and tested once."""

    leaderboard: str
    dataset: str
    source: str
    method: str
    """The registered method."""
    name: str
    """The row's name in the leaderboard (the spec entry's ``name``, else ``method``)."""
    params: dict[str, Any]
    train: TrainConfig
    seed: int
    sweep: str
    """"" or ``parameter=value``."""

    @property
    def key(self) -> str:
        """A stable id of everything that determines the run's result (not where the data is
        kept, :data:`~cloudbench.harness.engine.PLACEMENT_SETTINGS`, which changes no result;
        nor ``shuffle_block`` at its default, so keys of runs from before it existed hold)."""
        train = self.train.model_dump(exclude=set(PLACEMENT_SETTINGS))
        if train["shuffle_block"] == 1:
            del train["shuffle_block"]
        identity = {
            "leaderboard": self.leaderboard, "dataset": self.dataset, "source": self.source,
            "method": self.method, "name": self.name, "params": self.params,
            "train": train,
            "seed": self.seed, "sweep": self.sweep,
        }
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_spec(name_or_path: str | Path, overrides: Sequence[str] = ()) -> LeaderboardSpec:
    """A spec by name (``catalogs/leaderboards/<name>.yaml``) or by path to a YAML file.

    ``overrides`` are ``key.path=value`` settings (values parsed as YAML) merged into it before
    validation, e.g. ``sources.NR.model=resisc45.pt`` or ``seeds=[0]``.
    """
    path = Path(name_or_path)
    # A folder that happens to share a spec's name (e.g. ./demo) does not shadow the spec.
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise CloudbenchError(f"no leaderboard spec at {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise CloudbenchError(f"{path} is not valid YAML: {err}") from err
        where = str(path)
    else:
        data = load_yaml("leaderboards", f"{name_or_path}.yaml")
        where = f"leaderboard {name_or_path}"
    if not isinstance(data, dict):
        raise CloudbenchError(f"{where}: a leaderboard spec is a YAML mapping")
    if overrides:
        data = merge(data, parse_overrides(overrides))
        where += " (with --set)"
    return validate(LeaderboardSpec, data, where)


def restrict(spec: LeaderboardSpec, part: str, names: Sequence[str]) -> LeaderboardSpec:
    """``spec`` with only the named entries of ``part`` (``datasets``, ``sources``, or
    ``methods``, whose entries are named by ``name`` or ``method``)."""
    if part == "methods":
        known = [m.name or m.method for m in spec.methods]
    else:
        known = list(getattr(spec, part))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CloudbenchError(f"no {part} named {', '.join(unknown)} in leaderboard "
                              f"{spec.name!r}; it has {', '.join(known)}")
    if part == "methods":
        kept: Any = [m for m in spec.methods if (m.name or m.method) in names]
    else:
        kept = {k: v for k, v in getattr(spec, part).items() if k in names}
    return spec.model_copy(update={part: kept})


def sweep_values(spec: LeaderboardSpec) -> list[str]:
    if spec.sweep is None:
        return [""]
    return [f"{spec.sweep.parameter}={value}" for value in spec.sweep.values]


def expand(spec: LeaderboardSpec) -> list[Run]:
    """Every run of the spec, in a fixed order (dataset, source, sweep, method, seed)."""
    runs = []
    for dataset in spec.datasets:
        for source in spec.sources:
            for sweep in sweep_values(spec):
                for entry in spec.methods:
                    train = validate(TrainConfig, {**spec.train.model_dump(), **entry.train},
                                     f"train settings of method {entry.method!r}")
                    for seed in spec.seeds:
                        runs.append(Run(spec.name, dataset, source, entry.method,
                                        entry.name or entry.method, dict(entry.params), train,
                                        seed, sweep))
    return runs
