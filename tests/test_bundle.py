"""Results bundles (write, read, compare) and the cost rows of a method's whole pipeline."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_store
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.bundle import (
    ONLY_A,
    ONLY_B,
    compare,
    comparison_markdown,
    read_bundle,
    spec_hash,
)
from cloudbench.harness.cost import cost_rows
from cloudbench.harness.data import SplitData
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.runner import run_leaderboard
from cloudbench.harness.spec import load_spec

PROBE = {"sleep": 0.0, "fail_predict": False}
"""How the probe behaves, outside its parameters (so that a run keeps its key): seconds to
sleep per training batch, and whether ``predict`` fails."""


class CostParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mask: bool = False


@register
class CostProbe(Method):
    """A SAR probe whose network also reads the cloud mask when ``mask`` is set."""

    name = "test-cost-probe"
    modalities = ("s1",)
    Params = CostParams

    def __init__(self, params: BaseModel) -> None:
        super().__init__(params)
        self.reads_cloud_mask = params.mask  # type: ignore[attr-defined]

    def _forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        parts = [batch["image_s1"]]
        if self.reads_cloud_mask:
            parts.append(batch["cloud_mask"].unsqueeze(1).float())
        return model(torch.cat(parts, dim=1))

    def fit(self, context: FitContext) -> None:
        self.engine = context.engine
        channels = context.labeled.inputs["image_s1"].shape[1] + self.reads_cloud_mask
        self.model = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(4, context.num_classes))

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            time.sleep(PROBE["sleep"])
            return {"loss": F.cross_entropy(self._forward(model, batch), batch["label"])}

        self.engine.fit(self.model, context.labeled.inputs, loss, context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        if PROBE["fail_predict"]:
            raise RuntimeError("stopped after fit")
        return self.engine.predict(self.model, split.inputs, self._forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, self._forward


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle-stores")
    target = make_store(root / "target", n=60, size=32, seed=1)
    source = make_store(root / "source", n=30, size=16, seed=2)
    spec = {
        "name": "bundle-unit",
        "datasets": {"fixture": {"path": str(target)}},
        "sources": {"fixture-source": {"path": str(source)}},
        "methods": [{"method": "test-cost-probe"},
                    {"method": "test-cost-probe", "name": "mask-probe",
                     "params": {"mask": True}}],
        "train": {"epochs": 2, "batch_size": 16},
        "seeds": [0, 1], "labeled_per_class": 5, "bootstrap": 0, "device": "cpu",
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def bundle_a(spec_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle-a") / "out"
    run_leaderboard(load_spec(spec_path, ["train.epochs=3"]), out, progress=False)
    return out


def _hand_made_b(a: Path, where: Path) -> Path:
    """A copy of bundle A's files, its results changed: mask-probe's OA + 0.1, the first
    method's rows dropped under a new name (only in B; the old name only in A), and the
    target store's fingerprint another."""
    b = where / "b"
    b.mkdir()
    for name in ("bundle.json", "spec.yaml"):
        shutil.copy(a / name, b / name)
    table = pd.read_parquet(a / "results.parquet")
    oa = (table["method"] == "mask-probe") & (table["metric"] == "OA")
    table.loc[oa, "value"] += 0.1
    table.loc[table["method"] == "test-cost-probe", "method"] = "renamed-probe"
    table.to_parquet(b / "results.parquet", index=False)
    meta = json.loads((b / "bundle.json").read_text())
    meta["datasets"][0]["sha256"] = "0" * 64
    (b / "bundle.json").write_text(json.dumps(meta))
    return b


def test_cost_rows_add_up() -> None:
    rows = {r["metric"]: r["value"] for r in cost_rows(10.0, 2.0, 4, cloud_mask_seconds=3.0)}
    assert rows == {"train_seconds": 10.0, "predict_seconds": 2.0, "cloud_mask_seconds": 3.0,
                    "pipeline_seconds": 15.0, "device_hours": pytest.approx(12.0 * 4 / 3600)}
    plain = {r["metric"]: r["value"] for r in cost_rows(10.0, 2.0, 1)}
    assert "cloud_mask_seconds" not in plain and plain["pipeline_seconds"] == 12.0


def test_a_run_records_the_cost_of_its_whole_pipeline(bundle_a: Path) -> None:
    table = results.read_table(bundle_a)
    history = results.read_histories(bundle_a)
    assert table["run"].nunique() == 4
    for key, run in table.groupby("run"):
        cost = run[run["kind"] == "profile"].set_index("metric")["value"]
        masked = run["method"].iloc[0] == "mask-probe"
        epochs = history[(history["run"] == key) & (history["term"] == "seconds")]["value"]
        assert len(epochs) == 3
        assert cost["train_seconds"] >= epochs.sum() > 0  # every epoch, and what is around them
        assert cost["predict_seconds"] > 0
        assert cost["train_seconds"] + cost["predict_seconds"] <= run["wall_seconds"].iloc[0]
        assert ("cloud_mask_seconds" in cost) == masked
        mask = cost.get("cloud_mask_seconds", 0.0)
        if masked:  # 12 test images of 32 x 32 pixels through s2cloudless: milliseconds each
            assert 12 * 1e-4 < mask < 12 * 1.0
        assert cost["pipeline_seconds"] == pytest.approx(
            cost["train_seconds"] + cost["predict_seconds"] + mask)
        assert cost["device_hours"] == pytest.approx(
            (cost["train_seconds"] + cost["predict_seconds"]) * 1 / 3600)
        assert cost["peak_memory_bytes"] > 2**20


