"""Source models: a ResNet-50 trained on a cloud-free optical source domain.

Two ways to get one:

- ``cloudbench source train`` (:func:`pretrain_source`): NWPU-RESISC45 (TorchGeo's
  :class:`~torchgeo.datasets.RESISC45`, its train split) or AID (:class:`AID`), RGB images
  decoded once, resized to ``size`` × ``size`` and held in memory as uint8, standardised per
  channel with the source domain's own mean and standard deviation, trained by the one engine
  from ImageNet weights found in the local torch hub cache (never downloaded) or from random
  initialisation (docs/sources.md);
- :func:`train_source`: the harness trains the model itself on a cloud-free dataset in the store
  format (the demo uses one built from the synthetic world's clearest dates).

Checkpoints hold plain tensors, lists, numbers and strings and are loaded with
``torch.load(weights_only=True)``; :func:`load_source` reads both kinds.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset
from torchgeo.datasets import RESISC45, DatasetNotFoundError, NonGeoClassificationDataset
from torchvision import models as tvm
from torchvision.models import ResNet50_Weights
from tqdm import tqdm

from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import load_split, standardise
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.stream import resident
from cloudbench.models.classifiers import encoder, resnet50
from cloudbench.store import atomic_torch_save

SOURCE_FORMAT = "cloudbench-source-model"
SOURCE_VERSION = 1
RGB_BANDS = ["B04", "B03", "B02"]
"""The source images' channels (R, G, B) under the Sentinel-2 names of the same colours."""
IMAGENET_WEIGHTS = (ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1)
"""torchvision's ImageNet weights of ResNet-50, in order of preference."""
AID_HOLDOUT = 0.1
"""Default fraction of each AID class held out (seeded) for the reported validation accuracy."""
LAYOUTS = {
    "resisc45": "ROOT/NWPU-RESISC45/<class>/<class>_NNN.jpg and "
                "ROOT/resisc45-{train,val,test}.txt",
    "aid": "ROOT/AID/<ClassName>/<classname>_N.jpg, or ROOT/<ClassName>/<classname>_N.jpg",
}
"""The on-disk layout each source dataset is read from."""


@dataclass
class SourceModel:
    """A trained source classifier, its encoder (the classifier without its head), its classes.

    ``mean``, ``std`` (per channel, of 0–255 pixel values) and ``size`` (the image side it was
    trained at) come with models of ``cloudbench source train``; they are None otherwise.
    """

    classifier: nn.Module
    classes: list[str]
    bands: list[str]
    mean: list[float] | None = None
    std: list[float] | None = None
    size: int | None = None

    def encoder(self) -> tuple[nn.Module, int]:
        """A copy of the classifier's trunk (without its head) and its feature size; each call
        returns a new copy, so methods may train or freeze it without touching the source."""
        return encoder(copy.deepcopy(self.classifier))

    def standardise(self, images: Tensor) -> Tensor:
        """0–255 RGB images (B, 3, H, W), any dtype, standardised as the model was trained."""
        if self.mean is None or self.std is None:
            raise CloudbenchError("this source model has no stored mean and standard deviation")
        return _standardise(images, self.mean, self.std)


def train_source(
    dataset: Path,
    out: Path,
    engine: Engine,
    config: TrainConfig,
    bands: list[str],
) -> SourceModel:
    """Train (or resume, or load when done) a ResNet-50 on ``dataset``'s train split.

    The same recipe as :func:`pretrain_source`: random initialisation with
    ``zero_init_residual`` (for 3 bands), and batch-norm statistics recomputed over the
    training images with the final weights.
    """
    if out.exists():
        return load_source(out, engine.device)
    train = load_split(dataset, "train", optical=bands, sar=(), labeled_per_class=0, seed=0)
    standardise([train], [train])
    train.inputs = resident(train.inputs, engine.device)  # a source domain fits the device
    if len(bands) == 3:
        model = initial_model(len(train.classes), None, seed=engine.seed).to(engine.device)
    else:
        model = resnet50(len(bands), len(train.classes)).to(engine.device)

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(model(batch["image_s2"]), batch["label"])}

    images = train.inputs["image_s2"]
    assert isinstance(images, Tensor)
    out.parent.mkdir(parents=True, exist_ok=True)
    engine.fit(model, {"image_s2": images, "label": train.labels}, loss, config,
               checkpoint=out.with_suffix(".ckpt"))
    update_bn([images[i:i + 256] for i in range(0, len(train), 256)], model)
    state = {"state_dict": model.state_dict(), "classes": train.classes, "bands": bands}
    atomic_torch_save(state, out)
    out.with_suffix(".ckpt").unlink(missing_ok=True)
    return SourceModel(model.eval(), train.classes, bands)


