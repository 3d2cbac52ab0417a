"""Multi-label datasets end to end: the task losses by hand, the runner's task check, and the
shipped ``multilabel-smoke`` spec on a small CBEN store built through the loopback Sentinel Hub
(tests/shserver.py), as tests/test_cben.py builds one."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sentinelhub import SentinelHubDownloadClient
from torch import nn

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.losses import task_loss
from cloudbench.harness.methods import create, discover
from cloudbench.harness.runner import check_tasks
from cloudbench.harness.spec import LeaderboardSpec, load_spec
from cloudbench.harness.transfer import adapt_source, predict_source
from cloudbench.sources.earthenv import write_climatology
from cloudbench.sources.fixtures import write_bigearthnet_v1
from cloudbench.sources.synthetic import SyntheticWorld
from cloudbench.store import Store
from tests.shserver import CLIENT_ID, CLIENT_SECRET, SHServer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------------

LOGITS = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
MULTI_HOT = [[1, 0, 1], [0, 1, 1]]


def _logistic(x: float, y: int) -> float:
    """-[y log σ(x) + (1 - y) log σ(-x)]"""
    return math.log1p(math.exp(-x)) if y else math.log1p(math.exp(x))


def test_multilabel_losses_by_hand() -> None:
    terms = [[_logistic(x, y) for x, y in zip(xs, ys, strict=True)]
             for xs, ys in zip(LOGITS, MULTI_HOT, strict=True)]
    bce = sum(sum(row) for row in terms) / 6  # the mean over the 2 x 3 (sample, class) pairs
    soft_margin = sum(sum(row) / 3 for row in terms) / 2  # per sample over classes, then samples
    logits, label = torch.tensor(LOGITS), torch.tensor(MULTI_HOT)  # int64 multi-hot, as stored
    assert float(task_loss(logits, label, "multilabel")) == pytest.approx(bce, rel=1e-6)
    assert float(task_loss(logits, label, "multilabel", "bce")) == pytest.approx(0.6304882)
    soft = task_loss(logits, label, "multilabel", "soft-margin")
    assert float(soft) == pytest.approx(soft_margin, rel=1e-6)
    assert bce == pytest.approx(soft_margin)  # without class weights: the same objective


def test_multiclass_loss_is_cross_entropy_by_hand() -> None:
    label = torch.tensor([0, 2])
    expected = 0.0
    for row, k in zip(LOGITS, label.tolist(), strict=True):
        expected += math.log(sum(math.exp(v) for v in row)) - row[k]
    loss = task_loss(torch.tensor(LOGITS), label, "multiclass", "soft-margin")  # choice ignored
    assert float(loss) == pytest.approx(expected / 2, rel=1e-6)
    with pytest.raises(ValueError, match="task must be multiclass or multilabel"):
        task_loss(torch.tensor(LOGITS), label, "regression")


def test_f_s_learns_multi_hot_labels_with_either_loss_name() -> None:
    # images whose channel k is bright where the sample has class k (several classes at once)
    generator = torch.Generator().manual_seed(0)
    label = (torch.rand(32, 4, generator=generator) > 0.5).long()
    images = torch.randn(32, 4, 2, 2, generator=generator) * 0.1 + label[:, :, None, None] * 2.0
    labeled = SplitData({"image_s2": images, "label": label}, [f"p{i}" for i in range(32)],
                        ["clear"] * 32, list("ABCD"), "multilabel")
    train = TrainConfig(epochs=8, batch_size=16, optimizer="adamw", lr=0.1, amp="off")
    heads = {}
    for name in ("bce", "soft-margin"):
        torch.manual_seed(0)
        trunk = (nn.Flatten(), 16)  # a stand-in for the source encoder: the pixels as features
        f_s = adapt_source(Engine("cpu", seed=0), trunk, labeled, 4, train,
                           multilabel_loss=name)
        predicted = predict_source(Engine("cpu"), f_s, labeled.inputs) > 0
        assert torch.equal(predicted, label.bool()), name  # a separable training set, learnt
        heads[name] = f_s.head.weight.detach()
    torch.testing.assert_close(heads["bce"], heads["soft-margin"])  # the same objective
    with pytest.raises(ValueError, match="multilabel_loss must be bce or soft-margin"):
        adapt_source(Engine("cpu"), (nn.Flatten(), 16), labeled, 4, train, multilabel_loss="l2")


def test_which_methods_handle_multilabel_datasets() -> None:
    methods = discover()
    assert {n for n, m in methods.items() if "multilabel" in m.tasks} == {
        "sl", "finetune-optical", "finetune-sar", "ssl", "cr-then-classify", "spl", "cyc-it"}
    # a pipeline handles what its classifier handles
    assert create("cr-then-classify", {"classifier": "kd-s"}).tasks == ("multiclass",)
    ssl = {"classifier": "ssl", "classifier_params": {"backbone": "moco-v2-resnet50"}}
    assert create("cr-then-classify", ssl).tasks == ("multiclass", "multilabel")
    assert create("cyc-it", {"classifier": "kd-s"}).tasks == ("multiclass",)
    for name in ("esccs", "kd-s", "kdhn", "tlf", "ttl", "dsan"):
        assert methods[name].tasks == ("multiclass",)


def test_multilabel_loss_is_a_validated_method_parameter() -> None:
    spec = load_spec("multilabel-smoke")
    entries = {m.name or m.method: m for m in spec.methods}
    assert entries["finetune-optical-soft-margin"].params == {"multilabel_loss": "soft-margin"}
    with pytest.raises(CloudbenchError,
                       match="multilabel_loss: Input should be 'bce' or 'soft-margin'"):
        load_spec("multilabel-smoke", ["methods=[{method: sl, params: {multilabel_loss: l2}}]"])


# --------------------------------------------------------------------------------------------
# The runner's task check
# --------------------------------------------------------------------------------------------


def test_check_tasks_names_every_mismatch_in_one_message() -> None:
    methods = ("methods=[{method: sl}, {method: esccs}, {method: esccs, name: esccs-no-irm, "
               "params: {irm: 'off'}}, {method: kdhn}]")
    spec = load_spec("multilabel-smoke", [methods])
    with pytest.raises(CloudbenchError) as raised:
        check_tasks(spec, {"cben": "multilabel", "demo": "multiclass"})
    assert str(raised.value) == (
        "method 'esccs' handles multiclass datasets only; dataset 'cben' is multilabel; "
        "method 'esccs' (entry 'esccs-no-irm') handles multiclass datasets only; dataset 'cben' "
        "is multilabel; method 'kdhn' handles multiclass datasets only; dataset 'cben' is "
        "multilabel; dataset 'demo' is multiclass, scored by OA, AA, Kappa, but the spec's "
        "metrics are AP_macro, AP_micro"
    )
    check_tasks(spec.model_copy(update={"methods": spec.methods[:1]}), {"cben": "multilabel"})


def test_the_default_metrics_score_both_tasks() -> None:
    spec = LeaderboardSpec.model_validate({
        "name": "mixed", "datasets": {"cben": {"path": "a"}, "demo": {"path": "b"}},
        "sources": {"s": {"path": "c"}}, "methods": [{"method": "sl"}]})
    assert spec.metrics == ["OA", "AA", "Kappa", "AP_macro", "AP_micro"]
    check_tasks(spec, {"cben": "multilabel", "demo": "multiclass"})


# --------------------------------------------------------------------------------------------
# The multilabel-smoke spec on a CBEN store
# --------------------------------------------------------------------------------------------

T0 = dt.datetime(2018, 6, 15, 10, 10, 31, tzinfo=dt.UTC)
"""The original BigEarthNet sensing; the re-acquisition is 12 days later, 60% cloud cover."""
LABELS = [[0], [1], [0, 1], [0, 2], [1, 2], [2], [0, 1, 2], [0], [1, 2]]
"""19-class labels of the 3 x 3 patches: three classes, each with positives and negatives in
both splits."""
SPLITS = ["test" if i % 3 == 2 else "train" for i in range(len(LABELS))]
METHODS = {"sl", "finetune-optical", "finetune-optical-soft-margin", "finetune-sar"}


@pytest.fixture(scope="module")
def cben_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 9-patch CBEN store (6 train, 3 test, clouds on every patch) via `cloudbench build`."""
    base = tmp_path_factory.mktemp("multilabel")
    world = SyntheticWorld(
        seed=3, crs="EPSG:32633", left=404400.0, top=5342400.0, size=360, region_size=60,
        start="2018-05-01", end="2018-07-31", s1_revisit_days=6, mgrs_tile="33UUP",
        s2_schedule=[{"datetime": T0.isoformat(), "cloud_cover": 0.0},
                     {"datetime": (T0 + dt.timedelta(days=12)).isoformat(),
                      "cloud_cover": 60.0}],
    )
    cells = [(row, col) for row in range(3) for col in range(3)]
    write_bigearthnet_v1(base / "v1", world, cells, product_time=T0, labels=LABELS,
                         split=SPLITS)
    write_climatology(base / "earthenv", mean=60.0, sd=10.0)
    out = base / "cben"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SH_CLIENT_ID", CLIENT_ID)
        mp.setenv("SH_CLIENT_SECRET", CLIENT_SECRET)
        mp.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the loopback server serves plain http
        mp.setenv("XDG_CONFIG_HOME", str(base / "xdg"))  # no stored sentinelhub config
        SentinelHubDownloadClient.clear_cache()
        with SHServer(world, page_size=2) as server:
            assert main(["build", "cben", "--bigearthnet-root", str(base / "v1"),
                         "--climatology", str(base / "earthenv"), "--out", str(out),
                         "--sh-base-url", server.url,
                         "--sh-token-url", f"{server.url}/oauth/token", "--workers", "1"]) == 0
        SentinelHubDownloadClient.clear_cache()
    return out


