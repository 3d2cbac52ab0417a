"""Class schemes and recipes given by path as well as by shipped name; the shipped schemes for the
label products users bring (ESA WorldCover, Dynamic World, CORINE) against their products' codes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cloudbench.builders import demo
from cloudbench.cli import main
from cloudbench.config import (
    catalog,
    class_scheme,
    is_file_ref,
    load_recipe,
    recipe_builder,
)
from cloudbench.errors import CloudbenchError
from cloudbench.store import Store

SHIPPED = sorted(p.name.removesuffix(".yaml") for p in catalog("classes").iterdir()
                 if p.name.endswith(".yaml"))
TINY = ["world_size=128", "tile_size=128", "patch_size=32", "max_acquisitions=1",
        "clouds.resolution=40"]

# ESA WorldCover 10 m v100/v200, Map layer (Product User Manual, map legend).
WORLDCOVER = {
    10: "Tree cover", 20: "Shrubland", 30: "Grassland", 40: "Cropland", 50: "Built-up",
    60: "Bare / sparse vegetation", 70: "Snow and ice", 80: "Permanent water bodies",
    90: "Herbaceous wetland", 95: "Mangroves", 100: "Moss and lichen",
}
# Dynamic World V1, `label` band (Earth Engine catalog, class table).
DYNAMIC_WORLD = {
    0: "water", 1: "trees", 2: "grass", 3: "flooded_vegetation", 4: "crops",
    5: "shrub_and_scrub", 6: "built", 7: "bare", 8: "snow_and_ice",
}
# CORINE Land Cover level 3: (GRID_CODE, CLC_CODE, LABEL3) of the raster legend (clc_legend.csv).
CORINE = [
    (1, 111, "Continuous urban fabric"), (2, 112, "Discontinuous urban fabric"),
    (3, 121, "Industrial or commercial units"),
    (4, 122, "Road and rail networks and associated land"), (5, 123, "Port areas"),
    (6, 124, "Airports"), (7, 131, "Mineral extraction sites"), (8, 132, "Dump sites"),
    (9, 133, "Construction sites"), (10, 141, "Green urban areas"),
    (11, 142, "Sport and leisure facilities"), (12, 211, "Non-irrigated arable land"),
    (13, 212, "Permanently irrigated land"), (14, 213, "Rice fields"), (15, 221, "Vineyards"),
    (16, 222, "Fruit trees and berry plantations"), (17, 223, "Olive groves"),
    (18, 231, "Pastures"), (19, 241, "Annual crops associated with permanent crops"),
    (20, 242, "Complex cultivation patterns"),
    (21, 243, "Land principally occupied by agriculture, with significant areas of natural "
              "vegetation"),
    (22, 244, "Agro-forestry areas"), (23, 311, "Broad-leaved forest"),
    (24, 312, "Coniferous forest"), (25, 313, "Mixed forest"), (26, 321, "Natural grasslands"),
    (27, 322, "Moors and heathland"), (28, 323, "Sclerophyllous vegetation"),
    (29, 324, "Transitional woodland-shrub"), (30, 331, "Beaches, dunes, sands"),
    (31, 332, "Bare rocks"), (32, 333, "Sparsely vegetated areas"), (33, 334, "Burnt areas"),
    (34, 335, "Glaciers and perpetual snow"), (35, 411, "Inland marshes"),
    (36, 412, "Peat bogs"), (37, 421, "Salt marshes"), (38, 422, "Salines"),
    (39, 423, "Intertidal flats"), (40, 511, "Water courses"), (41, 512, "Water bodies"),
    (42, 521, "Coastal lagoons"), (43, 522, "Estuaries"), (44, 523, "Sea and ocean"),
]


def _shipped_file(name: str) -> Path:
    return Path(str(catalog("classes", f"{name}.yaml")))


def _same(a: Any, b: Any) -> None:
    assert (a.name, a.task, a.classes, dict(a.codes), a.nodata) == \
        (b.name, b.task, b.classes, dict(b.codes), b.nodata)


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# names and paths
# --------------------------------------------------------------------------------------------


def test_file_refs() -> None:
    assert is_file_ref("my_classes.yaml") and is_file_ref("x/y.YML") and is_file_ref("a.yml")
    assert not is_file_ref("hunan_cloud") and not is_file_ref("demo")


@pytest.mark.parametrize("name", SHIPPED)
def test_scheme_by_path_equals_shipped(name: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = class_scheme(name)
    assert shipped.source is None and shipped.identity == name
    copy = tmp_path / f"my_{name}.yaml"
    shutil.copyfile(_shipped_file(name), copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    for ref in (str(copy), copy.name, f"./{copy.name}", copy):
        mine = class_scheme(ref)
        _same(mine, shipped)
        assert mine.source == str(copy.resolve()) and mine.sha256 == digest
        assert mine.identity == f"{shipped.name} ({copy.resolve()}, sha256 {digest[:16]})"


def test_existing_file_without_suffix_is_a_path(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copyfile(_shipped_file("hunan_cloud"), tmp_path / "classes")
    monkeypatch.chdir(tmp_path)
    assert class_scheme("classes").source == str(tmp_path / "classes")


@pytest.mark.parametrize("ref", ["my_classes.yaml", "sub/none.yml"])
def test_missing_scheme_file_names_it(ref: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CloudbenchError, match="no class scheme file at") as err:
        class_scheme(ref)
    assert ref in str(err.value) and str(tmp_path) in str(err.value)
    assert ".yaml.yaml" not in str(err.value)
    with pytest.raises(CloudbenchError, match=f"no class scheme file at {tmp_path / 'x.yaml'}"):
        class_scheme(tmp_path / "x.yaml")


def test_unknown_shipped_name_says_a_file_would_do() -> None:
    with pytest.raises(CloudbenchError, match=r"available: .*corine.*your own \.yaml"):
        class_scheme("my_classes")


@pytest.mark.parametrize(("text", "problem"), [
    ("name: x\ntask: multiclass\nclasses:\n  - {name: a, codes: [1]}\n  - {name: b, codes: [1]}",
     "code 1 is given to both 'a' and 'b'"),
    ("name: x\ntask: multiclass\nnodata: [1]\nclasses:\n  - {name: a, codes: [1]}",
     r"codes \[1\] are both a class's and no data"),
    ("name: x\ntask: multiclass\nclasses:\n  - {name: a}\n  - {name: a}",
     "class names given more than once: a"),
    ("name: x\ntask: multiclass\nno_data: [0]\nclasses:\n  - {name: a, codes: [1]}",
     "no_data: unknown setting"),
    ("name: x\ntask: regression\nclasses:\n  - {name: a}", "task"),
    ("name: x\ntask: multiclass\nclasses:\n  - {name: a, codes: [-3]}", "negative code -3"),
    ("name: x\ntask: [", "is not valid YAML"),
    ("- just\n- a list", "a class scheme is a YAML mapping"),
])
def test_bad_scheme_files(text: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CloudbenchError, match=problem) as err:
        class_scheme(path)
    assert str(path) in str(err.value)


def test_recipe_by_path_equals_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "my-demo.yaml"
    recipe.write_text(Path(str(catalog("recipes", "demo.yaml"))).read_text() + "builder: demo\n")
    monkeypatch.chdir(tmp_path)
    for ref in (recipe, str(recipe), "my-demo.yaml"):
        assert recipe_builder(ref) == "demo"
        assert load_recipe(demo.Config, ref, TINY) == load_recipe(demo.Config, "demo", TINY)
    assert recipe_builder("hunan-cloud") == "hunan-cloud"


def test_recipe_files_refused(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(CloudbenchError, match=f"no recipe file at {missing}"):
        recipe_builder(missing)
    with pytest.raises(CloudbenchError, match=f"no recipe file at {missing}"):
        load_recipe(demo.Config, missing)
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text("seed: 1\n")
    with pytest.raises(CloudbenchError, match="does not say which builder.*'builder: <name>'"):
        recipe_builder(unnamed)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("builder: nope\n")
    with pytest.raises(CloudbenchError, match="unknown builder 'nope'; available: demo"):
        recipe_builder(wrong)
    typo = tmp_path / "typo.yaml"
    typo.write_text("builder: demo\nseeed: 1\n")
    with pytest.raises(CloudbenchError, match=f"invalid recipe {typo}:\n  seeed: unknown"):
        load_recipe(demo.Config, typo)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------


def _sets(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


def test_build_recipe_file_with_scheme_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    """`cloudbench build ./my-demo.yaml --set classes=./my.yaml` builds like `build demo`, and
    the store records the scheme file by path and hash."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(_shipped_file("simplified_igbp"), "my.yaml")
    Path("my-demo.yaml").write_text("builder: demo\n"
                                    + Path(str(catalog("recipes", "demo.yaml"))).read_text())
    args = ["--out", "ds", "--workers", "1", *_sets([*TINY, "classes=./my.yaml"])]
    assert main(["build", "./my-demo.yaml", *args]) == 0, capsys.readouterr().err
    assert "built ds" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    digest = hashlib.sha256((tmp_path / "my.yaml").read_bytes()).hexdigest()
    assert meta["class_scheme"] == f"simplified_igbp ({tmp_path / 'my.yaml'}, sha256 {digest[:16]})"
    assert meta["builder"]["name"] == "demo"
    assert meta["builder"]["config"]["classes"] == str(tmp_path / "my.yaml")
    st = Store(tmp_path / "ds")
    assert tuple(st.classes) == class_scheme("simplified_igbp").classes and len(st) > 0
    # the same build from the shipped name: the same samples
    assert main(["build", "demo", "--out", "ref", "--workers", "1", *_sets(TINY)]) == 0
    assert list(Store(tmp_path / "ref").samples["id"]) == list(st.samples["id"])
    assert json.loads((tmp_path / "ref" / "dataset.json").read_text())["class_scheme"] == \
        "simplified_igbp"


