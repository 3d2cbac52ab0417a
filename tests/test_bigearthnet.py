"""BigEarthNet v1.0 / v2.0 readers on the real v1 examples and on generated fixtures.

The fixtures (``cloudbench.sources.fixtures``) are synthetic; expected pixels are recomputed
straight from :class:`SyntheticWorld` on each group's grid, independently of the writers.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from conftest import REALDATA

from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import Acquisition, Collection, Grid
from cloudbench.sources.bigearthnet import (
    S1_BANDS,
    S2_GROUPS,
    Patch,
    group_grids,
    read_index,
    read_name_list,
    read_patch,
)
from cloudbench.sources.fixtures import (
    BIGEARTHNET19_FROM_IGBP,
    write_bigearthnet_v1,
    write_bigearthnet_v2,
)
from cloudbench.sources.synthetic import SyntheticWorld

REAL = REALDATA / "bigearthnet_v1"
ALL_TIME = ("2000-01-01", "2100-01-01")
CELLS = [(0, 0), (0, 1), (1, 0), (1, 1)]
SPLITS = ["train", "val", None, "test"]
EXCLUDED = [None, "cloud_or_shadow", "seasonal_snow", None]
UTC = dt.UTC


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the real examples


@pytest.fixture(scope="module")
def real() -> dict[str, Patch]:
    if not REAL.is_dir():
        pytest.skip("../shared/realdata is not present")
    return {p.name: p for p in read_index(REAL)}


def test_real_v1_index(real: dict[str, Patch]) -> None:
    # S2 name -> (S1 partner, tile, S2 time, S1 time), from the JSONs
    expected = {
        "S2A_MSIL2A_20170613T101031_87_48": ("S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48",
                                             "33UUP", "2017-06-13 10:10:31", "2017-06-13 16:50:43"),
        "S2A_MSIL2A_20170617T113321_36_85": ("S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85",
                                             "29UPU", "2017-06-17 11:33:21", "2017-06-17 06:47:24"),
        "S2A_MSIL2A_20170617T113321_4_55": ("S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55",
                                            "29UPU", "2017-06-17 11:33:21", "2017-06-17 06:47:24"),
        "S2A_MSIL2A_20171221T112501_56_35": ("S1A_IW_GRDH_1SDV_20171221T064238_29SND_56_35",
                                             "29SND", "2017-12-21 11:25:01", "2017-12-21 06:42:38"),
        "S2B_MSIL2A_20170924T93020_69_24": ("S1A_IW_GRDH_1SDV_20170925T043256_35VPK_69_24",
                                            "35VPK", "2017-09-24 09:30:20", "2017-09-25 04:32:56"),
        # the name says T94161; the JSON's sensing time is what counts
        "S2B_MSIL2A_20180204T94161_57_38": ("S1A_IW_GRDH_1SDV_20180204T043253_35VPK_57_38",
                                            "35VPK", "2018-02-04 09:41:56", "2018-02-04 04:32:53"),
    }
    assert sorted(real) == sorted(expected)
    patches = read_index(REAL, version="v1")
    assert [(p.product, p.name) for p in patches] == sorted((p.product, p.name) for p in patches)
    for name, (s1_name, tile, s2_time, s1_time) in expected.items():
        patch = real[name]
        assert (patch.s1_name, patch.tile) == (s1_name, tile)
        assert (patch.s2_time, patch.s1_time) == (utc(s2_time), utc(s1_time))
        assert patch.s2_dir == REAL / "BigEarthNet-S2-Example" / name
        assert patch.s1_dir == REAL / "BigEarthNet-S1-Example" / s1_name
        assert patch.split is None  # no official split lists in this root
    first = real["S2A_MSIL2A_20170613T101031_87_48"]
    assert first.product == "S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101608"
    assert first.grid == Grid.from_bounds("EPSG:32633", 404400, 5342400, 120, 120, 10.0)
    assert tuple(first.grid.transform)[:6] == (10, 0, 404400, 0, -10, 5342400)
    # hand-mapped: Non-irrigated arable land -> Arable land (2); Land principally occupied by
    # agriculture ... -> itself (6)
    assert first.labels == (2, 6)
    # Coniferous forest (9), Mixed forest (10), Transitional woodland/shrub (13),
    # Peatbogs -> Inland wetlands (15), Water bodies -> Inland waters (17)
    assert real["S2B_MSIL2A_20170924T93020_69_24"].labels == (9, 10, 13, 15, 17)
    # one example is on the official seasonal-snow list, none on the cloud/shadow list
    assert {n: p.excluded for n, p in real.items() if p.excluded} == {
        "S2B_MSIL2A_20180204T94161_57_38": "seasonal_snow"
    }


def test_real_v1_read_patch_is_the_files(real: dict[str, Patch]) -> None:
    for patch in real.values():
        arrays = read_patch(patch)
        grids = group_grids(patch)
        assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
            "s2": ((4, 120, 120), np.uint16), "s2_20m": ((6, 60, 60), np.uint16),
            "s2_60m": ((2, 20, 20), np.uint16), "s1": ((2, 120, 120), np.float32),
        }
        for group, bands in S2_GROUPS.items():
            for k, band in enumerate(bands):
                with rasterio.open(patch.s2_dir / f"{patch.name}_{band}.tif") as src:
                    np.testing.assert_array_equal(arrays[group][k], src.read(1))
                    assert src.transform == grids[group].transform
        for k, band in enumerate(S1_BANDS):
            with rasterio.open(patch.s1_dir / f"{patch.s1_name}_{band}.tif") as src:
                np.testing.assert_array_equal(arrays["s1"][k], src.read(1))


def test_real_v1_official_lists(real: dict[str, Patch], tmp_path: Path) -> None:
    name = re.compile(r"S2[AB]_MSIL2A_\d{8}T\d{5,6}_\d+_\d+")
    cloud = read_name_list(REAL / "patches_with_cloud_and_shadow.csv.bz2")
    snow = read_name_list(REAL / "patches_with_seasonal_snow.csv.bz2")
    # 9280 CRLF lines, every one a patch name (no header), as released; likewise 61707 for snow
    assert len(cloud) == len(set(cloud)) == 9280 and len(snow) == len(set(snow)) == 61707
    assert cloud[0] == "S2A_MSIL2A_20170717T113321_35_89"
    assert all(name.fullmatch(n) for n in cloud + snow)
    assert not set(cloud) & set(snow)
    # the 19-class models' split lists, next to links to the examples (not copies)
    root = tmp_path / "ben"
    root.mkdir()
    for entry in REAL.iterdir():
        (root / entry.name).symlink_to(entry)
    names = sorted(real)
    (root / "train.csv").write_text("\n".join(names[:3]) + "\n")
    (root / "val.csv").write_text(names[3] + "\n")
    (root / "test.csv").write_text("\n".join(names[4:]) + "\n")
    splits = {p.name: p.split for p in read_index(root)}
    assert splits == {n: "train" if i < 3 else "val" if i == 3 else "test"
                      for i, n in enumerate(names)}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    """A world on BigEarthNet's lattice (tile 33UUP), 2 x 2 patches."""
    return SyntheticWorld(
        seed=5, crs="EPSG:32633", left=404400.0, top=5342400.0, size=240, region_size=60,
        start="2018-06-01", end="2018-07-31", mgrs_tile="33UUP",
    )


