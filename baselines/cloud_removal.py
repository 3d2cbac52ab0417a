"""Cloud removal, and cloud removal then classify: the third method family.

Two methods share one cloud-removal stage (:mod:`cloudbench.harness.cr_stage`):

* ``cloud-removal``: train a cloud-removal network on (cloudy, cloud-free) pairs and score its
  reconstructions of the test images with the pixel metrics (RMSE, MAE, PSNR, SSIM, SAM on
  [0, 1] data; UCE, AUCE and the share of errors within 1σ / 2σ for a network with a variance
  head), overall and per clear/thin/thick pixels of the input's cloud mask. It runs on stores
  with cloud-free targets and no classes (SEN12MS-CR, task ``reconstruction``) and keeps the
  trained model in the run's folder (``OUT/runs/<key>/cr-model.pt``), which ``cr-then-classify``
  can load (``cr_weights``).
* ``cr-then-classify``: a cloud-removal network (trained here, or loaded), then an optical
  classifier method of the harness (``classifier``; by default ``finetune-optical``, the ESCCS
  protocol's f_S: the source encoder frozen, a linear classifier on the labelled samples)
  trained and tested on the **reconstructed** optical images. Its rows carry the
  classification metrics (OA/AA/Kappa or AP, by cloud state and cloud-fraction bin, as every
  method's) and, where the test split has cloud-free targets, the pixel metrics.

The networks and losses (docs/cloud-removal.md): ``uncrtaints`` (UnCRtainTS mono-temporal;
default loss ``mgnll`` with the variance head, the configuration of its SEN12MS-CR numbers),
``sscr`` (UnCRtainTS + the SAR structure branch with a learnable fusion weight; loss ``sscr``:
0.9 · L1 + 0.001 · (1 − Pearson)), ``unet`` and ``utae`` (loss ``l1``). Inputs are the
papers' units (S2 reflectance clipped to [0, 1]; VV, VH dB clipped to [−25, 0] → [0, 1]),
converted from and back to the harness's standardised units with each split's statistics.

Choices the papers leave open, or that the harness makes:

- **Training pairs** (``cr_store``): by default the run's own train split (labelled and
  unlabelled samples) where the store has cloud-free targets (SEN12MS Cloud: simulated clouds
  over the original; demo ``clear_target``); with ``cr_store``, the train split of another
  store (e.g. SEN12MS-CR, real clouds), which must hold the run's optical bands. Only clouded
  inputs (``cloud_fraction`` > 0) with ``clouded_only`` (default), at most ``pairs`` of them
  (seeded draw).
- **Settings** (``cr_train``): the run's training settings with these overrides; by default
  AdamW, learning rate 1e-3, no weight decay (UnCRtainTS and SSCR train with Adam at 1e-3).
  The engine's flips and 90° rotations apply to input and target alike.
- **Leakage guard**: a model trained outside the run's train split (``cr_store``, or
  ``cr_weights`` whose file records its training samples) must share no scene and no
  footprint with any test split the run is scored on (:mod:`cloudbench.harness.leakage`);
  the run is refused before anything trains, naming them. ``allow_leakage: true`` runs it
  anyway, and every run reports ``scene_overlap`` (overlapping scenes, or test samples where
  no scenes are named; 0 for a clean run) as a result row. Training on the run's own train
  split shares with the test split exactly what every other method's training does (a store
  whose split is not by scene, such as SEN12MS Cloud's ``split: random``, shares scenes for
  all methods alike; use its ``split: holdout`` for scene-disjoint numbers).
- **Classifier inputs** (``cr-then-classify``): the classifier is trained on the
  reconstructed labelled (and unlabelled) images and tested on the reconstructed test images,
  of the bands ``classifier_bands`` (default: every optical band the network reconstructs);
  its SAR view, if it reads one, is the split's own. Reconstructions are computed once per
  split, without augmentation, and held in memory for the classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from cloudbench.errors import CloudbenchError
from cloudbench.harness import cr_stage, leakage
from cloudbench.harness.cr_losses import CRLoss
from cloudbench.harness.data import CLEAR_KEY, RECONSTRUCTION, SplitData, load_split, standardise
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, Method, create, register
from cloudbench.models.cloud_removal import (
    build_cr_model,
    load_cr_checkpoint,
    save_cr_checkpoint,
)
from cloudbench.store import Store

CRModel = Literal["uncrtaints", "sscr", "unet", "utae"]
DEFAULT_LOSS: dict[str, CRLoss] = {"uncrtaints": "mgnll", "sscr": "sscr", "unet": "l1",
                                   "utae": "l1"}
MODEL_FILE = "cr-model.pt"
"""The trained model a ``cloud-removal`` run keeps in its folder."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: CRModel = "uncrtaints"
    """The cloud-removal network (``cloudbench.models.cloud_removal.CR_MODELS``)."""
    loss: CRLoss | None = None
    """l1, l2, gnll, mgnll (these two with the variance head) or sscr (the sscr model only);
    default per model: uncrtaints mgnll, sscr sscr, unet and utae l1."""
    model_args: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments of the network's constructor (e.g. ``widths`` of unet)."""
    cr_store: Path | None = None
    """Train on this store's train split instead of the run's (it must hold the run's
    optical bands and cloud-free targets)."""
    cr_weights: Path | None = None
    """Load a trained model (a ``cr-model.pt`` of a ``cloud-removal`` run) instead of training
    one."""
    pairs: int | None = Field(None, ge=1)
    """At most this many training pairs (a seeded draw); None: all."""
    clouded_only: bool = True
    """Train only on pairs whose input has cloud."""
    cr_train: dict[str, Any] = Field(
        default_factory=lambda: {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0})
    """Overrides of the run's training settings for the cloud-removal stage."""
    allow_leakage: bool = False
    """Run even when the model's training samples share scenes or places with a test split
    (the overlap is reported as ``scene_overlap``)."""

    @property
    def chosen_loss(self) -> CRLoss:
        return self.loss or DEFAULT_LOSS[self.model]

    @property
    def variance(self) -> bool:
        return self.chosen_loss in ("gnll", "mgnll")

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.cr_store is not None and self.cr_weights is not None:
            raise ValueError("give cr_store (train here) or cr_weights (load), not both")
        if self.chosen_loss == "sscr" and self.model != "sscr":
            raise ValueError("the sscr loss needs the sscr model (its SAR structure mask)")
        unknown = sorted(set(self.cr_train) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"cr_train: unknown training settings {unknown}")
        TrainConfig.model_validate(self.cr_train)
        return self


