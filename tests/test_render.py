"""Leaderboard rendering on fabricated results folders (the runner's layout, written here)."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from cloudbench.errors import CloudbenchError
from cloudbench.harness import render as render_module
from cloudbench.harness.render import (
    PIXEL_METRICS,
    PIXEL_STRATA,
    cloud_covered_vs_free,
    direction,
    format_cell,
    fraction_bin,
    load_published,
    pixel_strata_table,
    render,
    robustness_curves,
    robustness_score,
    robustness_scores,
    summary_table,
    sweep_table,
)
from cloudbench.harness.results import COLUMNS as RESULT_COLUMNS
from cloudbench.harness.results import HISTORY_COLUMNS, read_histories
from cloudbench.harness.results import read_table as read_results

SEEDS = (0, 1, 2)
# OA, AA, Kappa of esccs on sen12ms-cloud / NR per seed, and their bootstrap bounds: the
# hand-computed expectations below are taken from these.
ESCCS_NR = {
    "OA": ([0.79, 0.77, 0.80], [0.76, 0.75, 0.78], [0.82, 0.79, 0.81]),
    "AA": ([0.70, 0.72, 0.74], [0.66, 0.68, 0.70], [0.74, 0.76, 0.78]),
    "Kappa": ([0.75, 0.74, 0.76], [0.72, 0.71, 0.73], [0.78, 0.77, 0.79]),
}
# other methods: base value per metric (seed adds (seed - 1) * 0.01); kdhn has the best AA
BASE = {
    "tlf": {"OA": 0.69, "AA": 0.66, "Kappa": 0.65},
    "kdhn": {"OA": 0.68, "AA": 0.80, "Kappa": 0.64},
}
# state strata: n and OA offsets from the run's OA
STATES = {"clear": (100, 0.10), "thin": (30, -0.05), "thick": (50, -0.25), "mixed": (20, -0.15)}
FRACTIONS = {"fraction=[0,0.01)": 100, "fraction=[0.25,0.5)": 60, "fraction=[0.5,0.75)": 40}
PROFILE = {"train_samples_per_second": 1500.0, "train_seconds_per_epoch": 20.0,
           "predict_samples_per_second": 6000.0,
           "peak_memory_bytes": 2.5 * 2**30, "parameters": 6.8e6, "gflops": 1.5}


def _metric_values(method: str, seed: int, source: str, sweep: str) -> dict[str, tuple]:
    """(value, ci_low, ci_high) per metric of one run."""
    if method == "esccs" and source == "NR" and not sweep:
        return {m: (v[seed], lo[seed], hi[seed]) for m, (v, lo, hi) in ESCCS_NR.items()}
    shift = (seed - 1) * 0.01
    if sweep:
        fraction = float(sweep.split("=")[1])
        penalty = 0.3 * fraction if method == "esccs" else 0.45 * fraction
        base = {"OA": 0.85 - penalty, "AA": 0.80 - penalty, "Kappa": 0.82 - penalty}
    elif method in BASE:
        base = dict(BASE[method])
    else:  # esccs on AID, methods with odd names, ...
        base = {"OA": 0.75, "AA": 0.72, "Kappa": 0.70}
    if source == "AID":
        base = {m: v - 0.05 for m, v in base.items()}
    return {m: (v + shift, v + shift - 0.03, v + shift + 0.03) for m, v in base.items()}


def _run_rows(run: str, dataset: str, source: str, method: str, seed: int, sweep: str,
              strata: bool, profile: bool) -> list[dict]:
    common = {"run": run, "leaderboard": "esccs-demo", "dataset": dataset, "source": source,
              "method": method, "seed": seed, "sweep": sweep, "split": "test",
              "config_hash": "abc123", "git_revision": "deadbeef",
              "packages": json.dumps({"torch": "2.4"}), "device": "cpu", "wall_seconds": 12.0}
    values = _metric_values(method, seed, source, sweep)
    rows = []
    for metric, (value, low, high) in values.items():
        rows.append({**common, "kind": "metric", "metric": metric, "stratum": "all",
                     "value": value, "ci_low": low, "ci_high": high, "n": 200})
        if strata:
            for state, (n, offset) in STATES.items():
                rows.append({**common, "kind": "metric", "metric": metric,
                             "stratum": f"state={state}", "value": value + offset,
                             "ci_low": value + offset - 0.05, "ci_high": value + offset + 0.05,
                             "n": n})
            for stratum, n in FRACTIONS.items():
                rows.append({**common, "kind": "metric", "metric": metric, "stratum": stratum,
                             "value": value - 0.3, "ci_low": math.nan, "ci_high": math.nan,
                             "n": n})
    rows.append({**common, "kind": "metric", "metric": "acc/Forest", "stratum": "all",
                 "value": 0.9, "ci_low": 0.85, "ci_high": 0.95, "n": 200})
    if profile:
        for metric, value in PROFILE.items():
            rows.append({**common, "kind": "profile", "metric": metric, "stratum": "all",
                         "value": value * (1 + 0.1 * seed), "ci_low": math.nan,
                         "ci_high": math.nan, "n": 200})
    return rows


def _history_rows(run: str, dataset: str, source: str, method: str, seed: int, sweep: str,
                  per_modality: bool) -> list[dict]:
    rows = []
    common = {"run": run, "method": method, "dataset": dataset, "source": source,
              "seed": seed, "sweep": sweep}
    for epoch in range(20):
        decay = math.exp(-epoch / 6)
        rows.append({**common, "stage": "aux_s2", "epoch": epoch, "term": "loss",
                     "value": 2.0 * decay + 0.1 * seed})
        rows.append({**common, "stage": "target", "epoch": epoch, "term": "loss",
                     "value": 2.2 * decay + 0.1 * seed})
        if per_modality:
            rows.append({**common, "stage": "target", "epoch": epoch, "term": "loss_s2",
                         "value": 1.6 * decay + 0.3 + 0.05 * seed})
            rows.append({**common, "stage": "target", "epoch": epoch, "term": "loss_s1",
                         "value": 2.1 - 0.02 * epoch + 0.05 * seed})
    return rows


def fabricate(
    out: Path,
    *,
    methods: tuple[str, ...] = ("esccs", "tlf", "kdhn"),
    groups: tuple[tuple[str, str], ...] = (("sen12ms-cloud", "NR"), ("sen12ms-cloud", "AID")),
    seeds: tuple[int, ...] = SEEDS,
    sweep: bool = True,
    strata: bool = True,
    profile: bool = True,
    histories: bool = True,
    per_modality: bool = True,
) -> Path:
    """A results folder as the runner writes it: one parquet per run, histories per run."""
    (out / "results").mkdir(parents=True, exist_ok=True)
    runs = [(d, s, m, seed, "") for d, s in groups for m in methods for seed in seeds]
    if sweep:
        dataset, source = groups[0]
        runs += [(dataset, source, m, seed, f"clouded_fraction={f / 10:g}")
                 for m in ("esccs", "tlf") for f in range(1, 11) for seed in seeds]
    for i, (dataset, source, method, seed, swept) in enumerate(runs):
        run = f"run{i:04d}"
        rows = _run_rows(run, dataset, source, method, seed, swept, strata, profile)
        pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_parquet(
            out / "results" / f"{run}.parquet"
        )
        if histories:
            folder = out / "runs" / run
            folder.mkdir(parents=True, exist_ok=True)
            hist = _history_rows(run, dataset, source, method, seed, swept,
                                 per_modality and method == "esccs")
            pd.DataFrame(hist, columns=list(HISTORY_COLUMNS)).to_parquet(
                folder / "history.parquet"
            )
    return out


def _md_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading``."""
    lines = text.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            break
    return rows


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200, (path, width, height)
    image = matplotlib.image.imread(path)  # decodes the whole file
    assert image.shape[:2] == (height, width)
    assert image.std() > 0.01  # not a blank canvas


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    return fabricate(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def rendered(full) -> tuple[Path, list[Path]]:
    return full, render(full, published="esccs")


def test_read_results_and_histories(full, tmp_path):
    results = read_results(full)
    files = list((full / "results").glob("*.parquet"))
    assert len(results) == sum(len(pd.read_parquet(f)) for f in files)
    assert list(results.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert results["run"].nunique() == len(files) == 2 * 3 * 3 + 2 * 10 * 3
    histories = read_histories(full)
    assert set(histories["run"]) == set(results["run"])
    assert {"loss_s1", "loss_s2"} <= set(histories["term"])
    # a writer's temporary file is not read
    pd.read_parquet(files[0]).to_parquet(full / "results" / ".tmp-abc-run9999.parquet")
    try:
        assert len(read_results(full)) == len(results)
    finally:
        (full / "results" / ".tmp-abc-run9999.parquet").unlink()
    empty = read_results(tmp_path)
    assert empty.empty and list(empty.columns) == list(RESULT_COLUMNS)
    empty = read_histories(tmp_path)
    assert empty.empty and list(empty.columns) == list(HISTORY_COLUMNS)


def test_summary_table_mean_std_and_pooled_ci(full):
    summary = summary_table(read_results(full), ["OA", "AA", "Kappa"])
    assert len(summary) == 2 * 3 + 2 * 10  # (NR, AID) x 3 methods, then 2 methods x 10 sweeps
    row = summary[(summary["source"] == "NR") & (summary["sweep"] == "")
                  & (summary["method"] == "esccs")].iloc[0]
    # OA seeds 0.79, 0.77, 0.80: mean 0.786667, sample std sqrt(4.6667e-4 / 2)
    assert row["OA_mean"] == pytest.approx(0.7866666667, abs=1e-9)
    assert row["OA_std"] == pytest.approx(0.0152752523, abs=1e-9)
    assert row["OA_seeds"] == 3
    # pooled CI: mean of the per-seed bounds (0.76, 0.75, 0.78) and (0.82, 0.79, 0.81)
    assert row["OA_ci_low"] == pytest.approx(0.7633333333, abs=1e-9)
    assert row["OA_ci_high"] == pytest.approx(0.8066666667, abs=1e-9)
    assert row["AA_mean"] == pytest.approx(0.72) and row["AA_std"] == pytest.approx(0.02)
    assert row["Kappa_ci_low"] == pytest.approx(0.72)
    assert row["Kappa_ci_high"] == pytest.approx(0.78)
    # strata other than "all" and profile rows are not pooled in
    tlf = summary[(summary["source"] == "AID") & (summary["sweep"] == "")
                  & (summary["method"] == "tlf")].iloc[0]
    assert tlf["OA_mean"] == pytest.approx(0.64) and tlf["OA_std"] == pytest.approx(0.01)
    # groups in order: sweep "" first, sweep values numerically (1 after 0.9, not after 0.1)
    nr = summary[(summary["source"] == "NR") & (summary["method"] == "esccs")]
    assert list(nr["sweep"])[0] == "" and list(nr["sweep"])[-1] == "clouded_fraction=1"


def test_summary_table_one_seed_has_no_std(tmp_path):
    results = read_results(fabricate(tmp_path, seeds=(0,), sweep=False))
    summary = summary_table(results, ["OA"])
    assert (summary["OA_seeds"] == 1).all() and summary["OA_std"].isna().all()


def test_format_cell():
    assert format_cell("OA", 0.785, 0.012, 0.769, 0.801) == "78.50 ± 1.20 [76.9, 80.1]"
    assert format_cell("Kappa", 0.754, 0.0121, 0.74, 0.77) == "0.754 ± 0.012 [0.740, 0.770]"
    assert format_cell("AP_macro", 0.5, math.nan, 0.4, 0.6) == "50.00 [40.0, 60.0]"
    assert format_cell("OA", 0.5, 0.01, math.nan, math.nan) == "50.00 ± 1.00"
    assert format_cell("OA", math.nan, 0.01, 0.4, 0.6) == "–"


def test_render_writes_every_file(rendered):
    out, paths = rendered
    names = {p.name for p in paths}
    assert names == {
        "leaderboard.md", "leaderboard.html", "bars_OA.png", "bars_AA.png", "bars_Kappa.png",
        "cloud_covered_vs_free.png", "loss_curves.png", "metric_vs_clouded_fraction.png",
        "robustness_OA.png", "robustness_AA.png", "robustness_Kappa.png",
    }
    for path in paths:
        assert path.parent == out and path.is_file()
        if path.suffix == ".png":
            _assert_png(path)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_markdown_cells_best_and_seeds(rendered):
    out, _ = rendered
    text = (out / "leaderboard.md").read_text()
    table = _md_table(text, "## sen12ms-cloud · source NR")
    assert table[0] == ["method", "OA (%)", "AA (%)", "Kappa", "robustness (OA)"]
    ours = {row[0]: row[1:] for row in table[2:] if not row[0].startswith("_")}
    assert list(ours) == ["esccs", "tlf", "kdhn"]  # ranked by OA
    assert ours["esccs"][0] == "**78.67 ± 1.53 [76.3, 80.7]**"
    assert ours["tlf"][0] == "69.00 ± 1.00 [66.0, 72.0]"
    # the best AA is kdhn's, not the OA leader's
    assert ours["kdhn"][1] == "**80.00 ± 1.00 [77.0, 83.0]**"
    assert not ours["esccs"][1].startswith("**")
    assert ours["esccs"][2] == "**0.750 ± 0.010 [0.720, 0.780]**"
    assert [c.startswith("**") for c in ours["tlf"]] == [False, False, False, False]
    # every fraction bin scores OA - 0.3: (OA - 0.3) / OA with OA the mean over seeds
    assert ours["esccs"][3] == f"{(0.7866666667 - 0.3) / 0.7866666667:.3f}" == "0.619"
    assert ours["tlf"][3] == "0.565"
    after = text.split("## sen12ms-cloud · source NR\n", 1)[1].split("##", 1)[0]
    assert "Seeds: 3 per method." in after


def test_published_rows_are_labelled_and_only_in_matching_groups(rendered):
    out, _ = rendered
    text = (out / "leaderboard.md").read_text()
    table = _md_table(text, "## sen12ms-cloud · source NR")
    reported = [row for row in table[2:] if "reported by" in row[0]]
    assert len(reported) == 11
    esccs = next(row for row in reported if "Ours (ESCCS)" in row[0])
    assert esccs == ["_reported by ESCCS paper (Table I): Ours (ESCCS)_", "_78.50_", "_76.64_",
                     "_0.754_", "–"]
    # never bold, even where the paper's number beats ours (TLF 69.31 > our 69.00 OA)
    assert not any("**" in cell for row in reported for cell in row)
    aid = _md_table(text, "## sen12ms-cloud · source AID")
    assert any("(Table II): Ours (ESCCS)" in row[0] and row[1] == "_75.17_" for row in aid)
    assert not any("Table I)" in row[0] for row in aid)
    swept = _md_table(text, "## sen12ms-cloud · source NR · clouded_fraction=0.5")
    assert not any("reported" in row[0] for row in swept)
    assert "Reported by ESCCS paper: ESCCS: " in text
    html_text = (out / "leaderboard.html").read_text()
    assert html_text.count('<tr class="reported">') == 22  # Tables I and II, 11 rows each
    assert "reported by ESCCS paper (Table I): Ours (ESCCS)" in html_text


def test_profile_table(rendered):
    out, _ = rendered
    text = (out / "leaderboard.md").read_text()
    section = text.split("## sen12ms-cloud · source NR\n", 1)[1]
    table = _md_table(section, "### Profile (mean ± std over seeds)")
    assert table[0] == ["method", "train samples/s", "train s/epoch", "predict samples/s",
                        "peak memory (MiB)", "parameters (M)", "GFLOPs", "pipeline s",
                        "device-hours", "device"]
    esccs = next(row for row in table if row[0] == "esccs")
    # seeds scale by 1, 1.1, 1.2: mean x1.1, std x0.1
    assert esccs[1] == "1,650.0 ± 150.0"
    assert esccs[2] == "22.00 ± 2.00"
    assert esccs[4] == "2,816 ± 256"  # 2.5 GiB x 1.1 = 2816 MiB
    assert esccs[5] == "7.48" and esccs[6] == "1.65" and esccs[9] == "cpu"
    assert esccs[7] == esccs[8] == "–"  # no pipeline rows in these results


def test_html_is_escaped_and_self_contained(tmp_path):
    out = fabricate(tmp_path, methods=("a<b>&c", "tlf"), sweep=False)
    published = pd.DataFrame([{
        "paper": "Doe <et al.> & co", "table": "I", "source": "NR", "dataset": "sen12ms-cloud",
        "method": "x", "name": "<script>alert(1)</script>", "OA": 50.0, "AA": math.nan,
        "Kappa": 0.5,
    }])
    render(out, published=published, title="Board <1> & 2")
    page = (out / "leaderboard.html").read_text()
    assert "a&lt;b&gt;&amp;c" in page and "a<b>&c" not in page
    assert "<title>Board &lt;1&gt; &amp; 2</title>" in page
    # the page's one script is its own (sorting), a paper's name is text
    assert page.count("<script") == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "reported by Doe &lt;et al.&gt; &amp; co (Table I)" in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # no external assets
    # 3 bars + covered vs free + loss + 3 robustness
    assert page.count("data:image/png;base64,") == 7
    text = (out / "leaderboard.md").read_text()
    assert "a\\<b\\>\\&c" in text
    table = _md_table(text, "## sen12ms-cloud · source NR")
    reported = [row for row in table if "reported" in row[0]]
    assert reported[0][1:] == ["_50.00_", "–", "_0.500_", "–"]


def test_absent_data_gives_no_plot(tmp_path):
    out = fabricate(tmp_path / "a", sweep=False, strata=False, per_modality=False)
    names = {p.name for p in render(out)}
    assert names == {"leaderboard.md", "leaderboard.html", "bars_OA.png", "bars_AA.png",
                     "bars_Kappa.png"}
    assert not (out / "loss_curves.png").exists()
    assert not (out / "cloud_covered_vs_free.png").exists()
    assert not list(out.glob("metric_vs_*.png"))
    out = fabricate(tmp_path / "b", sweep=False, histories=False, profile=False)
    names = {p.name for p in render(out, metrics=["OA"])}
    assert names == {"leaderboard.md", "leaderboard.html", "bars_OA.png",
                     "cloud_covered_vs_free.png", "robustness_OA.png"}
    assert "Profile" not in (out / "leaderboard.md").read_text()


def test_each_group_shows_the_metrics_of_its_task(tmp_path):
    out = fabricate(tmp_path, methods=("esccs",), groups=(("sen12ms-cloud", "NR"),),
                    seeds=(0,), sweep=False, strata=False, profile=False, histories=False)
    common = {"run": "ml", "leaderboard": "esccs-demo", "dataset": "cben", "source": "NR",
              "method": "sl", "seed": 0, "sweep": "", "split": "test", "kind": "metric",
              "stratum": "all", "n": 50}
    rows = [{**common, "metric": "AP_macro", "value": 0.61, "ci_low": 0.55, "ci_high": 0.67},
            {**common, "metric": "AP_micro", "value": 0.72, "ci_low": 0.70, "ci_high": 0.74},
            {**common, "metric": "AP/Arable land", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6}]
    pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_parquet(out / "results" / "ml.parquet")
    render(out, metrics=["OA", "AA", "Kappa", "AP_macro", "AP_micro"])  # a mixed spec's
    text = (out / "leaderboard.md").read_text()
    multiclass = _md_table(text, "## sen12ms-cloud · source NR")
    assert multiclass[0] == ["method", "OA (%)", "AA (%)", "Kappa"]
    assert multiclass[2] == ["esccs", "**79.00 [76.0, 82.0]**", "**70.00 [66.0, 74.0]**",
                             "**0.750 [0.720, 0.780]**"]
    multilabel = _md_table(text, "## cben · source NR")
    assert multilabel == [["method", "AP_macro (%)", "AP_micro (%)"], ["---", "---:", "---:"],
                          ["sl", "**61.00 [55.0, 67.0]**", "**72.00 [70.0, 74.0]**"]]
    assert {p.name for p in out.glob("bars_*.png")} == {
        "bars_OA.png", "bars_AA.png", "bars_Kappa.png", "bars_AP_macro.png", "bars_AP_micro.png"}


def test_empty_results_folder(tmp_path):
    paths = render(tmp_path)
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.html"]
    assert "No finished runs" in (tmp_path / "leaderboard.md").read_text()
    with pytest.raises(CloudbenchError, match="no results folder"):
        render(tmp_path / "missing")


def test_stale_plots_are_removed(tmp_path):
    out = fabricate(tmp_path, sweep=False)
    render(out)
    assert (out / "loss_curves.png").exists() and (out / "bars_AA.png").exists()
    (out / "notes.png").write_bytes(b"mine")
    for run in (out / "runs").iterdir():
        (run / "history.parquet").unlink()
    render(out, metrics=["OA"])
    assert not (out / "loss_curves.png").exists() and not (out / "bars_AA.png").exists()
    assert (out / "bars_OA.png").exists() and (out / "notes.png").read_bytes() == b"mine"


def test_cloud_covered_vs_free_is_n_weighted(full):
    table = cloud_covered_vs_free(read_results(full))
    row = table[(table["source"] == "NR") & (table["sweep"] == "")
                & (table["method"] == "esccs")].iloc[0]
    # per seed: (30 (OA - .05) + 50 (OA - .25) + 20 (OA - .15)) / 100 = OA - 0.17;
    # the plain mean of the three strata would be OA - 0.15
    assert row["covered_mean"] == pytest.approx(0.7866666667 - 0.17, abs=1e-9)
    assert row["free_mean"] == pytest.approx(0.7866666667 + 0.10, abs=1e-9)
    assert row["covered_std"] == pytest.approx(0.0152752523, abs=1e-9)
    assert row["seeds"] == 3 and row["n_covered"] == 100 and row["n_free"] == 100
    # a stratum missing from a run: the weights follow the strata present
    results = read_results(full)
    results = results[~((results["stratum"] == "state=thick") & (results["seed"] == 0))]
    table = cloud_covered_vs_free(results)
    row = table[(table["source"] == "NR") & (table["sweep"] == "")
                & (table["method"] == "esccs")].iloc[0]
    seed0 = (30 * (0.79 - 0.05) + 20 * (0.79 - 0.15)) / 50
    expected = (seed0 + (0.77 - 0.17) + (0.80 - 0.17)) / 3
    assert row["covered_mean"] == pytest.approx(expected, abs=1e-9)


def test_sweep_table(full):
    swept = sweep_table(read_results(full), ["OA"])
    assert set(swept["sweep_name"]) == {"clouded_fraction"}
    esccs = swept[swept["series"] == "esccs"].sort_values("sweep_value")
    assert np.allclose(esccs["sweep_value"], np.arange(1, 11) / 10)
    assert np.allclose(esccs["OA_mean"], 0.85 - 0.3 * esccs["sweep_value"])
    assert np.allclose(esccs["OA_std"], 0.01)


def test_sweep_with_several_settings(tmp_path):
    out = fabricate(tmp_path, methods=("esccs",), histories=False)
    results = read_results(out)
    off = results[results["sweep"] != ""].assign(
        sweep=lambda t: t["sweep"] + ",irm=off", value=lambda t: t["value"] - 0.05,
        run=lambda t: t["run"] + "-off",
    )
    off.to_parquet(out / "results" / "irm-off.parquet")
    swept = sweep_table(read_results(out), ["OA"])
    assert set(swept["sweep_name"]) == {"clouded_fraction"}
    assert set(swept["series"]) == {"esccs", "esccs (irm=off)", "tlf", "tlf (irm=off)"}
    line = swept[swept["series"] == "esccs (irm=off)"].sort_values("sweep_value")
    assert np.allclose(line["OA_mean"], 0.80 - 0.3 * line["sweep_value"])
    names = {p.name for p in render(out, metrics=["OA"])}
    assert "metric_vs_clouded_fraction.png" in names
    headings = [h for h in (out / "leaderboard.md").read_text().splitlines()
                if h.startswith("## sen12ms-cloud · source NR")]
    assert headings[:4] == [
        "## sen12ms-cloud · source NR", "## sen12ms-cloud · source NR · clouded_fraction=0.1",
        "## sen12ms-cloud · source NR · clouded_fraction=0.1,irm=off",
        "## sen12ms-cloud · source NR · clouded_fraction=0.2",
    ]


def test_atomic_writes_keep_the_old_file(tmp_path, monkeypatch):
    out = fabricate(tmp_path, sweep=False, histories=False)
    render(out, metrics=["OA"])
    before = (out / "leaderboard.md").read_bytes()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(render_module.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        render(out, metrics=["OA", "AA"], title="changed")
    assert (out / "leaderboard.md").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_load_published_esccs():
    published = load_published("esccs")
    assert list(published.columns) == ["paper", "label", "table", "source", "dataset", "test",
                                       "method", "name", "OA", "AA", "Kappa", "AP_macro",
                                       "AP_micro", "RMSE", "MAE", "PSNR", "SSIM", "SAM",
                                       "note"]
    assert published[["RMSE", "MAE", "PSNR", "SSIM", "SAM"]].isna().all().all()
    assert (published["test"] == published["dataset"]).all()  # no 'test' key: its own
    assert published[["AP_macro", "AP_micro"]].isna().all().all()
    assert len(published) == 44
    assert set(published["method"]) == {
        "esccs", "finetune-optical", "kd-s", "spl", "finetune-sar", "cyc-it", "ttl", "dsan",
        "sl", "kdhn", "tlf",
    }
    tables = published.groupby("table")[["source", "dataset"]].first()
    assert tables.to_dict("index") == {
        "I": {"source": "NR", "dataset": "sen12ms-cloud"},
        "II": {"source": "AID", "dataset": "sen12ms-cloud"},
        "III": {"source": "NR", "dataset": "hunan-cloud"},
        "IV": {"source": "AID", "dataset": "hunan-cloud"},
    }
    table1 = published[published["table"] == "I"].set_index("method")
    facts = {  # shared/FACTS.md, NR -> SEN12MS Cloud
        "esccs": (78.50, 76.64, 0.754), "tlf": (69.31, 65.89, 0.654),
        "kdhn": (68.60, 69.63, 0.640), "kd-s": (59.38, 62.38, 0.531),
        "finetune-optical": (47.04, 59.77, 0.379), "finetune-sar": (22.64, 22.06, 0.140),
    }
    for method, values in facts.items():
        assert tuple(table1.loc[method, ["OA", "AA", "Kappa"]]) == values
    assert published[["OA", "AA", "Kappa"]].notna().all().all()
    assert published["OA"].between(0, 100).all() and published["Kappa"].between(-1, 1).all()


def test_load_published_unknown_name():
    with pytest.raises(CloudbenchError, match="available: .*esccs"):
        load_published("nope")


# --- robustness to cloud -------------------------------------------------------------------

BINS = ("fraction=[0,0.01)", "fraction=[0.01,0.25)", "fraction=[0.25,0.5)",
        "fraction=[0.5,0.75)", "fraction=[0.75,1]")
MIDPOINTS = (0.005, 0.13, 0.375, 0.625, 0.875)


def test_fraction_bins_and_the_score_by_hand():
    assert [fraction_bin(s) for s in BINS] == [(0, 0.01), (0.01, 0.25), (0.25, 0.5),
                                                (0.5, 0.75), (0.75, 1)]
    assert fraction_bin("state=thin") is None and fraction_bin("all") is None
    # trapezoids: (.9+.8)/2 * .125 + (.8+.6)/2 * .245 + (.6+.5)/2 * .25 + (.5+.3)/2 * .25
    area = 0.10625 + 0.1715 + 0.1375 + 0.1
    assert robustness_score(MIDPOINTS, [0.9, 0.8, 0.6, 0.5, 0.3], 0.7) == pytest.approx(
        area / (0.7 * 0.87))
    # order of the points does not matter; undefined points are left out
    assert robustness_score([0.875, 0.005], [0.3, 0.9], 0.5) == pytest.approx(0.6 / 0.5)
    assert robustness_score([0.005, 0.3, 0.875], [0.9, math.nan, 0.3], 0.5) == pytest.approx(1.2)
    assert robustness_score(MIDPOINTS, [0.6] * 5, 0.6) == pytest.approx(1.0)  # no loss
    assert math.isnan(robustness_score([0.005], [0.9], 0.9))  # one bin: no area
    assert math.isnan(robustness_score(MIDPOINTS, [0.1] * 5, 0.0))


def _robustness_results(out: Path) -> Path:
    """Method a: every bin, two seeds; b: three bins (two missing), one seed; c: no fraction
    rows; d: one bin. OA on ``all``: a 0.8 and 0.7 (mean 0.75), b 0.6, c 0.9, d 0.5."""
    curves = {"a": [(0.9, 0.8, 0.7, 0.6, 0.5), (0.8, 0.7, 0.6, 0.5, 0.4)],
              "b": [(0.6, None, 0.6, None, 0.3)], "c": [(None,) * 5],
              "d": [(0.5, None, None, None, None)]}
    overall = {"a": (0.8, 0.7), "b": (0.6,), "c": (0.9,), "d": (0.5,)}
    common = {"leaderboard": "r", "dataset": "demo", "source": "", "sweep": "", "split": "test",
              "kind": "metric", "metric": "OA", "ci_low": math.nan, "ci_high": math.nan}
    rows = []
    for method, seeds in curves.items():
        for seed, values in enumerate(seeds):
            run = f"{method}{seed}"
            rows.append({**common, "run": run, "method": method, "seed": seed, "stratum": "all",
                         "value": overall[method][seed], "n": 100})
            rows += [{**common, "run": run, "method": method, "seed": seed, "stratum": stratum,
                      "value": value, "n": 20}
                     for stratum, value in zip(BINS, values, strict=True) if value is not None]
    (out / "results").mkdir(parents=True)
    pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_parquet(out / "results" / "r.parquet")
    return out


def test_robustness_curves_and_scores(tmp_path):
    out = _robustness_results(tmp_path)
    table = read_results(out)
    curves = robustness_curves(table)
    a = curves[curves["method"] == "a"]
    assert list(a["fraction"]) == pytest.approx(MIDPOINTS)
    assert list(a["mean"]) == pytest.approx([0.85, 0.75, 0.65, 0.55, 0.45])
    assert list(a["std"]) == pytest.approx([0.0707107] * 5, abs=1e-6)
    assert (a["seeds"] == 2).all() and (a["n"] == 20).all()
    assert list(curves.loc[curves["method"] == "b", "fraction"]) == pytest.approx([0.005, 0.375,
                                                                                   0.875])
    scores = robustness_scores(table).set_index("method")
    assert set(scores.index) == {"a", "b", "d"}  # c has no fraction rows
    # a: trapezoids over the five midpoints of the mean curve, over 0.75 x 0.87
    area = ((0.85 + 0.75) / 2 * 0.125 + (0.75 + 0.65) / 2 * 0.245 + (0.65 + 0.55) / 2 * 0.25
            + (0.55 + 0.45) / 2 * 0.25)
    assert scores.at["a", "score"] == pytest.approx(area / (0.75 * 0.87))
    assert scores.at["a", "bins"] == 5 and scores.at["a", "reference"] == pytest.approx(0.75)
    # b: the bins present only, [0.6 at .005, 0.6 at .375, 0.3 at .875] over 0.6 x 0.87
    area = 0.6 * 0.37 + (0.6 + 0.3) / 2 * 0.5
    assert scores.at["b", "score"] == pytest.approx(area / (0.6 * 0.87))
    assert math.isnan(scores.at["d", "score"]) and scores.at["d", "bins"] == 1

    names = {p.name for p in render(out)}
    assert "robustness_OA.png" in names
    _assert_png(out / "robustness_OA.png")
    table = _md_table((out / "leaderboard.md").read_text(), "## demo")
    assert table[0] == ["method", "OA (%)", "robustness (OA)"]
    cells = {row[0]: row[2] for row in table[2:]}
    assert cells == {"a": f"{scores.at['a', 'score']:.3f}", "b": f"{scores.at['b', 'score']:.3f}",
                     "c": "–", "d": "–"}  # c: no fraction rows, d: one bin, no area


# --- pixel metrics (cloud removal) ----------------------------------------------------------

# per method and metric: the value on strata (all, pixels=clear, pixels=thin, pixels=thick).
# sscr has the lower (better) SAM and the lower (worse) PSNR; only uncrtaints predicts a variance.
PIXEL = {
    "uncrtaints": {
        "PSNR": (28.0, 33.0, 29.0, 22.0), "SSIM": (0.85, 0.95, 0.86, 0.60),
        "SAM": (9.0, 5.0, 8.0, 14.0), "RMSE": (0.05, 0.02, 0.04, 0.09),
        "MAE": (0.035, 0.015, 0.03, 0.07), "UCE": (0.012, 0.01, 0.012, 0.02),
        "AUCE": (0.02, 0.015, 0.02, 0.03), "within_1sigma": (0.62, 0.66, 0.61, 0.55),
        "within_2sigma": (0.90, 0.93, 0.90, 0.85),
    },
    "sscr": {
        "PSNR": (27.0, 32.0, 28.0, 23.0), "SSIM": (0.86, 0.96, 0.87, 0.58),
        "SAM": (8.0, 4.5, 7.0, 13.0), "RMSE": (0.055, 0.025, 0.045, 0.095),
        "MAE": (0.030, 0.012, 0.025, 0.06),
    },
}
PIXEL_N = (40, 40, 25, 15)  # images per stratum (those with at least one such pixel)
CR_SPEC = ["OA", "AA", "Kappa", "AP_macro", "AP_micro", *PIXEL_METRICS]


def _pixel_rows(run: str, dataset: str, source: str, method: str, seed: int) -> list[dict]:
    """A run's pixel rows: seed 0 at 0.99 x the value, seed 1 at 1.01 x (mean: the value,
    std: 1.41% of it), bootstrap bounds at 0.98 x and 1.02 x the per-seed value's base."""
    common = {"run": run, "leaderboard": "cr-demo", "dataset": dataset, "source": source,
              "method": method, "seed": seed, "sweep": "", "split": "test", "kind": "metric",
              "device": "cpu", "git_revision": "deadbeef"}
    rows = []
    for metric, values in PIXEL[method].items():
        for stratum, base, n in zip(("all", *PIXEL_STRATA), values, PIXEL_N, strict=True):
            rows.append({**common, "metric": metric, "stratum": stratum,
                         "value": base * (1 + (seed - 0.5) * 0.02), "ci_low": base * 0.98,
                         "ci_high": base * 1.02, "n": n})
    return rows


def fabricate_pixels(out: Path) -> Path:
    """sen12ms-cr (pixel rows only) for uncrtaints and sscr, 2 seeds; and a cloud-removal-then-
    classify group on sen12ms-cloud / NR: esccs (OA, AA, Kappa) and spl (those and pixel rows)."""
    fabricate(out, methods=("esccs",), groups=(("sen12ms-cloud", "NR"),), seeds=(0,),
              sweep=False, strata=False, profile=False, histories=False)
    for method in PIXEL:
        for seed in (0, 1):
            run = f"cr-{method}-{seed}"
            rows = _pixel_rows(run, "sen12ms-cr", "", method, seed)
            pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_parquet(
                out / "results" / f"{run}.parquet")
    rows = _run_rows("spl0", "sen12ms-cloud", "NR", "spl", 0, "", False, False)
    rows += [r for r in _pixel_rows("spl0", "sen12ms-cloud", "NR", "sscr", 0)
             if r["metric"] == "PSNR"]
    for r in rows:
        r["method"] = "spl"
    pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_parquet(out / "results" / "spl0.parquet")
    return out


@pytest.fixture(scope="module")
def pixels(tmp_path_factory) -> Path:
    out = fabricate_pixels(tmp_path_factory.mktemp("pixels"))
    render(out, metrics=CR_SPEC, published="cloud-removal")
    return out


def test_pixel_metric_names_match_reconstruction():
    from cloudbench.harness.spec import DEFAULT_METRICS, LeaderboardSpec
    from cloudbench.reconstruction import CALIBRATION_METRICS, IMAGE_METRICS
    from cloudbench.reconstruction import PIXEL_STRATA as MASK_STRATA

    assert PIXEL_METRICS == (*IMAGE_METRICS, *CALIBRATION_METRICS)
    assert PIXEL_STRATA == tuple(f"pixels={s}" for s in MASK_STRATA)
    metric_type = LeaderboardSpec.model_fields["metrics"].annotation.__args__[0]
    assert set(PIXEL_METRICS) <= set(metric_type.__args__)
    assert not set(PIXEL_METRICS) & set(DEFAULT_METRICS)  # shown when a spec lists them


def test_pixel_metric_direction_and_format():
    higher = ("OA", "Kappa", "AP_micro", "acc/Forest", "PSNR", "SSIM")
    assert [direction(m) for m in higher] == [1] * 6
    assert [direction(m) for m in ("RMSE", "MAE", "SAM", "UCE", "AUCE")] == [-1] * 5
    assert direction("within_1sigma") == direction("within_2sigma") == 0
    assert format_cell("PSNR", 28.0, 0.396, 27.44, 28.56) == "28.00 ± 0.40 [27.44, 28.56]"
    assert format_cell("SSIM", 0.86, 0.0122, 0.8428, 0.8772) == "0.860 ± 0.012 [0.843, 0.877]"
    assert format_cell("SAM", 8.0, math.nan, math.nan, math.nan) == "8.00"
    assert format_cell("RMSE", 0.05, 0.000707, 0.049, 0.051) == "0.0500 ± 0.0007 [0.0490, 0.0510]"
    assert format_cell("UCE", 0.012, math.nan, math.nan, math.nan) == "0.0120"
    assert format_cell("within_1sigma", 0.62, 0.00877, 0.6076, 0.6324) == "62.0 ± 0.9 [60.8, 63.2]"


def test_pixel_bold_follows_each_metrics_direction(pixels):
    text = (pixels / "leaderboard.md").read_text()
    table = _md_table(text, "## sen12ms-cr")
    assert table[0] == ["method", "RMSE", "MAE", "PSNR (dB)", "SSIM", "SAM (°)", "UCE", "AUCE",
                        "within_1sigma (%)", "within_2sigma (%)"]
    ours = {row[0]: row[1:] for row in table[2:] if not row[0].startswith("_")}
    # ranked by RMSE, the first metric shown, lowest first: uncrtaints (0.050) before sscr
    assert list(ours) == ["uncrtaints", "sscr"]
    bold = {m: [c.startswith("**") for c in cells] for m, cells in ours.items()}
    #                        RMSE   MAE    PSNR   SSIM   SAM    UCE   AUCE  within_1, _2
    assert bold["uncrtaints"] == [True, False, True, False, False, True, True, False, False]
    assert bold["sscr"] == [False, True, False, True, True, False, False, False, False]
    assert ours["uncrtaints"][2] == "**28.00 ± 0.40 [27.44, 28.56]**"
    assert ours["sscr"][4] == "**8.00 ± 0.11 [7.84, 8.16]**"  # the lower SAM
    assert ours["uncrtaints"][4] == "9.00 ± 0.13 [8.82, 9.18]"
    assert ours["sscr"][3] == "**0.860 ± 0.012 [0.843, 0.877]**"
    assert ours["uncrtaints"][0] == "**0.0500 ± 0.0007 [0.0490, 0.0510]**"
    assert ours["uncrtaints"][7] == "62.0 ± 0.9 [60.8, 63.2]"  # within_*: never bold
    assert ours["sscr"][5:] == ["–"] * 4  # no variance predicted
    section = text.split("## sen12ms-cr\n", 1)[1].split("\n## ", 1)[0]
    assert "lower is better for RMSE, MAE, SAM, UCE, AUCE" in section
    assert "within_1sigma 68.27%, within_2sigma 95.45%" in section
    assert "Seeds: 2 per method." in section


def test_pixel_ranking_by_a_lower_is_better_metric(tmp_path):
    out = fabricate_pixels(tmp_path)
    render(out, metrics=["SAM", "PSNR"])
    table = _md_table((out / "leaderboard.md").read_text(), "## sen12ms-cr")
    assert table[0] == ["method", "SAM (°)", "PSNR (dB)"]
    # the lowest SAM first, although its PSNR is the lower one
    assert [row[0] for row in table[2:]] == ["sscr", "uncrtaints"]
    assert table[2][1].startswith("**") and not table[2][2].startswith("**")
    assert table[3][2].startswith("**") and not table[3][1].startswith("**")
    summary = summary_table(read_results(out), ["SAM"])
    assert summary.loc[summary["method"] == "sscr", "SAM_mean"].item() == pytest.approx(8.0)


def test_pixel_strata_table(pixels):
    strata = pixel_strata_table(read_results(pixels))
    cr = strata[strata["dataset"] == "sen12ms-cr"]
    assert list(cr["stratum"]) == [s for s in PIXEL_STRATA for _ in range(2)]
    assert list(cr["method"]) == ["sscr", "uncrtaints"] * 3  # as first seen (file order)
    thick = cr[(cr["stratum"] == "pixels=thick") & (cr["method"] == "sscr")].iloc[0]
    assert thick["PSNR_mean"] == pytest.approx(23.0) and thick["n"] == 15
    assert thick["PSNR_seeds"] == 2 and math.isnan(thick["UCE_mean"])
    assert thick["PSNR_std"] == pytest.approx(23.0 * 0.01 * math.sqrt(2))

    text = (pixels / "leaderboard.md").read_text()
    section = text.split("## sen12ms-cr\n", 1)[1]
    table = _md_table(section, "### Pixel metrics per cloud stratum of the input "
                               "(mean ± std over seeds)")
    assert table[0] == ["pixels", "method", "RMSE", "MAE", "PSNR (dB)", "SSIM", "SAM (°)", "UCE",
                        "AUCE", "within_1sigma (%)", "within_2sigma (%)", "images"]
    rows = {(row[0], row[1]): row[2:] for row in table[2:]}
    assert list(rows) == [(s, m) for s in ("clear", "thin", "thick")
                          for m in ("uncrtaints", "sscr")]
    # bold per stratum: uncrtaints has the better PSNR on clear pixels, sscr on thick ones
    assert rows["clear", "uncrtaints"][2] == "**33.00 ± 0.47**"
    assert rows["thick", "uncrtaints"][2] == "22.00 ± 0.31"
    assert rows["thick", "sscr"][2] == "**23.00 ± 0.33**"
    assert rows["thick", "sscr"][4] == "**13.00 ± 0.18**"  # the lower SAM
    assert rows["thick", "sscr"][-1] == "15" and rows["clear", "sscr"][-1] == "40"
    html_text = (pixels / "leaderboard.html").read_text()
    assert "<strong>23.00 ± 0.33</strong>" in html_text


def test_published_pixel_metrics_in_reported_rows(pixels):
    published = load_published("cloud-removal")
    assert len(published) == 1
    row = published.iloc[0]
    assert (row["method"], row["dataset"], row["test"], row["source"]) == (
        "uncrtaints", "sen12ms-cr", "sen12ms-cr", "")
    assert (row["PSNR"], row["SSIM"], row["SAM"]) == (28.90, 0.880, 8.32)
    assert math.isnan(row["RMSE"]) and math.isnan(row["MAE"]) and math.isnan(row["OA"])
    text = (pixels / "leaderboard.md").read_text()
    table = _md_table(text, "## sen12ms-cr")
    reported = [row for row in table[2:] if "reported by" in row[0]]
    label = "_reported by UnCRtainTS paper: UnCRtainTS (mono-temporal, diagonal covariance)_"
    assert reported == [[label, "–", "–", "_28.90_", "_0.880_", "_8.32_", "–", "–", "–", "–"]]
    # the paper's PSNR beats ours, yet is never bold
    assert not any("**" in cell for cell in reported[0])
    # no published row in groups of other datasets
    mixed = _md_table(text, "## sen12ms-cloud · source NR")
    assert not any("reported" in row[0] for row in mixed)
    assert "Reported by UnCRtainTS paper: Ebel et al. 2023" in text
    assert "bars_PSNR.png" in {p.name for p in pixels.glob("bars_*.png")}


def test_pixel_only_and_mixed_groups(pixels):
    text = (pixels / "leaderboard.md").read_text()
    # sen12ms-cr has no classification rows: only pixel columns, no OA
    assert "OA" not in _md_table(text, "## sen12ms-cr")[0][1:]
    # cloud removal then classify: classification and pixel columns side by side
    mixed = _md_table(text, "## sen12ms-cloud · source NR")
    assert mixed[0] == ["method", "OA (%)", "AA (%)", "Kappa", "PSNR (dB)"]
    ours = {row[0]: row[1:] for row in mixed[2:]}
    assert list(ours) == ["esccs", "spl"]  # ranked by OA
    assert ours["esccs"][3] == "–" and ours["spl"][3] == "**26.73 [26.46, 27.54]**"
    section = text.split("## sen12ms-cloud · source NR\n", 1)[1]
    assert "### Pixel metrics per cloud stratum" in section.split("\n## ", 1)[0]
    # without the pixel metrics in the spec's list, no pixel column and no pixel-only group
    render(pixels, metrics=["OA", "AA", "Kappa"])
    try:
        plain = (pixels / "leaderboard.md").read_text()
        assert "## sen12ms-cr" not in plain and "PSNR" not in plain
        assert _md_table(plain, "## sen12ms-cloud · source NR")[0] == [
            "method", "OA (%)", "AA (%)", "Kappa"]
    finally:
        render(pixels, metrics=CR_SPEC, published="cloud-removal")


# --------------------------------------------------------------------------------------------
# Factor tables (ablations: one factor at a time from a default)
# --------------------------------------------------------------------------------------------


def test_factor_rows():
    from cloudbench.harness.render import factor_rows

    references, variants = factor_rows({"esccs": None, "sl": "default", "a1": "a", "b1": "b",
                                        "a2": "a", "x": ""})
    assert references == ["esccs", "sl", "x"]
    assert variants == {"a": ["a1", "a2"], "b": ["b1"]}
    assert factor_rows({"esccs": None}) == (["esccs"], {})


def test_strata_table(full):
    from cloudbench.harness.render import strata_table

    table = strata_table(read_results(full), ["OA"])
    mine = table[(table["source"] == "NR") & (table["method"] == "esccs")
                 & (table["sweep"] == "")]
    assert list(mine["stratum"]) == ["state=clear", "state=thin", "state=thick", "state=mixed",
                                     "fraction=[0,0.01)", "fraction=[0.25,0.5)",
                                     "fraction=[0.5,0.75)"]
    row = mine.set_index("stratum").loc["state=thick"]
    oa = ESCCS_NR["OA"][0]
    assert row["mean"] == pytest.approx(np.mean(oa) - 0.25)
    assert row["std"] == pytest.approx(np.std(oa, ddof=1))
    assert (row["seeds"], row["n"]) == (3, 50)


def test_factor_tables_one_per_factor_with_the_references(tmp_path):
    out = fabricate(tmp_path / "factors", methods=("esccs", "tlf", "kdhn", "esccs-x"),
                    groups=(("sen12ms-cloud", "NR"),), sweep=False)
    # kdhn is a reference by name ("default"); "absent" has no runs; esccs-y is not in the
    # results, nor "sl" in the mapping
    render(out, factors={"esccs": None, "kdhn": "default", "tlf": "a", "esccs-x": "b",
                         "absent": "b"})
    text = (out / "leaderboard.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("### Factor")] == [
        "### Factor: a", "### Factor: b"]
    a = _md_table(text, "### Factor: a")
    assert a[0] == ["method", "OA (%)", "AA (%)", "Kappa", "OA (%) clear", "OA (%) thin",
                    "OA (%) thick", "OA (%) mixed", "OA (%) cloud \\[0,0.01)",
                    "OA (%) cloud \\[0.25,0.5)", "OA (%) cloud \\[0.5,0.75)"]
    rows = {row[0]: row[1:] for row in a[2:]}
    assert list(rows) == ["esccs", "kdhn", "tlf"]  # the references, then the factor's entries
    # mean ± std over seeds, no interval; per stratum the stratum's values (thick: OA - 0.25,
    # every fraction bin OA - 0.3); bold: the best of the factor's table
    assert rows["esccs"][:4] == ["**78.67 ± 1.53**", "72.00 ± 2.00", "**0.750 ± 0.010**",
                                 "**88.67 ± 1.53**"]
    assert rows["kdhn"][1] == "**80.00 ± 1.00**"
    assert rows["tlf"] == ["69.00 ± 1.00", "66.00 ± 1.00", "0.650 ± 0.010", "79.00 ± 1.00",
                           "64.00 ± 1.00", "44.00 ± 1.00", "54.00 ± 1.00", "39.00 ± 1.00",
                           "39.00 ± 1.00", "39.00 ± 1.00"]
    after = text.split("### Factor: a\n", 1)[1]
    assert ("Test samples per run: clear 100, thin 30, thick 50, mixed 20, cloud \\[0,0.01) "
            "100, cloud \\[0.25,0.5) 60, cloud \\[0.5,0.75) 40.") in after.split("###", 1)[0]
    b = _md_table(text, "### Factor: b")
    assert [row[0] for row in b[2:]] == ["esccs", "kdhn", "esccs-x"]
    assert "Factor tables: one per factor" in text
    html = (out / "leaderboard.html").read_text()
    assert "<h3>Factor: a</h3>" in html and "<h3>Factor: b</h3>" in html
    # no factor, or none but references: no factor tables
    for factors in (None, {"esccs": None, "tlf": "default"}):
        render(out, factors=factors)
        text = (out / "leaderboard.md").read_text()
        assert "### Factor" not in text and "Factor tables" not in text


def test_a_factor_must_be_named():
    from cloudbench.harness.spec import LeaderboardSpec

    with pytest.raises(ValueError, match="factor"):
        LeaderboardSpec.model_validate({"name": "x", "datasets": {"d": {"path": "p"}},
                                        "methods": [{"method": "sl", "factor": ""}]})
