"""The training engine, the harness models, ``cloudbench perf train`` and ``perf gpu``, all
on the CPU."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness.engine import (
    Engine,
    TrainConfig,
    augment,
    batch_bounds,
    lr_factor,
    resolve_amp,
)
from cloudbench.models.classifiers import EarlyFusion, TwoStream, encoder, googlenet, resnet50
from cloudbench.perf import (
    format_gpu_benchmark,
    format_train_benchmark,
    gpu_benchmark,
    train_benchmark,
)
from cloudbench.store import Store

CL = torch.channels_last


class Tiny(nn.Module):
    """Conv, batch norm, dropout, linear head: every kind of state the engine must handle."""

    def __init__(self, channels: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(self.drop(x))


class Scalar(nn.Module):
    """One parameter, for tests about the engine's bookkeeping rather than learning."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def task(n: int = 96, seed: int = 0) -> dict[str, Tensor]:
    """Three classes told apart by channel 0's mean: flips and rotations keep the class."""
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 3
    image = torch.randn(n, 2, 8, 8, generator=g)
    image[:, 0] += 2.0 * (label - 1).float()[:, None, None]
    return {"image": image, "label": label}


def ce(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"loss": F.cross_entropy(model(batch["image"]), batch["label"])}


def logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["image"])


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("seconds", "samples_per_second")}
            for e in history]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.optimizer, c.lr, c.momentum, c.weight_decay) == (
        200, 64, "sgd", 1e-2, 0.9, 5e-4)
    assert (c.schedule, c.warmup_epochs, c.amp, c.channels_last, c.compile, c.augment) == (
        "cosine", 0, "auto", True, False, True)
    assert c.early_stopping_patience is None and c.checkpoint_every is None
    assert TrainConfig.model_fields["epochs"].description  # documented fields
    for bad in ({"epoch": 3}, {"optimizer": "adam"}, {"amp": "fp16"}, {"epochs": 0},
                {"warmup_epochs": 5, "epochs": 5}, {"batch_size": 0}):
        with pytest.raises(ValidationError):
            TrainConfig(**bad)