class CloudRemovalBase(Method):
    """What both methods share: the network, its training pairs, the guard, the scoring."""

    modalities = ("s2", "s1", "s2_clear")
    Params = Params
    extra_channels = 0
    """Input channels besides VV, VH in the network's SAR slot (SPL: the cloud mask)."""
    uses_sar = True

    def __init__(self, params: BaseModel) -> None:
        super().__init__(params)
        self.p: Params = params  # type: ignore[assignment]
        self.overlap = 0
        self.pixel_tables: dict[int, pd.DataFrame] = {}

    # ------------------------------------------------------------------ leakage guard
    def check_data(self, dataset: Path, tests: Mapping[str, Path]) -> None:
        trained = self._external_training_set()
        if trained is None:
            self.overlap = 0
            if "s2_clear" not in Store(dataset).arrays:
                raise CloudbenchError(
                    f"{dataset} has no cloud-free targets (s2_clear) to train the "
                    "cloud-removal model on: give cr_store (a store with them, e.g. SEN12MS-CR) "
                    "or cr_weights (a model a cloud-removal run kept)")
            return
        table, what = trained
        problems, total = [], 0
        for name, root in tests.items():
            found = leakage.find_overlap(table, cr_stage.samples_of(root, split="test"))
            total += found.count
            if found:
                problems.append(leakage.describe(found, what, f"the test split of {name!r}"))
        self.overlap = total
        if problems and not self.p.allow_leakage:
            raise CloudbenchError(
                "; ".join(problems) + " (the cloud-removal model would have seen the places "
                "it is scored on; train it elsewhere, or set allow_leakage: true to run anyway, "
                "recorded as scene_overlap in the results)")

    def _external_training_set(self) -> tuple[Any, str] | None:
        if self.p.cr_store is not None:
            return (cr_stage.samples_of(self.p.cr_store, split="train"),
                    f"the cloud-removal training samples ({self.p.cr_store}, train split)")
        if self.p.cr_weights is not None:
            _, meta = load_cr_checkpoint(self.p.cr_weights)
            if "trained_on" not in meta:
                raise CloudbenchError(f"{self.p.cr_weights} does not record what it was trained "
                                      "on, so the leakage guard cannot check it")
            return (cr_stage.trained_on_table(meta["trained_on"]),
                    f"the samples {self.p.cr_weights} was trained on")
        return None

    # ------------------------------------------------------------------ the stage
    def fit_cloud_removal(self, context: FitContext) -> cr_stage.Reconstructor:
        """Train (or load) the network; keep it in the run's folder."""
        self.engine: Engine = context.engine
        self.bootstrap, self.seed = context.bootstrap, context.seed
        labeled = context.labeled
        optical = labeled.bands.get("image_s2", [])
        if self.p.cr_weights is not None:
            net, meta = load_cr_checkpoint(self.p.cr_weights, device=self.engine.device)
            channels = (len(cr_stage.SAR_BANDS) if self.uses_sar else 0) + self.extra_channels
            if meta.get("sar") != self.uses_sar or net.s1_bands != channels:
                raise CloudbenchError(
                    f"{self.p.cr_weights} is a network with {net.s1_bands} input channels "
                    f"besides the optical ones (SAR: {meta.get('sar')}); {self.name} needs "
                    f"{channels} (SAR: {self.uses_sar})")
            if meta.get("optical") != optical:
                raise CloudbenchError(
                    f"{self.p.cr_weights} reconstructs the bands {meta.get('optical')}, the run "
                    f"reads {optical}: give the run (method entry's optical) the model's bands")
            model = cr_stage.Reconstructor(net, cr_stage.Units(labeled, self.uses_sar),
                                           self.extra_input())
            return model.to(self.engine.device)
        if self.p.cr_store is not None:
            sar = labeled.bands.get("image_s1", [])
            train = load_split(self.p.cr_store, "train", optical=optical, sar=sar,
                               labeled_per_class=0, seed=context.seed, clear=True)
            if CLEAR_KEY not in train.inputs:
                raise CloudbenchError(f"{self.p.cr_store} has no cloud-free targets (s2_clear) "
                                      f"for the bands {optical}")
            standardise([train], reference=[train])
            splits = [train]
        else:
            splits = [context.labeled, context.unlabeled]
        inputs, sources = cr_stage.training_pairs(
            splits, clouded_only=self.p.clouded_only, pairs=self.p.pairs, seed=context.seed)
        kwargs = {"s2_bands": len(optical),
                  "s1_bands": (len(cr_stage.SAR_BANDS) if self.uses_sar else 0)
                  + self.extra_channels,
                  "variance": self.p.variance, **self.p.model_args}
        net = build_cr_model(self.p.model, **kwargs)
        model = cr_stage.Reconstructor(net, cr_stage.Units(sources[0][0], self.uses_sar),
                                       self.extra_input()).to(self.engine.device)
        config = TrainConfig.model_validate({**context.train.model_dump(), **self.p.cr_train})
        self.train_cloud_removal(context, model, inputs, config)
        if context.workdir is not None and self.engine.rank == 0:
            meta = {"optical": list(optical), "sar": self.uses_sar, "loss": self.p.chosen_loss,
                    "trained_on": cr_stage.trained_on(sources)}
            save_cr_checkpoint(context.workdir / MODEL_FILE, net, name=self.p.model,
                               kwargs=kwargs, meta=meta)
        return model

    def train_cloud_removal(self, context: FitContext, model: cr_stage.Reconstructor,
                            inputs: dict[str, Any], config: TrainConfig) -> None:
        """One fit of the network on the pairs (SPL replaces it with its curriculum)."""
        cr_stage.fit(self.engine, model, inputs, self.p.chosen_loss, config,
                     log=lambda entry: context.log("cloud-removal", entry))

    def extra_input(self) -> Callable[[dict[str, Tensor]], Tensor] | None:
        return None

    def guard_row(self) -> pd.DataFrame:
        return pd.DataFrame([{"stratum": "all", "metric": "scene_overlap",
                              "value": float(self.overlap), "n": None}])

    def extra_metrics(self, split: SplitData) -> pd.DataFrame:
        table = self.pixel_tables.pop(id(split), None)
        return pd.concat([t for t in (table, self.guard_row()) if t is not None],
                         ignore_index=True)


