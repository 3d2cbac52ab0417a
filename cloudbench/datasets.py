"""TorchGeo datasets and a Lightning data module over a cloudbench store.

A sample (``dataset[i]``) is a dict of tensors:

``image_s1``
    float32 (C, H, W), Sentinel-1 backscatter in dB, the selected S1 bands in the order given.
    Only present when S1 bands are selected.
``image_s2``
    float32 (C, H, W), Sentinel-2 surface reflectance (the stored uint16 / 10000), the selected
    S2 bands in the order given. Only present when S2 bands are selected. Bands a store keeps
    at their native 20 m or 60 m (``s2_20m``, ``s2_60m``) are upsampled to ``s2``'s grid when
    read: bilinear by default, or nearest (``upsample``).
``image_s2_clear``
    like ``image_s2``: the cloud-free image that simulated clouds were put on. Only present where
    the store has one (``s2_clear``, with ``s2``'s bands) and the selected S2 bands are in it.
``label``
    int64: the class index (a scalar) for multiclass datasets; for multilabel datasets a
    multi-hot vector of length ``num_classes`` (TorchGeo's BigEarthNet convention).
``cloud_mask``
    uint8 (H, W): 0 clear, 1 thin cloud, 2 thick cloud.
``cloud_fraction``
    float32 scalar: the share of cloudy (thin or thick) pixels.
``image``
    With ``image=True`` only (TorchGeo's sample convention, which its trainers read): float32
    (C, H, W), every selected band in the order given, S1 and S2 in one stack, in place of
    ``image_s1``, ``image_s2`` and ``image_s2_clear``. :class:`CBEN` and
    :class:`BigEarthNetClean` with ``early_fusion``: float32 (14, H, W), ``VV``, ``VH`` and the
    12 L2A bands (``CBEN.EARLY_FUSION_BANDS``), TorchGeo's BigEarthNet ``bands="all"``
    convention, besides ``image_s1`` and ``image_s2``.

Splits: ``train``, ``val`` (where the store has one: BigEarthNet) and ``test`` as stored;
``labeled``, ``labeled_per_class`` samples per class drawn from ``train`` with
``numpy.random.default_rng(seed)``; ``unlabeled``, the rest of ``train``. A class with fewer
train samples than ``labeled_per_class`` contributes all it has. For multilabel datasets the
classes are visited in order and each draws its samples among the train samples that contain it
and were not drawn yet, so a sample counts towards the first class that drew it (and may also
contain later classes).

Bands are ESA names: the store's S1 bands (``VV``, ``VH``), its S2 bands (``B01`` … ``B12``,
whichever of ``s2``, ``s2_20m``, ``s2_60m`` holds them), and the derived channel ``VV/VH`` =
VV_dB - VH_dB, the VV/VH linear power ratio expressed in dB (a difference of logarithms rather
than a ratio of dB values, which has no physical meaning).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor
from torchgeo.datamodules import NonGeoDataModule
from torchgeo.datasets import DatasetNotFoundError as _TorchGeoDatasetNotFoundError
from torchgeo.datasets import NonGeoDataset
from torchgeo.datasets.utils import percentile_normalization

from cloudbench.config import class_scheme
from cloudbench.errors import CloudbenchError, StoreError
from cloudbench.sources.base import S2_L1C_BANDS
from cloudbench.store import S2_GROUPS, Store, shards_dir

SPLITS = ("train", "val", "test", "labeled", "unlabeled")
RATIO_BAND = "VV/VH"
"""The derived channel VV_dB - VH_dB."""
CLOUD_COLOURS = ("#3a3a3a", "#9ecae1", "#ffffff")
CLOUD_NAMES = ("clear", "thin cloud", "thick cloud")

Sample = dict[str, Tensor]
_MODALITY_KEYS = ("image_s1", "image_s2", "image_s2_clear")
"""The per-modality image keys that ``image=True`` replaces by ``image``."""
Upsample = Literal["bilinear", "nearest"]
UPSAMPLE_MODES: tuple[Upsample, ...] = ("bilinear", "nearest")


class DatasetNotFoundError(_TorchGeoDatasetNotFoundError):
    """TorchGeo's missing-dataset error, with a message that names the command building it.

    (TorchGeo's own message offers a download, which cloudbench datasets do not have.)
    """

    def __init__(self, message: str) -> None:
        FileNotFoundError.__init__(self, message)


@dataclass(frozen=True)
class _BandPlan:
    """How the selected channels of one stored (N, C, H, W) array are made."""

    read: np.ndarray
    """The stored channels to read, sorted."""
    take: np.ndarray
    """Per output channel, its position in ``read``."""
    minus: np.ndarray
    """Per output channel, the position in ``read`` to subtract, -1 for none (``VV/VH``)."""
    scale: float
    """Stored value / scale = physical value."""

    @classmethod
    def build(cls, names: Sequence[str], stored: Sequence[str], scale: float) -> _BandPlan:
        sources = [
            (stored.index("VV"), stored.index("VH")) if name == RATIO_BAND
            else (stored.index(name), -1)
            for name in names
        ]
        read = np.unique([c for pair in sources for c in pair if c >= 0])
        position = {int(c): k for k, c in enumerate(read)} | {-1: -1}
        return cls(
            read=read,
            take=np.array([position[a] for a, _ in sources], dtype=np.int64),
            minus=np.array([position[b] for _, b in sources], dtype=np.int64),
            scale=scale,
        )

    def gather(self, array: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The stored channels ``read`` of sorted, unique ``rows``, in the stored dtype
        (n, len(read), H, W): only these rows and channels are read."""
        if len(self.read) == array.shape[1]:
            return array[rows]
        return array[rows[:, None], self.read[None, :]]

    def decode(self, block: Tensor) -> Tensor:
        """float32 (n, C, H, W) physical values of a :meth:`gather` block, on its device."""
        raw = block.float()
        identity = np.array_equal(self.take, np.arange(raw.shape[1]))
        image = raw if identity else raw[:, torch.from_numpy(self.take).to(raw.device)]
        ratio = np.flatnonzero(self.minus >= 0)
        if len(ratio):
            image = image.clone() if image is raw else image
            image[:, torch.from_numpy(ratio).to(raw.device)] -= raw[
                :, torch.from_numpy(self.minus[ratio]).to(raw.device)]
        if self.scale != 1.0:
            image = image / self.scale
        return image


@dataclass(frozen=True)
class _Read:
    """The channels of an output image that come from one stored array."""

    array: str
    plan: _BandPlan
    channels: np.ndarray
    """Per channel the plan makes, its position in the output image."""
    coarse: bool
    """True: a native-resolution group (``s2_20m``, ``s2_60m``), upsampled to ``s2``'s size."""


def _esa_rank(band: str) -> int:
    """Sort key: the band's place in B01 … B12 (unknown names last)."""
    return S2_L1C_BANDS.index(band) if band in S2_L1C_BANDS else len(S2_L1C_BANDS)


def _upsample(image: Tensor, size: tuple[int, ...], mode: Upsample) -> Tensor:
    """A float32 (N, C, h, w) batch resized to ``size`` (H, W) in one call, on its device."""
    align_corners = False if mode == "bilinear" else None  # nearest takes no such option
    return F.interpolate(image, size=size, mode=mode, align_corners=align_corners)


class CloudBenchDataset(NonGeoDataset):
    """One split of a cloudbench store as a TorchGeo dataset (see the module docstring).

    Opens any kind of store; the class names come from the store. The named subclasses
    (:class:`SEN12MSCloud`, :class:`HunanCloud`, :class:`CBEN`, :class:`BigEarthNetClean`) also
    check the store's kind and classes.
    """

    kind: ClassVar[str | None] = None
    """The store kind this class opens; None: any."""
    scheme: ClassVar[str | None] = None
    """The class scheme (``catalogs/classes/<scheme>.yaml``) the store's classes must follow."""
    exact_classes: ClassVar[bool] = True
    """True: the store's classes must be the scheme's, in order; False: any of its names."""
    build_command: ClassVar[str] = "cloudbench build demo --out {root}"
    """The command that builds a dataset of this class (``{root}`` is the dataset folder)."""
    default_bands: ClassVar[tuple[str, ...] | None] = None
    """The bands read when none are given; None: every stored band (see ``__init__``)."""

    OPTICAL_RGB: ClassVar[tuple[str, ...]] = ("B04", "B03", "B02")
    """The ESCCS optical view: true colour."""
    SAR: ClassVar[tuple[str, ...]] = ("VV", "VH", RATIO_BAND)
    """The ESCCS SAR view: VV, VH and their ratio in dB."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        bands: Sequence[str] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        labeled_per_class: int = 20,
        seed: int = 0,
        upsample: Upsample = "bilinear",
        image: bool = False,
    ) -> None:
        """Open one split of the store at ``root``.

        Args:
            root: the dataset folder (holding ``dataset.json``).
            split: one of ``train``, ``val``, ``test``, ``labeled``, ``unlabeled``.
            bands: ESA band names, S1 and/or S2 and ``VV/VH``; None: the class's
                ``default_bands``, else all stored S1 bands, then all stored S2 bands (in ESA
                order, B01 … B12, where the store has native-resolution groups). Within each
                modality the order given is kept.
            transforms: applied to each sample dict by ``__getitem__``/``__getitems__``.
            labeled_per_class: samples per class in the ``labeled`` split.
            seed: seeds the draw of the ``labeled`` split.
            upsample: how S2 bands stored at 20 m or 60 m reach ``s2``'s grid: ``bilinear``
                (``align_corners=False``: pixel centres, as when resampling a raster to a finer
                grid) or ``nearest`` (each coarse pixel repeated).
            image: True: samples follow TorchGeo's convention, so that its trainers
                (``ClassificationTask``, ``MoCoTask``, …) read them: ``image`` stacks every
                selected band in the order of ``bands`` (S1 and S2 together) and replaces
                ``image_s1``, ``image_s2`` and ``image_s2_clear``; the other keys are unchanged.

        Raises:
            DatasetNotFoundError: no folder or no ``dataset.json`` at ``root``.
            StoreError: the store is damaged, or not of this class's kind or classes.
            CloudbenchError: an unknown split, band or upsampling mode, or a negative
                ``labeled_per_class``.
        """
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.labeled_per_class = labeled_per_class
        self.seed = seed
        self.upsample = upsample
        self.image = image
        if split not in SPLITS:
            raise CloudbenchError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if labeled_per_class < 0:
            raise CloudbenchError(f"labeled_per_class must be >= 0, got {labeled_per_class}")
        if upsample not in UPSAMPLE_MODES:
            raise CloudbenchError(
                f"unknown upsample {upsample!r}; choose one of {', '.join(UPSAMPLE_MODES)}"
            )
        if not (self.root / "dataset.json").is_file():
            raise DatasetNotFoundError(self._not_found_message())
        self._store = Store(self.root)
        self._check_kind()
        self._select_bands(bands)
        self._image_from: list[int] | None = None
        """Per channel of ``image``, its position among the ``image_s1`` then ``image_s2``
        channels; None: no ``image``."""
        if image:
            self._stack(self.bands)

        table = self._store.samples
        membership = self._class_membership(table["label"])
        self.indices = self._split_rows(table["split"].to_numpy(), membership)
        """The store rows of this split, ascending."""
        self._labels = (
            membership[self.indices].astype(np.int64) if self.task == "multilabel"
            else membership[self.indices].argmax(axis=1)
        )
        self._cloud_fraction = table["cloud_fraction"].to_numpy(np.float32)[self.indices]
        self.ids: list[str] = table["id"].iloc[self.indices].astype(str).tolist()
        self.cloud_states: list[str] = table["cloud_state"].iloc[self.indices].astype(str).tolist()

    # ----------------------------------------------------------------------------------------
    # Opening
    # ----------------------------------------------------------------------------------------

    def _not_found_message(self) -> str:
        unfinished = shards_dir(self.root).is_dir()
        what = "an unfinished build" if unfinished else "no dataset"
        return (
            f"{what} at {self.root} (no dataset.json); "
            f"{'re-run' if unfinished else 'build it with'}: "
            + self.build_command.format(root=self.root)
        )

    def _check_kind(self) -> None:
        store = self._store
        if self.kind is None or self.scheme is None:
            return
        name = type(self).__name__
        if store.kind != self.kind:
            opener = _CLASS_BY_KIND.get(store.kind, CloudBenchDataset).__name__
            raise StoreError(
                f"{self.root} holds a {store.kind!r} dataset, not {self.kind!r}: open it with "
                f"{opener}, not {name}"
            )
        if store.meta.get("class_scheme", self.scheme) != self.scheme:
            return  # built with the user's own classes (e.g. a label table): kind is enough
        scheme = class_scheme(self.scheme)
        if store.task != scheme.task:
            raise StoreError(f"{self.root}: task {store.task!r}, {name} expects {scheme.task!r}")
        if self.exact_classes:
            if tuple(store.classes) != scheme.classes:
                raise StoreError(
                    f"{self.root}: classes {store.classes} are not the {self.scheme} classes "
                    f"{list(scheme.classes)} that {name} expects; open it with CloudBenchDataset"
                )
            return
        unknown = [c for c in store.classes if c not in scheme.classes]
        if unknown:
            raise StoreError(
                f"{self.root}: classes {unknown} are not in the {self.scheme} scheme "
                f"({', '.join(scheme.classes)}); open it with CloudBenchDataset"
            )

    def _select_bands(self, bands: Sequence[str] | None) -> None:
        arrays = self._store.arrays
        s1_stored = arrays["s1"].bands
        s1_names = s1_stored + ((RATIO_BAND,) if {"VV", "VH"} <= set(s1_stored) else ())
        s2_groups = ["s2", *(name for name in S2_GROUPS if name in arrays)]
        s2_names = tuple(b for name in s2_groups for b in arrays[name].bands)
        if len(s2_groups) > 1:
            s2_names = tuple(sorted(s2_names, key=_esa_rank))
        available = s1_names + s2_names
        default = self.default_bands or s1_stored + s2_names
        chosen = tuple(default if bands is None else bands)
        unknown = [b for b in chosen if b not in available]
        if unknown:
            raise CloudbenchError(f"unknown bands {unknown}; available: {', '.join(available)}")
        if not chosen or len(set(chosen)) != len(chosen):
            raise CloudbenchError(f"bands must be distinct and at least one, got {list(chosen)}")
        self.bands = chosen
        self.s1_bands = tuple(b for b in chosen if b in s1_names)
        self.s2_bands = tuple(b for b in chosen if b in s2_names)
        self._reads: dict[str, list[_Read]] = {}
        if self.s1_bands:
            plan = _BandPlan.build(self.s1_bands, s1_stored, arrays["s1"].scale)
            self._reads["image_s1"] = [_Read("s1", plan, np.arange(len(plan.take)), coarse=False)]
        if self.s2_bands:
            self._reads["image_s2"] = self._s2_reads(s2_groups)
            # s2_clear is "like s2": it holds s2's bands, never those of the coarser groups.
            if "s2_clear" in arrays and set(self.s2_bands) <= set(arrays["s2"].bands):
                self._reads["image_s2_clear"] = self._s2_reads(["s2_clear"])

    def _s2_reads(self, arrays: Sequence[str]) -> list[_Read]:
        """One read per array in ``arrays`` holding selected S2 bands."""
        reads = []
        for array in arrays:
            info = self._store.arrays[array]
            mine = [k for k, band in enumerate(self.s2_bands) if band in info.bands]
            if mine:
                plan = _BandPlan.build([self.s2_bands[k] for k in mine], info.bands, info.scale)
                reads.append(_Read(array, plan, np.array(mine), coarse=array in S2_GROUPS))
        return reads

    def _stack(self, bands: Sequence[str]) -> None:
        """Give each sample an ``image`` of the selected ``bands``, in that order."""
        channels = self.s1_bands + self.s2_bands
        self._image_from = [channels.index(band) for band in bands]

    def _class_membership(self, labels: Any) -> np.ndarray:
        """bool (N, K): which classes each stored sample has (one per row for multiclass)."""
        n, k = len(labels), self.num_classes
        if self.task == "multiclass":
            rows, codes = np.arange(n), np.asarray(labels, dtype=np.int64)
        else:
            lists = [np.asarray(v, dtype=np.int64).reshape(-1) for v in labels]
            rows = np.repeat(np.arange(n), [len(v) for v in lists])
            codes = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= k):
            raise StoreError(f"{self.root}: labels outside the {k} class indices 0..{k - 1}")
        membership = np.zeros((n, k), dtype=bool)
        membership[rows, codes] = True
        return membership

    def _split_rows(self, splits: np.ndarray, membership: np.ndarray) -> np.ndarray:
        if self.split in ("train", "val", "test"):
            return np.flatnonzero(splits == self.split)
        train = np.flatnonzero(splits == "train")
        rng = np.random.default_rng(self.seed)
        drawn = np.zeros(len(train), dtype=bool)
        for cls in range(self.num_classes):
            candidates = np.flatnonzero(membership[train, cls] & ~drawn)
            size = min(self.labeled_per_class, len(candidates))
            drawn[rng.choice(candidates, size=size, replace=False)] = True
        return train[drawn] if self.split == "labeled" else train[~drawn]

    # ----------------------------------------------------------------------------------------
    # Reading
    # ----------------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._store

    @property
    def image_keys(self) -> tuple[str, ...]:
        """The image keys this dataset's bands can be read as (``image_s1``, ``image_s2``,
        ``image_s2_clear`` where the store holds the cloud-free target for the S2 bands)."""
        return tuple(self._reads)

    @property
    def classes(self) -> list[str]:
        return self._store.classes

    @property
    def task(self) -> str:
        return self._store.task

    @property
    def num_classes(self) -> int:
        return len(self._store.classes)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        """The split's labels, int64: (N,) class indices, or (N, K) multi-hot (multilabel)."""
        return self._labels

    @property
    def cloud_fractions(self) -> np.ndarray:
        """The split's cloud fractions, float32 (N,)."""
        return self._cloud_fraction

    def raw(self, key: str, rows: np.ndarray) -> list[np.ndarray]:
        """The stored blocks that ``key`` (an image key, or ``cloud_mask``) is made from, for
        sorted, unique store ``rows``: one per stored array it reads, only its rows and the
        selected channels, in the stored dtype (uint16 S2, float32 S1, uint8 cloud mask).

        This is what the harness streams to a device; :meth:`decode` makes the images there.
        """
        if key == "cloud_mask":
            return [self._store.array("cloud_mask")[rows, 0]]
        return [read.plan.gather(self._store.array(read.array), rows)
                for read in self._reads[key]]

    def decode(self, key: str, blocks: Sequence[Tensor]) -> Tensor:
        """``key``'s batch from :meth:`raw`'s blocks (as tensors), on their device: float32
        (n, C, H, W) images in physical units, the bands in the order selected, the coarse S2
        groups upsampled to ``s2``'s size; the cloud mask as it is stored (uint8 (n, H, W))."""
        if key == "cloud_mask":
            return blocks[0]
        reads = self._reads[key]
        size = tuple(self._store.arrays["s2"].shape[-2:])
        parts = []
        for read, block in zip(reads, blocks, strict=True):
            part = read.plan.decode(block)
            parts.append(_upsample(part, size, self.upsample) if read.coarse else part)
        if len(parts) == 1:
            return parts[0]  # one array: its channels are already in the order asked for
        channels = sum(len(read.channels) for read in reads)
        first = parts[0]
        image = torch.empty((first.shape[0], channels, *first.shape[-2:]), dtype=torch.float32,
                            device=first.device)
        for read, part in zip(reads, parts, strict=True):
            image[:, torch.from_numpy(read.channels).to(first.device)] = part
        return image

    def _batch(self, positions: np.ndarray) -> Sample:
        """Batched tensors for split positions, reading each array once in ascending row order."""
        rows = self.indices[positions]
        unique, inverse = np.unique(rows, return_inverse=True)
        keys = [key for key in self._reads if not (self.image and key == "image_s2_clear")]
        batch = {key: self.decode(key, [torch.from_numpy(b) for b in self.raw(key, unique)])
                 for key in (*keys, "cloud_mask")}
        if self._image_from is not None:
            parts = [batch[key] for key in ("image_s1", "image_s2") if key in batch]
            image = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
            if self._image_from != list(range(image.shape[1])):
                image = image[:, self._image_from]
            if self.image:
                batch = {key: value for key, value in batch.items() if key not in _MODALITY_KEYS}
            batch["image"] = image
        if not np.array_equal(unique, rows):
            order = torch.from_numpy(inverse.reshape(-1))
            batch = {key: value[order] for key, value in batch.items()}
        batch["label"] = torch.from_numpy(self._labels[positions])
        batch["cloud_fraction"] = torch.from_numpy(self._cloud_fraction[positions])
        return batch

    def __getitem__(self, index: int) -> Sample:
        """The sample at ``index`` of this split (see the module docstring)."""
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """The samples at ``indices``, read together (PyTorch's DataLoader calls this)."""
        batch = self._batch(np.asarray(indices, dtype=np.int64))
        samples = [{key: value[j] for key, value in batch.items()} for j in range(len(indices))]
        if self.transforms is not None:
            samples = [self.transforms(sample) for sample in samples]
        return samples

    def to_tensors(self, device: str | torch.device = "cpu", chunk_size: int = 1024) -> Sample:
        """The whole split as batched tensors on ``device``: the fast path for small datasets.

        Keys as in a sample, with a leading dimension of ``len(self)``; ``transforms`` are not
        applied. Rows are in split order, matching ``self.ids`` and ``self.cloud_states``. The
        result takes ``len(self) * H * W * (4 * channels + 1)`` bytes on ``device`` (channels of
        every image key, ``image`` included); the store is read ``chunk_size`` samples at a
        time, so host memory holds one chunk besides.
        """
        n = len(self)
        empty = self._batch(np.zeros(0, dtype=np.int64))
        out = {
            key: torch.empty((n, *value.shape[1:]), dtype=value.dtype, device=device)
            for key, value in empty.items()
        }
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            for key, value in self._batch(np.arange(start, stop)).items():
                out[key][start:stop] = value.to(device)
        return out

    # ----------------------------------------------------------------------------------------
    # Plotting
    # ----------------------------------------------------------------------------------------

    def _label_text(self, label: Tensor) -> str:
        if self.task == "multiclass":
            return self.classes[int(label)]
        return ", ".join(c for c, on in zip(self.classes, label.tolist(), strict=True) if on)

    def _s2_view(self, image: Tensor, name: str) -> tuple[str, np.ndarray]:
        if all(b in self.s2_bands for b in self.OPTICAL_RGB):
            rgb = image[[self.s2_bands.index(b) for b in self.OPTICAL_RGB]].numpy()
            return f"{name} true colour", percentile_normalization(np.moveaxis(rgb, 0, -1))
        return f"{name} {self.s2_bands[0]}", percentile_normalization(image[0].numpy())

    def _s1_view(self, image: Tensor) -> tuple[str, np.ndarray]:
        if not {"VV", "VH"} <= set(self.s1_bands):
            return f"Sentinel-1 {self.s1_bands[0]}", percentile_normalization(image[0].numpy())
        vv, vh = (image[self.s1_bands.index(b)].numpy() for b in ("VV", "VH"))
        rgb = np.stack([percentile_normalization(c) for c in (vv, vh, vv - vh)], axis=-1)
        return "Sentinel-1 VV, VH, VV/VH", rgb

    def _per_modality(self, sample: Sample) -> Sample:
        """The sample on the CPU, with ``image_s1`` and ``image_s2`` cut from its ``image``
        where ``image=True`` stacked them (TorchGeo's trainers plot a batch from the device,
        having moved only ``image``, ``label`` and ``prediction`` to the CPU)."""
        sample = {key: value.detach().cpu() if isinstance(value, Tensor) else value
                  for key, value in sample.items()}
        if self.image and "image" in sample:
            for key, bands in (("image_s1", self.s1_bands), ("image_s2", self.s2_bands)):
                if bands:
                    sample[key] = sample["image"][[self.bands.index(b) for b in bands]]
        return sample

    def plot(
        self, sample: Sample, show_titles: bool = True, suptitle: str | None = None
    ) -> Figure:
        """Plot a sample: one panel per image it holds and its cloud mask (an ``image`` of
        ``image=True``: its S2 and its S1 bands).

        Sentinel-2 in true colour (B04, B03, B02; else its first band in grey), Sentinel-1 in
        false colour (VV, VH, VV/VH, each stretched; else its first band in grey), both
        stretched between their 2nd and 98th percentiles. With ``show_titles`` the panels are
        named and the label (and ``prediction``, where the sample has one) head the figure.

        Returns:
            the figure (never shown).
        """
        sample = self._per_modality(sample)
        grey = {"cmap": "gray"}
        views = []
        if "image_s2" in sample:
            views.append(self._s2_view(sample["image_s2"], "Sentinel-2"))
        if "image_s2_clear" in sample:
            views.append(self._s2_view(sample["image_s2_clear"], "Sentinel-2 cloud-free"))
        if "image_s1" in sample:
            views.append(self._s1_view(sample["image_s1"]))
        panels: list[tuple[str, np.ndarray, dict[str, Any]]] = [(t, i, grey) for t, i in views]
        if "cloud_mask" in sample:
            cloud = {"cmap": ListedColormap(CLOUD_COLOURS), "vmin": 0, "vmax": 2,
                     "interpolation": "nearest"}
            panels.append(("Cloud mask", sample["cloud_mask"].numpy(), cloud))
        if not panels:
            raise ValueError("the sample holds no image or cloud mask to plot")

        fig = Figure(figsize=(4 * len(panels), 4.6))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, image, style) in zip(axes, panels, strict=True):
            ax.imshow(image, **style)
            ax.axis("off")
            if show_titles:
                ax.set_title(title)
        if "cloud_mask" in sample:
            handles = [Patch(facecolor=c, edgecolor="black", label=n)
                       for c, n in zip(CLOUD_COLOURS, CLOUD_NAMES, strict=True)]
            axes[-1].legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.2),
                            ncol=3, fontsize="small", frameon=False)
        lines = [suptitle] if suptitle is not None else []
        if show_titles:
            lines.append(f"label: {self._label_text(sample['label'])}")
            if "prediction" in sample:
                lines.append(f"prediction: {self._label_text(sample['prediction'])}")
        if lines:
            fig.suptitle("\n".join(lines))
        return fig