@pytest.fixture(scope="module")
def finished(cben_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multilabel-lb") / "out"
    with torch.random.fork_rng():
        assert main(["leaderboard", "run", "multilabel-smoke", "--out", str(out),
                     "--set", f"datasets.cben.path={cben_store}"]) == 0
    return out


def test_the_store_is_multilabel_with_clouds(cben_store: Path) -> None:
    st = Store(cben_store)
    assert (st.task, st.meta["kind"], len(st.classes)) == ("multilabel", "cben", 19)
    test = st.samples[st.samples["split"] == "test"]
    assert len(test) == 3 and (test["cloud_fraction"] > 0).all()


def test_every_method_reports_ap_with_intervals_per_class_and_per_stratum(
    finished: Path, cben_store: Path,
) -> None:
    table = results.read_table(finished)
    metrics = table[table["kind"] == "metric"]
    assert set(metrics["method"]) == METHODS
    assert not metrics["metric"].isin(["OA", "AA", "Kappa"]).any()
    st = Store(cben_store)
    test = st.samples[st.samples["split"] == "test"]
    present = {st.classes[k] for labels in test["label"] for k in labels}  # 3 of the 19
    for method, rows in metrics.groupby("method"):
        overall = rows[rows["stratum"] == "all"].set_index("metric")
        for name in ("AP_macro", "AP_micro"):
            value, low, high = overall.loc[name, ["value", "ci_low", "ci_high"]]
            assert 0 <= low <= high <= 1 and 0 <= value <= 1, (method, name)
        per_class = overall.filter(like="AP/", axis=0)["value"]
        assert list(per_class.index) == [f"AP/{c}" for c in st.classes]
        assert {k[3:] for k, v in per_class.items() if np.isfinite(v)} == present
        assert overall.loc["AP_macro", "value"] == pytest.approx(per_class.mean())  # nanmean
        micro = rows[(rows["metric"] == "AP_micro") & (rows["stratum"] != "all")]
        for prefix in ("state=", "fraction="):
            strata = micro[micro["stratum"].str.startswith(prefix)]
            assert len(strata) >= 2 and strata["n"].sum() == len(test), (method, prefix)
        assert micro["value"].notna().all()


def test_predictions_are_scores_per_class(finished: Path) -> None:
    table = results.read_table(finished)
    for key in table["run"].unique():
        predictions = pd.read_parquet(results.run_dir(finished, key) / "predictions.parquet")
        assert [c for c in predictions if c.startswith("score_")] == [
            f"score_{k}" for k in range(19)]


def test_soft_margin_trains_the_same_model_as_bce(finished: Path) -> None:
    table = results.read_table(finished)
    runs = table.drop_duplicates("method").set_index("method")["run"]
    scores = {name: pd.read_parquet(results.run_dir(finished, runs[name])
                                    / "predictions.parquet").filter(like="score_")
              for name in ("finetune-optical", "finetune-optical-soft-margin")}
    np.testing.assert_allclose(scores["finetune-optical"], scores["finetune-optical-soft-margin"],
                               rtol=1e-4, atol=1e-5)


def test_sl_logs_per_modality_multilabel_losses(finished: Path) -> None:
    history = results.read_histories(finished)
    sl = history[history["method"] == "sl"].set_index("term")["value"]
    assert {"loss", "loss_s2", "loss_s1"} <= set(sl.index)
    assert np.isfinite(sl.loc[["loss", "loss_s2", "loss_s1"]]).all()


def test_the_leaderboard_shows_ap_tables(finished: Path) -> None:
    markdown = (finished / "leaderboard.md").read_text()
    lines = markdown.splitlines()
    start = lines.index("## cben · source synthetic-clear")
    table = [line for line in lines[start + 1:start + 8] if line.startswith("| ")]
    assert table[0] == ("| method | AP_macro (%) | p (AP_macro) | AP_micro (%) | p (AP_micro) | "
                        "robustness (AP_macro) |")  # p: paired tests on the store given by path
    assert {row.split(" | ")[0][2:].strip("*") for row in table[1:]} == METHODS
    assert all(row.count("[") == 2 for row in table[1:])  # an interval in each cell
    html = (finished / "leaderboard.html").read_text()
    assert "<th>AP_macro (%)</th>" in html and "<th>OA (%)</th>" not in html
    assert (finished / "bars_AP_macro.png").is_file()


def test_a_multiclass_only_method_is_refused_before_anything_trains(
    cben_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    code = main(["leaderboard", "run", "multilabel-smoke", "--out", str(out),
                 "--set", f"datasets.cben.path={cben_store}",
                 "--set", "methods=[{method: sl}, {method: esccs}]"])
    assert code == 2
    assert capsys.readouterr().err == ("error: method 'esccs' handles multiclass datasets only; "
                                       "dataset 'cben' is multilabel\n")
    assert results.read_table(out).empty
    assert not (out / "sources").exists() and not (out / "runs").exists()
