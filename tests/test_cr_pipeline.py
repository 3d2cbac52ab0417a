"""The cloud-removal methods through the harness: cloud-removal, cr-then-classify, the guard.

End to end on small synthetic stores (the demo world with its cloud-free target, and a
SEN12MS-CR tree in the real layout); the units, the pair selection and the leakage checks on
hand-made values.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
import yaml

from cloudbench.build import run_build
from cloudbench.builders import builder_module
from cloudbench.cli import main
from cloudbench.config import load_recipe, load_yaml
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.cr_stage import Units, training_pairs
from cloudbench.harness.data import CLEAR_KEY, SplitData
from cloudbench.harness.leakage import find_overlap, sample_scenes
from cloudbench.harness.runner import run_leaderboard
from cloudbench.harness.spec import LeaderboardSpec, load_spec, restrict
from cloudbench.metrics import evaluate
from cloudbench.models.cloud_removal import load_cr_checkpoint
from cloudbench.predictions import read_predictions
from cloudbench.sources.fixtures import write_sen12ms_cr
from cloudbench.store import Store

TINY = {"world_size": 128, "tile_size": 128, "patch_size": 32, "start": "2018-07-26",
        "clear_target": True, "clouds": {"resolution": 40}}
L2A = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
QUICK = {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.01}


def _demo(out: Path, **values: object) -> Path:
    config = load_recipe(builder_module("demo").Config, "demo", [], {**TINY, **values})
    run_build("demo", config, out, workers=1, progress=False)
    return out


# ------------------------------------------------------------------ the smoke spec


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cloud-removal-smoke, two of its entries, fewer epochs."""
    out = tmp_path_factory.mktemp("cr-smoke") / "out"
    spec = load_spec("cloud-removal-smoke", ["methods.1.params.cr_train.epochs=4"])
    spec = restrict(spec, "methods", ["finetune-optical", "uncrtaints-then-classify"])
    run_leaderboard(spec, out, progress=False)
    return out


def test_smoke_rows_carry_pixel_and_classification_metrics(smoke: Path) -> None:
    table = results.read_table(smoke)
    mine = table[(table["method"] == "uncrtaints-then-classify") & (table["kind"] == "metric")]
    strata = mine.groupby("metric")["stratum"].agg(set)
    for metric in ("OA", "AA", "Kappa"):
        assert "all" in strata[metric] and any(s.startswith("state=") for s in strata[metric])
    for metric in ("RMSE", "MAE", "PSNR", "SSIM", "SAM", "UCE", "within_1sigma"):
        assert {"all", "pixels=clear", "pixels=thick"} <= strata[metric]
    overall = mine[mine["stratum"] == "all"].set_index("metric")["value"]
    # PSNR = 20 log10(1 / RMSE) per image, then averaged: by Jensen's inequality (-log is
    # convex) at least 20 log10(1 / mean RMSE)
    assert overall["PSNR"] >= 20 * np.log10(1 / overall["RMSE"]) - 1e-6
    assert 0 < overall["SSIM"] < 1 and overall["SAM"] > 0
    assert overall["scene_overlap"] == 0
    reference = table[(table["method"] == "finetune-optical") & (table["kind"] == "metric")]
    assert "PSNR" not in set(reference["metric"])
    text = (smoke / "leaderboard.md").read_text()
    assert "PSNR (dB)" in text and "uncrtaints-then-classify" in text


def test_smoke_history_and_profile_include_the_cloud_removal_stage(smoke: Path) -> None:
    table = results.read_table(smoke)
    (run,) = table.loc[table["method"] == "uncrtaints-then-classify", "run"].unique()
    history = pd.read_parquet(results.run_dir(smoke, run) / "history.parquet")
    assert {"cloud-removal", "head"} <= set(history["stage"])
    assert (history.query("stage == 'cloud-removal' and term == 'loss'")["epoch"].max() == 4)
    params = table[(table["kind"] == "profile") & (table["metric"] == "parameters")] \
        .set_index("method")["value"]
    # the pipeline's inference model is the network (UnCRtainTS, width 32) plus f_S
    assert params["uncrtaints-then-classify"] > params["finetune-optical"]


