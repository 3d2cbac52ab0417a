"""Streaming from the store: stored columns, resident vs streamed training, placement."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import L2A_BANDS, grouped_store, make_store
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.datasets import CBEN
from cloudbench.errors import CloudbenchError
from cloudbench.harness import stream
from cloudbench.harness.data import load_split, load_target, place, standardise
from cloudbench.harness.engine import Engine, TrainConfig, epoch_order
from cloudbench.harness.stream import Batches, Stored

SAR = ("VV", "VH", "VV/VH")


@pytest.fixture(scope="module")
def cben(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 CBEN-shaped samples (native 10/20/60 m groups), 24 of them train."""
    return grouped_store(tmp_path_factory.mktemp("stream") / "cben", "cben", n=72)


def train_split(root: Path):  # noqa: ANN201 (a SplitData)
    split = load_split(root, "train", optical=L2A_BANDS, sar=SAR, labeled_per_class=0, seed=0)
    standardise([split], [split])
    return split


class Tiny(nn.Module):
    """Both views through conv, batch norm and dropout, one multi-label head."""

    def __init__(self, classes: int = 19) -> None:
        super().__init__()
        self.s2 = nn.Sequential(nn.Conv2d(12, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.s1 = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, classes))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        a = self.s2(batch["image_s2"]).mean((2, 3))
        b = self.s1(batch["image_s1"]).mean((2, 3))
        return self.head(torch.cat([a, b], 1))


def bce(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"loss": F.binary_cross_entropy_with_logits(model(batch), batch["label"].float())}


def test_stored_columns_decode_exactly_as_the_dataset_reads(cben: Path) -> None:
    split = load_split(cben, "train", optical=L2A_BANDS, sar=SAR, labeled_per_class=0, seed=0)
    expected = CBEN(cben, split="train", bands=(*L2A_BANDS, *SAR)).to_tensors()
    s2, s1, mask = (split.inputs[k] for k in ("image_s2", "image_s1", "cloud_mask"))
    assert isinstance(s2, Stored) and s2.shape == (24, 12, 12, 12)
    assert s2.wire_bytes == (4 * 144 + 6 * 36 + 2 * 4) * 2  # uint16 at native sizes
    assert s2.sample_bytes == 12 * 144 * 4  # float32 on s2's grid
    for key, column in (("image_s2", s2), ("image_s1", s1), ("cloud_mask", mask)):
        assert isinstance(column, Stored)
        assert torch.equal(column.materialise(torch.device("cpu")), expected[key])
    assert torch.equal(split.labels, expected["label"])
    # a shuffled read is the same rows in that order
    order = np.array([5, 0, 23, 5, 11])
    blocks = [torch.from_numpy(b) for b in s2.read(order)]
    assert torch.equal(s2.decode(blocks), expected["image_s2"][order])


def test_standardisation_matches_the_statistics_of_the_decoded_pixels(cben: Path) -> None:
    split = train_split(cben)
    raw = CBEN(cben, split="train", bands=(*L2A_BANDS, *SAR)).to_tensors()
    s1 = raw["image_s1"].double().transpose(0, 1).reshape(3, -1)
    column = split.inputs["image_s1"]
    assert isinstance(column, Stored) and column.mean is not None and column.std is not None
    assert torch.allclose(column.mean.double(), s1.mean(1), rtol=1e-6)
    assert torch.allclose(column.std.double(), s1.std(1), rtol=1e-6)
    # optical statistics: cloud-free pixels only
    clear = raw["cloud_mask"].reshape(-1) == 0
    s2 = raw["image_s2"].double().transpose(0, 1).reshape(12, -1)[:, clear]
    optical = split.inputs["image_s2"]
    assert isinstance(optical, Stored) and optical.mean is not None
    assert torch.allclose(optical.mean.double(), s2.mean(1), rtol=1e-6)


