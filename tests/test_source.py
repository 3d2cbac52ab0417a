"""``cloudbench source train``: RESISC45 and AID layouts, initialisation, checkpoints, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet50

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.source import (
    SOURCE_FORMAT,
    SourceModel,
    decode_images,
    imagenet_weights,
    initial_model,
    load_source,
    pretrain_source,
    source_images,
    stratified_holdout,
)

COLOURS = [(210, 40, 40), (40, 210, 40), (40, 40, 210)]
"""Each fixture class is a noisy image of its own colour: a signal a few epochs learn."""
TINY = {"size": "16", "epochs": "2", "batch_size": "4", "lr": "0.01", "device": "cpu",
        "init": "random", "workers": "0"}
"""Settings that train in seconds on a CPU."""


def _command(dataset: str, root: Path, out: Path, **options: str) -> list[str]:
    """``cloudbench source train`` arguments: :data:`TINY` settings updated by ``options``."""
    settings = {**TINY, **options}
    flags = [part for k, v in settings.items() for part in (f"--{k.replace('_', '-')}", v)]
    return ["source", "train", "--dataset", dataset, "--root", str(root), "--out", str(out),
            *flags]


def _write_image(path: Path, colour: int, side: int, seed: int) -> None:
    noise = np.random.default_rng(seed).integers(-30, 31, (side, side, 3))
    image = np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def make_resisc45(root: Path, per_class: int = 6) -> Path:
    """TorchGeo's RESISC45 layout: NWPU-RESISC45/<class>/<class>_NNN.jpg and split files
    (one file name per line); per class, the first images are train, then one val, one test."""
    classes = ["airplane", "beach", "forest"]
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(classes):
        for i in range(1, per_class + 1):
            file = f"{name}_{i:03d}.jpg"
            _write_image(root / "NWPU-RESISC45" / name / file, c, 32, 100 * c + i)
            split = "train" if i <= per_class - 2 else "val" if i == per_class - 1 else "test"
            splits[split].append(file)
    for split, files in splits.items():
        (root / f"resisc45-{split}.txt").write_text("".join(f"{f}\n" for f in files))
    return root


def make_aid(root: Path, per_class: int = 5) -> Path:
    """AID's layout under ``root``: AID/<ClassName>/<classname>_N.jpg (40×40 here)."""
    for c, name in enumerate(["Airport", "BareLand", "Beach"]):
        for i in range(1, per_class + 1):
            _write_image(root / "AID" / name / f"{name.lower()}_{i}.jpg", c, 40, 100 * c + i)
    return root


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch home without cached weights."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def fake_hub(empty_hub: Path) -> Path:
    """A torch home whose hub cache holds an untrained torchvision ResNet-50 (residual blocks
    starting as the identity, so that it trains in a few steps) under the file name of the
    ImageNet V2 weights; returns that file."""
    path = empty_hub / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(resnet50(weights=None, zero_init_residual=True).state_dict(), path)
    return path


def _train_accuracy(model: SourceModel, paths: list[str], labels: list[int]) -> float:
    assert model.size is not None
    images = model.standardise(decode_images(paths, model.size))
    with torch.no_grad():
        predicted = model.classifier(images).argmax(1)
    return float((predicted == torch.tensor(labels)).float().mean())