def load_source(path: Path, device: torch.device | str = "cpu") -> SourceModel:
    """A source model from a checkpoint of :func:`pretrain_source` or :func:`train_source`."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise CloudbenchError(f"{path} is not a readable source-model checkpoint: {err}") from err
    if not isinstance(state, dict) or not {"state_dict", "classes", "bands"} <= state.keys():
        raise CloudbenchError(f"{path} is not a source-model checkpoint (no state_dict, classes "
                              "and bands)")
    if state.get("version", SOURCE_VERSION) > SOURCE_VERSION:
        raise CloudbenchError(f"{path} is a source-model checkpoint of a newer cloudbench "
                              f"(version {state['version']}; this one reads {SOURCE_VERSION})")
    classes, bands = list(state["classes"]), list(state["bands"])
    with torch.device("meta"):  # the weights come from the checkpoint: skip the random init
        model = resnet50(len(bands), len(classes))
    try:
        model.load_state_dict(state["state_dict"], assign=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CloudbenchError(f"{path} does not hold a ResNet-50 for {len(bands)} bands and "
                              f"{len(classes)} classes: {err}") from err
    return SourceModel(model.to(device).eval(), classes, bands, state.get("mean"),
                       state.get("std"), state.get("size"))


# --------------------------------------------------------------------------------------------
# Source datasets on disk
# --------------------------------------------------------------------------------------------


class AID(NonGeoClassificationDataset):
    """The Aerial Image Dataset (AID): 10,000 RGB 600×600 JPEGs in 30 scene classes.

    Layout: ``AID/<ClassName>/<classname>_N.jpg``. ``root`` is the folder holding ``AID/``, or,
    when it has no ``AID`` subfolder, the ``AID`` folder itself. Every ``.jpg``/``.jpeg`` file
    (hidden files skipped) of a class folder is a sample; classes are the folder names, sorted.
    AID has no official split: this is all of it.
    """

    directory = "AID"

    def __init__(self, root: str | Path = "data") -> None:
        self.root = Path(root)
        folder = self.root / self.directory
        if not folder.is_dir():
            folder = self.root
        if not folder.is_dir():
            raise DatasetNotFoundError(self)
        super().__init__(root=str(folder), is_valid_file=_is_jpeg)


def _is_jpeg(path: str | os.PathLike[str]) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith((".jpg", ".jpeg"))


@dataclass
class SourceImages:
    """The image files of a source dataset: paths, class indices, class names."""

    paths: list[str]
    labels: list[int]
    classes: list[str]

    def subset(self, indices: Sequence[int]) -> SourceImages:
        """The images at ``indices``, same classes."""
        return SourceImages([self.paths[i] for i in indices], [self.labels[i] for i in indices],
                            self.classes)


def source_images(dataset: str, root: str | Path, split: str = "train") -> SourceImages:
    """The files of ``dataset`` (``resisc45``: its ``split``; ``aid``: all) under ``root``.

    Raises one :class:`CloudbenchError` for an unknown dataset, a missing root or a root not in
    the dataset's layout (:data:`LAYOUTS`). Nothing is ever downloaded.
    """
    check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise CloudbenchError(f"source root {root} is not a folder")
    layout = LAYOUTS[dataset]
    try:
        if dataset == "resisc45":
            data: NonGeoClassificationDataset = RESISC45(str(root), split=split, download=False)
        else:
            data = AID(root)
    except DatasetNotFoundError as err:
        raise CloudbenchError(f"no {dataset} dataset in {root}: expected {layout} (cloudbench "
                              "never downloads it)") from err
    except FileNotFoundError as err:
        raise CloudbenchError(f"{root} is not in the {dataset} layout ({layout}): {err}") from err
    if len(data.classes) < 2:
        raise CloudbenchError(f"{root} holds {len(data.classes)} {dataset} class folder(s); "
                              f"expected {layout} with at least 2 classes")
    paths, labels = zip(*data.samples, strict=True)
    return SourceImages(list(paths), list(labels), list(data.classes))


def check_dataset(dataset: str) -> None:
    """Raise a CloudbenchError unless ``dataset`` is a known source dataset."""
    if dataset not in LAYOUTS:
        raise CloudbenchError(f"unknown source dataset {dataset!r}; choose one of "
                              f"{', '.join(LAYOUTS)}")


def stratified_holdout(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, held out): ``fraction`` of each class, at least one of every class with
    two or more images and never all of one, drawn with ``seed``; none when ``fraction`` is 0."""
    if not 0 <= fraction < 1:
        raise CloudbenchError(f"the held-out fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return list(range(len(labels))), []
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    held: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        count = min(len(members) - 1, max(1, math.floor(fraction * len(members) + 0.5)))
        if count < 1:
            continue
        order = torch.randperm(len(members), generator=generator)[:count]
        held.extend(members[int(i)] for i in order)
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


class _Decoder(Dataset[Tensor]):
    """One image file as uint8 RGB (3, size, size); an empty tensor when the file cannot be
    decoded (reported by :func:`decode_images`, not raised in a worker)."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        side = (self.size, self.size)
        try:
            with Image.open(self.paths[index]) as file:
                file.draft("RGB", side)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, still >= side
                image = file.convert("RGB")
        except (OSError, ValueError):  # UnidentifiedImageError is an OSError
            return torch.empty(0, dtype=torch.uint8)
        if image.size != side:
            image = image.resize(side, Image.Resampling.BILINEAR)  # antialiased when reducing
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def decode_images(
    paths: Sequence[str], size: int, workers: int = 0, progress: bool = False
) -> Tensor:
    """The images at ``paths`` as one uint8 (N, 3, ``size``, ``size``) RGB tensor.

    Each file is decoded once (Pillow; JPEGs at the smallest of 1/1, 1/2, 1/4, 1/8 scale that
    is still at least ``size``) and resized to ``size`` × ``size`` with Pillow's antialiased
    bilinear filter, by ``workers`` DataLoader processes (0: in this process).
    """
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    loader = DataLoader(_Decoder(paths, size), batch_size=64, num_workers=workers,
                        collate_fn=list)
    index = 0
    with tqdm(total=len(paths), desc="decoding", unit="image", disable=not progress) as bar:
        for batch in loader:
            for image in batch:
                if image.numel() == 0:
                    raise CloudbenchError(f"cannot decode {paths[index]} as an image")
                out[index] = image
                index += 1
            bar.update(len(batch))
    return out


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 (N, C, H, W) images (0–255 units)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(1024):
        values = chunk.to(torch.float64)
        total += values.sum(dim=(0, 2, 3))
        squares += values.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-6).sqrt()
    return mean.tolist(), std.tolist()


def recompute_batch_norm(
    model: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float]
) -> None:
    """Set the batch-norm running statistics of ``model`` to their averages over ``images``
    (uint8, standardised with ``mean`` and ``std``, unaugmented), with the final weights.

    The running statistics training leaves are exponential averages over the last steps, taken
    while the weights still moved; after a short run they can be far from what the final
    weights see, and the model in eval mode then predicts poorly. This is
    :func:`torch.optim.swa_utils.update_bn` over batches of 256 images.
    """
    batches = (_standardise(images[i:i + 256], mean, std) for i in range(0, len(images), 256))
    update_bn(batches, model)


def _standardise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    shape = (1, len(mean), 1, 1)
    m = torch.tensor(mean, device=images.device).reshape(shape)
    s = torch.tensor(std, device=images.device).reshape(shape)
    return (images.float() - m) / s


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


def imagenet_weights() -> Path:
    """The cached file of torchvision's ImageNet ResNet-50 weights (V2, else V1).

    Looked up in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), where
    torchvision caches them; never downloaded. Raises a CloudbenchError naming the expected
    path when neither is there.
    """
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = [folder / os.path.basename(w.url) for w in IMAGENET_WEIGHTS]
    for path in candidates:
        if path.is_file():
            return path
    raise CloudbenchError(
        f"--init imagenet needs torchvision's ImageNet ResNet-50 weights in the torch hub cache, "
        f"expected at {candidates[0]} (or {candidates[1].name} beside it); cloudbench never "
        "downloads them. Copy the file there, or use --init random to train from random "
        "initialisation"
    )


def initial_model(num_classes: int, weights: Path | None, seed: int = 0) -> nn.Module:
    """The ResNet-50 training starts from: 3 input channels, a new ``num_classes`` head.

    With ``weights`` (a torchvision ResNet-50 state dict, e.g. :func:`imagenet_weights`) every
    layer but the head is loaded from it. Without, it is torchvision's random initialisation
    with ``zero_init_residual``: the last batch norm of every residual block starts at zero, so
    each block starts as the identity, which trains from scratch much more stably (Goyal et
    al., 2017). The random parts are drawn from ``seed`` (torch's global generator is left as
    it was).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tvm.resnet50(weights=None, num_classes=num_classes,
                             zero_init_residual=weights is None)
    if weights is None:
        return model
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        head = {"fc.weight", "fc.bias"}
        found = model.load_state_dict({k: v for k, v in state.items() if k not in head},
                                      strict=False)
    except Exception as err:  # damaged file, foreign object, shape mismatch
        raise CloudbenchError(f"{weights} is not a torchvision ResNet-50 state dict: {err}"
                              ) from err
    if found.unexpected_keys or set(found.missing_keys) != head:
        raise CloudbenchError(f"{weights} is not a torchvision ResNet-50 state dict (unexpected "
                              f"{found.unexpected_keys[:3]}, missing {found.missing_keys[:3]})")
    return model


