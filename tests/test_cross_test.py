"""Training on one dataset, testing on others (the CBEN paper's Table VI protocol): a dataset's
``test`` in a spec, the checks before training, the standardisation of the other test splits,
the results' ``test`` column, per-test predictions, and the cross table."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import grouped_store, make_store
from torch import Tensor, nn

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.data import SplitData, load_split, load_target, standardise
from cloudbench.harness.losses import TaskLossParams, task_loss
from cloudbench.harness.methods import METHODS, FitContext, Method
from cloudbench.harness.render import format_cell, load_published, render
from cloudbench.harness.runner import load_run_data, run_leaderboard
from cloudbench.harness.spec import expand, load_spec, restrict
from cloudbench.harness.stream import Stored
from cloudbench.metrics import evaluate
from cloudbench.predictions import read_predictions
from cloudbench.store import Store

PROBE = "test-cross-probe"


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(torch.cat([batch["image_s2"], batch["image_s1"]], dim=1))


class CrossProbe(Method):
    """A tiny optical + SAR network for both tasks (``sl``'s GoogLeNets need 32x32 patches and
    take seconds per run on a CPU; the harness is what is under test here)."""

    name = PROBE
    modalities = ("s2", "s1")
    tasks = ("multiclass", "multilabel")
    Params = TaskLossParams

    def fit(self, context: FitContext) -> None:
        self.engine = context.engine
        channels = sum(int(context.labeled.inputs[k].shape[1]) for k in ("image_s2", "image_s1"))
        self.model = nn.Sequential(nn.Conv2d(channels, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten(), nn.Linear(8, context.num_classes))
        self.model.to(self.engine.device)

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            return {"loss": task_loss(_forward(model, batch), batch["label"], context.task)}

        self.engine.fit(self.model, context.labeled.inputs, loss, context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, _forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, _forward

    def extra_metrics(self, split: SplitData) -> dict[str, float]:
        return {"probe_samples": float(len(split))}


@pytest.fixture(scope="module", autouse=True)
def probe() -> Iterator[None]:
    """The probe is registered for this module only (other tests list the methods)."""
    METHODS[PROBE] = CrossProbe
    yield
    METHODS.pop(PROBE, None)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    ben = grouped_store(root / "ben", "bigearthnet", n=12)
    return {
        "ben": ben,
        "cben": grouped_store(root / "cben", "cben", n=15),  # other samples, same classes
        "copy": Path(shutil.copytree(ben, root / "copy")),  # byte-identical to ben
    }


PUBLISHED: dict[str, Any] = {
    "paper": "Doe et al.: a paper with a cross-dataset table",
    "label": "Doe paper",
    "tables": [
        {"table": "VI", "dataset": "ben", "test": "ben", "note": "AP averaging not stated",
         "rows": [{"method": PROBE, "name": "Probe", "AP_macro": 61.5, "AP_micro": 70.25}]},
        {"table": "VI", "dataset": "ben", "test": "cben", "note": "AP averaging not stated",
         "rows": [{"method": PROBE, "name": "Probe", "AP_macro": 41.0, "AP_micro": 50.5}]},
        {"table": "VI", "dataset": "cben", "test": "ben",
         "rows": [{"method": PROBE, "name": "Probe", "AP_micro": 44.0}]},
    ],
}


def _spec(tmp: Path, datasets: dict[str, Any], **changes: Any) -> Path:
    spec = {
        "name": "cross",
        "datasets": datasets,
        "methods": [{"method": PROBE}],
        "train": {"epochs": 1, "batch_size": 8, "augment": False},
        "seeds": [0],
        "labeled_per_class": 1,
        "bootstrap": 20,
        "device": "cpu",
        **changes,
    }
    path = tmp / f"spec-{len(list(tmp.glob('spec-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def crossed(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("crossed")
    published = tmp / "doe.yaml"
    published.write_text(yaml.safe_dump(PUBLISHED))
    datasets = {
        "ben": {"path": str(stores["ben"]), "test": ["ben", "cben", "copy"]},
        "cben": {"path": str(stores["cben"]), "test": ["ben", "cben"]},
        "copy": {"path": str(stores["copy"])},
    }
    out = tmp / "out"
    with torch.random.fork_rng():
        run_leaderboard(load_spec(_spec(tmp, datasets, published=str(published))), out,
                        progress=False)
    return out


@pytest.fixture(scope="module")
def plain(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run on ben, without ``test``."""
    tmp = tmp_path_factory.mktemp("plain")
    out = tmp / "out"
    with torch.random.fork_rng():
        run_leaderboard(load_spec(_spec(tmp, {"ben": {"path": str(stores["ben"])}})), out,
                        progress=False)
    return out


