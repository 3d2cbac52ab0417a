"""TorchGeo's sample convention (``image=True``): TorchGeo's own trainers on our stores."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import grouped_store, make_store
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from matplotlib.figure import Figure
from torch import Tensor

from cloudbench.datasets import CBEN, CloudBenchDataModule, CloudBenchDataset
from cloudbench.errors import CloudbenchError


def torchgeo_task(name: str, old_name: str) -> Any:
    """TorchGeo's task class: ``torchgeo.tasks.<name>`` from TorchGeo 0.10 on (where
    ``torchgeo.trainers`` keeps deprecated aliases), else ``torchgeo.trainers.<old_name>``."""
    if importlib.util.find_spec("torchgeo.tasks") is not None:
        return getattr(importlib.import_module("torchgeo.tasks"), name)
    return getattr(importlib.import_module("torchgeo.trainers"), old_name)


Classification = torchgeo_task("Classification", "ClassificationTask")
MoCo = torchgeo_task("MoCo", "MoCoTask")

MIXED = ("B04", "VV", "B02", "VV/VH", "B08")
"""Both modalities interleaved and the derived ratio: ``image`` keeps this order."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 multiclass samples, 3 classes, 16 x 16, with ``s2_clear``."""
    return make_store(tmp_path_factory.mktemp("demo") / "ds", with_clear=True)


@pytest.fixture(scope="module")
def cben(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 CBEN-shaped samples (19 classes, multilabel, native-resolution S2 groups)."""
    return grouped_store(tmp_path_factory.mktemp("cben") / "ds", "cben")


def stacked(sample: dict[str, Tensor], ds: CloudBenchDataset) -> Tensor:
    """``ds.bands`` of a default sample, taken from ``image_s1`` / ``image_s2`` one by one."""
    channels = [
        sample["image_s1"][ds.s1_bands.index(band)] if band in ds.s1_bands
        else sample["image_s2"][ds.s2_bands.index(band)]
        for band in ds.bands
    ]
    return torch.stack(channels)


def multilabel_task(in_channels: int, num_labels: int) -> LightningModule:
    """TorchGeo's multilabel classification task by the name the installed TorchGeo has."""
    tiny = {"model": "resnet18", "weights": None, "in_channels": in_channels, "loss": "bce"}
    if "task" in inspect.signature(Classification).parameters:  # TorchGeo >= 0.7
        return Classification(task="multilabel", num_labels=num_labels, **tiny)
    trainers = importlib.import_module("torchgeo.trainers")  # TorchGeo 0.6
    return trainers.MultiLabelClassificationTask(num_classes=num_labels, **tiny)


class Batches(Callback):
    """Keeps the training batches as the task receives them (after ``on_after_batch_transfer``)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Tensor]] = []

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batches.append({key: value.clone() for key, value in batch.items()})


class Figures(Logger):
    """A logger with TensorBoard's ``add_figure``: TorchGeo then plots validation batches."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[Figure] = []

    @property
    def name(self) -> str:
        return "figures"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self) -> Figures:
        return self

    def add_figure(self, tag: str, figure: Figure, global_step: int | None = None) -> None:
        self.figures.append(figure)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


def one_epoch(task: LightningModule, dm: CloudBenchDataModule, **options: Any) -> Trainer:
    """``task`` fitted on the CPU for one epoch of two batches (and one validation batch)."""
    trainer = Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **{"logger": False, **options},
    )
    trainer.fit(task, datamodule=dm)
    return trainer


def assert_batches_are_samples(batches: list[dict[str, Tensor]], ds: CloudBenchDataset) -> None:
    """Each image and label of the batches is some sample's stack of its selected bands."""
    samples = [ds[i] for i in range(len(ds))]
    reference = [(stacked(sample, ds), sample["label"]) for sample in samples]
    for batch in batches:
        assert batch["image"].dtype == torch.float32
        for image, label in zip(batch["image"], batch["label"], strict=True):
            assert any(torch.equal(image, i) and torch.equal(label, lb) for i, lb in reference)


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


