"""The cloud-removal stage the harness's cloud-removal methods share.

A cloud-removal network (:mod:`cloudbench.models.cloud_removal`) reads the papers' units, the
harness's splits are standardised per channel (:mod:`cloudbench.harness.data`); :class:`Units`
converts between the two with a split's own statistics (``SplitData.statistics``):

* optical in: ``x * std + mean`` is reflectance (DN / 10000), clipped to [0, 1];
* SAR in: the ``VV`` and ``VH`` channels (found by name, whatever else the split reads), dB
  clipped to [-25, 0], then ``(dB + 25) / 25``;
* optical out: the network's mean (reflectance in [0, 1]) standardised back with the optical
  statistics, so a classifier meets a reconstruction on the scale of the images it was
  trained on.

:class:`Reconstructor` is a network with its units (the module the engine trains);
:func:`training_pairs` chooses the (cloudy, cloud-free) pairs it trains on, :func:`fit`
trains it through the one engine, :func:`reconstruct` runs it over a split, optionally
returning the reconstructions and scoring them against the split's ``image_s2_clear``
(:class:`~cloudbench.reconstruction.PixelMetrics`, per clear/thin/thick pixels of the input's
cloud mask). :func:`trained_on` describes a training set for the leakage guard
(:mod:`cloudbench.harness.leakage`) and for a saved model's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from torch import Tensor, nn

from cloudbench.errors import CloudbenchError
from cloudbench.harness import stream
from cloudbench.harness.cr_losses import cr_loss
from cloudbench.harness.data import CLEAR_KEY, SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.leakage import sample_scenes
from cloudbench.models.cloud_removal import CloudRemovalNet
from cloudbench.reconstruction import PixelMetrics
from cloudbench.store import Store

SAR_BANDS = ("VV", "VH")
"""The SAR channels every cloud-removal network reads, in this order."""
SAR_RANGE_DB = (-25.0, 0.0)


class Units(nn.Module):
    """Harness units of one split <-> a cloud-removal network's units (module docstring)."""

    s2_mean: Tensor
    s2_std: Tensor
    s1_index: Tensor
    s1_mean: Tensor
    s1_std: Tensor

    def __init__(self, split: SplitData, sar: bool) -> None:
        super().__init__()
        if "image_s2" not in split.statistics:
            raise CloudbenchError("cloud removal needs the optical view, standardised")
        mean, std = split.statistics["image_s2"]
        self.register_buffer("s2_mean", mean.reshape(1, -1, 1, 1).clone())
        self.register_buffer("s2_std", std.reshape(1, -1, 1, 1).clone())
        self.sar = sar
        if sar:
            names = split.bands.get("image_s1", [])
            missing = [b for b in SAR_BANDS if b not in names]
            if missing or "image_s1" not in split.statistics:
                raise CloudbenchError(
                    f"the cloud-removal network reads SAR {' and '.join(SAR_BANDS)}, but the "
                    f"split's SAR bands are {names or 'none'}: give sar: [VV, VH] (or more)")
            index = [names.index(b) for b in SAR_BANDS]
            s1_mean, s1_std = split.statistics["image_s1"]
            self.register_buffer("s1_index", torch.tensor(index))
            self.register_buffer("s1_mean", s1_mean[index].reshape(1, -1, 1, 1).clone())
            self.register_buffer("s1_std", s1_std[index].reshape(1, -1, 1, 1).clone())

    def optical(self, x: Tensor) -> Tensor:
        """Standardised optical -> reflectance clipped to [0, 1], fp32."""
        return (x.float() * self.s2_std + self.s2_mean).clamp(0.0, 1.0)

    def radar(self, x: Tensor) -> Tensor:
        """Standardised SAR -> (VV, VH) in [0, 1] as the papers map dB, fp32."""
        low, high = SAR_RANGE_DB
        db = x.float().index_select(1, self.s1_index) * self.s1_std + self.s1_mean
        return (db.clamp(low, high) - low) / (high - low)

    def standardised(self, reflectance: Tensor) -> Tensor:
        """Reflectance -> the split's standardised optical units."""
        return (reflectance.float() - self.s2_mean) / self.s2_std