@pytest.mark.parametrize("shuffle_block", [1, 5])
def test_streamed_and_resident_training_give_bitwise_identical_weights(
    cben: Path, shuffle_block: int
) -> None:
    """The acceptance test: a split streamed past a memory budget trains to exactly the
    weights of the same split resident (augmentation, dropout and batch norm included)."""
    config = TrainConfig(epochs=2, batch_size=7, lr=0.05, shuffle_block=shuffle_block,
                         prefetch=1)
    streamed, held = train_split(cben), train_split(cben)
    held.inputs = stream.resident(held.inputs, torch.device("cpu"))
    assert stream.is_stored(streamed.inputs) and not stream.is_stored(held.inputs)
    torch.manual_seed(0)
    first = Tiny()
    second = copy.deepcopy(first)
    engine = Engine("cpu", seed=3)
    history_a = engine.fit(first, streamed.inputs, bce, config)
    history_b = engine.fit(second, held.inputs, bce, config)
    assert [h["loss"] for h in history_a] == [h["loss"] for h in history_b]
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    forward = lambda m, b: m(b)  # noqa: E731
    assert torch.equal(engine.predict(first, streamed.inputs, forward, batch_size=5),
                       engine.predict(first, held.inputs, forward, batch_size=5))


def test_epoch_order_shuffles_blocks_of_consecutive_samples() -> None:
    order = epoch_order(10, seed=0, epoch=0, shuffle_block=4)
    assert sorted(order.tolist()) == list(range(10))
    runs = [order[i:i + 4].tolist() for i in range(0, 10, 4)]
    starts = {0: [0, 1, 2, 3], 4: [4, 5, 6, 7], 8: [8, 9]}
    blocks = [starts[run[0]] for run in runs if len(run) == len(starts[run[0]])]
    assert len(blocks) >= 2  # whole blocks stay together
    assert torch.equal(epoch_order(10, 0, 0), epoch_order(10, 0, 0))
    assert not torch.equal(epoch_order(10, 0, 0), epoch_order(10, 0, 1))


def test_batches_read_ahead_in_order(cben: Path) -> None:
    split = train_split(cben)
    reads: list[list[int]] = []
    column = split.inputs["image_s2"]
    assert isinstance(column, Stored)
    original = Stored.read

    def spy(self: Stored, positions: np.ndarray) -> list[np.ndarray]:
        reads.append(positions.tolist())
        return original(self, positions)

    order = torch.tensor([3, 1, 4, 0, 5, 9, 2, 6])
    bounds = [(0, 3), (3, 6), (6, 8)]
    try:
        Stored.read = spy  # type: ignore[method-assign]
        batches = list(Batches(split.inputs, torch.device("cpu"), prefetch=2)(order, bounds))
    finally:
        Stored.read = original  # type: ignore[method-assign]
    resident = stream.resident(split.inputs, torch.device("cpu"))
    for (first, stop), batch in zip(bounds, batches, strict=True):
        for key, value in resident.items():
            assert torch.equal(batch[key], value[order[first:stop]]), key
    assert reads[::3] == [[3, 1, 4], [0, 5, 9], [2, 6]]  # image_s2, image_s1, cloud_mask


def test_place_keeps_what_fits_and_streams_the_rest(tmp_path: Path) -> None:
    root = grouped_store(tmp_path / "cben", "cben", n=2400)  # 800 train, 800 test samples
    device = torch.device("cpu")
    sample = (12 + 3) * 144 * 4 + 144 + 19 * 8 + 4  # images, cloud mask, labels, fraction
    part = 800 * sample  # train (labeled + unlabeled) and test alike

    def loaded():  # noqa: ANN202
        return load_target(root, optical=L2A_BANDS, sar=SAR, labeled_per_class=1, seed=0)

    data = loaded()
    roomy = TrainConfig(batch_size=4, prefetch=1, memory_budget_gb=1.0)
    assert place(data, roomy, device) == {"train": "resident", "test": "resident"}
    assert not stream.is_stored(data.unlabeled.inputs)
    # the batches in flight: 1 prefetched + 2, of the prediction batch size (256)
    in_flight = sample * 256 * 3
    # room for one part and the streamed batches: kept smallest first (train on a tie)
    tight = roomy.model_copy(update={"memory_budget_gb": (part + in_flight) / 1e9})
    data = loaded()
    assert place(data, tight, device) == {"train": "resident", "test": "stream"}
    assert not stream.is_stored(data.labeled.inputs)
    assert not stream.is_stored(data.unlabeled.inputs)
    assert stream.is_stored(data.test.inputs)
    assert data.test.labels.device == device  # labels are always tensors
    # room for the batches alone: both parts stream, and train as they would resident
    short = tight.model_copy(update={"memory_budget_gb": (in_flight + 10 * sample) / 1e9})
    streamed = loaded()
    assert place(streamed, short, device) == {"train": "stream", "test": "stream"}
    held = loaded()
    place(held, roomy, device)
    models = [Tiny(), Tiny()]
    models[1].load_state_dict(models[0].state_dict())
    config = TrainConfig(epochs=1, batch_size=64, prefetch=1)
    for net, data in zip(models, (streamed, held), strict=True):
        Engine("cpu", seed=1).fit(net, data.unlabeled.inputs, bce, config)
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(),
                                                  models[1].state_dict().values(), strict=True))
    forced = short.model_copy(update={"data": "resident"})
    assert place(loaded(), forced, device) == {"train": "resident", "test": "resident"}
    # a budget that cannot hold the batches in flight
    small = short.model_copy(update={"memory_budget_gb": (in_flight - 1) / 1e9})
    with pytest.raises(CloudbenchError, match="cannot hold the streamed batches in flight"):
        place(loaded(), small, device)


