"""The SSL family (baselines/ssl.py) and the weight files (cloudbench weights): the standardised
inputs folded into the backbone's normalisation, linear-probe freezing, the weighted k-NN by
hand, fake weights loading through the released files' code path, clear errors."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from conftest import grouped_store
from pydantic import ValidationError

from cloudbench.baselines.ssl import Params, knn_scores, standardised_input
from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import SplitData, load_target
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, create
from cloudbench.models.backbones import FUSED_BANDS, S2_BANDS, build_backbone
from cloudbench.models.weights import fake_name, select, write_fake

OPTICAL = list(S2_BANDS)
SAR = ["VV", "VH"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 24-sample BigEarthNet-shaped store (12 L2A bands, VV, VH), every train sample labelled."""
    root = grouped_store(tmp_path_factory.mktemp("ssl") / "ben", "bigearthnet", n=24)
    return load_target(root, optical=OPTICAL, sar=SAR, labeled_per_class=1000, seed=0)


def _context(target: Any, **train: Any) -> FitContext:
    config = TrainConfig(**{"epochs": 2, "batch_size": 4, "lr": 0.01, **train})
    return FitContext(target.labeled, target.unlabeled, None, Engine("cpu", seed=0), config,
                      target.num_classes, target.test.task, 0, lambda stage, entry: None)


def test_standardised_inputs_give_the_features_of_the_physical_units() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("moco-v2-resnet50", FUSED_BANDS, pretrained=False).eval().double()
    folded = copy.deepcopy(backbone)
    generator = torch.Generator().manual_seed(3)
    x = torch.cat([-15 + 5 * torch.randn(2, 2, 32, 32, generator=generator),
                   0.3 * torch.rand(2, 12, 32, 32, generator=generator)], 1).double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    standardised_input(folded, mean.float(), std.float())
    folded.double()
    z = (x - mean[None, :, None, None]) / std[None, :, None, None]
    torch.testing.assert_close(folded.features(z), backbone.features(x), rtol=1e-5, atol=1e-6)


def test_the_harness_records_the_standardisation_it_applies(target: Any) -> None:
    labeled: SplitData = target.labeled
    assert labeled.bands == {"image_s2": OPTICAL, "image_s1": SAR}
    mean, std = labeled.statistics["image_s1"]
    assert mean.shape == std.shape == (2,)
    assert -20 < float(mean[0]) < -4 and 2 < float(std[0]) < 6  # the store's dB values


def test_linear_probe_trains_the_head_only(target: Any) -> None:
    method = create("ssl", {"backbone": "moco-v2-resnet50", "pretrained": False,
                            "image_size": 32})
    torch.manual_seed(0)
    method.fit(_context(target))
    model: Any = method.model  # type: ignore[attr-defined]
    before = copy.deepcopy(model.encoder.state_dict())
    head = copy.deepcopy(model.head.state_dict())
    torch.manual_seed(0)
    method.fit(_context(target, epochs=3))  # a new model, same initialisation, more epochs
    model = method.model  # type: ignore[attr-defined]
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    for key, value in model.encoder.state_dict().items():  # weights and batch norm statistics
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert any(not torch.equal(v, head[k]) for k, v in model.head.state_dict().items())
    scores = method.predict(target.test)
    assert scores.shape == (len(target.test), target.num_classes)


def test_finetuning_trains_the_backbone(target: Any) -> None:
    method = create("ssl", {"backbone": "mae-vit-s16", "protocol": "finetune", "inputs": "s2",
                            "pretrained": False, "image_size": 16})
    torch.manual_seed(0)
    build_backbone("mae-vit-s16", OPTICAL, pretrained=False)  # the same draws as the method's
    method.fit(_context(target))
    torch.manual_seed(0)
    untrained = build_backbone("mae-vit-s16", OPTICAL, pretrained=False)
    model: Any = method.model  # type: ignore[attr-defined]
    trained = model.encoder.net.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in untrained.net.state_dict().items())


def test_knn_scores_by_hand() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    query = torch.tensor([[2.0, 0.0]])
    # cosine similarities 1, 0, 1/sqrt(2); k=2 keeps banks 0 and 2
    w0, w2 = torch.exp(torch.tensor(1.0) / 0.5), torch.exp(torch.tensor(2 ** -0.5) / 0.5)
    expected = torch.stack([(w0 + w2) / (w0 + w2), w2 / (w0 + w2)])[None]
    torch.testing.assert_close(knn_scores(bank, labels, query, k=2, temperature=0.5), expected)
    # k beyond the bank takes the whole bank
    assert knn_scores(bank, labels, query, k=10, temperature=0.5).shape == (1, 2)