@pytest.fixture(scope="module")
def roots(world: SyntheticWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ben")
    v1 = write_bigearthnet_v1(base / "v1", world, CELLS, split=SPLITS, excluded=EXCLUDED)
    v2 = write_bigearthnet_v2(base / "v2", world, CELLS, split=SPLITS, excluded=EXCLUDED)
    assert sorted(v1) == sorted(p.name for p in read_index(base / "v1"))
    assert sorted(v2) == sorted(p.name for p in read_index(base / "v2"))
    return {"v1": base / "v1", "v2": base / "v2"}


def clearest(world: SyntheticWorld) -> Acquisition:
    l2a = world.search(Collection.S2_L2A, None, *ALL_TIME)
    return min(l2a, key=lambda a: (a.cloud_cover, a.datetime))


def nearest_s1(world: SyntheticWorld, when: dt.datetime) -> Acquisition:
    return min(world.search(Collection.S1_GRD, None, *ALL_TIME),
               key=lambda a: abs(a.datetime - when))


def dn(reflectance: np.ndarray) -> np.ndarray:
    return np.clip(np.round(reflectance.astype(np.float64) * 10000), 0, 65535).astype(np.uint16)


def cell_of(world: SyntheticWorld, patch: Patch) -> tuple[int, int]:
    col = (patch.grid.transform.c - world.grid.transform.c) / 1200
    row = (world.grid.transform.f - patch.grid.transform.f) / 1200
    return int(row), int(col)


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_fixture_round_trip(layout: str, world: SyntheticWorld, roots: dict[str, Path]) -> None:
    patches = read_index(roots[layout])
    assert sorted(cell_of(world, p) for p in patches) == sorted(CELLS)
    s2 = clearest(world)
    s1 = nearest_s1(world, s2.datetime)
    unit, stamp = str(s2.properties["platform"])[-1].upper(), f"{s2.datetime:%Y%m%dT%H%M%S}"
    product = {"v1": f"S2{unit}_MSIL1C_{stamp}_N0206_R022_T33UUP_{stamp}",
               "v2": f"S2{unit}_MSIL2A_{stamp}_N9999_R022_T33UUP"}[layout]
    for patch in patches:
        row, col = cell_of(world, patch)
        assert patch.grid == world.grid.window(row * 120, col * 120, 120, 120)
        assert (patch.tile, patch.s2_time, patch.s1_time) == ("33UUP", s2.datetime, s1.datetime)
        assert patch.s1_name.endswith(f"_33UUP_{col}_{row}")
        assert patch.product == product
        arrays, grids = read_patch(patch), group_grids(patch)
        assert grids["s2_60m"] == patch.grid.rescaled(60.0)
        assert (grids["s2_20m"].width, grids["s2_60m"].width) == (60, 20)
        for group, bands in S2_GROUPS.items():
            np.testing.assert_array_equal(arrays[group], dn(world.read(s2, grids[group], bands)))
        np.testing.assert_array_equal(arrays["s1"], world.read(s1, patch.grid, S1_BANDS))


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_fixture_labels_splits_exclusions(
    layout: str, world: SyntheticWorld, roots: dict[str, Path]
) -> None:
    for patch in read_index(roots[layout]):
        i = CELLS.index(cell_of(world, patch))
        codes = np.unique(world.read_labels(patch.grid))
        expected = {BIGEARTHNET19_FROM_IGBP[int(c)] for c in codes}
        assert patch.labels == tuple(sorted(k for k in expected if k is not None))
        assert (patch.split, patch.excluded) == (SPLITS[i], EXCLUDED[i])


def test_v1_and_v2_fixtures_agree(roots: dict[str, Path]) -> None:
    v1 = {p.grid.transform: p for p in read_index(roots["v1"])}
    v2 = {p.grid.transform: p for p in read_index(roots["v2"])}
    assert v1.keys() == v2.keys()
    metadata = pd.read_parquet(roots["v2"] / "metadata.parquet").set_index("patch_id")
    for transform, a in v1.items():
        b = v2[transform]
        assert metadata.loc[b.name, "s2v1_name"] == a.name
        assert (a.labels, a.split, a.excluded, a.s1_name) == (b.labels, b.split, b.excluded,
                                                              b.s1_name)
        one, two = read_patch(a), read_patch(b)
        for group in (*S2_GROUPS, "s1"):
            np.testing.assert_array_equal(one[group], two[group])
    assert metadata["split"].isna().sum() == 1
    assert set(metadata["split"].dropna()) == {"train", "validation", "test"}


def test_fixture_json_keys_are_the_released_ones(roots: dict[str, Path]) -> None:
    if not REAL.is_dir():
        pytest.skip("../shared/realdata is not present")
    for ours, theirs in (("BigEarthNet-v1.0", "BigEarthNet-S2-Example"),
                         ("BigEarthNet-S1-v1.0", "BigEarthNet-S1-Example")):
        mine = json.loads(next((roots["v1"] / ours).glob("*/*.json")).read_text())
        real = json.loads(next((REAL / theirs).glob("*/*.json")).read_text())
        assert list(mine) == list(real)
        assert list(mine["coordinates"]) == list(real["coordinates"])
    cloud = (roots["v1"] / "patches_with_cloud_and_shadow.csv.bz2")
    assert read_name_list(cloud) == [p.name for p in read_index(roots["v1"])
                                     if p.excluded == "cloud_or_shadow"]


def test_given_labels_and_product_time(world: SyntheticWorld, tmp_path: Path) -> None:
    later = [a for a in world.search(Collection.S2_L2A, None, *ALL_TIME)
             if a.datetime != clearest(world).datetime][-1]
    for write in (write_bigearthnet_v1, write_bigearthnet_v2):
        write(tmp_path / write.__name__[-2:], world, [(1, 0)], product_time=later.datetime,
              labels=[[13, 2]], split=["test"])
    for layout in ("v1", "v2"):
        (patch,) = read_index(tmp_path / layout)
        assert (patch.labels, patch.split, patch.s2_time) == ((2, 13), "test", later.datetime)
        np.testing.assert_array_equal(
            read_patch(patch)["s2"], dn(world.read(later, patch.grid, S2_GROUPS["s2"]))
        )
    (meta,) = (tmp_path / "v1" / "BigEarthNet-v1.0").glob("*/*.json")
    assert json.loads(meta.read_text())["labels"] == [
        "Non-irrigated arable land", "Transitional woodland/shrub"
    ]
    labels = pd.read_parquet(tmp_path / "v2" / "metadata.parquet")["labels"][0]
    assert list(labels) == ["Arable land", "Transitional woodland, shrub"]


# --------------------------------------------------------------------------- labels and errors


@pytest.fixture
def one_v1(world: SyntheticWorld, tmp_path: Path) -> tuple[Path, Patch]:
    root = tmp_path / "v1"
    write_bigearthnet_v1(root, world, [(0, 0)])
    (patch,) = read_index(root)
    return root, patch


@pytest.fixture
def one_v2(world: SyntheticWorld, tmp_path: Path) -> tuple[Path, Patch]:
    root = tmp_path / "v2"
    write_bigearthnet_v2(root, world, [(0, 0)])
    (patch,) = read_index(root)
    return root, patch


def test_v1_labels_drop_unmapped_corine_and_reject_unknown(one_v1: tuple[Path, Patch]) -> None:
    root, patch = one_v1
    path = patch.s2_dir / f"{patch.name}_labels_metadata.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "labels": ["Airports", "Pastures", "Bare rock"]}))
    assert read_index(root)[0].labels == (4,)
    path.write_text(json.dumps({**meta, "labels": ["Airports"]}))
    assert read_index(root)[0].labels == ()
    path.write_text(json.dumps({**meta, "labels": ["Pastures", "Moon dust"]}))
    with pytest.raises(CloudbenchError, match=f"patch {patch.name}: unknown label 'Moon dust'"):
        read_index(root)
    path.write_text("{not json")
    with pytest.raises(CloudbenchError, match=re.escape(str(path))):
        read_index(root)


def test_v2_labels_take_both_spellings_and_reject_unknown(one_v2: tuple[Path, Patch]) -> None:
    root, patch = one_v2
    path = root / "metadata.parquet"
    table = pd.read_parquet(path)
    for labels, expected in ((["Transitional woodland, shrub"], (13,)),
                             (["Transitional woodland/shrub", "Marine waters"], (13, 18))):
        table["labels"] = [labels]
        table.to_parquet(path)
        assert read_index(root)[0].labels == expected
    table["labels"] = [["Moon dust"]]
    table.to_parquet(path)
    with pytest.raises(CloudbenchError, match=f"patch {patch.name}: unknown label"):
        read_index(root)


def test_missing_s1_partner(one_v1: tuple[Path, Patch], one_v2: tuple[Path, Patch]) -> None:
    root, patch = one_v1  # its S1 patch now belongs to another S2 patch
    path = patch.s1_dir / f"{patch.s1_name}_labels_metadata.json"
    meta = json.loads(path.read_text())
    other = "S2A_MSIL2A_20180601T000000_9_9"
    path.write_text(json.dumps({**meta, "corresponding_s2_patch": other}))
    with pytest.raises(CloudbenchError, match=f"S2 patch {patch.name} has no S1 partner"):
        read_index(root)
    root, patch = one_v2
    shutil.rmtree(patch.s1_dir)
    with pytest.raises(CloudbenchError, match=f"S2 patch {patch.name} has no S1 partner"):
        read_index(root)


def test_a_shifted_band_names_the_file_and_both_transforms(one_v1: tuple[Path, Patch]) -> None:
    _, patch = one_v1
    path = patch.s2_dir / f"{patch.name}_B05.tif"
    with rasterio.open(path) as src:
        profile, band = src.profile, src.read(1)
    shifted = profile["transform"] @ Affine.translation(1, 0)  # one 20 m pixel east
    with rasterio.open(path, "w", **{**profile, "transform": shifted}) as dst:
        dst.write(band, 1)
    with pytest.raises(CloudbenchError) as err:
        read_patch(patch)
    message = str(err.value)
    assert str(path) in message
    assert "(20.0, 0.0, 404420.0, 0.0, -20.0, 5342400.0)" in message  # the file's
    assert "(20.0, 0.0, 404400.0, 0.0, -20.0, 5342400.0)" in message  # the grid's


def test_roots_without_bigearthnet(one_v1: tuple[Path, Patch], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CloudbenchError, match="neither BigEarthNet v2.0"):
        read_index(empty)
    with pytest.raises(CloudbenchError, match="no BigEarthNet folder"):
        read_index(tmp_path / "nowhere")
    root, patch = one_v1
    with pytest.raises(CloudbenchError, match="metadata.parquet"):
        read_index(root, version="v2")
    shutil.rmtree(patch.s1_dir.parent)
    with pytest.raises(CloudbenchError, match="folder of S1 patches"):
        read_index(root)
