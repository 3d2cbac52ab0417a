"""The command line: info, export, eval, and user errors (one message, exit status 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import make_store

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError, StoreError
from cloudbench.store import Store

CLASSES = ["Forest", "Water", "Urban/Built-up"]


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 multiclass samples, 20 per class, 4 per class in the test split."""
    return make_store(tmp_path_factory.mktemp("cli") / "ds")


@pytest.fixture(scope="module")
def ml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("cli_ml") / "ml", n=40, task="multilabel",
                      classes=("A", "B", "C", "D"))


def _test_rows(root: Path) -> pd.DataFrame:
    samples = Store(root).samples
    return pd.DataFrame(samples[samples["split"] == "test"]).reset_index(drop=True)


def _metrics(path: Path) -> dict[tuple[str, str], float]:
    table = pd.read_csv(path)
    assert list(table.columns) == ["stratum", "metric", "value", "ci_low", "ci_high", "n"]
    return {(r.stratum, r.metric): r.value for r in table.itertuples()}


def _table_row(out: str, metric: str) -> list[str]:
    """The cells of one metric's row in the printed table."""
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [metric]]
    assert len(rows) == 1, out
    return rows[0][1:]


def assert_user_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2, exactly one error line, no traceback; returns the error line."""
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.lower().startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return lines[0]


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def test_info_text(ds: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(ds)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{ds}: demo (multiclass), 60 samples  [SYNTHETIC: not real data]"
    samples = Store(ds).samples
    assert _table_row(out, "total") == ["48", "12"]
    for name in ("Forest", "Water"):
        assert _table_row(out, name) == ["16", "4"]
    for state in ("clear", "mixed"):
        row = [line.split() for line in out.splitlines() if line.startswith(f"cloud: {state}")]
        expected = [str(int(((samples["split"] == s) & (samples["cloud_state"] == state)).sum()))
                    for s in ("train", "test")]
        assert row[0][2:] == expected
    assert f"mean cloud fraction: {samples['cloud_fraction'].mean():.1%}" in out


def test_info_json(ds: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(ds), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    samples = Store(ds).samples
    assert summary["samples"] == 60 and summary["kind"] == "demo"
    assert summary["synthetic"] is True
    assert summary["per_split"] == {"train": 48, "test": 12}
    assert summary["per_class"]["test"] == {name: 4 for name in CLASSES}
    assert summary["per_class"]["train"] == {name: 16 for name in CLASSES}
    for split in ("train", "test"):
        part = samples[samples["split"] == split]
        assert summary["per_cloud_state"][split] == {
            s: int((part["cloud_state"] == s).sum()) for s in ("clear", "thin", "thick", "mixed")
        }
    assert summary["arrays"]["s2"]["shape"] == [60, 12, 16, 16]
    assert summary["arrays"]["s1"]["bands"] == ["VV", "VH"]
    assert summary["mean_cloud_fraction"] == pytest.approx(samples["cloud_fraction"].mean(),
                                                           abs=1e-4)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def test_export(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tif"
    code = main(["export", str(ds), str(out), "--arrays", "s2,cloud_mask", "--split", "test"])
    assert code == 0
    assert "wrote 24 GeoTIFFs" in capsys.readouterr().out
    test = _test_rows(ds)
    assert sorted(p.name for p in out.iterdir()) == ["cloud_mask", "s2"]
    for name in ("s2", "cloud_mask"):
        assert sorted(p.stem for p in (out / name).glob("*.tif")) == sorted(test["id"])
    first = Store(ds).samples.index[Store(ds).samples["id"] == test["id"][0]][0]
    with rasterio.open(out / "s2" / f"{test['id'][0]}.tif") as tif:
        np.testing.assert_array_equal(tif.read(), Store(ds).array("s2")[first])


def test_export_unknown_array(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["export", str(ds), str(tmp_path / "x"), "--arrays", "rgb"])
    assert_user_error(code, capsys.readouterr().err, "unknown array 'rgb'")


def test_export_unknown_band(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["export", str(ds), str(tmp_path / "x"), "--bands", "B04,B03,RED"])
    assert_user_error(code, capsys.readouterr().err, "unknown band 'RED'", "available: VV, VH")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------


def test_eval_perfect_csv(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    test = _test_rows(ds)
    pd.DataFrame({"id": test["id"], "pred": test["label"]}).to_csv(tmp_path / "p.csv",
                                                                  index=False)
    out = tmp_path / "metrics.csv"
    code = main(["eval", str(tmp_path / "p.csv"), str(ds), "--bootstrap", "20",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"{ds} [test], 12 samples" in printed
    assert _table_row(printed, "OA")[:2] == ["1.0000", "[1.0000,"]
    assert _table_row(printed, "Kappa")[0] == "1.0000"
    metrics = _metrics(out)
    assert metrics[("all", "OA")] == 1.0
    assert metrics[("all", "Kappa")] == 1.0
    assert metrics[("all", "AA")] == 1.0
    for name in CLASSES:
        assert metrics[("all", f"acc/{name}")] == 1.0


def test_eval_matches_ids_that_look_like_numbers(ds: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """A CSV reader turns the id column 1000, 1001, … into integers; they are the store's string
    ids all the same, and the predictions keep the file's row order."""
    import geopandas as gpd

    from cloudbench.predictions import read_predictions

    root = tmp_path / "numeric"
    shutil.copytree(ds, root)
    table = gpd.read_parquet(root / "samples.parquet")
    table["id"] = [str(1000 + i) for i in range(len(table))]
    table.to_parquet(root / "samples.parquet")
    test = _test_rows(root).sample(frac=1.0, random_state=0)
    pd.DataFrame({"id": test["id"], "pred": test["label"]}).to_csv(tmp_path / "p.csv",
                                                                  index=False)
    assert pd.read_csv(tmp_path / "p.csv")["id"].dtype == np.int64
    pred = read_predictions(tmp_path / "p.csv", Store(root))
    assert list(pred.ids) == list(test["id"])
    assert list(pred.target) == list(test["label"])
    assert main(["eval", str(tmp_path / "p.csv"), str(root), "--bootstrap", "0"]) == 0
    assert _table_row(capsys.readouterr().out, "OA")[0] == "1.0000"