def test_image_stacks_the_selected_bands_in_the_order_given(demo: Path) -> None:
    plain = CloudBenchDataset(demo, split="test", bands=MIXED)
    ds = CloudBenchDataset(demo, split="test", bands=MIXED, image=True)
    assert set(plain[0]) == {"image_s1", "image_s2", "image_s2_clear", "label", "cloud_mask",
                             "cloud_fraction"}  # unchanged by default
    assert set(ds[0]) == {"image", "label", "cloud_mask", "cloud_fraction"}
    for i in range(len(ds)):
        sample, reference = ds[i], plain[i]
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (5, 16, 16)
        assert torch.equal(sample["image"], stacked(reference, plain))
        for key in ("label", "cloud_mask", "cloud_fraction"):
            assert torch.equal(sample[key], reference[key])
    tensors = ds.to_tensors(chunk_size=7)
    assert set(tensors) == set(ds[0])
    for index, sample in zip([5, 0, 5], ds.__getitems__([5, 0, 5]), strict=True):
        assert torch.equal(sample["image"], tensors["image"][index])


def test_one_modality_and_the_default_bands(demo: Path) -> None:
    optical = CloudBenchDataset(demo, bands=("B03", "B02"), image=True)
    assert torch.equal(optical[0]["image"],
                       CloudBenchDataset(demo, bands=("B03", "B02"))[0]["image_s2"])
    everything = CloudBenchDataset(demo, image=True)
    assert everything[0]["image"].shape == (2 + 12, 16, 16)  # all S1, then all S2


def test_cben_image_is_the_early_fusion_stack(cben: Path) -> None:
    ds = CBEN(cben, split="val", image=True)
    fused = CBEN(cben, split="val", early_fusion=True)
    assert set(ds[0]) == {"image", "label", "cloud_mask", "cloud_fraction"}
    assert ds[0]["label"].dtype == torch.int64 and ds[0]["label"].shape == (19,)
    for i in range(len(ds)):
        assert torch.equal(ds[i]["image"], fused[i]["image"])
        assert torch.equal(ds[i]["image"], stacked(fused[i], fused))
    with pytest.raises(CloudbenchError, match="early_fusion and image both make 'image'"):
        CBEN(cben, image=True, early_fusion=True)


def test_plot_cuts_the_modalities_from_image(demo: Path) -> None:
    ds = CloudBenchDataset(demo, bands=("VV", "B04", "VH", "B03", "B02"), image=True)
    fig = ds.plot(ds[0])
    assert [ax.get_title() for ax in fig.axes] == ["Sentinel-2 true colour",
                                                   "Sentinel-1 VV, VH, VV/VH", "Cloud mask"]


# --------------------------------------------------------------------------------------------
# TorchGeo's trainers through CloudBenchDataModule
# --------------------------------------------------------------------------------------------


def test_classification_task_trains_one_epoch(demo: Path) -> None:
    dm = CloudBenchDataModule(root=demo, bands=MIXED, image=True, batch_size=8, val_split="test")
    task = Classification(model="resnet18", weights=None, in_channels=len(MIXED),
                              num_classes=3)
    batches = Batches()
    trainer = one_epoch(task, dm, callbacks=[batches])
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert math.isfinite(float(trainer.callback_metrics["val_loss"]))
    assert len(batches.batches) == 2 and batches.batches[0]["image"].shape == (8, 5, 16, 16)
    assert batches.batches[0]["label"].dtype == torch.int64
    assert_batches_are_samples(batches.batches, CloudBenchDataset(demo, bands=MIXED))


def test_multilabel_task_trains_one_epoch_and_plots(cben: Path) -> None:
    dm = CloudBenchDataModule(CBEN, root=cben, image=True, batch_size=2, val_split="val")
    task = multilabel_task(in_channels=14, num_labels=19)
    batches, figures = Batches(), Figures()
    trainer = one_epoch(task, dm, callbacks=[batches], logger=figures)
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert batches.batches[0]["image"].shape == (2, 14, 12, 12)
    assert_batches_are_samples(batches.batches, CBEN(cben, split="train"))
    assert len(figures.figures) == 1  # TorchGeo's validation plot went through our plot
    assert [ax.get_title() for ax in figures.figures[0].axes] == [
        "Sentinel-2 true colour", "Sentinel-1 VV, VH, VV/VH", "Cloud mask"]


def test_moco_task_trains_one_epoch(cben: Path) -> None:
    dm = CloudBenchDataModule(CBEN, root=cben, image=True, batch_size=2)
    task = MoCo(model="resnet18", in_channels=14, version=2, layers=2, size=12, memory_bank_size=8,
                    output_dim=16, hidden_dim=32)
    trainer = one_epoch(task, dm)
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