def test_build_refuses_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["build", "demo", "--out", "ds", *_sets([*TINY, "classes=./my.yaml"])]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "no class scheme file at ./my.yaml" in line and str(tmp_path) in line
    assert not (tmp_path / "ds").exists()  # refused before the build started a folder
    assert main(["build", "./none.yaml", "--out", "ds"]) == 2
    assert "no recipe file at ./none.yaml" in _error_line(capsys.readouterr().err)
    Path("nobuilder.yaml").write_text("seed: 1\n")
    assert main(["build", "nobuilder.yaml", "--out", "ds"]) == 2
    assert "does not say which builder" in _error_line(capsys.readouterr().err)
    assert main(["build", "nope", "--out", "ds"]) == 2  # not a file: click's unknown command
    assert "No such command 'nope'" in capsys.readouterr().err


def test_build_aoi_takes_a_scheme_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    """`cloudbench build aoi --classes ./my.yaml` reaches the builder with the file's absolute
    path (planning stubbed: no Sentinel Hub); a missing file is one error naming it."""
    from cloudbench.builders import aoi

    seen: dict[str, Any] = {}

    def plan(config: aoi.Config, root: Path, **_: Any) -> list[Any]:
        seen["scheme"] = aoi.scheme(config)
        return []

    monkeypatch.setattr(aoi, "plan", plan)
    monkeypatch.setattr(aoi, "estimate", lambda config, tasks: {"summary": "planned"})
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(_shipped_file("esa_worldcover"), "my.yaml")
    base = ["build", "aoi", "--aoi", "area.geojson", "--start", "2021-07-01", "--end",
            "2021-07-31", "--labels", "worldcover.tif", "--out", "ds", "--dry-run"]
    assert main([*base, "--classes", "./my.yaml"]) == 0, capsys.readouterr().err
    assert "planned" in capsys.readouterr().out
    assert seen["scheme"].source == str(tmp_path / "my.yaml")
    _same(seen["scheme"], class_scheme("esa_worldcover"))
    assert main([*base, "--classes", "./my.yaml", "--set", "label_codes={Cropland: [41]}"]) == 0
    assert seen["scheme"].codes == {41: 3} and seen["scheme"].nodata == frozenset({0})
    assert main([*base, "--classes", "corine"]) == 0 and seen["scheme"].name == "corine"
    assert main([*base, "--classes", "./missing.yaml"]) == 2
    assert "no class scheme file at ./missing.yaml" in _error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# the shipped schemes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scheme_codes_unique(name: str) -> None:
    data = yaml.safe_load(_shipped_file(name).read_text())
    scheme = class_scheme(name)
    assert scheme.name == name == data["name"]
    assert len(set(scheme.classes)) == len(scheme.classes) == len(data["classes"])
    raw = [code for entry in data["classes"] for code in entry.get("codes", [])]
    assert len(raw) == len(set(raw)) == len(scheme.codes)
    assert not scheme.nodata & set(scheme.codes)
    assert set(scheme.codes.values()) <= set(range(len(scheme.classes)))