@register
class CloudRemoval(CloudRemovalBase):
    name = "cloud-removal"
    tasks = (RECONSTRUCTION,)

    def fit(self, context: FitContext) -> None:
        self.model = self.fit_cloud_removal(context)

    def predict(self, split: SplitData) -> Tensor:
        _, table = cr_stage.reconstruct(self.engine, self.model, split,
                                        bootstrap=self.bootstrap, seed=self.seed)
        if table is None:
            raise CloudbenchError("the test split has no cloud-free targets to score")
        self.pixel_tables[id(split)] = table
        return torch.zeros((len(split), 0))

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, lambda m, batch: m(batch)["mean"]


class ThenParams(Params):
    classifier: str = "finetune-optical"
    """The harness method that classifies the reconstructed images."""
    classifier_params: dict[str, Any] = Field(default_factory=dict)
    """Its parameters."""
    classifier_bands: list[str] | None = None
    """The reconstructed bands it reads (default: all the run's optical bands)."""

    @model_validator(mode="after")
    def _check_classifier(self) -> ThenParams:
        if self.classifier in ("cloud-removal", "cr-then-classify", "spl"):
            raise ValueError(f"classifier {self.classifier!r} is not a classifier")
        create(self.classifier, self.classifier_params)
        return self


class _Pipeline(nn.Module):
    """Reconstruction then the classifier, for the profiler: the whole inference cost."""

    keep: Tensor

    def __init__(self, cr: cr_stage.Reconstructor, keep: Tensor, classifier: nn.Module,
                 forward: Callable[[nn.Module, dict[str, Tensor]], Tensor]) -> None:
        super().__init__()
        self.cr, self.classifier, self.classify = cr, classifier, forward
        self.register_buffer("keep", keep)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        image = self.cr.units.standardised(self.cr(batch)["mean"]).index_select(1, self.keep)
        return self.classify(self.classifier, {**batch, "image_s2": image})