def test_smoke_predictions_file_is_scored_by_eval(smoke: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    table = results.read_table(smoke)
    (run,) = table.loc[table["method"] == "uncrtaints-then-classify", "run"].unique()
    path = results.predictions_path(smoke, run)
    dataset = smoke / "datasets" / "synthetic"
    assert main(["eval", str(path), str(dataset), "--bootstrap", "0"]) == 0
    assert "OA" in capsys.readouterr().out
    st = Store(dataset)
    pred = read_predictions(path, st)
    scored = evaluate(st.task, pred.outputs, pred.target, num_classes=len(st.classes),
                      class_names=st.classes, bootstrap=0,
                      cloud_state=pred.cloud_state, cloud_fraction=pred.cloud_fraction)
    mine = table[(table["run"] == run) & (table["kind"] == "metric")]
    for stratum in ("all", "state=thick"):
        ours = mine[mine["stratum"] == stratum].set_index("metric")["value"]
        theirs = scored[scored["stratum"] == stratum].set_index("metric")["value"]
        for metric in ("OA", "AA", "Kappa"):
            assert theirs[metric] == pytest.approx(ours[metric], abs=1e-12)


def test_smoke_keeps_the_trained_model_with_what_it_was_trained_on(smoke: Path) -> None:
    table = results.read_table(smoke)
    (run,) = table.loc[table["method"] == "uncrtaints-then-classify", "run"].unique()
    net, meta = load_cr_checkpoint(results.run_dir(smoke, run) / "cr-model.pt")
    assert net.has_variance and net.s2_bands == 12 and net.s1_bands == 2
    assert meta["optical"] == L2A and meta["loss"] == "mgnll"
    samples = Store(smoke / "datasets" / "synthetic").samples.set_index("id")
    trained = samples.loc[meta["trained_on"]["ids"]]
    assert set(trained["split"]) == {"train"} and (trained["cloud_fraction"] > 0).all()
    assert len(trained) == int(((samples["split"] == "train") & (samples["cloud_fraction"] > 0))
                               .sum())


# ------------------------------------------------------------------ the leakage guard


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-date store to classify and a two-date store of the same world to train the
    cloud-removal model on: the second's train split holds the places of the first's test."""
    root = tmp_path_factory.mktemp("leak")
    return {"target": _demo(root / "target", max_acquisitions=1),
            "other": _demo(root / "other", max_acquisitions=2, start="2018-07-21")}


def _leak_spec(stores: dict[str, Path], **params: object) -> LeaderboardSpec:
    return LeaderboardSpec.model_validate({
        "name": "leak", "datasets": {"target": {"path": stores["target"], "optical": L2A,
                                                "sar": ["VV", "VH"]}},
        "methods": [{"method": "cr-then-classify", "params": {
            "model": "unet", "model_args": {"widths": [8, 16, 16, 16]},
            "cr_store": str(stores["other"]), "cr_train": QUICK,
            "classifier": "sl", **params}}],
        "metrics": ["OA", "PSNR"], "labeled_per_class": 2, "bootstrap": 0, "device": "cpu",
        "train": QUICK,
    })


def test_a_leaking_spec_is_refused_before_training(leaky: dict[str, Path],
                                                    tmp_path: Path) -> None:
    with pytest.raises(CloudbenchError) as error:
        run_leaderboard(_leak_spec(leaky), tmp_path / "out", progress=False)
    message = str(error.value)
    test_ids = set(Store(leaky["target"]).samples.query("split == 'test'")["id"])
    named = [i for i in test_ids if i in message]
    assert named, message
    assert "allow_leakage" in message and str(leaky["other"]) in message
    # the command: one line, exit status 2
    spec = _leak_spec(leaky).model_dump(mode="json", exclude_defaults=True)
    (tmp_path / "leak.yaml").write_text(yaml.safe_dump(spec))
    assert main(["leaderboard", "run", str(tmp_path / "leak.yaml"), "--out",
                 str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "out" / "results").exists() or \
        not list((tmp_path / "out" / "results").glob("*.parquet"))


def test_allow_leakage_runs_and_records_the_overlap(leaky: dict[str, Path],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_leaderboard(_leak_spec(leaky, allow_leakage=True), out, progress=False)
    table = results.read_table(out)
    overlap = table.query("metric == 'scene_overlap'")["value"]
    assert len(overlap) == 1 and overlap.iloc[0] > 0
    assert {"OA", "PSNR"} <= set(table["metric"])


def test_find_overlap_by_scene_and_by_footprint() -> None:
    def table(ids: list[str], boxes: list[tuple[float, float, float, float]],
              **extra: list[str]) -> gpd.GeoDataFrame:
        return gpd.GeoDataFrame(pd.DataFrame({"id": ids, **extra}),
                                geometry=[shapely.box(*b) for b in boxes], crs="EPSG:4326")

    train = table(["a", "b"], [(0, 0, 1, 1), (5, 5, 6, 6)])
    test = table(["touching", "half", "far"], [(1, 0, 2, 1), (5.5, 5, 6.5, 6), (9, 9, 10, 10)])
    found = find_overlap(train, test)
    assert found.samples == ["half"] and found.scenes == [] and found.count == 1
    # scenes: SEN12MS-CR's column against SEN12MS source ids
    cr = table(["x"], [(20, 20, 21, 21)], scene=["ROIs1868_summer_19"])
    sen12ms = table(["y", "z"], [(30, 30, 31, 31), (40, 40, 41, 41)])
    sen12ms["source_ids"] = [["ROIs1868_summer_s1_19_p30", "ROIs1868_summer_s2_19_p30"],
                             ["ROIs1868_summer_s1_190_p1", "ROIs1868_summer_s2_190_p1"]]
    assert list(sample_scenes(sen12ms)) == ["ROIs1868_summer_19", "ROIs1868_summer_190"]
    found = find_overlap(cr, sen12ms)
    assert found.scenes == ["ROIs1868_summer_19"] and found.samples == [] and found.count == 1
    assert sample_scenes(train) is None  # no scene column, no SEN12MS ids


# ------------------------------------------------------------------ units and pairs


def _split(n: int, fractions: list[float], clear: bool = True) -> SplitData:
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, torch.Tensor] = {
        "image_s2": torch.randn(n, 3, 4, 4, generator=generator),
        "image_s1": torch.randn(n, 3, 4, 4, generator=generator),
        "cloud_mask": torch.zeros(n, 4, 4, dtype=torch.uint8),
        "cloud_fraction": torch.tensor(fractions, dtype=torch.float64),
        "label": torch.zeros(n, dtype=torch.long),
    }
    if clear:
        inputs[CLEAR_KEY] = torch.randn(n, 3, 4, 4, generator=generator)
    split = SplitData(inputs, [f"s{i}" for i in range(n)], ["clear"] * n, ["a"],
                      bands={"image_s2": ["B04", "B03", "B02"], "image_s1": ["VH", "VV/VH", "VV"]})
    split.statistics = {"image_s2": (torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.1, 0.1, 0.2])),
                        "image_s1": (torch.tensor([-20.0, 1.0, -10.0]),
                                     torch.tensor([5.0, 1.0, 10.0]))}
    return split


def test_units_map_standardised_values_to_the_papers_ranges() -> None:
    units = Units(_split(1, [0.0]), sar=True)
    # optical: x * std + mean, clipped to [0, 1]
    x = torch.tensor([[-1.0, 0.0, 5.0]]).reshape(1, 3, 1, 1)
    assert units.optical(x).flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert units.standardised(units.optical(torch.zeros(1, 3, 1, 1))).abs().max() < 1e-6
    # SAR: VV is the third channel (mean -10, std 10), VH the first (mean -20, std 5);
    # dB clipped to [-25, 0], then (dB + 25) / 25
    s1 = torch.tensor([[-1.0, 7.0, 0.5]]).reshape(1, 3, 1, 1)  # VH -25 dB, VV -5 dB
    assert units.radar(s1).flatten().tolist() == pytest.approx([20 / 25, 0.0])
    s1 = torch.tensor([[2.0, 0.0, 3.0]]).reshape(1, 3, 1, 1)  # VH -10 dB, VV 20 dB -> 0
    assert units.radar(s1).flatten().tolist() == pytest.approx([1.0, 15 / 25])
    with pytest.raises(CloudbenchError, match="reads SAR VV and VH"):
        split = _split(1, [0.0])
        split.bands["image_s1"] = ["VV/VH"]
        Units(split, sar=True)


def test_training_pairs_select_clouded_pairs_and_draw_a_seeded_subset() -> None:
    a, b = _split(4, [0.0, 0.5, 0.2, 0.0]), _split(3, [1.0, 0.0, 0.3])
    inputs, taken = training_pairs([a, b], clouded_only=True, pairs=None, seed=0)
    assert [p.tolist() for _, p in taken] == [[1, 2], [0, 2]]
    assert torch.equal(inputs[CLEAR_KEY], torch.cat([a.inputs[CLEAR_KEY][[1, 2]],
                                                     b.inputs[CLEAR_KEY][[0, 2]]]))
    _, all_pairs = training_pairs([a, b], clouded_only=False, pairs=None, seed=0)
    assert sum(len(p) for _, p in all_pairs) == 7
    first = training_pairs([a, b], clouded_only=True, pairs=3, seed=5)[1]
    again = training_pairs([a, b], clouded_only=True, pairs=3, seed=5)[1]
    assert sum(len(p) for _, p in first) == 3
    assert [p.tolist() for _, p in first] == [p.tolist() for _, p in again]
    with pytest.raises(CloudbenchError, match="no cloud-free targets"):
        training_pairs([_split(2, [0.5, 0.5], clear=False)], clouded_only=True, pairs=None,
                       seed=0)
    with pytest.raises(CloudbenchError, match="clouded_only: false"):
        training_pairs([_split(2, [0.0, 0.0])], clouded_only=True, pairs=None, seed=0)


# ------------------------------------------------------------------ SEN12MS-CR, pixels only


@pytest.fixture(scope="module")
def sen12ms_cr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sen12ms-cr")
    tree = root / "SEN12MS-CR"
    write_sen12ms_cr(tree, scenes=[1, 2], patches_per_scene=1, roi="ROIs1158", season="spring")
    split = root / "split.yaml"
    split.write_text("test: [ROIs1158_spring_2]\nval: []\n")
    config = load_recipe(builder_module("sen12ms-cr").Config, "sen12ms-cr", [],
                         {"root": str(tree), "crop": 64, "split_file": str(split),
                          "clouds": {"resolution": 40}})
    out = root / "store"
    run_build("sen12ms-cr", config, out, workers=1, progress=False)
    return out


def _cr_spec(store: Path, metrics: list[str], method: str = "cloud-removal") -> LeaderboardSpec:
    optical = list(Store(store).arrays["s2"].bands)
    return LeaderboardSpec.model_validate({
        "name": "cr", "datasets": {"sen12ms-cr": {"path": store, "sar": ["VV", "VH"],
                                                  "optical": optical}},
        "methods": [{"method": method, "params": {
            "model": "uncrtaints", "model_args": {"width": 16}, "cr_train": QUICK,
            **({"classifier": "sl"} if method == "cr-then-classify" else {})}}],
        "metrics": metrics, "bootstrap": 0, "device": "cpu", "train": QUICK,
    })


def test_cloud_removal_on_sen12ms_cr_reports_pixel_metrics_only(sen12ms_cr: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_leaderboard(_cr_spec(sen12ms_cr, ["PSNR", "SSIM", "SAM"]), out, progress=False)
    table = results.read_table(out)
    metric = table[table["kind"] == "metric"]
    assert set(metric["metric"]) >= {"PSNR", "SSIM", "SAM", "RMSE", "MAE", "UCE"}
    assert not set(metric["metric"]) & {"OA", "AA", "Kappa", "AP_macro"}
    assert metric.query("metric == 'PSNR' and stratum == 'all'")["n"].iloc[0] == \
        int((Store(sen12ms_cr).samples["split"] == "test").sum())
    (run,) = table["run"].unique()
    folder = results.run_dir(out, run)
    assert not (folder / "predictions.parquet").exists()
    _, meta = load_cr_checkpoint(folder / "cr-model.pt")
    assert set(meta["trained_on"]["scenes"]) == {"ROIs1158_spring_1"}
    assert "PSNR (dB)" in (out / "leaderboard.md").read_text()


def test_reconstruction_stores_refuse_classifiers_and_classification_metrics(
        sen12ms_cr: Path, tmp_path: Path) -> None:
    with pytest.raises(CloudbenchError, match="reconstruction, scored by RMSE"):
        run_leaderboard(_cr_spec(sen12ms_cr, ["OA"]), tmp_path / "a", progress=False)
    with pytest.raises(CloudbenchError, match="handles multiclass and multilabel datasets only"):
        run_leaderboard(_cr_spec(sen12ms_cr, ["PSNR"], method="cr-then-classify"),
                        tmp_path / "b", progress=False)


def test_the_cloud_removal_spec_names_the_published_method() -> None:
    from cloudbench.harness.render import load_published

    spec = load_spec("cloud-removal")
    assert {m.method for m in spec.methods} == {"cloud-removal"}
    assert {m.params["model"] for m in spec.methods} == {"uncrtaints", "sscr", "unet", "utae"}
    assert len(spec.seeds) >= 3 and "PSNR" in spec.metrics
    published = load_published(spec.published or "")
    (row,) = published.itertuples()
    assert row.method in {m.name for m in spec.methods} and row.dataset in spec.datasets
    assert (row.PSNR, row.SSIM, row.SAM) == (28.90, 0.880, 8.32)


def test_an_entry_runs_on_its_datasets_only(tmp_path: Path) -> None:
    from cloudbench.harness.spec import expand

    spec = {"name": "x", "datasets": {"a": {"path": "a"}, "b": {"path": "b"}},
            "methods": [{"method": "sl"}, {"method": "sl", "name": "sl-a", "datasets": ["a"]}]}
    runs = expand(LeaderboardSpec.model_validate(spec))
    assert sorted((r.name, r.dataset) for r in runs) == [("sl", "a"), ("sl", "b"), ("sl-a", "a")]
    spec["methods"][1]["datasets"] = ["c"]
    with pytest.raises(ValueError, match=r"datasets \['c'\] are not datasets of the spec"):
        LeaderboardSpec.model_validate(spec)


def test_a_kept_model_is_loaded_checked_and_reconstructs_alike(smoke: Path,
                                                                tmp_path: Path) -> None:
    table = results.read_table(smoke)
    mine = table[table["method"] == "uncrtaints-then-classify"]
    (run,) = mine["run"].unique()
    kept = results.run_dir(smoke, run) / "cr-model.pt"
    data = load_yaml("leaderboards", "cloud-removal-smoke.yaml")  # the smoke's store and source
    data["datasets"]["synthetic"].update(recipe=None, set={},
                                         path=str(smoke / "datasets" / "synthetic"))
    data["sources"]["synthetic-clear"] = {
        "model": str(smoke / "sources" / "synthetic-clear" / "model.pt")}
    data["methods"][1]["params"]["cr_weights"] = str(kept)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "spec.yaml")
    spec = restrict(spec, "methods", ["uncrtaints-then-classify"])
    out = tmp_path / "out"
    run_leaderboard(spec, out, progress=False)
    again = results.read_table(out)
    history = pd.read_parquet(results.run_dir(out, again["run"].iloc[0]) / "history.parquet")
    assert "cloud-removal" not in set(history["stage"])  # loaded, not trained
    pixels = ["RMSE", "MAE", "PSNR", "SSIM", "SAM", "UCE", "scene_overlap"]

    def scores(frame: pd.DataFrame) -> pd.Series:
        rows = frame[frame["metric"].isin(pixels)]
        return rows.set_index(["metric", "stratum"])["value"].sort_index()

    pd.testing.assert_series_equal(scores(again), scores(mine))


def test_an_ssl_backbone_classifies_the_reconstructions(leaky: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """The pipeline hands any optical method its splits: the SSL method folds the (subset)
    statistics of the reconstructed optical view into its backbone's normalisation."""
    spec = LeaderboardSpec.model_validate({
        "name": "ssl", "datasets": {"target": {"path": leaky["target"], "optical": L2A,
                                               "sar": ["VV", "VH"]}},
        "methods": [{"method": "cr-then-classify", "params": {
            "model": "unet", "model_args": {"widths": [8, 16, 16, 16]}, "cr_train": QUICK,
            "clouded_only": False, "classifier": "ssl",
            "classifier_params": {"backbone": "moco-v2-resnet50", "pretrained": False,
                                  "image_size": None}}}],
        "metrics": ["OA", "PSNR"], "labeled_per_class": 2, "bootstrap": 0, "device": "cpu",
        "train": QUICK,
    })
    out = tmp_path / "out"
    run_leaderboard(spec, out, progress=False)
    table = results.read_table(out).query("stratum == 'all'").set_index("metric")["value"]
    assert 0 <= table["OA"] <= 1 and np.isfinite(table["PSNR"])