def test_learning_rate_schedules() -> None:
    cosine = TrainConfig(epochs=10)
    assert lr_factor(cosine, 0) == 1.0
    assert lr_factor(cosine, 5) == pytest.approx(0.5)
    assert all(lr_factor(cosine, e) > lr_factor(cosine, e + 1) for e in range(9))
    step = TrainConfig(epochs=8, schedule="step")
    assert [lr_factor(step, e) for e in range(8)] == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = TrainConfig(epochs=6, warmup_epochs=2, schedule="constant")
    assert [lr_factor(warm, e) for e in range(6)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    # The schedule is what fit uses: one lr per epoch in the history.
    history = Engine().fit(Scalar(), {"x": torch.zeros(4)}, lambda m, b: {"loss": m.w ** 2},
                           TrainConfig(epochs=4, schedule="step", lr=0.1))
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_device_and_amp_resolution() -> None:
    assert Engine().device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Engine("cpu").device == torch.device("cpu")
    with pytest.raises(CloudbenchError):
        Engine(seed=-1)
    cpu = torch.device("cpu")
    flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    assert resolve_amp("auto", cpu) == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert resolve_amp("bf16", cpu) and not resolve_amp("off", cpu)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def test_learns_a_separable_task() -> None:
    engine = Engine("cpu")
    model = tiny()
    history = engine.fit(model, task(), ce, TrainConfig(epochs=12, batch_size=16, lr=0.05))
    assert len(history) == 12 and [h["epoch"] for h in history] == list(range(1, 13))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    test = task(60, seed=1)
    scores = engine.predict(model, test, logits)
    accuracy = (scores.argmax(1) == test["label"]).float().mean()
    assert accuracy >= 0.95
    assert engine.train_samples_per_second is not None and engine.train_samples_per_second > 0
    assert engine.last_throughput.predict_samples_per_second is not None
    assert engine.peak_memory_bytes() > 0


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    config = TrainConfig(epochs=3, batch_size=16)
    runs = []
    for seed in (0, 0, 1):
        model = tiny()
        Engine("cpu", seed=seed).fit(model, task(), ce, config)
        runs.append(model)
    assert states_equal(runs[0], runs[1])
    assert not states_equal(runs[0], runs[2])


def test_every_loss_term_is_logged_as_a_sample_weighted_mean() -> None:
    x = torch.arange(10, dtype=torch.float32) ** 2  # batches of 4, 4, 2: unequal means

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        return {"loss": (model.w - 1) ** 2 + 0 * batch["x"].sum(), "loss_s2": batch["x"].mean(),
                "loss_s1": 2 * batch["x"].mean(), "count": float(len(batch["x"])),
                "logits": batch["x"][:, None].repeat(1, 3)}

    logged: list[dict[str, Any]] = []
    history = Engine().fit(Scalar(), {"x": x}, loss_fn, TrainConfig(epochs=2, batch_size=4),
                           log=logged.append)
    assert logged == history
    for entry in history:
        assert set(entry) == {"epoch", "loss", "loss_s2", "loss_s1", "count", "lr", "seconds",
                              "samples_per_second"}
        assert entry["loss_s2"] == pytest.approx(float(x.mean()))
        assert entry["loss_s1"] == pytest.approx(2 * float(x.mean()))
        assert entry["count"] == pytest.approx((4 * 4 + 4 * 4 + 2 * 2) / 10)
        assert entry["samples_per_second"] == pytest.approx(10 / entry["seconds"])
    with pytest.raises(CloudbenchError, match="loss"):
        Engine().fit(Scalar(), {"x": x}, lambda m, b: {"total": m.w}, TrainConfig(epochs=1))
    with pytest.raises(CloudbenchError, match="first dimension"):
        Engine().fit(Scalar(), {"x": x, "y": x[:3]}, loss_fn, TrainConfig(epochs=1))


def test_a_last_batch_of_one_joins_the_batch_before() -> None:
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert batch_bounds(1, 4) == [(0, 1)] and batch_bounds(8, 4) == [(0, 4), (4, 8)]
    sizes: list[int] = []

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        sizes.append(len(batch["label"]))
        return ce(model, batch)

    Engine().fit(tiny(), task(9), loss_fn, TrainConfig(epochs=1, batch_size=4))  # BN: no crash
    assert sizes == [4, 5]


def test_params_restriction_freezes_the_rest() -> None:
    model = tiny()
    before = copy.deepcopy(model)
    Engine().fit(model, task(), ce, TrainConfig(epochs=2, batch_size=32),
                 params=model.head.parameters())
    assert not torch.equal(model.head.weight, before.head.weight)
    for name in ("conv.weight", "conv.bias", "bn.weight", "bn.bias"):
        assert torch.equal(model.get_parameter(name), before.get_parameter(name)), name
    assert model.conv.weight.grad is None  # no gradient was even computed for it
    assert all(p.requires_grad for p in model.parameters())  # restored after the fit


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_amp_off_and_bf16_both_train_on_cpu(amp: str) -> None:
    dtypes = set()

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = model(batch["image"])
        dtypes.add(out.dtype)
        return {"loss": F.cross_entropy(out, batch["label"])}

    model = tiny()
    history = Engine("cpu").fit(model, task(), loss_fn,
                                TrainConfig(epochs=3, batch_size=32, amp=amp, lr=0.05))
    assert dtypes == {torch.bfloat16 if amp == "bf16" else torch.float32}
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.head.weight.dtype == torch.float32  # master weights stay fp32


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_applies_to_model_and_image_batches(channels_last: bool) -> None:
    seen = []

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        seen.append((batch["image"].is_contiguous(memory_format=CL),
                     model.conv.weight.is_contiguous(memory_format=CL)))
        return ce(model, batch)

    Engine().fit(tiny(), task(), loss_fn,
                 TrainConfig(epochs=1, batch_size=32, channels_last=channels_last))
    assert seen and set(seen) == {(channels_last, channels_last)}


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def symmetries(x: Tensor) -> Iterator[Tensor]:
    """The 8 symmetries of the square on the last two dimensions (made apart from the engine)."""
    for k in range(4):
        r = torch.rot90(x, k, (-2, -1))
        yield r
        yield r.transpose(-2, -1)


def structured(n: int, h: int = 6, w: int = 6) -> dict[str, Tensor]:
    """Every pixel of every sample distinct; the mask numbers the pixels."""
    pixels = torch.arange(h * w, dtype=torch.float32).reshape(h, w)
    ids = torch.arange(n)
    a = ids[:, None, None, None] * 1000.0 + torch.tensor([0.0, 100.0])[None, :, None, None]
    image = a + pixels
    return {"image_s2": image, "image_s1": -image[:, :1] - 0.5,
            "cloud_mask": pixels.to(torch.uint8).expand(n, h, w).clone(),
            "label": ids, "cloud_fraction": ids.float() / n}


def which(candidates: Iterator[Tensor], value: Tensor) -> int:
    matches = [i for i, c in enumerate(candidates) if torch.equal(c, value)]
    assert len(matches) == 1, matches
    return matches[0]


def test_augment_applies_one_transform_per_sample_to_every_image_key() -> None:
    batch = structured(64)
    out = augment(batch, torch.Generator().manual_seed(3))
    chosen = []
    for i in range(64):
        t = which(symmetries(batch["image_s2"][i]), out["image_s2"][i])  # its own sample only
        assert torch.equal(out["image_s1"][i], list(symmetries(batch["image_s1"][i]))[t])
        assert torch.equal(out["cloud_mask"][i], list(symmetries(batch["cloud_mask"][i]))[t])
        chosen.append(t)
    assert set(chosen) == set(range(8))
    assert out["cloud_mask"].dtype == torch.uint8
    assert torch.equal(out["label"], batch["label"])
    assert torch.equal(out["cloud_fraction"], batch["cloud_fraction"])


def test_augment_flips_only_when_images_are_not_square() -> None:
    batch = structured(32, h=4, w=6)
    out = augment(batch, torch.Generator().manual_seed(0))
    chosen = set()
    for i in range(32):
        x = batch["image_s2"][i]
        flips = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
        t = which(iter(flips), out["image_s2"][i])
        m = batch["cloud_mask"][i]
        assert torch.equal(out["cloud_mask"][i], [m, m.flip(-1), m.flip(-2), m.flip(-1, -2)][t])
        chosen.add(t)
    assert chosen == {0, 1, 2, 3}


@pytest.mark.parametrize("augmented", [True, False])
def test_fit_shuffles_every_sample_once_and_augments_consistently(augmented: bool) -> None:
    n = 20
    inputs = structured(n)
    batches: list[dict[str, Tensor]] = []

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        batches.append({k: v.detach().clone() for k, v in batch.items()})
        return {"loss": (model.w - 1) ** 2}

    Engine().fit(Scalar(), inputs, loss_fn, TrainConfig(epochs=2, batch_size=8, augment=augmented))
    assert [len(b["label"]) for b in batches] == [8, 8, 4, 8, 8, 4]  # last partial batch kept
    orders = [torch.cat([b["label"] for b in batches[e * 3:e * 3 + 3]]) for e in (0, 1)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
        assert order.tolist() != list(range(n))
    assert orders[0].tolist() != orders[1].tolist()
    transforms = set()
    for b in batches:
        for j, i in enumerate(b["label"].tolist()):
            t = which(symmetries(inputs["image_s2"][i]), b["image_s2"][j])
            assert torch.equal(b["image_s1"][j], list(symmetries(inputs["image_s1"][i]))[t])
            assert torch.equal(b["cloud_mask"][j], list(symmetries(inputs["cloud_mask"][i]))[t])
            assert b["cloud_fraction"][j] == inputs["cloud_fraction"][i]
            transforms.add(t)
    assert (len(transforms) > 4) if augmented else (transforms == {0})


# --------------------------------------------------------------------------------------------
# Checkpoints and early stopping
# --------------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def kill_after(epoch: int) -> Any:
    def log(entry: dict[str, Any]) -> None:
        if entry["epoch"] == epoch:
            raise Killed

    return log


@pytest.mark.parametrize("every,killed_after,optimizer",
                         [(1, 2, "sgd"), (2, 3, "sgd"), (1, 3, "adamw")])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    tmp_path: Path, every: int, killed_after: int, optimizer: str
) -> None:
    config = TrainConfig(epochs=5, batch_size=16, warmup_epochs=1, checkpoint_every=every,
                         optimizer=optimizer, lr=0.01 if optimizer == "sgd" else 1e-3)
    whole = tiny()
    full = Engine(seed=4).fit(whole, task(), ce, config)

    path = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        Engine(seed=4).fit(tiny(), task(), ce, config, checkpoint=path,
                           log=kill_after(killed_after))
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == killed_after - killed_after % every
    resumed_model = tiny(seed=99)  # other initial weights: all must come from the checkpoint
    resumed = Engine(seed=4).fit(resumed_model, task(), ce, config, checkpoint=path)

    assert states_equal(resumed_model, whole)
    assert without_timing(resumed) == without_timing(full)
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_loads_with_weights_only_and_guards_its_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    config = TrainConfig(epochs=3, batch_size=32, checkpoint_every=2)
    model = tiny()
    history = Engine().fit(model, task(), ce, config, checkpoint=path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3 and not state["stopped"]
    assert state["history"] == history and state["config"]["epochs"] == 3
    assert {"model", "optimizer", "scheduler", "rng"} <= set(state)
    assert state["rng"]["cpu"].dtype == torch.uint8
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())

    logged: list[dict[str, Any]] = []
    again = tiny(seed=5)
    assert Engine().fit(again, task(), ce, config, checkpoint=path, log=logged.append) == history
    # a finished run is only loaded; its history is logged again (a resumed run logs it all)
    assert states_equal(again, model) and logged == [{**h, "resumed": True} for h in history]
    with pytest.raises(CloudbenchError, match="lr"):
        Engine().fit(tiny(), task(), ce, config.model_copy(update={"lr": 0.5}), checkpoint=path)
    with pytest.raises(CloudbenchError, match="seed"):
        Engine(seed=1).fit(tiny(), task(), ce, config, checkpoint=path)


def test_compiled_model_checkpoints_the_plain_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    model = Scalar()
    engine = Engine()
    engine.fit(model, {"x": torch.zeros(4)}, lambda m, b: {"loss": (m.w - 3) ** 2},
               TrainConfig(epochs=2, batch_size=4, compile=True), checkpoint=path)
    assert set(torch.load(path, weights_only=True)["model"]) == {"w"}
    assert engine.train_samples_per_second is not None
    engine.fit(model, {"x": torch.zeros(4)}, lambda m, b: {"loss": (m.w - 3) ** 2},
               TrainConfig(epochs=2, batch_size=4, compile=True), checkpoint=path)
    assert engine.train_samples_per_second is None  # finished: nothing trained


def test_early_stopping_on_validation_restores_the_best_weights() -> None:
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.9])
    snapshots: list[dict[str, Tensor]] = []
    model = tiny()
    history = Engine().fit(
        model, task(), ce, TrainConfig(epochs=6, batch_size=32, early_stopping_patience=2),
        validation=(task(12, seed=2), lambda m, v: next(scores)),
        log=lambda e: snapshots.append(copy.deepcopy(model.state_dict())),
    )
    assert [h["val_score"] for h in history] == [0.1, 0.5, 0.3, 0.2]  # stopped after 2 worse
    best, last = snapshots[1], snapshots[3]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_validation_runs_in_eval_mode_without_gradients() -> None:
    modes = []

    def score(model: nn.Module, inputs: dict[str, Tensor]) -> float:
        modes.append((model.training, torch.is_grad_enabled()))
        return 0.0

    history = Engine().fit(tiny(), task(), ce, TrainConfig(epochs=2, batch_size=48),
                           validation=(task(6), score))
    assert modes == [(False, False)] * 2 and all("val_score" in h for h in history)