def test_a_resumed_run_counts_the_epochs_done_before_it_stopped(
    spec_path: Path, tmp_path: Path
) -> None:
    spec = load_spec(spec_path, ["seeds=[0]", "train.checkpoint_every=1",
                                 "methods=[{method: test-cost-probe}]"])
    out = tmp_path / "out"
    PROBE.update(sleep=0.05, fail_predict=True)  # 2 epochs of one batch: 0.1 s of training
    try:
        with pytest.raises(RuntimeError, match="stopped after fit"):
            run_leaderboard(spec, out, progress=False)
        PROBE["fail_predict"] = False
        run_leaderboard(spec, out, progress=False)  # the fit's checkpoint: returns at once
    finally:
        PROBE.update(sleep=0.0, fail_predict=False)
    table = results.read_table(out)
    cost = table[table["kind"] == "profile"].set_index("metric")["value"]
    history = results.read_histories(out)
    epochs = history[history["term"] == "seconds"]["value"]
    assert len(epochs) == 2 and epochs.sum() >= 0.1
    assert cost["train_seconds"] >= epochs.sum()


def test_the_bundle_round_trips(bundle_a: Path, spec_path: Path) -> None:
    bundle = read_bundle(bundle_a)
    table = results.read_table(bundle_a)
    pd.testing.assert_frame_equal(bundle.results, table, check_dtype=False)
    csv = pd.read_csv(bundle_a / "results.csv")
    pd.testing.assert_frame_equal(csv, bundle.results.replace("", np.nan), check_dtype=False)
    meta = bundle.meta
    assert meta["runs"] == 4 and meta["rows"] == len(table)
    assert meta["git_revision"] == table["git_revision"].iloc[0]
    assert meta["cloudbench"] != "unknown" and meta["python"].startswith("3.")
    assert meta["torch"] == torch.__version__
    spec = load_spec(spec_path, ["train.epochs=3"])
    target, source = spec.datasets["fixture"].path, spec.sources["fixture-source"].path
    assert target is not None and source is not None
    stores = {("dataset", "fixture"): target, ("source", "fixture-source"): source}
    assert {(d["role"], d["name"]) for d in meta["datasets"]} == set(stores)
    for entry in meta["datasets"]:
        root = stores[(entry["role"], entry["name"])]
        assert entry["path"] == str(root) and entry["file"] == "dataset.json"
        assert entry["sha256"] == hashlib.sha256((root / "dataset.json").read_bytes()).hexdigest()
    assert load_spec(bundle_a / "spec.yaml") == spec  # as run: --set applied
    moved = spec.model_dump(mode="json")
    moved["datasets"]["fixture"]["path"] = "/elsewhere/target"
    assert spec_hash(moved) == meta["spec_hash"]  # where a store is is no part of the spec


def test_compare_puts_two_bundles_side_by_side(bundle_a: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    b = _hand_made_b(bundle_a, tmp_path)
    table = compare(read_bundle(bundle_a), read_bundle(b))
    assert set(table["stratum"]) == {"all"}
    assert set(compare(read_bundle(bundle_a), read_bundle(b), strata=True)["stratum"]) > {"all"}
    rows = table.set_index(["method", "metric"])
    per_seed = results.read_table(bundle_a)
    per_seed = per_seed[(per_seed["method"] == "mask-probe") & (per_seed["metric"] == "OA")
                        & (per_seed["stratum"] == "all")]["value"]
    oa = rows.loc[("mask-probe", "OA")]
    assert (oa["a_mean"], oa["a_std"], oa["a_seeds"]) == (
        pytest.approx(per_seed.mean()), pytest.approx(per_seed.std(ddof=1)), 2)
    assert oa["difference"] == pytest.approx(0.1) and oa["present"] == "both"
    assert rows.loc[("mask-probe", "Kappa"), "difference"] == 0
    assert set(rows.loc["test-cost-probe", "present"]) == {ONLY_A}
    assert set(rows.loc["renamed-probe", "present"]) == {ONLY_B}
    assert rows.loc["renamed-probe", "difference"].isna().all()

    csv = tmp_path / "compare.csv"
    assert main(["leaderboard", "compare", str(bundle_a), str(b), "--out", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "Datasets differ: dataset fixture (A " in out and "000000000000)" in out
    assert "| spec hash |" in out and "Spec: the same" in out
    assert "| fixture | fixture | fixture-source | mask-probe | OA | all |" in out
    assert "| +0.1 |" in out
    assert f"| {ONLY_A} |" in out and f"| {ONLY_B} |" in out
    written = pd.read_csv(csv)
    assert len(written) == len(table)
    np.testing.assert_allclose(written["difference"], table["difference"].astype(float))
    same = comparison_markdown(read_bundle(bundle_a), read_bundle(bundle_a),
                               compare(read_bundle(bundle_a), read_bundle(bundle_a)))
    assert "Datasets: the same" in same and ONLY_A not in same


def test_show_with_the_spec_rewrites_the_bundle(bundle_a: Path) -> None:
    (bundle_a / "results.csv").unlink()
    assert main(["leaderboard", "show", str(bundle_a), "--spec",
                 str(bundle_a / "spec.yaml")]) == 0
    assert len(pd.read_csv(bundle_a / "results.csv")) == read_bundle(bundle_a).meta["rows"]


def test_a_folder_that_is_no_bundle_is_refused(bundle_a: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "results").mkdir()  # a results folder, but no bundle
    assert main(["leaderboard", "compare", str(bundle_a), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line] == [
        f"error: {tmp_path} is not a results bundle: it has no bundle.json "
        "(`cloudbench leaderboard run` writes one into its output folder)"]
    (tmp_path / "bundle.json").write_text('{"format": "something else"}')
    with pytest.raises(CloudbenchError, match="is not a cloudbench results bundle"):
        read_bundle(tmp_path)