def test_product_schemes_are_shipped() -> None:
    assert {"esa_worldcover", "dynamic_world", "corine"} <= set(SHIPPED)


def test_esa_worldcover_codes() -> None:
    scheme = class_scheme("esa_worldcover")
    assert scheme.task == "multiclass" and scheme.nodata == frozenset({0})
    assert {code: scheme.classes[i] for code, i in scheme.codes.items()} == WORLDCOVER
    assert scheme.classes == tuple(WORLDCOVER.values())  # in map-code order


def test_dynamic_world_codes() -> None:
    scheme = class_scheme("dynamic_world")
    assert {code: scheme.classes[i] for code, i in scheme.codes.items()} == DYNAMIC_WORLD
    assert scheme.classes == tuple(DYNAMIC_WORLD.values())
    assert 0 not in scheme.nodata and scheme.codes[0] == 0  # 0 is water: no data is the mask


def test_corine_codes() -> None:
    scheme = class_scheme("corine")
    assert len(scheme.classes) == 44
    assert scheme.classes == tuple(name for _, _, name in CORINE)
    for grid, clc, name in CORINE:
        assert scheme.classes[scheme.codes[grid]] == name
        assert scheme.classes[scheme.codes[clc]] == name
    assert set(scheme.codes) == {g for g, _, _ in CORINE} | {c for _, c, _ in CORINE}
    assert {48, 128, 999} <= scheme.nodata
    # a grid-coded raster's lookup table (uint8) leaves the three-digit codes out; both read
    table = scheme.lookup_table()
    assert table[1] == 0 and table[44] == 43 and table[48] == -1 and table[128] == -1
    assert scheme.lookup_table(1000)[523] == 43
    codes = np.array([[1, 48], [128, 523]])
    assert scheme.nodata_mask(codes).tolist() == [[False, True], [True, False]]