@register
class CRThenClassify(CloudRemovalBase):
    name = "cr-then-classify"
    tasks: tuple[str, ...] = ("multiclass", "multilabel")
    Params = ThenParams

    def __init__(self, params: BaseModel) -> None:
        super().__init__(params)
        self.q: ThenParams = params  # type: ignore[assignment]
        self.classifier = create(self.q.classifier, self.q.classifier_params)
        self.needs_source = self.classifier.needs_source
        self.tasks = self.classifier.tasks  # the classifier's, per entry

    def fit(self, context: FitContext) -> None:
        self.model = self.fit_cloud_removal(context)
        optical = context.labeled.bands["image_s2"]
        wanted = self.q.classifier_bands or optical
        missing = [b for b in wanted if b not in optical]
        if missing:
            raise CloudbenchError(f"classifier_bands {missing} are not among the reconstructed "
                                  f"bands {optical}")
        self.keep = [optical.index(b) for b in wanted]
        inner = replace(context, labeled=self._reconstructed(context.labeled),
                        unlabeled=self._reconstructed(context.unlabeled))
        self.classifier.fit(inner)

    def _reconstructed(self, split: SplitData, score: bool = False) -> SplitData:
        """``split`` with its optical view replaced by the reconstruction (the classifier's
        bands), on the engine's device; the pixel metrics kept when ``score``."""
        images, table = cr_stage.reconstruct(self.engine, self.model, split, keep=self.keep,
                                             score=score, bootstrap=self.bootstrap,
                                             seed=self.seed)
        assert images is not None
        wanted = [split.bands["image_s2"][i] for i in self.keep]
        inputs = {k: v for k, v in split.inputs.items() if k != CLEAR_KEY}
        inputs["image_s2"] = images.to(self.engine.device)
        statistics = dict(split.statistics)
        mean, std = split.statistics["image_s2"]
        statistics["image_s2"] = (mean[self.keep], std[self.keep])
        statistics.pop(CLEAR_KEY, None)
        bands = {**{k: v for k, v in split.bands.items() if k != CLEAR_KEY}, "image_s2": wanted}
        out = replace(split, inputs=inputs, bands=bands, statistics=statistics)
        if table is not None:
            self.pixel_tables[id(out)] = table
        return out

    def predict(self, split: SplitData) -> Tensor:
        reconstructed = self._reconstructed(split, score=True)
        scores = self.classifier.predict(reconstructed)
        table = self.pixel_tables.pop(id(reconstructed), None)
        if table is not None:
            self.pixel_tables[id(split)] = table
        return scores

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        classifier, forward = self.classifier.profile_target()
        keep = torch.tensor(self.keep, device=self.engine.device)
        return _Pipeline(self.model, keep, classifier, forward), lambda m, batch: m(batch)