SCORED = ["metric", "stratum", "value", "ci_low", "ci_high", "n"]


def _rows(out: Path, dataset: str, test: str) -> pd.DataFrame:
    table = results.read_table(out)
    rows = table[(table["kind"] == "metric") & (table["dataset"] == dataset)
                 & (table["test"] == test)]
    return rows[SCORED].sort_values(["metric", "stratum"]).reset_index(drop=True)


def test_every_pair_of_trained_on_and_tested_on_has_its_rows(crossed: Path,
                                                              stores: dict[str, Path]) -> None:
    table = results.read_table(crossed)
    metric = table[table["kind"] == "metric"]
    pairs = set(zip(metric["dataset"], metric["test"], strict=True))
    assert pairs == {("ben", "ben"), ("ben", "cben"), ("ben", "copy"), ("cben", "ben"),
                     ("cben", "cben"), ("copy", "copy")}
    assert table.groupby("dataset")["run"].nunique().to_dict() == {"ben": 1, "cben": 1,
                                                                   "copy": 1}
    classes = Store(stores["ben"]).classes
    for (_, test), rows in metric.groupby(["dataset", "test"]):
        overall = rows[rows["stratum"] == "all"].set_index("metric")["value"]
        assert {"AP_macro", "AP_micro"} <= set(overall.index)
        assert {f"AP/{c}" for c in classes} <= set(overall.index)  # per class, every test set
        assert rows["stratum"].str.startswith("fraction=").any()
        assert rows["stratum"].str.startswith("state=").any()
        # the method's own metrics are per test set too: here, the test split's size
        size = int((Store(stores[test]).samples["split"] == "test").sum())
        assert overall["probe_samples"] == size
        assert (rows.loc[rows["stratum"] == "all", "n"].dropna() == size).all()
        assert set(rows["data"]) == {"train=resident test=resident"}
    profile = table[table["kind"] == "profile"]
    assert (profile["test"] == profile["dataset"]).all() and len(profile) == 3 * 10


def test_the_own_test_rows_are_those_of_a_run_without_test(crossed: Path, plain: Path,
                                                           stores: dict[str, Path],
                                                           tmp_path: Path) -> None:
    pd.testing.assert_frame_equal(_rows(crossed, "ben", "ben"), _rows(plain, "ben", "ben"))
    # keys: unchanged without test, and for a test of the dataset alone; a test list is part
    # of the key (in any order)
    datasets = {"ben": {"path": str(stores["ben"])}}
    (plain_run,) = expand(load_spec(_spec(tmp_path, datasets)))
    assert results.done(plain, plain_run.key)
    own = {"ben": {"path": str(stores["ben"]), "test": ["ben"]}}
    assert expand(load_spec(_spec(tmp_path, own)))[0].key == plain_run.key
    keys = set()
    for order in (["ben", "cben"], ["cben", "ben"]):
        both = {"ben": {"path": str(stores["ben"]), "test": order},
                "cben": {"path": str(stores["cben"])}}
        keys.add(expand(load_spec(_spec(tmp_path, both)))[0].key)
    assert len(keys) == 1 and plain_run.key not in keys


def test_an_identical_copy_is_scored_exactly_as_the_own_test_split(crossed: Path) -> None:
    own, copy = _rows(crossed, "ben", "ben"), _rows(crossed, "ben", "copy")
    pd.testing.assert_frame_equal(own, copy)
    assert own["value"].notna().any()
    (run,) = results.read_table(crossed).query("dataset == 'ben'")["run"].unique()
    pd.testing.assert_frame_equal(
        pd.read_parquet(results.predictions_path(crossed, run)),
        pd.read_parquet(results.predictions_path(crossed, run, "copy")))