def test_eval_class_names_in_any_order(ds: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    test = _test_rows(ds).sample(frac=1.0, random_state=3)  # rows shuffled: matched by id
    names = np.array(CLASSES, dtype=object)[test["label"].to_numpy()]
    wrong = test["label"].to_numpy() == 1
    first_wrong = np.flatnonzero(wrong)[0]
    names[first_wrong] = "Forest"  # one Water sample predicted as Forest
    pd.DataFrame({"id": test["id"], "pred": names}).to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "m.csv"
    code = main(["eval", str(tmp_path / "p.csv"), str(ds), "--bootstrap", "0", "--out", str(out)])
    assert code == 0
    capsys.readouterr()
    metrics = _metrics(out)
    assert metrics[("all", "OA")] == pytest.approx(11 / 12)
    assert metrics[("all", "acc/Water")] == pytest.approx(3 / 4)
    assert metrics[("all", "acc/Forest")] == 1.0


def test_eval_parquet_scores(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    test = _test_rows(ds)
    scores = np.random.default_rng(0).random((len(test), 3)) * 0.5
    scores[np.arange(len(test)), test["label"]] = 1.0
    frame = pd.DataFrame({"id": test["id"], **{f"score_{k}": scores[:, k] for k in range(3)}})
    frame.to_parquet(tmp_path / "p.parquet")
    out = tmp_path / "m.csv"
    code = main(["eval", str(tmp_path / "p.parquet"), str(ds), "--bootstrap", "0",
                 "--out", str(out)])
    assert code == 0
    capsys.readouterr()
    metrics = _metrics(out)
    assert metrics[("all", "OA")] == 1.0 and metrics[("all", "Kappa")] == 1.0


def test_eval_multilabel_scores(ml: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    test = _test_rows(ml)
    target = np.zeros((len(test), 4))
    for i, labels in enumerate(test["label"]):
        target[i, list(labels)] = 1
    scores = 0.6 * target + 0.3 * np.random.default_rng(1).random(target.shape)
    frame = pd.DataFrame({"id": test["id"], **{f"score_{k}": scores[:, k] for k in range(4)}})
    frame.to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "m.csv"
    code = main(["eval", str(tmp_path / "p.csv"), str(ml), "--bootstrap", "0", "--out", str(out)])
    assert code == 0
    assert f"{ml} [test], {len(test)} samples" in capsys.readouterr().out
    metrics = _metrics(out)
    assert metrics[("all", "AP_macro")] == pytest.approx(1.0)
    assert metrics[("all", "AP_micro")] == pytest.approx(1.0)

    # A 'pred' column is not enough for a multi-label dataset.
    frame = pd.DataFrame({"id": test["id"], "pred": 0})
    frame.to_csv(tmp_path / "pred.csv", index=False)
    code = main(["eval", str(tmp_path / "pred.csv"), str(ml)])
    assert_user_error(code, capsys.readouterr().err, "needs columns score_0 … score_3")


# Test samples of the strata store: id -> (label, thin pixels, thick pixels of 100, prediction),
# and by hand from those: cloud state (clear under 1% cloud; thin or thick at least 80% of the
# cloudy pixels; else mixed), cloud-fraction bin, whether the prediction is right.
STRATA_SAMPLES = {
    "t00": (0, 0, 0, 0),  # clear, [0,0.01), right
    "t01": (1, 0, 0, 1),  # clear, [0,0.01), right
    "t02": (2, 10, 0, 0),  # thin, [0.01,0.25), wrong
    "t03": (0, 20, 0, 0),  # thin, [0.01,0.25), right
    "t04": (1, 0, 30, 1),  # thick, [0.25,0.5), right
    "t05": (2, 0, 40, 0),  # thick, [0.25,0.5), wrong
    "t06": (0, 30, 30, 1),  # mixed, [0.5,0.75), wrong
    "t07": (1, 20, 50, 1),  # mixed (thick 50/70 < 80%), [0.5,0.75), right
    "t08": (2, 0, 90, 2),  # thick, [0.75,1], right
    "t09": (0, 100, 0, 1),  # thin, [0.75,1], wrong
    "t10": (1, 0, 0, 2),  # clear, [0,0.01), wrong
    "t11": (2, 0, 60, 2),  # thick, [0.5,0.75), right
}
STRATA = {  # stratum -> its test samples, by hand from the comments above
    "all": list(STRATA_SAMPLES),
    "state=clear": ["t00", "t01", "t10"],
    "state=thin": ["t02", "t03", "t09"],
    "state=thick": ["t04", "t05", "t08", "t11"],
    "state=mixed": ["t06", "t07"],
    "fraction=[0,0.01)": ["t00", "t01", "t10"],
    "fraction=[0.01,0.25)": ["t02", "t03"],
    "fraction=[0.25,0.5)": ["t04", "t05"],
    "fraction=[0.5,0.75)": ["t06", "t07", "t11"],
    "fraction=[0.75,1]": ["t08", "t09"],
}
STRATA_OA = {"all": 7 / 12, "state=clear": 2 / 3, "state=thin": 1 / 3, "state=thick": 3 / 4,
             "state=mixed": 1 / 2, "fraction=[0,0.01)": 2 / 3, "fraction=[0.01,0.25)": 1 / 2,
             "fraction=[0.25,0.5)": 1 / 2, "fraction=[0.5,0.75)": 2 / 3,
             "fraction=[0.75,1]": 1 / 2}


@pytest.fixture(scope="module")
def strata_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose 12 test samples have the cloud masks of STRATA_SAMPLES (10 x 10 pixels),
    written in id order, with 3 train samples."""
    import datetime as dt

    from cloudbench import store
    from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Grid

    root = tmp_path_factory.mktemp("strata") / "ds"
    ids = [*STRATA_SAMPLES, "u00", "u01", "u02"]
    labels = [v[0] for v in STRATA_SAMPLES.values()] + [0, 1, 2]
    masks = np.zeros((len(ids), 1, 10, 10), dtype=np.uint8)
    for mask, (_, thin, thick, _) in zip(masks, STRATA_SAMPLES.values(), strict=False):
        mask.reshape(-1)[:thin] = 1
        mask.reshape(-1)[thin:thin + thick] = 2
    world = Grid.from_bounds("EPSG:32649", 645000.0, 3210000.0, 10 * len(ids), 10, 10.0)
    grids = [world.window(0, 10 * i, 10, 10) for i in range(len(ids))]
    when = [dt.datetime(2018, 7, 2, tzinfo=dt.UTC)] * len(ids)
    table = store.sample_table(ids, labels, masks, grids, when, when, [["S2", "S1"]] * len(ids))
    rng = np.random.default_rng(0)
    arrays = {"s1": rng.normal(-12, 4, (len(ids), 2, 10, 10)).astype(np.float32),
              "s2": rng.integers(0, 10000, (len(ids), 12, 10, 10), dtype=np.uint16),
              "cloud_mask": masks}
    store.start_build(root, "fixture", {"strata": True})
    store.write_shard(root, "all", table, arrays)
    meta = {"kind": "demo", "task": "multiclass", "classes": CLASSES, "patch_size": 10,
            "resolution": 10.0, "builder": {"name": "fixture", "config": {"strata": True}},
            "arrays": {"s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0},
                       "s2": {"bands": list(S2_L2A_BANDS), "unit": "reflectance",
                              "scale": 10000.0},
                       "cloud_mask": {"bands": ["cloud_type"], "unit": "class", "scale": 1.0}},
            "provenance": {"synthetic": True}}
    store.finalize(root, ["all"], meta,
                   lambda t: np.where(t["id"].str.startswith("u"), "train", "test"))
    return root


def test_eval_cloud_strata_follow_the_prediction_rows(strata_ds: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Each prediction is scored in the strata of its own sample, however the file's rows are
    ordered (issue 19: strata taken in store order passed every other test)."""
    from sklearn.metrics import cohen_kappa_score

    samples = Store(strata_ds).samples.set_index("id")
    assert list(samples.loc[list(STRATA_SAMPLES), "cloud_state"]) == [  # the store agrees
        "clear", "clear", "thin", "thin", "thick", "thick", "mixed", "mixed", "thick", "thin",
        "clear", "thick"]
    order = ["t07", "t02", "t11", "t00", "t09", "t04", "t10", "t05", "t01", "t08", "t03", "t06"]
    frame = pd.DataFrame({"id": order, "pred": [STRATA_SAMPLES[i][3] for i in order]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "m.csv"
    code = main(["eval", str(tmp_path / "p.csv"), str(strata_ds), "--bootstrap", "0",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    table = pd.read_csv(out)
    assert list(dict.fromkeys(table["stratum"])) == list(STRATA)
    for stratum, members in STRATA.items():
        rows = table[table["stratum"] == stratum].set_index("metric")
        assert set(rows["n"]) == {len(members)}, stratum
        target = [STRATA_SAMPLES[i][0] for i in members]
        pred = [STRATA_SAMPLES[i][3] for i in members]
        assert rows.loc["OA", "value"] == pytest.approx(STRATA_OA[stratum]), stratum
        recalls = [np.mean([p == k for t, p in zip(target, pred, strict=True) if t == k])
                   for k in sorted(set(target))]
        assert rows.loc["AA", "value"] == pytest.approx(np.mean(recalls)), stratum
        kappa = cohen_kappa_score(target, pred, labels=[0, 1, 2])
        assert rows.loc["Kappa", "value"] == pytest.approx(kappa, nan_ok=True), stratum


# --------------------------------------------------------------------------------------------
# User errors: exit status 2, one message, no traceback; --debug shows the traceback
# --------------------------------------------------------------------------------------------


def test_missing_dataset_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["info", str(tmp_path / "nowhere")])
    line = assert_user_error(code, capsys.readouterr().err)
    assert line == f"error: no dataset folder at {tmp_path / 'nowhere'}"


def test_corrupt_samples_parquet(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(ds, broken)
    (broken / "samples.parquet").write_bytes(b"\x00garbage" * 64)
    code = main(["info", str(broken)])
    assert_user_error(code, capsys.readouterr().err, str(broken / "samples.parquet"),
                      "not a readable GeoParquet file")


def test_eval_unknown_split(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    test = _test_rows(ds)
    pd.DataFrame({"id": test["id"], "pred": test["label"]}).to_csv(tmp_path / "p.csv",
                                                                  index=False)
    code = main(["eval", str(tmp_path / "p.csv"), str(ds), "--split", "validation"])
    assert_user_error(code, capsys.readouterr().err, "unknown split 'validation'",
                      "allowed: train, val, test")


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        (["purity=2"], ["invalid demo recipe", "purity: Input should be less than or equal to 1"]),
        (["nosuch=1"], ["nosuch: unknown setting; allowed: seed, world_size, tile_size",
                        "purity", "clouds"]),
        (["clouds.nosuch=1"], ["clouds.nosuch: unknown setting; allowed: threshold, "
                               "average_over, dilation_size, thick_threshold, resolution"]),
        (["purity"], ["--set expects key=value, got 'purity'"]),
        (["=3"], ["--set expects key=value"]),
        (["clouds.threshold=[1"], ["the value is not valid YAML"]),
        (["clouds=1", "clouds.threshold=0.3"], ["'clouds' was already set"]),
        (["world_size=300"], ["tile_size must divide world_size"]),
    ],
    ids=["out of range", "unknown key", "unknown nested key", "no equals", "no key", "bad yaml",
         "conflict", "cross-field"],
)
def test_invalid_settings(settings: list[str], needles: list[str], tmp_path: Path,
                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "never"
    code = main(["build", "demo", "--out", str(out), *(a for s in settings for a in ("--set", s))])
    assert_user_error(code, capsys.readouterr().err, *needles)
    assert not out.exists()  # nothing written for an invalid config


def _predictions(ds: Path, tmp_path: Path, kind: str) -> Path:
    test = _test_rows(ds)
    frame = pd.DataFrame({"id": test["id"], "pred": test["label"]})
    if kind == "missing ids":
        frame = frame.iloc[1:]
    elif kind == "unknown ids":
        frame.loc[0, "id"] = "no_such_sample"
    elif kind == "train ids":
        train = Store(ds).samples.query("split == 'train'")["id"].iloc[0]
        frame.loc[0, "id"] = train
    elif kind == "duplicate ids":
        frame.loc[1, "id"] = frame.loc[0, "id"]
    elif kind == "no id column":
        frame = frame.rename(columns={"id": "sample"})
    elif kind == "no pred column":
        frame = frame.rename(columns={"pred": "prediction"})
    elif kind == "class out of range":
        frame.loc[0, "pred"] = 3
    elif kind == "unknown class name":
        frame["pred"] = "Forest"
        frame.loc[0, "pred"] = "Jungle"
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    return path


BAD_PREDICTIONS = {
    "missing ids": "11 predictions for the 12 samples of the test split",
    "unknown ids": "1 ids are not in the test split",
    "train ids": "1 ids are not in the test split",
    "duplicate ids": "appears twice\n",
    "no id column": "the column 'id' is missing (see docs/metrics.md)",
    "no pred column": "needs columns 'pred' or score_0 … score_2 (see docs/metrics.md)",
    "class out of range": "class index 3 is out of range 0 … 2",
    "unknown class name": "unknown class 'Jungle'; classes: Forest, Water, Urban/Built-up",
}


@pytest.mark.parametrize("kind", list(BAD_PREDICTIONS))
def test_bad_predictions(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                         kind: str) -> None:
    path = _predictions(ds, tmp_path, kind)
    code = main(["eval", str(path), str(ds), "--bootstrap", "0"])
    assert_user_error(code, capsys.readouterr().err, BAD_PREDICTIONS[kind], str(path))


def test_missing_predictions_file(ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", str(tmp_path / "none.csv"), str(ds)])
    assert_user_error(code, capsys.readouterr().err, "no predictions file at")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    code = main(["eval", str(broken), str(ds)])
    assert_user_error(code, capsys.readouterr().err,
                      f"{broken} is not a readable CSV/Parquet file: ")


def test_unknown_builder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["build", "nosuch", "--out", str(tmp_path / "x")])
    assert_user_error(code, capsys.readouterr().err, "nosuch")
    from cloudbench.builders import builder_module

    with pytest.raises(CloudbenchError, match="unknown builder 'nosuch'; available: demo"):
        builder_module("nosuch")


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="no dataset folder"):
        main(["--debug", "info", missing])
    with pytest.raises(StoreError, match="no dataset folder"):
        main(["info", missing, "--debug"])  # anywhere on the command line
    with pytest.raises(CloudbenchError, match="purity"):
        main(["build", "demo", "--debug", "--set", "purity=2", "--out", missing])
    with pytest.raises(click.UsageError):
        main(["build", "nosuch", "--debug"])
    assert "error:" not in capsys.readouterr().err


def test_console_script(ds: Path, tmp_path: Path) -> None:
    """The installed entry point, its exit status and its streams."""
    script = Path(sys.executable).parent / "cloudbench"
    command = [str(script)] if script.exists() else [shutil.which("cloudbench") or "cloudbench"]
    ok = subprocess.run([*command, "info", str(ds), "--json"], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["samples"] == 60

    test = _test_rows(ds)
    pd.DataFrame({"id": test["id"], "pred": test["label"]}).to_csv(tmp_path / "p.csv",
                                                                  index=False)
    scored = subprocess.run([*command, "eval", "p.csv", str(ds), "--bootstrap", "10"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert _table_row(scored.stdout, "OA")[0] == "1.0000"
    assert scored.stderr == ""  # no warnings for the user

    bad = subprocess.run([*command, "info", str(tmp_path / "nowhere")], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert bad.stdout == ""
    assert bad.stderr == f"error: no dataset folder at {tmp_path / 'nowhere'}\n"
    assert bad.returncode == 2


def test_the_command_keeps_freed_memory_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platform

    from cloudbench.cli import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False  # the user's own setting stands
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert keep_freed_memory() is (sys.platform.startswith("linux")
                                   and platform.libc_ver()[0] == "glibc")
