"""Cloud-removal networks (cloudbench.models.cloud_removal) and losses (cloudbench.harness.
cr_losses): parameter counts, shapes, positive variances, SSCR's gradients through its SAR
branch and fusion weight, each loss against values worked out by hand, determinism on CPU;
band counts as constructor arguments (12 L2A bands, optical only) and checkpoints."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from cloudbench.errors import CloudbenchError
from cloudbench.harness.cr_losses import (
    cr_loss,
    gnll_loss,
    l1_loss,
    l2_loss,
    mgnll_loss,
    pearson_correlation,
    sscr_loss,
    structure_loss,
)
from cloudbench.models.cloud_removal import (
    CR_MODELS,
    PARAMETER_COUNTS,
    SSCR,
    build_cr_model,
    count_parameters,
    load_cr_checkpoint,
    save_cr_checkpoint,
)

B, H, W = 2, 32, 32


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 13, H, W, generator=g), torch.rand(B, 2, H, W, generator=g)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_cr_model(name) for name in CR_MODELS}


# --- parameter counts ------------------------------------------------------------------------

def test_parameter_counts(models: dict[str, torch.nn.Module]) -> None:
    counts = {name: count_parameters(m) for name, m in models.items()}
    assert counts == PARAMETER_COUNTS
    assert counts == {"uncrtaints": 520_218, "sscr": 535_583, "unet": 1_930_861,
                      "utae": 1_058_925}
    # UnCRtainTS mono-temporal with its variance head: ≈ 0.52 M (the paper's figure)
    assert abs(counts["uncrtaints"] - 520_000) < 5_000


def test_parameter_counts_other_heads() -> None:
    # mean-only UnCRtainTS loses the 13 variance outputs of the last 1×1 conv: 13 · (128 + 1)
    assert count_parameters(build_cr_model("uncrtaints", variance=False)) == 520_218 - 13 * 129
    assert count_parameters(build_cr_model("sscr", variance=True)) == 535_583 + 13 * 129
    assert count_parameters(build_cr_model("unet", variance=True)) == 1_930_861 + 13 * 33
    assert count_parameters(build_cr_model("utae", variance=True)) == 1_058_925 + 13 * 33


def test_sscr_is_uncrtaints_plus_branch() -> None:
    # the branch: 1×1 conv 2→32 + GN (160), Scharr refinement (3_568, kernels fixed), 1×1 conv
    # 32→32 + GN (1_120), two MBConv(32) (6_080 each), mask conv (33), beta (1)
    base = count_parameters(build_cr_model("uncrtaints", variance=False))
    assert count_parameters(build_cr_model("sscr")) - base == 160 + 3_568 + 1_120 + 2 * 6_080 + 34


# --- shapes, variance ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CR_MODELS))
def test_shapes_and_variance(models: dict[str, torch.nn.Module], name: str) -> None:
    model = models[name]
    s2, s1 = _inputs()
    with torch.no_grad():
        out = model(s2, s1)
    assert out["mean"].shape == (B, 13, H, W)
    assert torch.all((out["mean"] >= 0) & (out["mean"] <= 1))
    assert ("variance" in out) == (name == "uncrtaints")
    if name == "sscr":
        assert out["sar_mask"].shape == (B, 1, H, W)
    with_var = build_cr_model(name, variance=True)
    with torch.no_grad():
        out = with_var(s2[..., :16, :16], s1[..., :16, :16])
    assert out["variance"].shape == (B, 13, 16, 16)
    assert torch.all(out["variance"] > 0)


def test_variance_positive_for_extreme_logits() -> None:
    model = build_cr_model("uncrtaints").eval()
    assert isinstance(model.out_conv, torch.nn.Conv2d) and model.out_conv.bias is not None
    torch.nn.init.constant_(model.out_conv.bias, -1e4)
    with torch.no_grad():
        out = model(*_inputs())
    assert torch.all(out["variance"] > 0)


def test_input_checks(models: dict[str, torch.nn.Module]) -> None:
    s2, s1 = _inputs()
    with pytest.raises(CloudbenchError, match="s2_cloudy"):
        models["uncrtaints"](s2[:, :12], s1)
    with pytest.raises(CloudbenchError, match="s1"):
        models["uncrtaints"](s2, s1[:, :1])
    with pytest.raises(CloudbenchError, match="multiples of 8"):
        models["unet"](s2[..., :30, :30], s1[..., :30, :30])
    with pytest.raises(CloudbenchError, match="unknown"):
        build_cr_model("nope")


# --- SSCR gradients --------------------------------------------------------------------------

def test_sscr_branch_and_fusion_weight_get_gradients() -> None:
    torch.manual_seed(0)
    model = build_cr_model("sscr")
    assert isinstance(model, SSCR)
    assert isinstance(model.beta, torch.nn.Parameter) and model.beta.item() == 0.5
    s2, s1 = _inputs()
    target = torch.rand(B, 13, H, W, generator=torch.Generator().manual_seed(1))
    out = model(s2, s1)
    l1_loss(out["mean"], target).backward()  # the reconstruction loss alone reaches the branch
    assert model.beta.grad is not None and model.beta.grad.abs().item() > 0
    for module in model.sar_branch():
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum().item() > 0, name


# --- losses by hand --------------------------------------------------------------------------

def test_l1_l2_by_hand() -> None:
    mean = torch.tensor([[[[0.1, 0.5]], [[0.9, 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[0.3, 0.5]], [[0.5, 0.1]]]])
    # |d| = 0.2, 0, 0.4, 0.1
    assert l1_loss(mean, target).item() == pytest.approx(0.7 / 4)
    assert l2_loss(mean, target).item() == pytest.approx((0.04 + 0.16 + 0.01) / 4)


def test_gnll_by_hand() -> None:
    mean = torch.tensor([[[[0.0, 1.0]]]])
    target = torch.tensor([[[[1.0, 1.0]]]])
    var = torch.tensor([[[[1.0, math.e]]]])
    # element 1: ½(log 1 + 1/1) = 0.5; element 2: ½(log e + 0) = 0.5; + ½ log 2π each
    expected = 0.5 + 0.5 * math.log(2 * math.pi)
    assert gnll_loss(mean, target, var).item() == pytest.approx(expected)
    assert gnll_loss(mean, target, var, full=False).item() == pytest.approx(0.5)
    # the floor: a variance of 0 counts as eps
    floored = gnll_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), eps=1e-2, full=False)
    assert floored.item() == pytest.approx(0.5 * math.log(1e-2))


def test_mgnll_by_hand() -> None:
    # two pixels, two bands: per pixel ½ [2 log 2π + Σ log σ² + Σ d²/σ²]
    mean = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])  # (1, 2, 1, 2): bands on dim 1
    target = torch.tensor([[[[1.0, 0.0]], [[1.0, 3.0]]]])
    var = torch.tensor([[[[1.0, 2.0]], [[4.0, 4.0]]]])
    p1 = 0.5 * (2 * math.log(2 * math.pi) + math.log(1.0) + math.log(4.0) + 1.0 / 1.0 + 0.0)
    p2 = 0.5 * (2 * math.log(2 * math.pi) + math.log(2.0) + math.log(4.0) + 4.0 / 2.0 + 4.0 / 4)
    assert mgnll_loss(mean, target, var).item() == pytest.approx((p1 + p2) / 2)
    # diagonal: the band sum of what GNLL averages
    assert mgnll_loss(mean, target, var).item() == pytest.approx(
        2 * gnll_loss(mean, target, var).item())


def test_mgnll_is_per_sample() -> None:
    # a second sample must not change the first one's likelihood (UnCRtainTS's batch log-det)
    g = torch.Generator().manual_seed(0)
    m, y = torch.rand(2, 13, 3, 3, generator=g), torch.rand(2, 13, 3, 3, generator=g)
    v = torch.rand(2, 13, 3, 3, generator=g) + 0.1
    both = mgnll_loss(m, y, v).item()
    each = [mgnll_loss(m[i:i + 1], y[i:i + 1], v[i:i + 1]).item() for i in range(2)]
    assert both == pytest.approx(sum(each) / 2)


def test_structure_loss_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    # centred: (¾, −¼, −¼, −¼) and (−¼, ¾, −¼, −¼): dot −¼, norms √¾ each → r = −1/3
    assert pearson_correlation(a, b).item() == pytest.approx(-1 / 3)
    mask = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]]]])        # (1, 1, 1, 4)
    target = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]],         # (1, 2, 1, 4): band mean 2·(1…4)
                            [[3.0, 6.0, 9.0, 12.0]]]])
    assert structure_loss(mask, target).item() == pytest.approx(0.0, abs=1e-6)
    assert structure_loss(-mask, target).item() == pytest.approx(2.0, abs=1e-6)
    two = torch.cat([mask, -mask])  # per-sample r = 1 and −1: the mean is 0, the loss 1
    assert structure_loss(two, torch.cat([target, target])).item() == pytest.approx(1.0)
    # SSCR's loss: 0.9 · 10 · L1 + 0.001 · (1 − r)
    mean = target + 0.5
    expected = 0.9 * 10 * 0.5 + 0.001 * 2.0
    assert sscr_loss(mean, target, -mask).item() == pytest.approx(expected, rel=1e-6)
    assert sscr_loss(mean, target, -mask, scale_by=1.0).item() == pytest.approx(
        0.9 * 0.5 + 0.002, rel=1e-6)


def test_cr_loss_dispatch(models: dict[str, torch.nn.Module]) -> None:
    s2, s1 = _inputs()
    s2, s1 = s2[..., :16, :16], s1[..., :16, :16]
    target = s2.flip(0)
    out = models["uncrtaints"](s2, s1)
    assert cr_loss("mgnll", out, target).item() == pytest.approx(
        mgnll_loss(out["mean"], target, out["variance"]).item())
    assert cr_loss("sscr", models["sscr"](s2, s1), target).ndim == 0
    with pytest.raises(CloudbenchError, match="variance"):
        cr_loss("gnll", models["unet"](s2, s1), target)
    with pytest.raises(CloudbenchError, match="unknown"):
        cr_loss("ssim", out, target)


# --- determinism -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CR_MODELS))
def test_same_seed_same_output(name: str) -> None:
    s2, s1 = _inputs()
    s2, s1 = s2[..., :16, :16], s1[..., :16, :16]
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build_cr_model(name, variance=True)
        with torch.no_grad():  # training mode: U-TAE's dropout draws from the same seed
            outs.append(model(s2, s1))
    for key in outs[0]:
        assert torch.equal(outs[0][key], outs[1][key]), key


# --- band counts -----------------------------------------------------------------------------

BAND_CASES = [(12, 2), (12, 0), (3, 0), (3, 1)]  # (s2_bands, s1_bands): L2A, optical only, RGB


def _band_inputs(s2_bands: int, s1_bands: int, size: int = 16) -> tuple[Tensor, Tensor | None]:
    g = torch.Generator().manual_seed(0)
    s2 = torch.rand(B, s2_bands, size, size, generator=g)
    return s2, (torch.rand(B, s1_bands, size, size, generator=g) if s1_bands else None)


@pytest.mark.parametrize("name", sorted(CR_MODELS))
@pytest.mark.parametrize(("s2_bands", "s1_bands"), BAND_CASES)
def test_band_counts_shapes(name: str, s2_bands: int, s1_bands: int) -> None:
    if name == "sscr" and s1_bands == 0:
        pytest.skip("SSCR needs SAR (refused: test_sscr_refuses_optical_only)")
    torch.manual_seed(0)
    model = build_cr_model(name, variance=True, s2_bands=s2_bands, s1_bands=s1_bands)
    assert (model.s2_bands, model.s1_bands) == (s2_bands, s1_bands)
    s2, s1 = _band_inputs(s2_bands, s1_bands)
    with torch.no_grad():
        out = model(s2, s1)
    assert out["mean"].shape == (B, s2_bands, 16, 16)
    assert out["variance"].shape == (B, s2_bands, 16, 16)
    assert torch.all(out["variance"] > 0)
    if name == "sscr":
        assert out["sar_mask"].shape == (B, 1, 16, 16)
    if s1_bands == 0:  # optical only: s1 left out, or an empty (B, 0, H, W) tensor
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(s2)["mean"], model(s2, s2[:, :0])["mean"])


def test_band_counts_parameters_by_hand() -> None:
    uncr = PARAMETER_COUNTS["uncrtaints"]  # 520_218: 15 in, 26 out (13 means, 13 variances)
    # s2_bands=12: the 1×1 in-conv (15 → 128, bias) loses one input channel: 128 weights; the
    # 1×1 out-conv (128 → 26, bias) loses two outputs (a mean and a variance): 2 · (128 + 1)
    assert count_parameters(build_cr_model("uncrtaints", s2_bands=12)) == uncr - 128 - 2 * 129
    assert uncr - 128 - 2 * 129 == 519_832
    # s1_bands=0: the in-conv loses two input channels, 2 · 128; the output is unchanged
    assert count_parameters(build_cr_model("uncrtaints", s1_bands=0)) == uncr - 2 * 128
    # RGB, optical only: 15 → 3 inputs (12 · 128), 26 → 6 outputs (20 · 129)
    assert count_parameters(build_cr_model("uncrtaints", s2_bands=3, s1_bands=0)) == (
        uncr - 12 * 128 - 20 * 129)
    # SSCR (mean only): in-conv −128, out-conv −(128 + 1) per band; s1_bands=1: the branch's
    # 1×1 conv (2 → 32) loses 32 weights and the in-conv another 128
    assert count_parameters(build_cr_model("sscr", s2_bands=12)) == 535_583 - 128 - 129
    assert count_parameters(build_cr_model("sscr", s1_bands=1)) == 535_583 - 32 - 128
    # U-Net: the first 3×3 conv (no bias, 32 out) has 9 · 32 = 288 weights per input channel;
    # the 1×1 out-conv 32 + 1 per output band
    assert count_parameters(build_cr_model("unet", s2_bands=12)) == 1_930_861 - 288 - 33
    assert count_parameters(build_cr_model("unet", s1_bands=0)) == 1_930_861 - 2 * 288
    # U-TAE: the first 3×3 conv (64 out) has 9 · 64 = 576 weights per input channel
    assert count_parameters(build_cr_model("utae", s2_bands=12)) == 1_058_925 - 576 - 33
    assert count_parameters(build_cr_model("utae", s1_bands=0)) == 1_058_925 - 2 * 576


def test_sscr_refuses_optical_only() -> None:
    with pytest.raises(CloudbenchError, match="SSCR needs SAR"):
        build_cr_model("sscr", s1_bands=0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "12"])
def test_bad_band_counts_refused(bad: object) -> None:
    with pytest.raises(CloudbenchError, match="s2_bands must be an integer"):
        build_cr_model("unet", s2_bands=bad)
    if bad != 0:
        with pytest.raises(CloudbenchError, match="s1_bands must be an integer"):
            build_cr_model("uncrtaints", s1_bands=bad)


def test_band_count_input_checks() -> None:
    l2a = build_cr_model("uncrtaints", s2_bands=12)
    s2, s1 = _inputs()
    with pytest.raises(CloudbenchError, match=re.escape("s2_cloudy must be (B, 12, H, W); got "
                                                        "(2, 13, 32, 32)")):
        l2a(s2, s1)
    with pytest.raises(CloudbenchError, match=re.escape("s1 must be (B, 2, H, W); got None")):
        l2a(s2[:, :12])
    optical = build_cr_model("unet", s1_bands=0)
    message = "s1 must be None for a model without SAR input (s1_bands=0); got (2, 2, 32, 32)"
    with pytest.raises(CloudbenchError, match=re.escape(message)):
        optical(s2, s1)
    with pytest.raises(CloudbenchError, match="differ in batch or size"):
        optical(s2, s2[:1, :0])
    with pytest.raises(CloudbenchError, match="multiples of 8"):
        optical(s2[..., :30, :30])


# --- checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CR_MODELS))
def test_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    kwargs = {"s2_bands": 12, "s1_bands": 2 if name == "sscr" else 0, "variance": True}
    torch.manual_seed(0)
    model = build_cr_model(name, **kwargs)
    s2, s1 = _band_inputs(12, kwargs["s1_bands"])
    model(s2, s1)  # one training-mode forward: the BatchNorm running statistics move
    meta = {"bands": ["B01", "B02", "B03"], "scenes": [1, 2], "note": "smoke", "lr": 1e-3,
            "nested": {"ok": True, "none": None}}
    path = tmp_path / "ckpt" / f"{name}.pt"
    save_cr_checkpoint(path, model, name=name, kwargs=kwargs, meta=meta)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    loaded, loaded_meta = load_cr_checkpoint(path)
    assert loaded_meta == meta
    assert type(loaded) is type(model) and not loaded.training
    assert (loaded.s2_bands, loaded.s1_bands) == (12, kwargs["s1_bands"])
    model.eval()
    with torch.no_grad():
        want, got = model(s2, s1), loaded(s2, s1)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_checkpoint_save_refusals(tmp_path: Path) -> None:
    model = build_cr_model("unet", s2_bands=12)
    path = tmp_path / "x.pt"
    with pytest.raises(CloudbenchError, match="does not match"):  # kwargs would build 13 bands
        save_cr_checkpoint(path, model, name="unet", kwargs={}, meta={})
    with pytest.raises(CloudbenchError, match="meta"):
        save_cr_checkpoint(path, model, name="unet", kwargs={"s2_bands": 12},
                           meta={"scenes": torch.zeros(2)})
    with pytest.raises(CloudbenchError, match="do not build"):
        save_cr_checkpoint(path, model, name="unet", kwargs={"nope": 1}, meta={})
    with pytest.raises(CloudbenchError, match="unknown"):
        save_cr_checkpoint(path, model, name="nope", kwargs={}, meta={})
    assert not path.exists()


def test_checkpoint_load_refusals(tmp_path: Path) -> None:
    model = build_cr_model("unet", widths=(8, 16), s2_bands=12)
    good = tmp_path / "good.pt"
    save_cr_checkpoint(good, model, name="unet", kwargs={"widths": [8, 16], "s2_bands": 12},
                       meta={})
    ckpt = torch.load(good, weights_only=True)

    def refused(path: Path, message: str) -> None:
        with pytest.raises(CloudbenchError, match=re.escape(str(path)) + ".*" + message):
            load_cr_checkpoint(path)

    refused(tmp_path / "missing.pt", "")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    refused(garbage, "unreadable")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    refused(truncated, "unreadable")
    pickled = tmp_path / "pickled_module.pt"
    torch.save(model, pickled)  # a whole pickled module: refused by weights_only
    refused(pickled, "unreadable")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": ckpt["state_dict"]}, other)  # another format: no tag
    refused(other, "format tag")
    newer = tmp_path / "newer.pt"
    torch.save({**ckpt, "version": 2}, newer)
    refused(newer, "version 2")
    missing_key = tmp_path / "missing_key.pt"
    torch.save({**ckpt, "state_dict": dict(list(ckpt["state_dict"].items())[1:])}, missing_key)
    refused(missing_key, "does not fit")
    wrong_kwargs = tmp_path / "wrong_kwargs.pt"
    torch.save({**ckpt, "kwargs": {"widths": [8, 16]}}, wrong_kwargs)  # 13 bands: shapes differ
    refused(wrong_kwargs, "does not fit")
    bad_name = tmp_path / "bad_name.pt"
    torch.save({**ckpt, "name": "nope"}, bad_name)
    refused(bad_name, "cannot rebuild")


# --- found by the mutation benchmark (docs/testing.md) ----------------------------------------


def test_cr_loss_gives_each_named_loss_of_the_output() -> None:
    """cr_loss by name is the loss of output["mean"] (and "variance") against the target, for
    every name, and names what a model lacks."""
    g = torch.Generator().manual_seed(3)
    mean, target = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    variance = torch.rand(2, 3, 4, 4, generator=g) + 0.1
    sar_mask = torch.rand(2, 2, 4, 4, generator=g)
    output = {"mean": mean, "variance": variance, "sar_mask": sar_mask}
    expected = {"l1": l1_loss(mean, target), "l2": l2_loss(mean, target),
                "gnll": gnll_loss(mean, target, variance),
                "mgnll": mgnll_loss(mean, target, variance),
                "sscr": sscr_loss(mean, target, sar_mask)}
    assert len(set(round(v.item(), 6) for v in expected.values())) == 5  # all different
    for name, value in expected.items():
        assert cr_loss(name, output, target).item() == pytest.approx(value.item(), rel=1e-6)
    with pytest.raises(CloudbenchError,
                       match=r"^the sscr loss needs a model with a SAR mask \(sscr\)$"):
        cr_loss("sscr", {"mean": mean}, target)
    with pytest.raises(CloudbenchError, match=r"^the mgnll loss needs a model with a variance"):
        cr_loss("mgnll", {"mean": mean}, target)


def test_variance_floor_and_mahalanobis_clamp_by_hand() -> None:
    """σ² = 0 is read as eps = 1e-8 (the default, UnCRtainTS's), in value; a perfect mean has
    the Mahalanobis term 1e-9, not 0; (B, C) tensors are accepted and (B,) refused."""
    mean = torch.tensor([[0.5, 0.5]])
    target = torch.tensor([[0.5, 0.5]])
    zero = torch.zeros(1, 2)
    # per pixel: ½ [C log 2π + Σ_c log σ²_c + max(Σ_c (μ−y)²/σ², 1e-9)], σ² = 1e-8
    by_hand = 0.5 * (2 * math.log(2 * math.pi) + 2 * math.log(1e-8) + 1e-9)
    assert mgnll_loss(mean, target, zero).item() == pytest.approx(by_hand, rel=1e-6)
    # the floor keeps the gradient of σ² (identity): d/dσ² of ½ log σ² at the floor is not 0
    var = torch.zeros(1, 2, requires_grad=True)
    mgnll_loss(mean + 0.1, target, var).backward()
    assert var.grad is not None and bool((var.grad != 0).all())
    gnll_zero = 0.5 * (math.log(1e-8) + math.log(2 * math.pi))
    assert gnll_loss(mean, target, zero).item() == pytest.approx(gnll_zero, rel=1e-6)
    with pytest.raises(CloudbenchError, match=r"mgnll_loss needs \(B, C, \.\.\.\) tensors; "
                                              r"got \(4,\)"):
        mgnll_loss(torch.zeros(4), torch.zeros(4), torch.ones(4))


def test_pearson_correlation_is_per_sample() -> None:
    """r over each sample's own values: two samples with different offsets, scales and signs
    give +1 and −1 each (one mean over the batch, or one norm, would not); r of a vector with
    itself is ‖a‖² / (‖a‖² + eps): 2/3 for centred values of squared norm 2e-8."""
    a = torch.tensor([[1.0, 2.0, 3.0], [10.0, 30.0, 20.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [-1.0, -5.0, -3.0]])
    r = pearson_correlation(a, b)
    assert r.shape == (2,)
    assert r.tolist() == pytest.approx([1.0, -1.0], abs=1e-6)
    tiny = torch.tensor([[0.0, 1e-4, 2e-4]])  # centred: (-1e-4, 0, 1e-4), squared norm 2e-8
    assert pearson_correlation(tiny, tiny).item() == pytest.approx(2 / 3, rel=1e-4)
