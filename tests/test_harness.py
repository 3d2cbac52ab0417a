"""The harness end to end: specs, the method registry, the runner, results, resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_store
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import accuracy_score, cohen_kappa_score
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import describe_device
from cloudbench.harness.methods import METHODS, FitContext, Method, discover, register
from cloudbench.harness.runner import run_leaderboard
from cloudbench.harness.spec import expand, load_spec
from cloudbench.store import Store


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail: bool = False


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["image_s1"])


@register
class SarProbe(Method):
    """A method defined in a test file: the engine and runner are not touched to add it."""

    name = "test-sar-probe"
    modalities = ("s1",)
    Params = ProbeParams

    def fit(self, context: FitContext) -> None:
        self.engine = context.engine
        channels = context.labeled.inputs["image_s1"].shape[1]
        self.model = nn.Sequential(nn.Conv2d(channels, 8, 3), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(8, context.num_classes)).to(self.engine.device)

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            if self.params.fail:  # type: ignore[attr-defined]
                raise RuntimeError("killed mid-fit")
            return {"loss": F.cross_entropy(_forward(model, batch), batch["label"])}

        self.engine.fit(self.model, context.labeled.inputs, loss, context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, _forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, _forward


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    classes = ("Forest", "Water", "Urban/Built-up")
    return {
        "target": make_store(root / "target", n=90, size=32, classes=classes, seed=1),
        "source": make_store(root / "source", n=60, size=32, classes=classes, seed=2),
    }


def _spec(tmp: Path, stores: dict[str, Path], **changes: object) -> Path:
    spec = {
        "name": "unit",
        "datasets": {"fixture": {"path": str(stores["target"])}},
        "sources": {"fixture-source": {"path": str(stores["source"]),
                                       "train": {"epochs": 1, "batch_size": 16}}},
        "methods": [
            {"method": "test-sar-probe", "train": {"epochs": 2, "batch_size": 16}},
            {"method": "finetune-optical", "train": {"epochs": 3, "augment": False}},
        ],
        "seeds": [0, 1],
        "labeled_per_class": 5,
        "bootstrap": 20,
        "device": "cpu",
        **changes,
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def finished(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lb")
    out = tmp / "out"
    run_leaderboard(load_spec(_spec(tmp, stores)), out, progress=False)
    return out


def test_methods_are_discovered_from_the_packages() -> None:
    methods = discover()
    assert {"finetune-optical", "sl", "test-sar-probe"} <= set(methods)
    assert METHODS["sl"].modalities == ("s2", "s1")


def test_expand_is_every_combination_with_stable_keys(stores, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, stores))
    runs = expand(spec)
    assert len(runs) == 1 * 1 * 2 * 2
    assert len({r.key for r in runs}) == len(runs)
    assert [r.key for r in expand(load_spec(_spec(tmp_path, stores)))] == [r.key for r in runs]
    faster = load_spec(_spec(tmp_path, stores, train={"lr": 0.5}))
    assert {r.key for r in expand(faster)}.isdisjoint(r.key for r in runs)


def test_results_hold_every_metric_stratum_and_profile_row(finished: Path) -> None:
    table = results.read_table(finished)
    assert table.groupby(["method", "seed"]).ngroups == 4
    for (_, _), run in table.groupby(["method", "seed"]):
        assert run["run"].nunique() == 1
        metrics = run[run["kind"] == "metric"]
        overall = metrics[metrics["stratum"] == "all"]
        assert {"OA", "AA", "Kappa", "acc/Forest", "acc/Water"} <= set(overall["metric"])
        assert {"state=clear"} <= set(metrics["stratum"])
        profile = run[run["kind"] == "profile"].set_index("metric")["value"]
        assert profile["parameters"] > 0 and profile["gflops"] > 0
        assert profile["train_samples_per_second"] > 0
        assert profile["train_seconds_per_epoch"] > 0
        assert run["git_revision"].iloc[0]
        assert run["device"].iloc[0] == describe_device(torch.device("cpu"))
    assert not table.duplicated(["run", "metric", "stratum"]).any()


def test_metrics_agree_with_the_saved_predictions(finished: Path, stores) -> None:
    table = results.read_table(finished)
    samples = Store(stores["target"]).samples.set_index("id")
    for key, run in table.groupby("run"):
        predictions = pd.read_parquet(results.run_dir(finished, key) / "predictions.parquet")
        scores = predictions.filter(like="score_").to_numpy()
        truth = samples.loc[predictions["id"], "label"].to_numpy(dtype=int)
        assert set(predictions["id"]) == set(samples.index[samples["split"] == "test"])
        overall = run[(run["stratum"] == "all")].set_index("metric")["value"]
        assert overall["OA"] == pytest.approx(accuracy_score(truth, scores.argmax(1)))
        assert overall["Kappa"] == pytest.approx(
            cohen_kappa_score(truth, scores.argmax(1)), nan_ok=True)


def test_histories_log_every_epoch(finished: Path) -> None:
    history = results.read_histories(finished)
    probe = history[(history["method"] == "test-sar-probe") & (history["term"] == "loss")]
    assert sorted(probe.groupby("seed")["epoch"].apply(list).iloc[0]) == [1, 2]
    head = history[history["method"] == "finetune-optical"]
    assert set(head["stage"]) == {"head"}


def test_rendered_leaderboard(finished: Path) -> None:
    markdown = (finished / "leaderboard.md").read_text()
    assert "test-sar-probe" in markdown and "finetune-optical" in markdown
    assert (finished / "leaderboard.html").is_file()
    assert (finished / "bars_OA.png").is_file()


def test_rerun_skips_finished_runs_and_completes_missing_ones(
    finished: Path, stores, tmp_path: Path
) -> None:
    before = results.read_table(finished)
    victim = sorted(before["run"].unique())[0]
    (results.results_dir(finished) / f"{victim}.parquet").unlink()
    summary = run_leaderboard(load_spec(_spec(tmp_path, stores)), finished, progress=False)
    assert (summary.runs, summary.skipped) == (1, 3)
    after = results.read_table(finished)
    assert len(after) == len(before)
    assert not after.duplicated(["run", "metric", "stratum"]).any()
    again = run_leaderboard(load_spec(_spec(tmp_path, stores)), finished, progress=False)
    assert again.runs == 0


def test_a_failed_run_leaves_no_partial_row(stores, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path, stores, methods=[
        {"method": "test-sar-probe", "train": {"epochs": 1}},
        {"method": "test-sar-probe", "name": "failing-probe", "params": {"fail": True},
         "train": {"epochs": 1}},
    ], seeds=[0])
    with pytest.raises(RuntimeError, match="killed mid-fit"):
        run_leaderboard(load_spec(spec), out, progress=False)
    table = results.read_table(out)
    assert table["run"].nunique() == 1
    assert not list(results.results_dir(out).glob(".tmp-*"))


def test_spec_errors_name_the_field(stores, tmp_path: Path) -> None:
    with pytest.raises(CloudbenchError, match="unknown method 'nope'; available: .*sl"):
        load_spec(_spec(tmp_path, stores, methods=[{"method": "nope"}]))
    with pytest.raises(CloudbenchError, match=r"metrics\.0: Input should be 'OA', 'AA'"):
        load_spec(_spec(tmp_path, stores, metrics=["accuracy"]))
    with pytest.raises(CloudbenchError, match="exactly one of 'path'"):
        load_spec(_spec(tmp_path, stores, datasets={"x": {"path": "a", "recipe": "demo"}}))
    with pytest.raises(CloudbenchError, match="seedz: unknown setting"):
        load_spec(_spec(tmp_path, stores, seedz=[1]))
    with pytest.raises(CloudbenchError, match="no catalog file leaderboards/nosuch.yaml"):
        load_spec("nosuch")


def test_method_parameters_are_validated(stores, tmp_path: Path) -> None:
    spec = _spec(tmp_path, stores, methods=[{"method": "sl", "params": {"fusion": "late"}}],
                 seeds=[0])
    with pytest.raises(CloudbenchError, match="fusion: Input should be 'two-stream' or 'early'"):
        run_leaderboard(load_spec(spec), tmp_path / "out", progress=False)


def test_cli(stores, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _spec(tmp_path, stores, methods=[{"method": "test-sar-probe",
                                             "train": {"epochs": 1}}], seeds=[0])
    assert main(["leaderboard", "run", str(spec), "--out", str(tmp_path / "o")]) == 0
    assert "1 runs" in capsys.readouterr().out
    assert main(["leaderboard", "show", str(tmp_path / "o")]) == 0
    assert main(["leaderboard", "show", str(tmp_path / "missing")]) == 2
    assert "holds no leaderboard results" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseeds: [1\n")
    assert main(["leaderboard", "run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_demo_spec_is_valid() -> None:
    spec = load_spec("demo")
    assert {m.method for m in spec.methods} == {"finetune-optical", "sl"}
    assert np.prod([len(spec.seeds), len(spec.methods)]) == len(expand(spec))


def test_dask_fan_out_gives_the_serial_results(finished: Path, stores, tmp_path: Path) -> None:
    from distributed import LocalCluster

    probe = {"method": "test-sar-probe", "train": {"epochs": 2, "batch_size": 16}}
    spec = load_spec(_spec(tmp_path, stores, methods=[probe]))  # the same runs as `finished`
    out = tmp_path / "dask"
    # One run at a time per worker: model initialisation draws from torch's global RNG.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        run_leaderboard(spec, out, scheduler=cluster.scheduler_address, progress=False)
    dask = results.read_table(out)
    serial = results.read_table(finished)
    serial = serial[serial["run"].isin(dask["run"])]
    assert dask["run"].nunique() == 2 and serial["run"].nunique() == 2
    key = ["run", "metric", "stratum"]
    merged = dask[dask["kind"] == "metric"].merge(serial[serial["kind"] == "metric"], on=key)
    assert len(merged) == (dask["kind"] == "metric").sum()
    np.testing.assert_allclose(merged["value_x"], merged["value_y"])


def test_sweep_builds_one_dataset_per_value(tmp_path: Path) -> None:
    spec = {
        "name": "sweep",
        "datasets": {"tiny": {"recipe": "demo", "set": {"world_size": 256, "tile_size": 128}}},
        "sources": {"unused": {"path": str(tmp_path)}},
        "methods": [{"method": "test-sar-probe", "train": {"epochs": 1}}],
        "labeled_per_class": 2, "bootstrap": 0, "device": "cpu",
        "sweep": {"parameter": "max_acquisitions", "values": [1, 2]},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    run_leaderboard(load_spec(path), out, progress=False)
    table = results.read_table(out)
    assert sorted(table["sweep"].unique()) == ["max_acquisitions=1", "max_acquisitions=2"]
    sizes = {v: len(Store(out / "datasets" / f"tiny-max_acquisitions-{v}")) for v in (1, 2)}
    assert sizes[2] > sizes[1] > 0
    assert (out / "metric_vs_max_acquisitions.png").is_file()


def test_bad_device_is_refused(stores, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = _spec(tmp_path, stores)
    assert main(["leaderboard", "run", str(spec), "--device", "gpu0"]) == 2
    assert "'gpu0' is not a device; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    with pytest.raises(CloudbenchError, match="device: Value error, 'tpu' is not a device"):
        load_spec(_spec(tmp_path, stores, device="tpu"))


def test_training_speed_covers_every_stage_without_warm_up() -> None:
    from cloudbench.harness.runner import training_speed

    history = []
    for stage, epochs in (("a", [(1, 10.0, 5.0), (2, 2.0, 50.0), (3, 4.0, 25.0)]),
                          ("b", [(1, 1.0, 100.0)])):
        for epoch, seconds, speed in epochs:
            history += [{"stage": stage, "epoch": epoch, "term": "seconds", "value": seconds},
                        {"stage": stage, "epoch": epoch, "term": "samples_per_second",
                         "value": speed},
                        {"stage": stage, "epoch": epoch, "term": "loss", "value": 1.0}]
    speed, per_epoch = training_speed(history)
    # a: epochs 2-3 (100 + 100 samples in 6 s, 3 s per epoch); b: its only epoch (100 in 1 s)
    assert speed == pytest.approx(300 / 7)
    assert per_epoch == pytest.approx(3.0 + 1.0)
    assert all(np.isnan(training_speed([])))


def test_a_folder_named_like_a_spec_does_not_shadow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. the output of an earlier `cloudbench demo --out demo`
    assert load_spec("demo").name == "demo"
    with pytest.raises(CloudbenchError, match="no leaderboard spec at missing.yaml"):
        load_spec("missing.yaml")