def test_resisc45_trains_a_source_model(tmp_path: Path, empty_hub: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = make_resisc45(tmp_path / "resisc")
    out = tmp_path / "models" / "resisc45.pt"
    assert main(_command("resisc45", root, out)) == 0
    printed = capsys.readouterr().out
    assert "3 classes, 12 training images" in printed and f"wrote {out}" in printed
    assert "held-out accuracy" in printed
    assert not out.with_suffix(".ckpt").exists() and not out.with_suffix(".ckpt.json").exists()

    model = load_source(out)
    assert model.classes == ["airplane", "beach", "forest"]
    assert model.bands == ["B04", "B03", "B02"] and model.size == 16
    assert model.mean is not None and len(model.mean) == 3
    files = source_images("resisc45", root, "train")
    assert _train_accuracy(model, files.paths, files.labels) > 0.6

    state = torch.load(out, weights_only=True)
    assert state["format"] == SOURCE_FORMAT and state["dataset"] == "resisc45"
    assert state["init"] == "random" and state["images"] == 12 and state["held_out"] == 3


def test_aid_trains_from_cached_imagenet_weights(
    tmp_path: Path, fake_hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_aid(tmp_path / "data")
    out = tmp_path / "aid.pt"
    assert main(_command("aid", root, out, init="imagenet", holdout="0.2", workers="2")) == 0
    assert "3 classes, 12 training images" in capsys.readouterr().out

    model = load_source(out)
    assert model.classes == ["Airport", "BareLand", "Beach"]
    files = source_images("aid", root / "AID")  # the AID folder itself is a root too
    assert _train_accuracy(model, files.paths, files.labels) > 0.6
    state = torch.load(out, weights_only=True)
    assert state["init"] == "imagenet" and state["init_weights"] == fake_hub.name
    assert state["held_out"] == 3


def test_imagenet_weights_initialise_the_model(fake_hub: Path) -> None:
    assert imagenet_weights() == fake_hub
    cached = torch.load(fake_hub, weights_only=True)
    model = initial_model(5, imagenet_weights())
    assert torch.equal(model.conv1.weight, cached["conv1.weight"])
    assert torch.equal(model.layer4[2].bn3.running_mean, cached["layer4.2.bn3.running_mean"])
    assert model.fc.out_features == 5
    random = initial_model(5, None)
    assert not torch.equal(random.conv1.weight, cached["conv1.weight"])


def test_imagenet_without_cache_is_one_clear_error(
    tmp_path: Path, empty_hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_aid(tmp_path / "data", per_class=2)
    assert main(_command("aid", root, tmp_path / "m.pt", init="imagenet")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(empty_hub / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in err
    assert "--init random" in err


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, empty_hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Interrupted in-process (KeyboardInterrupt after the first epoch, as Ctrl-C would), not
    a killed process: the checkpoint on disk is what a kill would leave."""
    root = make_aid(tmp_path / "data", per_class=2)
    out = tmp_path / "aid.pt"
    # 32 px: at 16 px, layer4's strided convolution sees a 1x1 input, and its weight gradient
    # is not bitwise reproducible on CPU (torch 2.15), so no two runs would be equal
    config = TrainConfig(epochs=2, batch_size=4, lr=0.01)
    settings = {"size": "32", "holdout": "0"}

    def crash_after_first_epoch(message: str) -> None:
        if message.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_source("aid", root, out, Engine("cpu"), config, size=32, init="random",
                        holdout=0.0, echo=crash_after_first_epoch)
    assert out.with_suffix(".ckpt").exists() and not out.exists()

    assert main(_command("aid", root, out, **{**settings, "size": "16"})) == 2  # refused
    assert "other settings (size: 32 there, 16 now)" in capsys.readouterr().err
    assert main(_command("aid", root, out, **settings)) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "epoch 1/" not in printed and "epoch 2/2" in printed
    resumed = torch.load(out, weights_only=True)
    assert len(resumed["history"]) == 2 and not out.with_suffix(".ckpt").exists()

    fresh = tmp_path / "fresh.pt"
    pretrain_source("aid", root, fresh, Engine("cpu"), config, size=32, init="random",
                    holdout=0.0)
    reference = torch.load(fresh, weights_only=True)["state_dict"]
    for key, value in reference.items():
        assert torch.equal(resumed["state_dict"][key], value), key

    assert main(_command("aid", root, out, **settings)) == 0  # finished: nothing to do
    assert "already trained" in capsys.readouterr().out
    assert main(_command("aid", root, out, **{**settings, "epochs": "3"})) == 2
    assert "other settings (train:" in capsys.readouterr().err


def test_damaged_or_foreign_checkpoints(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(CloudbenchError, match="not a readable source-model checkpoint"):
        load_source(damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CloudbenchError, match="not a source-model checkpoint"):
        load_source(foreign)
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "classes": ["a"], "bands": ["B04"]}, wrong)
    with pytest.raises(CloudbenchError, match="does not hold a ResNet-50"):
        load_source(wrong)


def test_harness_checkpoints_still_load(tmp_path: Path) -> None:
    """The harness's own source checkpoints (state_dict, classes, bands) load as before."""
    path = tmp_path / "model.pt"
    model = initial_model(2, None)
    torch.save({"state_dict": model.state_dict(), "classes": ["a", "b"],
                "bands": ["B04", "B03", "B02"]}, path)
    loaded = load_source(path)
    assert loaded.classes == ["a", "b"] and loaded.mean is None and loaded.size is None
    assert torch.equal(loaded.classifier.conv1.weight, model.conv1.weight)


@pytest.mark.parametrize(("dataset", "layout", "message"), [
    ("resisc45", "missing", "is not a folder"),
    ("resisc45", "aid", "no resisc45 dataset in"),
    ("aid", "empty", "is not in the aid layout"),
    ("ucmerced", "aid", "unknown source dataset 'ucmerced'"),
])
def test_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: str,
                            layout: str, message: str) -> None:
    root = tmp_path / "root"
    if layout == "aid":
        make_aid(root, per_class=1)
    elif layout == "empty":
        (root / "AID").mkdir(parents=True)
    assert main(_command(dataset, root, tmp_path / "m.pt")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


def test_damaged_output_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"\x00garbage")
    assert main(_command("aid", make_aid(tmp_path, 1), out)) == 2
    assert "not a readable source-model checkpoint" in capsys.readouterr().err


def test_stratified_holdout_is_seeded_and_per_class() -> None:
    labels = [0] * 10 + [1] * 5 + [2] * 1
    train, held = stratified_holdout(labels, 0.2, seed=3)
    assert sorted(train + held) == list(range(16))
    assert [labels[i] for i in held].count(0) == 2 and [labels[i] for i in held].count(1) == 1
    assert 15 in train  # a class of one image is never held out
    assert stratified_holdout(labels, 0.2, seed=3) == (train, held)
    assert stratified_holdout(labels, 0.0, seed=3) == (list(range(16)), [])