class Reconstructor(nn.Module):
    """A cloud-removal network with the :class:`Units` of the split it currently reads.

    ``extra_input`` (optional) gives further per-pixel input channels from a batch, passed to
    the network in its SAR slot after the SAR channels (SPL gives the cloud mask this way).
    """

    def __init__(self, net: CloudRemovalNet, units: Units,
                 extra_input: Callable[[dict[str, Tensor]], Tensor] | None = None) -> None:
        super().__init__()
        self.net = net
        self.units = units
        self.extra_input = extra_input

    def use(self, split: SplitData) -> None:
        """Read ``split`` from now on (its statistics; same device)."""
        device = self.units.s2_mean.device
        self.units = Units(split, self.units.sar).to(device)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        s2 = self.units.optical(batch["image_s2"])
        parts = [self.units.radar(batch["image_s1"])] if self.units.sar else []
        if self.extra_input is not None:
            parts.append(self.extra_input(batch).float())
        s1 = torch.cat(parts, dim=1) if parts else None
        out = self.net(s2, s1)
        return {key: value.float() for key, value in out.items()}

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's cloud-free target in the network's units."""
        return self.units.optical(batch[CLEAR_KEY])


def training_pairs(splits: Sequence[SplitData], *, clouded_only: bool, pairs: int | None,
                   seed: int) -> tuple[dict[str, Any], list[tuple[SplitData, np.ndarray]]]:
    """The (cloudy, cloud-free) training pairs of ``splits`` (which share their statistics):
    every sample with ``image_s2_clear``, only those with cloud (``cloud_fraction`` > 0) when
    ``clouded_only``, at most ``pairs`` of them drawn without replacement
    (``numpy.random.default_rng(seed)``), in split order.

    Returns the pairs' inputs (``image_s2``, ``image_s2_clear``, ``image_s1`` where read,
    ``cloud_mask``, ``cloud_fraction``) and, per split, the positions taken.

    Raises:
        CloudbenchError: no split has cloud-free targets, or none qualifies.
    """
    having = [s for s in splits if CLEAR_KEY in s.inputs and len(s)]
    if not having:
        raise CloudbenchError(
            "no cloud-free targets (image_s2_clear) to train the cloud-removal model on: the "
            "store has no s2_clear array for these bands; train on a store that has one "
            "(cr_store: SEN12MS-CR, SEN12MS Cloud, demo with clear_target) or load a trained "
            "model (cr_weights)")
    chosen = []
    for split in having:
        keep = np.ones(len(split), dtype=bool)
        if clouded_only:
            keep &= split.cloud_fractions.cpu().numpy() > 0
        chosen.append(np.flatnonzero(keep))
    total = sum(len(c) for c in chosen)
    if total == 0:
        raise CloudbenchError("no clouded sample has a cloud-free target to train on "
                              "(set clouded_only: false to train on clear pairs too)")
    if pairs is not None and pairs < total:
        drawn = np.sort(np.random.default_rng(seed).choice(total, size=pairs, replace=False))
        offsets = np.cumsum([0] + [len(c) for c in chosen])
        chosen = [c[drawn[(drawn >= a) & (drawn < b)] - a]
                  for c, a, b in zip(chosen, offsets[:-1], offsets[1:], strict=True)]
    keys = [k for k in ("image_s2", CLEAR_KEY, "image_s1", "cloud_mask", "cloud_fraction")
            if k in having[0].inputs]
    parts = [stream.take({k: s.inputs[k] for k in keys}, torch.from_numpy(c))
             for s, c in zip(having, chosen, strict=True) if len(c)]
    inputs = dict(parts[0])
    for part in parts[1:]:
        inputs = {k: stream.cat(inputs[k], part[k]) for k in keys}
    return inputs, [(s, c) for s, c in zip(having, chosen, strict=True) if len(c)]


def fit(engine: Engine, model: Reconstructor, inputs: Mapping[str, Any], loss: str,
        config: TrainConfig, log: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Train ``model`` on the pairs ``inputs`` with the cloud-removal loss ``loss``
    (:func:`~cloudbench.harness.cr_losses.cr_loss`, in fp32) through the engine."""

    def loss_fn(m: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        assert isinstance(m, Reconstructor)
        return {"loss": cr_loss(loss, m(batch), m.target(batch))}

    engine.fit(model, dict(inputs), loss_fn, config, log=log)


def reconstruct(engine: Engine, model: Reconstructor, split: SplitData, *,
                keep: Sequence[int] | None = None, score: bool = True,
                bootstrap: int = 0, seed: int = 0) -> tuple[Tensor | None, pd.DataFrame | None]:
    """Run ``model`` over ``split`` (its units switched to the split's statistics).

    Returns ``(images, pixel table)``: the reconstructions standardised with the split's
    optical statistics, channels ``keep`` (positions in the split's optical bands), float32 on
    the CPU (None when ``keep`` is None); and, with ``score`` and cloud-free targets in the
    split, the pixel metrics of the mean against the target on [0, 1] data, overall and per
    clear/thin/thick pixels of the split's cloud mask, with calibration rows for a network
    with a variance head (:meth:`PixelMetrics.compute
    <cloudbench.reconstruction.PixelMetrics.compute>`; None otherwise). An empty split gives
    no images (an empty tensor) and no table.
    """
    model.use(split)
    metrics = PixelMetrics() if score and CLEAR_KEY in split.inputs else None
    channels = None if keep is None else torch.tensor(list(keep))
    if not len(split):  # e.g. no unlabelled samples when every training sample is labelled
        if channels is None:
            return None, None
        height, width = split.inputs["image_s2"].shape[-2:]
        return torch.zeros(0, len(channels), height, width), None

    def forward(m: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        assert isinstance(m, Reconstructor)
        out = m(batch)
        if metrics is not None:
            mask = batch.get("cloud_mask")
            metrics.update(out["mean"], m.target(batch),
                           cloud_mask=None if mask is None else mask.reshape(
                               mask.shape[0], *mask.shape[-2:]),
                           variance=out.get("variance"))
        if channels is None:
            return out["mean"].new_zeros((out["mean"].shape[0], 0))
        return m.units.standardised(out["mean"]).index_select(1, channels.to(out["mean"].device))

    images = engine.predict(model, split.inputs, forward)
    table = None if metrics is None else metrics.compute(bootstrap=bootstrap, seed=seed)
    return (images if channels is not None else None), table


def trained_on(sources: Sequence[tuple[SplitData, np.ndarray]]) -> dict[str, Any]:
    """What a cloud-removal model was trained on, JSON-able, for the leakage guard and a saved
    model's metadata: per training sample its store, id, scene (where the store names scenes)
    and footprint bounds (EPSG:4326 ``[minx, miny, maxx, maxy]``)."""
    stores, ids, scenes, bounds = [], [], [], []
    for split, positions in sources:
        if split.root is None:
            raise CloudbenchError("a cloud-removal training split must come from a store")
        table = samples_of(split.root, [split.ids[i] for i in positions])
        found = sample_scenes(table)
        stores += [str(split.root)] * len(table)
        ids += [str(i) for i in table["id"]]
        scenes += [""] * len(table) if found is None else list(found)
        bounds += table.geometry.bounds.to_numpy().tolist()
    return {"stores": stores, "ids": ids, "scenes": scenes, "bounds": bounds}


def trained_on_table(meta: Mapping[str, Any]) -> gpd.GeoDataFrame:
    """:func:`trained_on`'s description as a table :func:`~cloudbench.harness.leakage.
    find_overlap` reads (``id``, ``scene`` when any is named, ``geometry``)."""
    columns: dict[str, Any] = {"id": list(meta["ids"])}
    if any(meta["scenes"]):
        columns["scene"] = list(meta["scenes"])
    geometry = [shapely.box(*b) for b in meta["bounds"]]
    return gpd.GeoDataFrame(pd.DataFrame(columns), geometry=geometry, crs="EPSG:4326")


def samples_of(root: Path, ids: Sequence[str] | None = None,
               split: str | None = None) -> gpd.GeoDataFrame:
    """Rows of a store's sample table: those of ``ids`` (in that order), or of ``split``."""
    table = Store(root).samples
    if split is not None:
        table = table[table["split"] == split]
    if ids is not None:
        table = table.set_index("id", drop=False).loc[list(ids)]
    return table.reset_index(drop=True)