def test_knn_method_scores_from_the_labelled_features(target: Any) -> None:
    method = create("ssl", {"backbone": "moco-v2-resnet50", "protocol": "knn", "knn_k": 1,
                            "pretrained": False, "image_size": 32})
    torch.manual_seed(0)
    method.fit(_context(target))
    scores = method.predict(target.labeled)  # every sample is its own nearest neighbour
    torch.testing.assert_close(scores, target.labeled.labels.float())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with the fake weights of every backbone in ``fake-weights/``."""
    folder = tmp_path_factory.mktemp("ssl-work")
    assert main(["weights", "fake", "--out", str(folder / "fake-weights")]) == 0
    return folder


@pytest.fixture(scope="module")
def fake(workdir: Path) -> Path:
    return workdir / "fake-weights"


def test_fake_weights_load_through_the_released_files_code(fake: Path, target: Any) -> None:
    s2 = fake / fake_name("moco-v2-resnet50", "s2")
    s1 = fake / fake_name("moco-v2-resnet50", "s1")
    method = create("ssl", {"backbone": "moco-v2-resnet50", "s2_weights": str(s2),
                            "s1_weights": str(s1), "image_size": 32})
    torch.manual_seed(0)
    method.fit(_context(target))
    state = torch.load(s2, weights_only=True)
    model: Any = method.model  # type: ignore[attr-defined]
    torch.testing.assert_close(model.encoder.net.state_dict()["layer4.2.conv3.weight"],
                               state["layer4.2.conv3.weight"])


def test_fake_weights_never_go_into_the_hub_cache(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CloudbenchError, match="never written into the torch hub cache"):
        write_fake(tmp_path / "hub" / "checkpoints", ["moco-v2-resnet50"])


def test_a_missing_weights_file_names_the_path_and_the_fetch_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: Any) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    method = create("ssl", {"backbone": "mae-vit-s16", "inputs": "s2", "image_size": 16})
    with pytest.raises(CloudbenchError) as err:
        method.fit(_context(target))
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "B13_vits16_mae_ep99_enc.pth") in message
    assert "cloudbench weights fetch mae-vit-s16:s2" in message


def test_derived_channels_are_refused(tmp_path: Path, target: Any) -> None:
    root = grouped_store(tmp_path / "ben", "bigearthnet", n=12)
    data = load_target(root, optical=OPTICAL, sar=["VV", "VH", "VV/VH"], labeled_per_class=5,
                       seed=0)
    method = create("ssl", {"backbone": "moco-v2-resnet50", "pretrained": False})
    with pytest.raises(CloudbenchError, match="VV/VH"):
        method.fit(_context(data))


@pytest.mark.parametrize(("params", "message"), [
    ({"weights": "a.pt", "s2_weights": "b.pth"}, "not both"),
    ({"weights": "a.pt", "inputs": "late"}, "late fusion"),
    ({"backbone": "resnet18"}, "backbone"),
    ({"protocol": "probe"}, "protocol"),
])
def test_parameters_are_validated(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Params.model_validate({"backbone": "moco-v2-resnet50", **params})


def test_weights_are_selected_by_any_of_their_names() -> None:
    assert [e.label for e in select(["moco-v2-resnet50"])] == ["moco-v2-resnet50:s2",
                                                               "moco-v2-resnet50:s1"]
    assert [e.label for e in select(["ViTSmall16_Weights.SENTINEL2_ALL_MAE"])] == ["mae-vit-s16:s2"]
    assert len(select(["all"])) == 6
    with pytest.raises(CloudbenchError, match="no weights named 'resnet'"):
        select(["resnet"])


def test_weights_list_and_fetch_without_a_network(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: Any, **kwargs: Any) -> None:
        raise requests.ConnectionError("[Errno -2] Name or service not known")

    waits: list[float] = []
    monkeypatch.setattr(requests.Session, "get", offline)
    monkeypatch.setattr(time, "sleep", waits.append)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "moco-v2-resnet50:s2" in out and "missing" in out
    assert main(["weights", "fetch", "mae-vit-s16:s2"]) == 2
    err = capsys.readouterr().err
    assert "ViTSmall16_Weights.SENTINEL2_ALL_MAE: cannot download" in err
    assert "after 5 tries: [Errno -2] Name or service not known" in err
    assert waits == [2.0, 4.0, 8.0, 16.0]  # the back-off, not slept here
    assert str(tmp_path / "hub" / "checkpoints" / "B13_vits16_mae_ep99_enc.pth") in err


def test_an_own_pretraining_checkpoint_is_the_backbone(tmp_path: Path, target: Any) -> None:
    from cloudbench.models.backbones import save_checkpoint

    torch.manual_seed(5)
    pretrained = build_backbone("mae-vit-s16", OPTICAL, pretrained=False)
    path = save_checkpoint(tmp_path / "mae.pt", pretrained, pretext="mae", data="test",
                           epochs=1)
    method = create("ssl", {"backbone": "mae-vit-s16", "inputs": "s2", "weights": str(path),
                            "image_size": 16})
    method.fit(_context(target))
    model: Any = method.model  # type: ignore[attr-defined]
    for key, value in pretrained.net.state_dict().items():
        torch.testing.assert_close(model.encoder.net.state_dict()[key], value)
    wrong = create("ssl", {"backbone": "mae-vit-s16", "inputs": "fused", "weights": str(path),
                           "image_size": 16})
    with pytest.raises(CloudbenchError, match="bands"):
        wrong.fit(_context(target))


@pytest.fixture(scope="module")
def smoke(workdir: Path) -> Path:
    """`cloudbench leaderboard run cben-smoke`, offline, in a working directory holding only
    the fake weights: the synthetic BigEarthNet/CBEN pair is built from its recipes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        with torch.random.fork_rng():
            assert main(["leaderboard", "run", "cben-smoke", "--out", "out"]) == 0
    return workdir / "out"