class SEN12MSCloud(CloudBenchDataset):
    """SEN12MS patches with clouds: 10 simplified-IGBP scene classes, multiclass."""

    kind = "sen12ms-cloud"
    scheme = "simplified_igbp"
    build_command = (
        "cloudbench build sen12ms-cloud --sen12ms-root … --cloud-source … --out {root}"
    )


class HunanCloud(CloudBenchDataset):
    """Hunan Cloud (ESCCS), multiclass. Its label source may cover only some of the scheme's
    classes, so only the names are checked: each must be a ``hunan_cloud`` class."""

    kind = "hunan-cloud"
    scheme = "hunan_cloud"
    exact_classes = False
    build_command = "cloudbench build hunan-cloud --labels … --out {root}"


class CBEN(CloudBenchDataset):
    """Cloudy BigEarthNet: the 19 BigEarthNet classes, multilabel.

    Its store keeps the S2 bands at their native 10, 20 and 60 m; the 20 and 60 m bands are
    upsampled to the 120 x 120 grid when read (``upsample``). Default bands: ``VV``, ``VH`` and
    the 12 L2A bands (``EARLY_FUSION_BANDS``).
    """

    kind = "cben"
    scheme = "bigearthnet19"
    build_command = "cloudbench build cben --bigearthnet-root … --climatology … --out {root}"

    EARLY_FUSION_BANDS: ClassVar[tuple[str, ...]] = (
        "VV", "VH", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
        "B12",
    )
    """The paper's 14-band early-fusion input (TorchGeo's BigEarthNet ``bands="all"``)."""
    default_bands = EARLY_FUSION_BANDS

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        bands: Sequence[str] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        labeled_per_class: int = 20,
        seed: int = 0,
        upsample: Upsample = "bilinear",
        image: bool = False,
        early_fusion: bool = False,
    ) -> None:
        """Args as :class:`CloudBenchDataset`'s, and ``early_fusion``: True adds ``image``,
        float32 (14, H, W) in ``EARLY_FUSION_BANDS`` order, to each sample (besides
        ``image_s1`` and ``image_s2``). For TorchGeo's trainers prefer ``image=True``: with the
        default bands it gives the same ``image`` without the per-modality keys.

        Raises:
            CloudbenchError: as :class:`CloudBenchDataset`, ``early_fusion`` without all of
                ``EARLY_FUSION_BANDS`` among ``bands``, or with ``image``.
        """
        super().__init__(root, split, bands, transforms, labeled_per_class, seed, upsample,
                         image)
        self.early_fusion = early_fusion
        if early_fusion:
            if image:
                raise CloudbenchError("early_fusion and image both make 'image'; pass one")
            missing = [b for b in self.EARLY_FUSION_BANDS if b not in self.bands]
            if missing:
                raise CloudbenchError(
                    f"early_fusion needs all of {', '.join(self.EARLY_FUSION_BANDS)}; bands "
                    f"{list(self.bands)} lack {missing} (leave bands unset for all of them)"
                )
            self._stack(self.EARLY_FUSION_BANDS)