def test_early_stopping_without_validation_watches_the_training_loss() -> None:
    # lr 1.5 on p**2 overshoots: |p| doubles each step, so the loss only grows.
    model = Scalar()
    history = Engine().fit(
        model, {"x": torch.zeros(4)}, lambda m, b: {"loss": m.w ** 2},
        TrainConfig(epochs=10, batch_size=4, lr=1.5, momentum=0, weight_decay=0,
                    schedule="constant", early_stopping_patience=2),
    )
    assert [h["loss"] for h in history] == [1.0, 4.0, 16.0]
    assert float(model.w.detach()) == -2.0  # after epoch 1 (its loss, 1, came before its step)


# --------------------------------------------------------------------------------------------
# Predict and profile
# --------------------------------------------------------------------------------------------


def test_predict_in_eval_mode_in_order_on_cpu() -> None:
    engine = Engine()
    model = tiny()
    data = task(20)
    data["id"] = torch.arange(20)
    modes = []

    def forward(m: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        modes.append(m.training)
        return torch.cat([m(batch["image"]), batch["id"][:, None].float()], dim=1)

    out = engine.predict(model, data, forward, batch_size=7, amp="off")
    assert out.shape == (20, 4) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert modes == [False, False, False]
    assert model.training  # mode restored
    assert torch.equal(out[:, 3], torch.arange(20).float())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(out[:, :3], model(data["image"]), atol=1e-5)
    assert engine.predict_samples_per_second is not None and engine.predict_samples_per_second > 0
    bf16 = engine.predict(model, data, forward, batch_size=64, amp="bf16")
    assert bf16.dtype == torch.float32 and torch.allclose(bf16[:, :3], out[:, :3], atol=0.1)


def test_profile_counts_parameters_and_flops() -> None:
    model = nn.Linear(10, 4)
    model.bias.requires_grad_(False)
    result = Engine().profile(model, {"x": torch.randn(8, 10)}, lambda m, b: m(b["x"]))
    assert result["parameters"] == 44 and result["trainable_parameters"] == 40
    assert result["gflops"] == pytest.approx(2 * 10 * 4 / 1e9)  # per sample, multiply-add = 2

    net = googlenet(3, 10)
    big = Engine().profile(net, {"image_s2": torch.randn(2, 3, 64, 64)},
                           lambda m, b: m(b["image_s2"]))
    assert big["parameters"] == sum(p.numel() for p in net.parameters()) > 5_000_000
    assert 0.1 < big["gflops"] < 0.5  # GoogLeNet: ~3 GFLOPs at 224 px, (64/224)² of it here
    assert net.training


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def test_googlenet_and_resnet50_take_any_channels() -> None:
    net = googlenet(5, 7).eval()
    assert net.conv1.conv.in_channels == 5
    with torch.no_grad():
        assert net(torch.randn(2, 5, 64, 64)).shape == (2, 7)
        assert net(torch.randn(2, 5, 32, 32)).shape == (2, 7)
    assert googlenet(3, 10).conv1.conv.in_channels == 3 and net.aux1 is None
    res = resnet50(4, 3).eval()
    assert res.conv1.in_channels == 4 and res.fc.out_features == 3
    with torch.no_grad():
        assert res(torch.randn(2, 4, 64, 64)).shape == (2, 3)
    trunk, dim = encoder(res)
    assert dim == 2048 and isinstance(res.fc, nn.Identity)
    with torch.no_grad():
        assert trunk(torch.randn(2, 4, 32, 32)).shape == (2, 2048)
    trunk, dim = encoder(googlenet(2, 4).eval())
    with torch.no_grad():
        assert dim == 1024 and trunk(torch.randn(2, 2, 32, 32)).shape == (2, 1024)
    with pytest.raises(CloudbenchError):
        encoder(nn.Sequential(nn.Linear(2, 2)))


def test_two_stream_parts_sum_to_the_logits() -> None:
    torch.manual_seed(0)
    # Train mode: batch statistics (an untrained GoogLeNet in eval mode outputs ~constants);
    # each call re-seeds so that the dropout masks match.
    model = TwoStream({"s2": 3, "s1": 2}, num_classes=5)

    def run(method: Any, inputs: dict[str, Tensor]) -> Any:
        torch.manual_seed(1)
        return method(inputs)

    with torch.no_grad():
        model.head.bias.normal_()  # a visible bias, to check how it is shared
        inputs = {"s2": torch.randn(4, 3, 32, 32), "s1": torch.randn(4, 2, 32, 32)}
        logits, parts = run(model.forward_parts, inputs)
        assert set(parts) == {"s2", "s1"} and logits.shape == (4, 5)
        assert logits.std(0).min() > 1e-3  # not a constant
        assert torch.allclose(parts["s2"] + parts["s1"], logits, atol=1e-5)
        assert torch.allclose(run(model, inputs), logits, atol=1e-6)
        features = run(model.features, inputs)
        w, b = model.head.weight, model.head.bias
        assert torch.allclose(parts["s1"], features["s1"] @ w[:, 1024:].T + b / 2, atol=1e-5)
        # Each part depends on its own modality only.
        _, other = run(model.forward_parts, dict(inputs, s1=torch.randn(4, 2, 32, 32)))
        assert torch.equal(other["s2"], parts["s2"])
        assert not torch.allclose(other["s1"], parts["s1"], atol=1e-3)
        # Dataset batch keys work too.
        assert torch.equal(run(model, {"image_s2": inputs["s2"], "image_s1": inputs["s1"]}),
                           run(model, inputs))


def test_early_fusion_stacks_the_modalities() -> None:
    torch.manual_seed(0)
    model = EarlyFusion({"s1": 2, "s2": 3}, num_classes=4)  # train mode: see the test above
    assert model.net.conv1.conv.in_channels == 5
    inputs = {"image_s1": torch.randn(4, 2, 32, 32), "image_s2": torch.randn(4, 3, 32, 32)}
    with torch.no_grad():
        torch.manual_seed(1)
        out = model(inputs)
        assert out.shape == (4, 4)
        torch.manual_seed(1)
        other = model(dict(inputs, image_s1=torch.randn(4, 2, 32, 32)))
        assert not torch.allclose(other, out, atol=1e-3)
    with pytest.raises(CloudbenchError, match="modality"):
        model({"image_s2": inputs["image_s2"]})


def test_engine_trains_the_two_stream_model_with_per_modality_terms() -> None:
    torch.manual_seed(0)
    model = TwoStream({"s2": 3, "s1": 2}, num_classes=3)
    g = torch.Generator().manual_seed(0)
    inputs = {"image_s2": torch.randn(8, 3, 32, 32, generator=g),
              "image_s1": torch.randn(8, 2, 32, 32, generator=g), "label": torch.arange(8) % 3}

    def loss_fn(m: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out, parts = m.forward_parts(batch)
        terms = {f"loss_{k}": F.cross_entropy(p, batch["label"]).detach()
                 for k, p in parts.items()}
        return {"loss": F.cross_entropy(out, batch["label"]), **terms}

    history = Engine().fit(model, inputs, loss_fn, TrainConfig(epochs=1, batch_size=4))
    assert {"loss", "loss_s2", "loss_s1"} <= set(history[0])


# --------------------------------------------------------------------------------------------
# cloudbench perf train
# --------------------------------------------------------------------------------------------


def test_train_benchmark_measures_both_sides(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    result = train_benchmark(tmp_path, samples=32, epochs=1, batch_size=16, ceiling=True,
                             data="stream", progress=False)
    for side in ("reference", "engine", "ceiling", "stream"):
        assert result[side]["timed_samples"] == 32
        assert result[side]["samples_per_s"] > 0
    assert result["stream"]["fraction"] == pytest.approx(
        result["stream"]["samples_per_s"] / result["engine"]["samples_per_s"])
    assert result["ratio"] == pytest.approx(
        result["engine"]["samples_per_s"] / result["reference"]["samples_per_s"])
    assert result["ceiling"]["fraction"] == pytest.approx(
        result["engine"]["samples_per_s"] / result["ceiling"]["samples_per_s"])
    assert result["engine"]["amp"] == ("bf16" if resolve_amp("auto", torch.device("cpu"))
                                       else "off")
    report = format_train_benchmark(result)
    assert "reference" in report and f"{result['ratio']:.2f}x" in report and "ceiling" in report
    assert f"{result['stream']['fraction']:.0%} of resident" in report

    assert main(["perf", "train", "--workdir", str(tmp_path), "--samples", "32", "--epochs", "1",
                 "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and "ratio" in out
    assert ("ceiling" in out) == torch.cuda.is_available()
    assert main(["perf", "train", "--workdir", str(tmp_path), "--samples", "33",
                 "--batch-size", "16"]) == 2  # a last batch of one sample: refused


def test_gpu_benchmark_runs_its_phases_on_the_cpu(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The GPU script's code path, on the CPU (its figures mean nothing here)."""
    result = gpu_benchmark(tmp_path, samples=16, size=18, batch_size=8, epochs=1,
                           model="googlenet", device="cpu", devices=[1], progress=False)
    for phase in ("ceiling", "resident", "stream"):
        assert result[phase]["timed_samples"] == 16 and result[phase]["samples_per_s"] > 0
    assert result["stream"]["fraction"] == pytest.approx(
        result["stream"]["samples_per_s"] / result["ceiling"]["samples_per_s"])
    assert result["scaling"][1]["efficiency"] == pytest.approx(1.0)
    assert "of the ceiling" in format_gpu_benchmark(result)
    store = Store(tmp_path / "gpu-store")
    assert store.kind == "cben" and store.arrays["s2_60m"].shape == (16, 2, 3, 3)
    if not torch.cuda.is_available():
        assert main(["perf", "gpu", "--workdir", str(tmp_path)]) == 2
        assert "needs a CUDA device" in capsys.readouterr().err
    assert main(["perf", "gpu", "--workdir", str(tmp_path), "--device", "cpu", "--devices",
                 "1,x"]) == 2