def test_leaderboard_metrics_are_the_same_streamed_or_resident(tmp_path: Path) -> None:
    """A whole run (SL, two-stream) through the runner gives the same scores either way."""
    import yaml

    from cloudbench.harness import results
    from cloudbench.harness.runner import run_leaderboard
    from cloudbench.harness.spec import load_spec

    root = make_store(tmp_path / "ds", n=30, signal=True)
    tables = {}
    for mode in ("resident", "stream"):
        spec = {
            "name": f"stream-{mode}", "datasets": {"toy": {"path": str(root)}},
            "sources": {"none": {"path": str(root)}},
            "methods": [{"method": "sl"}], "seeds": [0], "labeled_per_class": 4,
            "bootstrap": 0, "device": "cpu",
            "train": {"epochs": 2, "batch_size": 8, "data": mode},
        }
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(spec))
        run_leaderboard(load_spec(path), tmp_path / mode, progress=False)
        table = results.read_table(tmp_path / mode)
        tables[mode] = table[table["kind"] == "metric"].set_index(["stratum", "metric"])["value"]
        assert set(table["data"]) == {f"train={mode} test={mode}"}
    assert tables["stream"].equals(tables["resident"])


def test_a_budget_too_small_to_stream_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from cloudbench.cli import main

    root = make_store(tmp_path / "ds", n=30)
    spec = {"name": "tiny-budget", "datasets": {"toy": {"path": str(root)}},
            "sources": {"none": {"path": str(root)}}, "methods": [{"method": "sl"}],
            "device": "cpu", "train": {"data": "stream", "memory_budget_gb": 1e-6}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["leaderboard", "run", str(path), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert "1e-06 GB of memory budget (method 'sl') cannot hold the streamed batches" in err
    assert "4 batches of 256 samples" in err
    assert not (tmp_path / "lb" / "runs").exists()


def test_labeled_and_unlabeled_stored_columns_pool_as_their_tensors_do(cben: Path) -> None:
    """The transfer methods pool the two train splits (ESCCS, KD-S, KDHN, TLF)."""
    from cloudbench.harness.transfer import UNLABELED, pooled, select

    data = load_target(cben, optical=L2A_BANDS, sar=SAR, labeled_per_class=1, seed=0)
    joined = pooled(data.labeled, data.unlabeled)
    assert isinstance(joined["image_s2"], Stored)
    assert len(joined["image_s2"]) == len(data.labeled) + len(data.unlabeled) == 24
    held = stream.resident(joined, torch.device("cpu"))
    separate = [stream.resident(s.inputs, torch.device("cpu"))
                for s in (data.labeled, data.unlabeled)]
    assert torch.equal(held["image_s2"], torch.cat([p["image_s2"] for p in separate]))
    assert (joined["label"][len(data.labeled):] == UNLABELED).all()
    keep = torch.arange(24) % 3 == 0
    picked = stream.resident(select(joined, keep), torch.device("cpu"))
    assert torch.equal(picked["image_s1"], held["image_s1"][keep])