class BigEarthNetClean(CBEN):
    """BigEarthNet itself, CBEN's clean twin: the same patches, arrays, labels and splits with
    the original cloud-free Sentinel-2 images (``cloud_mask`` all 0)."""

    kind = "bigearthnet"
    build_command = "cloudbench build bigearthnet --bigearthnet-root … --out {root}"


_CLASS_BY_KIND: dict[str, type[CloudBenchDataset]] = {
    cls.kind: cls
    for cls in (SEN12MSCloud, HunanCloud, CBEN, BigEarthNetClean)
    if cls.kind is not None
}


def _no_augmentation(batch: Sample) -> Sample:
    return batch


class CloudBenchDataModule(NonGeoDataModule):
    """Train/test (and optional validation) loaders over one cloudbench dataset class.

    Samples are already in physical units, so no augmentation or normalisation is applied
    (TorchGeo's default would divide ``image`` by 255); set ``train_aug`` etc. to add some.
    With ``image=True`` (passed on to the dataset) the batches follow TorchGeo's convention
    and its trainers (``ClassificationTask``, ``MoCoTask``, …) train on them unchanged.
    """

    dataset_class: type[CloudBenchDataset]
    # The normalisation (x - mean) / std that aug applies: none. TorchGeo's trainers undo it
    # before plotting a validation batch.
    mean = torch.tensor(0.0)
    std = torch.tensor(1.0)

    def __init__(
        self,
        dataset_class: type[CloudBenchDataset] = CloudBenchDataset,
        batch_size: int = 64,
        num_workers: int = 0,
        train_split: str = "train",
        test_split: str = "test",
        val_split: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Args as NonGeoDataModule's; ``kwargs`` (root, bands, …) go to ``dataset_class``.

        ``train_split``/``test_split``/``val_split`` name the dataset splits used for fitting,
        testing (and predicting) and validation; no validation set unless ``val_split``.
        """
        super().__init__(dataset_class, batch_size, num_workers, **kwargs)
        self.train_split = train_split
        self.test_split = test_split
        self.val_split = val_split
        self.aug = _no_augmentation

    def setup(self, stage: str) -> None:
        """Make the datasets ``stage`` ('fit', 'validate', 'test' or 'predict') needs."""
        if stage == "fit":
            self.train_dataset = self.dataset_class(split=self.train_split, **self.kwargs)
        if stage in ("fit", "validate") and self.val_split is not None:
            self.val_dataset = self.dataset_class(split=self.val_split, **self.kwargs)
        if stage == "test":
            self.test_dataset = self.dataset_class(split=self.test_split, **self.kwargs)
        if stage == "predict":
            self.predict_dataset = self.dataset_class(split=self.test_split, **self.kwargs)

    def val_dataloader(self) -> Any:
        """The validation loader; without ``val_split`` none (an empty list), so that Lightning
        skips validation (TorchGeo's would raise instead)."""
        return super().val_dataloader() if self.val_split is not None else []
