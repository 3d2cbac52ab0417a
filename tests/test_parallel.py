"""Data parallelism through Lightning Fabric, on the CPU with 2 processes (gloo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from conftest import make_store
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.cli import main
from cloudbench.harness import results
from cloudbench.harness.engine import Engine, TrainConfig, end_process_group, shard
from cloudbench.harness.runner import run_leaderboard
from cloudbench.harness.spec import load_spec

N = 23  # odd: the processes' shares differ, and the last batch is partial


def data() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"image_s2": torch.randn(N, 3, 8, 8, generator=generator),
            "label": torch.randint(0, 4, (N,), generator=generator)}


def model() -> nn.Module:
    """No batch norm: data-parallel training then matches one process up to rounding."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.0),
                         nn.Linear(4 * 6 * 6, 4))


def loss(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"loss": F.cross_entropy(net(batch["image_s2"]), batch["label"])}


def forward(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return net(batch["image_s2"])


CONFIG = TrainConfig(epochs=3, batch_size=8, lr=0.1, amp="off")


def _fit_in_each_process(fabric: Fabric, weights: dict[str, Tensor]) -> dict[str, Any]:
    engine = Engine(fabric=fabric, seed=0)
    net = model()
    try:
        history = engine.fit(net, data(), loss, CONFIG)
        fixed = model()
        fixed.load_state_dict(weights)
        predicted = engine.predict(fixed, data(), forward, batch_size=5)
    finally:
        end_process_group()
    # numpy, not tensors: tensors would travel back by shared memory the process frees
    return {"state": {k: v.numpy() for k, v in net.state_dict().items()}, "history": history,
            "fixed": predicted.numpy()}


def test_shard_cuts_each_batch_into_consecutive_parts() -> None:
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3])
    local, bounds, shares = shard(order, [(0, 4), (4, 7)], rank=1, world=2)
    assert local.tolist() == [7, 6, 3] and bounds == [(0, 2), (2, 3)]
    assert shares == [(2, 4), (2, 3)]
    first, _, first_shares = shard(order, [(0, 4), (4, 7)], rank=0, world=2)
    assert sorted(first.tolist() + local.tolist()) == sorted(order.tolist())  # no duplicate
    assert first_shares == [(0, 4), (0, 3)]


def test_two_processes_train_like_one_and_predict_every_sample_once() -> None:
    reference = model()
    single = Engine("cpu", seed=0)
    history = single.fit(reference, data(), loss, CONFIG)
    weights = {k: v.clone() for k, v in reference.state_dict().items()}
    expected = single.predict(reference, data(), forward, batch_size=5)

    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    out = fabric.launch(_fit_in_each_process, weights)
    # the same model predicted in two processes: every sample once, in order (to rounding: each
    # process's batches hold other samples, and CPU kernels may differ by batch composition)
    assert out["fixed"].shape == (N, 4)
    torch.testing.assert_close(torch.from_numpy(out["fixed"]), expected, rtol=1e-5, atol=1e-6)
    # the whole batch's gradient and loss: one process's run, up to float rounding
    for name, value in out["state"].items():
        assert torch.allclose(torch.from_numpy(value), weights[name], rtol=1e-4, atol=1e-5), name
    for ours, theirs in zip(out["history"], history, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def spec_file(tmp_path: Path, root: Path, **train: Any) -> Path:
    spec = {
        "name": "parallel", "datasets": {"toy": {"path": str(root)}},
        "sources": {"none": {"path": str(root)}}, "methods": [{"method": "sl"}],
        "seeds": [0], "labeled_per_class": 4, "bootstrap": 0, "device": "cpu",
        "train": {"epochs": 1, "batch_size": 8, **train},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_killed_two_process_run_resumes_and_scores_each_test_sample_once(
    tmp_path: Path,
) -> None:
    """A real kill of the launcher and its workers mid-training; the re-run keeps the epochs
    the checkpoint holds, trains only the rest, and scores the test split once."""
    root = make_store(tmp_path / "ds", n=30, signal=True)
    epochs = 6
    path = spec_file(tmp_path, root, epochs=epochs, checkpoint_every=1)
    out = tmp_path / "lb"
    command = [sys.executable, "-m", "cloudbench.cli", "leaderboard", "run", str(path),
               "--out", str(out), "--devices", "2"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            found = list(out.glob("runs/*/checkpoints/fit-01.pt"))
            if found:
                state = torch.load(found[0], weights_only=True)
                if state["epoch"] >= 2:
                    checkpoint = found[0]
                    break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert checkpoint is not None, "the run never wrote a checkpoint of two epochs"
    assert not results.read_table(out).shape[0], "the run finished before it was killed"
    kept = torch.load(checkpoint, weights_only=True)["history"]
    assert 2 <= len(kept) < epochs

    run_leaderboard(load_spec(path, ["devices=2"]), out, progress=False)
    history = results.read_histories(out)
    seconds = history[(history["stage"] == "target") & (history["term"] == "seconds")]
    assert seconds["epoch"].tolist() == list(range(1, epochs + 1))
    assert seconds["value"].tolist()[:len(kept)] == [h["seconds"] for h in kept]

    table = results.read_table(out)
    rows = table[(table["metric"] == "OA") & (table["stratum"] == "all")]
    assert len(rows) == 1 and int(rows["n"].iloc[0]) == 6  # the 6 test samples, no padding
    assert rows["device"].iloc[0].endswith("× 2")
    run = results.run_dir(out, rows["run"].iloc[0])
    ids = pd.read_parquet(run / "predictions.parquet")["id"]
    assert ids.is_unique and len(ids) == 6
    assert not (run / "checkpoints").exists()


def test_devices_that_do_not_exist_are_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = make_store(tmp_path / "ds", n=12)
    path = spec_file(tmp_path, root)
    if not torch.cuda.is_available():
        assert main(["leaderboard", "run", str(path), "--device", "auto", "--devices", "4"]) == 2
        assert "asks for 4 GPUs per machine, but this one has 0" in capsys.readouterr().err
    assert main(["leaderboard", "run", str(path), "--devices", "2", "--workers", "2",
                 "--out", str(tmp_path / "lb")]) == 2
    assert "run the runs one at a time" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()