def test_cben_smoke_renders_the_two_by_two_table(smoke: Path) -> None:
    from cloudbench.harness.results import read_table

    table = read_table(smoke)
    metric = table[(table["kind"] == "metric") & (table["stratum"] == "all")]
    pairs = set(zip(metric["dataset"], metric["test"], strict=True))
    assert pairs == {(a, b) for a in ("bigearthnet", "cben") for b in ("bigearthnet", "cben")}
    assert set(metric["method"]) == {"moco-v2", "moco-v3", "mae", "mae-knn"}
    assert table["run"].nunique() == 8
    strata = set(table.loc[table["metric"] == "AP_macro", "stratum"])
    assert "state=clear" in strata and any(s.startswith("fraction=") for s in strata)
    assert any(m.startswith("AP/") for m in table["metric"])  # per-class AP
    text = (smoke / "leaderboard.md").read_text()
    assert "## Trained on one dataset, tested on others" in text
    assert "| method | trained on | bigearthnet | cben |" in text
    assert "reported by CBEN paper (Table VI): Moco2, finetuned on CloudyBigEarthNet" in text
    assert "_72.50_" in text  # the paper's MoCo v2, CBEN -> CBEN


def test_cben_smoke_ap_is_scikit_learns_on_the_saved_predictions(smoke: Path) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import average_precision_score

    from cloudbench.harness.results import read_table, run_dir
    from cloudbench.store import Store

    table = read_table(smoke)
    rows = table[(table["metric"].isin(["AP_macro", "AP_micro"])) & (table["stratum"] == "all")]
    checked = 0
    for row in rows.itertuples():
        own = row.test == row.dataset
        name = "predictions.parquet" if own else f"predictions-{row.test}.parquet"
        predictions = pd.read_parquet(run_dir(smoke, row.run) / name)
        test_store = Store(smoke / "datasets" / str(row.test))
        samples = test_store.samples.set_index("id")
        labels = np.zeros((len(predictions), 19), dtype=int)
        for i, sample in enumerate(predictions["id"]):
            labels[i, list(samples.at[sample, "label"])] = 1
        scores = predictions[[f"score_{k}" for k in range(19)]].to_numpy()
        present = labels.sum(axis=0) > 0
        expected = (average_precision_score(labels[:, present], scores[:, present])
                    if row.metric == "AP_macro"
                    else average_precision_score(labels, scores, average="micro"))
        assert row.value == pytest.approx(expected, abs=1e-6)
        checked += 1
    assert checked == 32  # 8 runs, each on both test sets, AP macro and micro


def test_the_cben_spec_loads_and_takes_method_settings_by_position() -> None:
    from cloudbench.harness.spec import expand, labeled_count, load_spec

    spec = load_spec("cben", ["methods.1.params.s1_weights=own/s1.pth", "seeds=[0]"])
    assert spec.methods[1].params["s1_weights"] == "own/s1.pth"
    assert spec.methods[0].params.get("s1_weights") is None
    assert labeled_count(spec, "cben") > 10**12  # "all": every train sample is labelled
    runs = expand(spec)
    assert len(runs) == 8 and {r.tests for r in runs} == {("bigearthnet", "cben")}
    assert {r.name for r in runs} == {"moco-v2", "moco-v3", "mae", "uncrtaints-then-moco-v2"}
    with pytest.raises(CloudbenchError, match="methods has 4 entries"):
        load_spec("cben", ["methods.4.params.s1_weights=x.pth"])
    with pytest.raises(CloudbenchError, match="labeled_per_class"):
        load_spec("cben", ["labeled_per_class=0"])


def test_a_method_entry_reads_its_own_bands() -> None:
    from cloudbench.harness.spec import expand, load_spec, run_bands

    spec = load_spec("esccs")
    runs = {r.name: r for r in expand(spec) if r.dataset == "sen12ms-cloud" and r.seed == 0
            and r.source == "NR"}
    ssl, sl = runs["moco-v2"], runs["sl"]
    assert run_bands(spec, sl, ("s2", "s1")) == {"optical": ["B04", "B03", "B02"],
                                                 "sar": ["VV", "VH", "VV/VH"]}
    bands = run_bands(spec, ssl, ("s2", "s1"))
    assert bands["sar"] == ["VV", "VH"] and len(bands["optical"]) == 12  # B10 left out
    assert run_bands(spec, ssl, ("s2",))["sar"] == []
    unchanged = load_spec("esccs", ["methods=[{method: sl}]"])
    assert expand(unchanged)[0].key == sl.key  # bands a method does not set leave keys alone