# --------------------------------------------------------------------------------------------
# cloudbench source train
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainSummary:
    """What :func:`pretrain_source` trained (or found already trained)."""

    out: Path
    dataset: str
    classes: list[str]
    images: int
    held_out: int
    epochs: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    init: str
    already_done: bool = False

    def format(self) -> str:
        """A few lines for the command line."""
        held = (f"held-out accuracy {self.val_accuracy:.1%} on {self.held_out} images"
                if self.val_accuracy is not None else "no held-out images")
        done = " (already trained; nothing to do)" if self.already_done else ""
        return "\n".join([
            f"{self.dataset}: {len(self.classes)} classes, {self.images} training images, "
            f"{self.epochs} epochs from {self.init} initialisation{done}",
            f"final train loss {self.train_loss:.4f}, train accuracy {self.train_accuracy:.1%}; "
            f"{held}",
            f"wrote {self.out}" if not self.already_done else f"model: {self.out}",
        ])

    @classmethod
    def from_state(cls, state: Mapping[str, Any], out: Path, already_done: bool
                   ) -> PretrainSummary:
        last = state["history"][-1]
        return cls(out, state["dataset"], list(state["classes"]), state["images"],
                   state["held_out"], len(state["history"]), last["loss"], last["accuracy"],
                   state["val_accuracy"], state["init"], already_done)