def test_bigearthnet_labels_are_corine_classes() -> None:
    """BigEarthNet-19's CLC labels are CORINE level-3 classes (BigEarthNet's older spellings of
    three of them aside)."""
    older = {"Natural grassland": "Natural grasslands", "Peatbogs": "Peat bogs",
             "Transitional woodland/shrub": "Transitional woodland-shrub"}
    data = yaml.safe_load(_shipped_file("bigearthnet19").read_text())
    labels = {label for entry in data["classes"] for label in entry["clc"]}
    assert {older.get(label, label) for label in labels} <= set(class_scheme("corine").classes)


def test_a_leaderboard_dataset_may_be_a_recipe_file(tmp_path: Path) -> None:
    """A spec's dataset ``recipe`` takes a recipe file like ``cloudbench build`` does."""
    from cloudbench.harness.runner import _build
    from cloudbench.harness.spec import DataSpec
    from cloudbench.store import Store

    recipe = tmp_path / "my-demo.yaml"
    recipe.write_text(Path(str(catalog("recipes", "demo.yaml"))).read_text() + "builder: demo\n")
    values = {"world_size": 128, "tile_size": 128, "patch_size": 32, "max_acquisitions": 1,
              "clouds": {"resolution": 40}}
    _build(DataSpec(recipe=str(recipe), set=values), tmp_path / "ds", "", 1, None, False)
    _build(DataSpec(recipe="demo", set=values), tmp_path / "ref", "", 1, None, False)
    mine, shipped = Store(tmp_path / "ds"), Store(tmp_path / "ref")
    assert mine.meta["builder"]["name"] == "demo"
    assert list(mine.samples["id"]) == list(shipped.samples["id"])