def test_each_test_set_has_a_predictions_file_eval_reads(
        crossed: Path, stores: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    table = results.read_table(crossed)
    (run,) = table.query("dataset == 'ben'")["run"].unique()
    folder = results.run_dir(crossed, run)
    assert {p.name for p in folder.glob("predictions*.parquet")} == {
        "predictions.parquet", "predictions-cben.parquet", "predictions-copy.parquet"}
    path = results.predictions_path(crossed, run, "cben")
    assert main(["eval", str(path), str(stores["cben"]), "--bootstrap", "0"]) == 0
    assert "AP_macro" in capsys.readouterr().out
    st = Store(stores["cben"])
    pred = read_predictions(path, st)
    scored = evaluate(st.task, pred.outputs, pred.target, num_classes=len(st.classes),
                      class_names=st.classes, bootstrap=0)
    mine = _rows(crossed, "ben", "cben").query("stratum == 'all'").set_index("metric")["value"]
    for metric in ("AP_macro", "AP_micro"):
        assert scored.set_index("metric").at[metric, "value"] == mine[metric]


def test_other_test_splits_get_the_train_statistics(stores: dict[str, Path]) -> None:
    bands: dict[str, Any] = {"optical": ["B04", "B03", "B02", "B05"], "sar": ["VV", "VH"],
                             "labeled_per_class": 1, "seed": 0}
    tests = {"copy": stores["copy"], "cben": stores["cben"], "same": stores["ben"]}
    data, others = load_run_data(stores["ben"], tests, **bands)
    alone = load_target(stores["ben"], **bands)
    for key in ("image_s2", "image_s1"):
        own, copy, other, same = (s.inputs[key] for s in (data.test, *others.values()))
        columns = (own, copy, other, same)
        assert all(isinstance(c, Stored) for c in columns)
        reference = alone.test.inputs[key]
        assert isinstance(reference, Stored)
        for column in columns:  # the statistics load_target gives its test split
            assert isinstance(column, Stored)
            assert column.mean is not None and column.std is not None
            assert reference.mean is not None and reference.std is not None
            assert torch.equal(column.mean, reference.mean)
            assert torch.equal(column.std, reference.std)
        device = torch.device("cpu")
        assert isinstance(own, Stored) and isinstance(copy, Stored) and isinstance(same, Stored)
        assert torch.equal(own.materialise(device), copy.materialise(device))
        assert torch.equal(own.materialise(device), same.materialise(device))
    # why it matters: statistics taken from the already standardised train splits are not the
    # train statistics (their stored columns decode to standardised values)
    fresh = load_split(stores["copy"], "test", optical=bands["optical"], sar=bands["sar"],
                       labeled_per_class=1, seed=0)
    standardise([fresh], reference=[alone.labeled, alone.unlabeled])
    wrong, right = fresh.inputs["image_s1"], alone.test.inputs["image_s1"]
    assert isinstance(wrong, Stored) and wrong.mean is not None
    assert isinstance(right, Stored) and right.mean is not None
    assert not torch.equal(wrong.mean, right.mean)


def test_the_cross_table_and_the_published_rows(crossed: Path) -> None:
    text = (crossed / "leaderboard.md").read_text()
    assert "## cben, trained on ben" in text and "## ben, trained on cben" in text
    assert "## ben\n" in text and "## copy, trained on ben" in text
    section = text.split("## Trained on one dataset, tested on others\n", 1)[1]
    macro = _md_table(section, "### AP_macro (%)")
    assert macro[0] == ["method", "trained on", "ben", "cben", "copy"]
    body = {tuple(row[:2]): row[2:] for row in macro[2:]}
    summary = _rows(crossed, "ben", "cben").query("stratum == 'all'").set_index("metric")
    expected = format_cell("AP_macro", summary.at["AP_macro", "value"], np.nan, np.nan, np.nan)
    assert body[(PROBE, "ben")][1].strip("*") == expected
    assert body[(PROBE, "cben")][2] == "–"  # cben's runs were not tested on copy
    assert body[(PROBE, "copy")] == ["–", "–", body[(PROBE, "copy")][2]]
    assert body[("_reported by Doe paper (Table VI): Probe_", "_ben_")] == [
        "_61.50_", "_41.00_", "–"]
    micro = _md_table(section, "### AP_micro (%)")
    reported = {tuple(row[:2]): row[2:] for row in micro[2:] if "reported" in row[0]}
    assert reported == {
        ("_reported by Doe paper (Table VI): Probe_", "_ben_"): ["_70.25_", "_50.50_", "–"],
        ("_reported by Doe paper (Table VI): Probe_", "_cben_"): ["_44.00_", "–", "–"],
    }
    assert "Note to Doe paper, Table VI: AP averaging not stated" in section
    # the per-group tables carry the paper's row of their own (trained on, tested on) pair
    group = _md_table(text, "## cben, trained on ben")
    assert group[-1] == ["_reported by Doe paper (Table VI): Probe_", "_41.00_", "_50.50_", "–"]
    assert not any("reported" in row[0] for row in _md_table(text, "## copy, trained on ben"))
    html = (crossed / "leaderboard.html").read_text()
    assert "Trained on one dataset, tested on others" in html


def test_results_without_a_test_column_still_render(crossed: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    (out / "results").mkdir(parents=True)
    for path in (crossed / "results").glob("*.parquet"):
        frame = pd.read_parquet(path)
        frame = frame[frame["test"] == frame["dataset"]].drop(columns="test")
        frame.to_parquet(out / "results" / path.name)
    table = results.read_table(out)
    assert (table["test"] == table["dataset"]).all()
    render(out)
    text = (out / "leaderboard.md").read_text()
    assert "## ben\n" in text and "trained on" not in text


def _md_table(text: str, heading: str) -> list[list[str]]:
    lines = text.splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows


# --------------------------------------------------------------------------------------------
# What is refused
# --------------------------------------------------------------------------------------------


def _without_20m(source: Path, root: Path) -> Path:
    """A copy of a grouped store whose dataset.json leaves out s2_20m (B05 … B12)."""
    shutil.copytree(source, root)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["arrays"]["s2_20m"]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("kind", ["classes", "task", "bands"])
def test_a_test_store_that_does_not_match_is_refused_before_training(
        kind: str, stores: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    if kind == "classes":
        other = make_store(tmp_path / "other", n=12, task="multilabel", classes=("A", "B"))
        says = "their classes differ: only 'ben' has Urban fabric"
    elif kind == "task":
        other = make_store(tmp_path / "other", n=12)
        says = "'ben' is multilabel and 'other' is multiclass"
    else:
        other = _without_20m(stores["ben"], tmp_path / "other")
        says = "'other' lacks the optical bands B05 that 'ben' selects (ben.optical)"
    datasets = {"ben": {"path": str(stores["ben"]), "optical": ["B04", "B03", "B02", "B05"],
                        "test": ["ben", "other"]},
                "other": {"path": str(other)}}
    out = tmp_path / "out"
    assert main(["leaderboard", "run", str(_spec(tmp_path, datasets)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "dataset 'ben' is tested on 'other', but" in err and says in err
    assert not (out / "results").exists()  # nothing trained


def test_unknown_test_datasets_are_refused(stores: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    datasets = {"ben": {"path": str(stores["ben"]), "test": ["ben", "nope"]}}
    assert main(["leaderboard", "run", str(_spec(tmp_path, datasets)),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "datasets.ben.test names 'nope', not a dataset of the spec" in err
    twice = {"ben": {"path": str(stores["ben"]), "test": ["ben", "ben"]}}
    with pytest.raises(CloudbenchError, match="'test' names ben more than once"):
        load_spec(_spec(tmp_path, twice))
    source = {"m": {"model": "x.pt", "test": ["ben"]}}
    with pytest.raises(CloudbenchError, match="'test' only applies to the datasets"):
        load_spec(_spec(tmp_path, {"ben": {"path": "x"}}, sources=source))


def test_keeping_some_datasets_keeps_those_they_are_tested_on(stores: dict[str, Path],
                                                               tmp_path: Path) -> None:
    datasets = {"ben": {"path": str(stores["ben"]), "test": ["ben", "cben"]},
                "cben": {"path": str(stores["cben"])}}
    spec = load_spec(_spec(tmp_path, datasets))
    with pytest.raises(CloudbenchError, match=r"'ben' is tested on 'cben'.*--datasets ben,cben"):
        restrict(spec, "datasets", ["ben"])
    assert list(restrict(spec, "datasets", ["cben"]).datasets) == ["cben"]


def test_sources_are_optional_unless_a_method_needs_one(stores: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    datasets = {"ben": {"path": str(stores["ben"])}}
    runs = expand(load_spec(_spec(tmp_path, datasets)))
    assert [run.source for run in runs] == [""]
    methods = [{"method": PROBE}, {"method": "finetune-optical"}]
    path = _spec(tmp_path, datasets, methods=methods)
    assert main(["leaderboard", "run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert ("method 'finetune-optical' needs a source model, but the spec has no sources"
            in capsys.readouterr().err)


def test_published_files_by_path_with_test_and_note(tmp_path: Path) -> None:
    path = tmp_path / "doe.yaml"
    path.write_text(yaml.safe_dump(PUBLISHED))
    table = load_published(str(path))
    assert list(zip(table["dataset"], table["test"], strict=True)) == [
        ("ben", "ben"), ("ben", "cben"), ("cben", "ben")]
    assert set(table["source"]) == {""}
    assert list(table["note"]) == ["AP averaging not stated"] * 2 + [""]
    assert table["AP_macro"].isna().tolist() == [False, False, True]
    bad = {**PUBLISHED, "tables": [{**PUBLISHED["tables"][0], "notes": "typo"}]}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(CloudbenchError, match="unknown keys notes; allowed: table, source"):
        load_published(path)
    with pytest.raises(CloudbenchError, match="no published results file"):
        load_published(tmp_path / "missing.yaml")