def pretrain_source(
    dataset: str,
    root: str | Path,
    out: str | Path,
    engine: Engine,
    config: TrainConfig,
    *,
    size: int = 64,
    init: str = "imagenet",
    holdout: float | None = None,
    workers: int = 0,
    echo: Callable[[str], None] | None = None,
    progress: bool = False,
) -> PretrainSummary:
    """Train a ResNet-50 on ``dataset`` (``resisc45`` or ``aid``) under ``root`` into ``out``.

    Training images: RESISC45's train split, or AID less a seeded stratified ``holdout``
    fraction (default :data:`AID_HOLDOUT`; 0 trains on all). Held-out images (RESISC45's val
    split, AID's hold-out) give a validation accuracy after every epoch. ``init`` is
    ``imagenet`` (cached weights, :func:`imagenet_weights`) or ``random``; the engine's seed
    draws the head, the hold-out and the training order.

    The engine checkpoint ``out`` with suffix ``.ckpt`` (and its settings, ``.ckpt.json``)
    makes a killed run resume when the same call is made again; the final file is written
    atomically and the checkpoint removed. When ``out`` exists, trained with the same settings,
    nothing is trained; other settings are refused.
    """
    check_dataset(dataset)
    root, out = Path(root), Path(out)
    if init not in ("imagenet", "random"):
        raise CloudbenchError(f"unknown initialisation {init!r}; choose imagenet or random")
    if size < 16:
        raise CloudbenchError(f"the image size must be at least 16 pixels, got {size}")
    if out.suffix != ".pt":
        raise CloudbenchError(f"the output file must end in .pt, got {out}")
    if dataset == "resisc45" and holdout is not None:
        raise CloudbenchError("--holdout is for AID; RESISC45 holds out its val split")
    if dataset == "aid" and holdout is None:
        holdout = AID_HOLDOUT
    settings = {"dataset": dataset, "root": str(root.resolve()), "size": size, "init": init,
                "seed": engine.seed, "holdout": holdout,
                "train": config.model_dump(mode="json")}
    ckpt, ckpt_settings = out.with_suffix(".ckpt"), out.with_suffix(".ckpt.json")
    if out.exists():
        state = _read_state(out)
        _check_settings(state.get("settings"), settings, out)
        ckpt.unlink(missing_ok=True)
        ckpt_settings.unlink(missing_ok=True)
        return PretrainSummary.from_state(state, out, already_done=True)
    say = echo or (lambda _: None)

    weights = imagenet_weights() if init == "imagenet" else None
    train_files, held_files = _training_files(dataset, root, holdout, engine.seed)

    if ckpt.exists() and ckpt_settings.exists():
        _check_settings(json.loads(ckpt_settings.read_text()), settings, ckpt)
        say(f"resuming from {ckpt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_settings.write_text(json.dumps(settings, indent=1))

    say(f"{dataset}: {len(train_files.classes)} classes, {len(train_files.paths)} training and "
        f"{len(held_files.paths)} held-out images at {size}x{size}")
    images = decode_images(train_files.paths, size, workers, progress)
    mean, std = channel_stats(images)
    device = engine.device
    inputs = {"image": images.to(device), "label": torch.tensor(train_files.labels).to(device)}
    model = initial_model(len(train_files.classes), weights, engine.seed)

    def forward(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        return model(_standardise(batch["image"], mean, std))

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = forward(model, batch)
        hits = (logits.argmax(1) == batch["label"]).float().mean()
        return {"loss": F.cross_entropy(logits, batch["label"]), "accuracy": hits.detach()}

    validation = None
    if held_files.paths:
        held = {"image": decode_images(held_files.paths, size, workers, progress),
                "label": torch.tensor(held_files.labels)}

        def accuracy(model: nn.Module, inputs: dict[str, Tensor]) -> float:
            logits = engine.predict(model, {"image": inputs["image"]}, forward)
            return float((logits.argmax(1) == inputs["label"]).float().mean())

        validation = ({k: v.to(device) for k, v in held.items()}, accuracy)

    def log(entry: dict[str, Any]) -> None:
        if entry.get("resumed"):
            return  # trained before the resume: printed then
        val = f", held-out accuracy {entry['val_score']:.1%}" if "val_score" in entry else ""
        say(f"epoch {entry['epoch']}/{config.epochs}: loss {entry['loss']:.4f}, train accuracy "
            f"{entry['accuracy']:.1%}{val} ({entry['seconds']:.1f} s)")

    history = engine.fit(model, inputs, loss, config, validation=validation, checkpoint=ckpt,
                         log=log)
    recompute_batch_norm(model, inputs["image"], mean, std)
    val_accuracy = validation[1](model, validation[0]) if validation is not None else None
    state = {
        "format": SOURCE_FORMAT,
        "version": SOURCE_VERSION,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "classes": train_files.classes,
        "bands": RGB_BANDS,
        "size": size,
        "mean": mean,
        "std": std,
        "dataset": dataset,
        "init": init,
        "init_weights": weights.name if weights is not None else "",
        "images": len(train_files.paths),
        "held_out": len(held_files.paths),
        "history": [dict(entry) for entry in history],
        "val_accuracy": val_accuracy,
        "settings": settings,
    }
    atomic_torch_save(state, out)
    ckpt.unlink(missing_ok=True)
    ckpt_settings.unlink(missing_ok=True)
    return PretrainSummary.from_state(state, out, already_done=False)


def _training_files(
    dataset: str, root: Path, holdout: float | None, seed: int
) -> tuple[SourceImages, SourceImages]:
    """The training and held-out images: RESISC45's train and val splits, or AID's images
    split by :func:`stratified_holdout`."""
    if dataset == "resisc45":
        train, held = source_images(dataset, root, "train"), source_images(dataset, root, "val")
    else:
        files = source_images(dataset, root)
        train_index, held_index = stratified_holdout(files.labels, holdout or 0.0, seed)
        train, held = files.subset(train_index), files.subset(held_index)
    if len(train.paths) < 2:
        raise CloudbenchError(f"{root}: {len(train.paths)} training image(s); need at least 2")
    return train, held


def _read_state(path: Path) -> dict[str, Any]:
    """An existing output file of :func:`pretrain_source`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise CloudbenchError(f"{path} exists and is not a readable source-model checkpoint "
                              f"({err}); delete it or choose another --out") from err
    if not isinstance(state, dict) or state.get("format") != SOURCE_FORMAT:
        raise CloudbenchError(f"{path} exists and is not an output of cloudbench source train; "
                              "delete it or choose another --out")
    return state


def _check_settings(found: Any, wanted: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume or reuse ``path`` when it was written with other settings."""
    found = dict(found or {})
    changed = sorted(k for k in found.keys() | wanted.keys() if found.get(k) != wanted.get(k))
    if changed:
        what = "; ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)
        raise CloudbenchError(f"{path} was written with other settings ({what}); delete it or "
                              "choose another --out")


