"""The standard leaderboard: every registered method on every dataset of a task it handles, the
per-dataset labelled counts, and its smoke spec end to end through `cloudbench demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.methods import create, discover
from cloudbench.harness.spec import LeaderboardSpec, expand, labeled_count, load_spec

TASKS = {
    "standard": {"sen12ms-cloud": "multiclass", "cben": "multilabel",
                 "bigearthnet": "multilabel"},
    "standard-smoke": {"demo": "multiclass", "bigearthnet": "multilabel",
                       "cben": "multilabel"},
}
"""The task of each dataset of the two specs (their stores' classes say so once built)."""
NEEDS_PAIRS = {"spl"}
"""Methods that fine-tune on the store's own cloud-free targets (``s2_clear``), which the
multi-label stores (CBEN, BigEarthNet) do not hold."""
NO_CR_STORE = {("standard-smoke", "cr-then-classify", "multilabel")}
"""The smoke spec has no cloud-removal training store for its multi-label datasets (standard.yaml
trains the network on SEN12MS-CR, which the synthetic world has no stand-in for)."""
RECONSTRUCTION_ONLY = {"cloud-removal"}
"""Methods of stores without classes (SEN12MS-CR): scored in cloud-removal.yaml instead."""


def _shipped_methods() -> set[str]:
    return {name for name, cls in discover().items()
            if cls.__module__.startswith("cloudbench.")} - RECONSTRUCTION_ONLY


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_method_runs_on_every_dataset_of_a_task_it_handles(name: str) -> None:
    spec = load_spec(name)
    assert set(spec.datasets) == set(TASKS[name])
    assert {entry.method for entry in spec.methods} == _shipped_methods()
    for entry in spec.methods:  # never on a dataset of a task the method does not handle
        handled = create(entry.method, entry.params).tasks
        for dataset, task in TASKS[name].items():
            if task not in handled:
                assert not entry.runs_on(dataset), (entry.name or entry.method, dataset)
    for method in _shipped_methods():  # and on every dataset of a task it handles
        handled = {t for e in spec.methods if e.method == method
                   for t in create(e.method, e.params).tasks}
        for dataset, task in TASKS[name].items():
            exempt = ((method in NEEDS_PAIRS and task == "multilabel")
                      or (name, method, task) in NO_CR_STORE)
            if task in handled and not exempt:
                assert any(e.method == method and e.runs_on(dataset) for e in spec.methods), (
                    method, dataset)
    # the multi-label datasets are tested on each other: the CBEN paper's 2 x 2
    multilabel = sorted(d for d, t in TASKS[name].items() if t == "multilabel")
    runs = expand(spec)
    assert {r.tests for r in runs if r.dataset in multilabel} == {tuple(multilabel)}


def test_the_standard_spec_has_the_papers_protocols() -> None:
    spec = load_spec("standard")
    assert len(spec.seeds) >= 3
    assert labeled_count(spec, "sen12ms-cloud") == 20  # ESCCS: 20 labelled per class
    assert labeled_count(spec, "cben") == labeled_count(spec, "bigearthnet") == sys.maxsize
    train = spec.train
    assert (train.optimizer, train.lr, train.weight_decay, train.epochs, train.batch_size) == (
        "sgd", 1e-2, 5e-4, 200, 64)
    entries = {entry.name or entry.method: entry for entry in spec.methods}
    assert entries["moco-v2"].train["lr"] == 8.0 and entries["mae"].train["optimizer"] == "lars"


def test_a_source_takes_no_labelled_count() -> None:
    spec = load_spec("standard").model_dump(mode="json")
    spec["sources"]["NR"]["labeled_per_class"] = 20
    with pytest.raises(Exception, match="labeled_per_class"):
        LeaderboardSpec.model_validate(spec)
    spec = load_spec("standard").model_dump(mode="json")
    spec["datasets"]["cben"]["labeled_per_class"] = 0
    with pytest.raises(Exception, match="at least 1 or 'all'"):
        LeaderboardSpec.model_validate(spec)
    with pytest.raises(CloudbenchError, match="labeled_per_class"):
        load_spec("standard", ["datasets.cben.labeled_per_class=-3"])


def test_the_demo_runs_every_family_on_both_tasks(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    table = results.read_table(out)
    spec = load_spec("standard-smoke")
    entries = {entry.name or entry.method for entry in spec.methods}
    assert set(table["method"]) == entries
    metrics = table[(table["kind"] == "metric") & (table["stratum"] == "all")]
    scored = metrics.groupby("dataset")["metric"].agg(set).to_dict()
    assert {"OA", "AA", "Kappa"} <= scored["demo"]
    assert {"AP_macro", "AP_micro"} <= scored["cben"] and "OA" not in scored["cben"]
    # scored against measured cloud: per cloud state and cloud-fraction bin
    strata = set(table[table["kind"] == "metric"]["stratum"])
    assert any(s.startswith("state=") for s in strata)
    assert any(s.startswith("fraction=") for s in strata)
    assert (out / "leaderboard.md").is_file() and (out / "leaderboard.html").is_file()
