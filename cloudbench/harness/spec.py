"""Leaderboard specs (``catalogs/leaderboards/<name>.yaml``) and their expansion into runs.

A spec names datasets (a store path, or a recipe built into the output folder), source models
(a checkpoint of ``cloudbench source train``, or a recipe or store to train one on), methods
with their hyperparameters and training settings, seeds, metrics, and an optional sweep over a
recipe parameter (for example ``clouded_fraction`` from 0.1 to 1.0). ``expand`` turns it into
one run per (dataset, source, method, seed, sweep value); a dataset's ``test`` names the datasets
whose test split scores the runs trained on it (default: its own). Sources are optional (for
methods that need no source model). Every field is validated on load; errors name the field and
the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloudbench.config import load_yaml, merge, parse_overrides, validate
from cloudbench.errors import CloudbenchError
from cloudbench.harness.engine import PLACEMENT_SETTINGS, TrainConfig

Metric = Literal[
    "OA", "AA", "Kappa", "AP_macro", "AP_micro",
    "RMSE", "MAE", "PSNR", "SSIM", "SAM", "UCE", "AUCE", "within_1sigma", "within_2sigma",
]
"""A metric a spec may list: the classification metrics, then the pixel metrics of
``cloudbench.reconstruction`` (RMSE, MAE, PSNR, SSIM, SAM of every method that reconstructs
images; UCE, AUCE, within_1sigma, within_2sigma of those that also predict a variance)."""
DEFAULT_METRICS: tuple[Metric, ...] = ("OA", "AA", "Kappa", "AP_macro", "AP_micro")
"""The default: every classification metric, each dataset scored with those of its task (OA, AA,
Kappa for multiclass, AP_macro, AP_micro for multilabel). Pixel metrics are not among them: they
are reported by the methods that reconstruct images (whatever the spec lists), and the
leaderboard shows them when a spec lists them."""
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
    test: list[str] | None = Field(
        None, min_length=1,
        description="the datasets of the spec whose test split scores the runs trained on this "
        "one, read with this dataset's bands (default: this dataset only)")
    labeled_per_class: int | Literal["all"] | None = Field(
        None, description="labelled training samples per class of runs on this dataset "
        "(default: the spec's), e.g. 20 on SEN12MS Cloud and all on CBEN in one spec")

    @field_validator("labeled_per_class")
    @classmethod
    def _positive(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"labeled_per_class must be at least 1 or 'all', got {value}")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> DataSpec:
        if (self.path is None) == (self.recipe is None):
            raise ValueError("give exactly one of 'path' (a built dataset) or 'recipe'")
        if self.path is not None and self.set:
            raise ValueError("'set' only applies to a 'recipe'")
        if self.test is not None:
            repeated = sorted({t for t in self.test if self.test.count(t) > 1})
            if repeated:
                raise ValueError(f"'test' names {', '.join(repeated)} more than once")
        return self


class SourceSpec(DataSpec):
    """A source model: a trained checkpoint (``model``, from ``cloudbench source train``), or a
    dataset (``path`` or ``recipe``) the harness trains the source ResNet-50 on."""

    path: Path | None = None
    recipe: str | None = None
    model: Path | None = Field(None, description="a source checkpoint (cloudbench source train)")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=5))
    labeled_per_class: None = Field(None, description="not for sources: they train on every "
                                    "labelled sample of their dataset")

    @model_validator(mode="after")
    def _one_origin(self) -> SourceSpec:
        given = [k for k in ("path", "recipe", "model") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'model' (a trained source checkpoint), "
                             "'path' (a built dataset) or 'recipe'")
        if self.recipe is None and self.set:
            raise ValueError("'set' only applies to a 'recipe'")
        if self.test is not None:
            raise ValueError("'test' only applies to the datasets of a spec, not to sources")
        return self


class MethodSpec(_Strict):
    method: str
    name: str | None = Field(None, description="the row's name (default: the method's)")
    params: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides")
    optical: list[str] | None = Field(
        None, description="the optical bands this method reads (default: the dataset's)")
    sar: list[str] | None = Field(
        None, description="the SAR bands this method reads (default: the dataset's)")
    datasets: list[str] | None = Field(
        None, min_length=1,
        description="the spec's datasets this entry runs on (default: all of them)")
    factor: str | None = Field(
        None, min_length=1,
        description="the ablation factor this entry varies from the default: the entries of "
        "one factor form one table, beside the entries without a factor (or 'default'), the "
        "reference of every factor's table; it changes no run")

    def runs_on(self, dataset: str) -> bool:
        return self.datasets is None or dataset in self.datasets


class SweepSpec(_Strict):
    parameter: str
    values: list[Any] = Field(min_length=1)


class LeaderboardSpec(_Strict):
    name: str
    title: str = ""
    datasets: dict[str, DataSpec] = Field(min_length=1)
    sources: dict[str, SourceSpec] = Field(
        default_factory=dict, description="source models; none for methods that need none")
    methods: list[MethodSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metrics: list[Metric] = Field(default_factory=lambda: list(DEFAULT_METRICS),
                                  description="reported where they apply to a dataset's task")
    train: TrainConfig = Field(default_factory=TrainConfig, description="defaults per method")
    labeled_per_class: int | Literal["all"] = Field(
        20, description="labelled training samples per class; all: the whole train split")
    bootstrap: int = Field(1000, ge=0)
    device: str = "auto"
    devices: int = Field(1, ge=1, description="processes (GPUs, or CPU processes with device "
                         "cpu) that train each run together, data-parallel")
    num_nodes: int = Field(1, ge=1, description="machines those processes span")
    strategy: Literal["ddp_spawn", "ddp"] = Field(
        "ddp_spawn", description="Lightning Fabric strategy: ddp_spawn starts the processes "
        "from this one; ddp expects a launcher (torchrun, SLURM) to have started them")
    sweep: SweepSpec | None = None
    published: str | None = Field(
        None, description="a name in catalogs/published (<name>.yaml) or a path to a YAML file")

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

    @field_validator("datasets")
    @classmethod
    def _tests_are_datasets(cls, datasets: dict[str, DataSpec]) -> dict[str, DataSpec]:
        check_test_names(datasets)
        return datasets

    @model_validator(mode="after")
    def _entry_datasets(self) -> LeaderboardSpec:
        for entry in self.methods:
            unknown = [d for d in entry.datasets or [] if d not in self.datasets]
            if unknown:
                raise ValueError(
                    f"method {entry.name or entry.method!r}: datasets {unknown} are not "
                    f"datasets of the spec; its datasets are {', '.join(self.datasets)}")
        return self

    @field_validator("labeled_per_class")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"labeled_per_class must be at least 1 or 'all', got {value}")
        return value

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

    @model_validator(mode="after")
    def _sources_for_methods(self) -> LeaderboardSpec:
        check_sources(self)
        return self


def check_test_names(datasets: dict[str, DataSpec]) -> None:
    """Refuse a dataset whose ``test`` names a dataset the spec does not have (one message)."""
    problems = []
    for name, data in datasets.items():
        unknown = [t for t in data.test or [] if t not in datasets]
        if unknown:
            problems.append(f"datasets.{name}.test names {', '.join(map(repr, unknown))}, "
                            f"not {'a dataset' if len(unknown) == 1 else 'datasets'} of the "
                            f"spec; its datasets are {', '.join(datasets)}")
    if problems:
        raise CloudbenchError("; ".join(problems))


def check_sources(spec: LeaderboardSpec) -> None:
    """Refuse a spec without ``sources`` whose methods need a source model (one message)."""
    if spec.sources:
        return
    from cloudbench.harness.methods import create, discover

    known = discover()
    needing = [entry.name or entry.method for entry in spec.methods
               if entry.method in known and create(entry.method, entry.params).needs_source]
    if needing:
        who = (f"method {needing[0]!r} needs" if len(needing) == 1
               else f"methods {', '.join(map(repr, needing))} need")
        raise CloudbenchError(f"{who} a source model, but the spec has no sources: give one "
                              "under 'sources' (a trained checkpoint or a source domain)")


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
    test: tuple[str, ...] = ()
    """The datasets whose test split scores the run (the dataset's ``test``); () for the
    dataset's own test split only."""
    optical: tuple[str, ...] | None = None
    sar: tuple[str, ...] | None = None
    """The method entry's bands; None: the dataset's (see :func:`run_bands`)."""

    @property
    def tests(self) -> tuple[str, ...]:
        """The datasets whose test split scores the run, in the spec's order (default: its own
        dataset only)."""
        return self.test or (self.dataset,)

    @property
    def key(self) -> str:
        """A stable id of everything that determines the run's result (not where the data is
        kept, :data:`~cloudbench.harness.engine.PLACEMENT_SETTINGS`, which changes no result;
        nor ``shuffle_block`` at its default, so keys of runs from before it existed hold).

        The test datasets are part of it (sorted) only when they are not the dataset's own test
        split alone: runs whose dataset has no ``test`` keep the keys they always had, and
        changing a dataset's ``test`` runs its runs again (a run is all its test sets or none).
        """
        train = self.train.model_dump(exclude=set(PLACEMENT_SETTINGS))
        if train["shuffle_block"] == 1:
            del train["shuffle_block"]
        identity: dict[str, Any] = {
            "leaderboard": self.leaderboard, "dataset": self.dataset, "source": self.source,
            "method": self.method, "name": self.name, "params": self.params,
            "train": train,
            "seed": self.seed, "sweep": self.sweep,
        }
        if self.tests != (self.dataset,):
            identity["test"] = sorted(self.tests)
        for view in ("optical", "sar"):  # only when the entry chooses its own bands
            if getattr(self, view) is not None:
                identity[view] = list(getattr(self, view))
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
    if part == "datasets":
        dropped = {name: [t for t in data.test or [] if t not in kept]
                   for name, data in kept.items()}
        problems = [f"dataset {name!r} is tested on {', '.join(map(repr, tests))} (its 'test')"
                    for name, tests in dropped.items() if tests]
        if problems:
            wanted = ",".join(dict.fromkeys([*names, *(t for ts in dropped.values() for t in ts)]))
            raise CloudbenchError("; ".join(problems) + ": keep the datasets a run is tested on "
                                  f"(--datasets {wanted})")
    return spec.model_copy(update={part: kept})


def entry_factors(spec: LeaderboardSpec) -> dict[str, str | None]:
    """Each method entry's row name and its ``factor`` (None for none), in the spec's order;
    empty when no entry has one (no factor tables: :func:`cloudbench.harness.render.render`)."""
    factors = {entry.name or entry.method: entry.factor for entry in spec.methods}
    return factors if any(f is not None for f in factors.values()) else {}


def sweep_values(spec: LeaderboardSpec) -> list[str]:
    if spec.sweep is None:
        return [""]
    return [f"{spec.sweep.parameter}={value}" for value in spec.sweep.values]


def expand(spec: LeaderboardSpec) -> list[Run]:
    """Every run of the spec, in a fixed order (dataset, source, sweep, method, seed).

    A spec without sources gives runs with ``source=""``. Each run carries its dataset's
    ``test`` (the datasets whose test split scores it); a swept run is tested on each test
    dataset's store of the same sweep value (a dataset given by path has one store for all).
    """
    runs = []
    for dataset, data in spec.datasets.items():
        test = tuple(data.test or ())
        for source in spec.sources or [""]:
            for sweep in sweep_values(spec):
                for entry in (e for e in spec.methods if e.runs_on(dataset)):
                    train = validate(TrainConfig, {**spec.train.model_dump(), **entry.train},
                                     f"train settings of method {entry.method!r}")
                    optical = None if entry.optical is None else tuple(entry.optical)
                    sar = None if entry.sar is None else tuple(entry.sar)
                    for seed in spec.seeds:
                        runs.append(Run(spec.name, dataset, source, entry.method,
                                        entry.name or entry.method, dict(entry.params), train,
                                        seed, sweep, test, optical, sar))
    return runs


def run_bands(spec: LeaderboardSpec, run: Run, modalities: Sequence[str]) -> dict[str, list[str]]:
    """The ``optical`` and ``sar`` bands ``run`` reads: its method entry's where given, else its
    dataset's; none for a view the method does not use (``modalities``: ``s2``, ``s1``)."""
    data = spec.datasets[run.dataset]
    optical = list(run.optical) if run.optical is not None else list(data.optical)
    sar = list(run.sar) if run.sar is not None else list(data.sar)
    return {"optical": optical if "s2" in modalities else [],
            "sar": sar if "s1" in modalities else []}


def labeled_count(spec: LeaderboardSpec, dataset: str) -> int:
    """``labeled_per_class`` of the runs on ``dataset`` (the dataset's, else the spec's) as a
    number: ``all`` takes every train sample of every class."""
    given = spec.datasets[dataset].labeled_per_class
    value = spec.labeled_per_class if given is None else given
    return sys.maxsize if value == "all" else value
