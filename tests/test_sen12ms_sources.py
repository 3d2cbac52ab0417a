"""SEN12MS / SEN12MS-CR readers on generated fixtures and on the real sample files.

The fixtures (``cloudbench.sources.fixtures``) are synthetic; the expected values here are
recomputed straight from :class:`SyntheticWorld`, independently of the writers' helpers.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import REALDATA
from rasterio.enums import ColorInterp

from cloudbench.clouds import CloudMaskConfig, cloud_mask
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import S1_BANDS, S2_L1C_BANDS, Acquisition, Collection, Grid
from cloudbench.sources.fixtures import (
    SYNTHETIC_MARKER,
    write_cloudy_folder,
    write_sen12ms,
    write_sen12ms_cr,
)
from cloudbench.sources.sen12ms import SEN12MS, SEN12MSCR, PatchRef, read_raster
from cloudbench.sources.synthetic import SyntheticWorld

P = 256
ALL_TIME = ("2000-01-01", "2100-01-01")
NAN_PATCH = (2, 3)
# LCCS legends (MODIS MCD12Q1 LC_Prop1..3): every code a land-cover file may hold in bands 2-4.
LCCS_LAND_COVER = {1, 2, 3, 11, 12, 13, 14, 15, 16, 21, 22, 31, 32, 41, 42, 43, 255}
LCCS_LAND_USE = {1, 2, 3, 9, 10, 20, 25, 30, 35, 36, 40, 255}
LCCS_HYDROLOGY = {1, 2, 3, 10, 20, 27, 30, 40, 50, 51, 255}


# --------------------------------------------------------------------------- helpers


def world_of(seed: int, scene: int, patches: int) -> SyntheticWorld:
    side = {1: 256, 2: 512, 3: 512, 4: 512}[patches]
    return SyntheticWorld(seed=seed + scene - 1, size=side)


def window(world: SyntheticWorld, patch: int) -> Grid:
    """Patch ``patch`` (from 1) of a 2 x 2 world, row-major."""
    i = patch - 1
    per_row = world.grid.width // P
    return world.grid.window(P * (i // per_row), P * (i % per_row), P, P)


def s2_dates(world: SyntheticWorld) -> list[Acquisition]:
    return world.search(Collection.S2_L1C, world.grid.footprint(), *ALL_TIME)


def clearest(world: SyntheticWorld) -> Acquisition:
    return min(s2_dates(world), key=lambda a: a.cloud_cover)


def half_cloudy(world: SyntheticWorld) -> Acquisition:
    return min(s2_dates(world), key=lambda a: abs(a.cloud_cover - 50))


def s1_near(world: SyntheticWorld, acq: Acquisition) -> Acquisition:
    s1 = world.search(Collection.S1_GRD, world.grid.footprint(), *ALL_TIME)
    return min(s1, key=lambda a: abs(a.datetime - acq.datetime))


def dn(reflectance: np.ndarray) -> np.ndarray:
    return np.clip(np.round(reflectance.astype(np.float64) * 10000), 0, 65535).astype(np.uint16)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def conventions(path: Path) -> dict:
    """Everything about a GeoTIFF's encoding that is not its pixels or its place."""
    with rasterio.open(path) as src:
        profile = {k: v for k, v in src.profile.items() if k not in ("crs", "transform")}
        return {
            **profile,
            "colorinterp": src.colorinterp,
            "mask_flags": src.mask_flag_enums,
            "compression": src.compression,
            "interleaving": src.interleaving,
            "block_shapes": src.block_shapes,
            "tags": src.tags(),
            "image_structure": src.tags(ns="IMAGE_STRUCTURE"),
            "descriptions": src.descriptions,
            "res": src.res,
            "north_up": src.transform.b == 0 and src.transform.d == 0 and src.transform.e < 0,
            "projected": src.crs.is_projected,
            "metre_units": src.crs.linear_units,
        }


def cloudy_share(raster_dn: np.ndarray) -> float:
    kind, _ = cloud_mask(raster_dn / 10000.0, CloudMaskConfig())
    return float((kind > 0).mean())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ms_tree(tmp_path_factory) -> tuple[Path, list[PatchRef]]:
    root = tmp_path_factory.mktemp("sen12ms")
    return root, write_sen12ms(root, nan_patch=NAN_PATCH)


@pytest.fixture(scope="module")
def cr_tree(tmp_path_factory) -> tuple[Path, list[PatchRef]]:
    root = tmp_path_factory.mktemp("sen12ms_cr")
    return root, write_sen12ms_cr(root)


@pytest.fixture
def ms_copy(ms_tree, tmp_path) -> Path:
    """A private copy of the SEN12MS fixture tree that a test may damage."""
    return Path(shutil.copytree(ms_tree[0], tmp_path / "copy"))


# --------------------------------------------------------------------------- SEN12MS fixtures


def test_sen12ms_patches_are_exactly_the_written_refs(ms_tree):
    root, refs = ms_tree
    expected = [PatchRef("ROIs1158", "spring", s, p) for s in (1, 2) for p in (1, 2, 3, 4)]
    assert refs == expected
    archive = SEN12MS(root)
    assert archive.patches() == expected
    assert archive.incomplete() == []
    assert archive.path(expected[5], "lc") == (
        root / "ROIs1158_spring" / "lc_2" / "ROIs1158_spring_lc_2_p2.tif"
    )
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tif"))
    assert len(files) == 3 * len(expected)
    assert "ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p4.tif" in files
    assert "SYNTHETIC" in (root / SYNTHETIC_MARKER).read_text().upper()


def test_sen12ms_read_shapes_dtypes_and_coregistration(ms_tree):
    archive = SEN12MS(ms_tree[0])
    for ref in archive.patches():
        s1, s2, lc = (archive.read(ref, m) for m in ("s1", "s2", "lc"))
        assert (s1.array.shape, s1.array.dtype) == ((2, P, P), np.float32)
        assert (s2.array.shape, s2.array.dtype) == ((13, P, P), np.uint16)
        assert (lc.array.shape, lc.array.dtype) == ((4, P, P), np.uint8)
        assert s1.crs == s2.crs == lc.crs
        assert s1.crs.to_epsg() == 32649
        assert s1.transform == s2.transform == lc.transform
    transforms = {archive.read(ref, "s1").transform for ref in archive.patches()[:4]}
    assert len(transforms) == 4  # four different windows in scene 1


def test_sen12ms_values_are_the_worlds(ms_tree):
    archive = SEN12MS(ms_tree[0])
    for scene in (1, 2):
        world = world_of(0, scene, 4)
        clear = clearest(world)
        radar = s1_near(world, clear)
        for patch in (1, 2, 3, 4):
            ref, grid = PatchRef("ROIs1158", "spring", scene, patch), window(world, patch)
            s2 = archive.read(ref, "s2")
            assert s2.transform == grid.transform and s2.crs == grid.crs
            np.testing.assert_array_equal(s2.array, dn(world.read(clear, grid, S2_L1C_BANDS)))
            lc = archive.read(ref, "lc").array
            np.testing.assert_array_equal(lc[0], world.read_labels(grid))
            if (scene, patch) != NAN_PATCH:
                s1 = archive.read(ref, "s1").array
                np.testing.assert_array_equal(s1, world.read(radar, grid, S1_BANDS))


def test_sen12ms_s2_is_the_clearest_date(ms_tree):
    archive = SEN12MS(ms_tree[0])
    world = world_of(0, 1, 4)
    ref = PatchRef("ROIs1158", "spring", 1, 1)
    s2 = archive.read(ref, "s2").array
    for acq in s2_dates(world):
        same = np.array_equal(s2, dn(world.read(acq, window(world, 1), S2_L1C_BANDS)))
        assert same == (acq == clearest(world))


def test_sen12ms_land_cover_band4_is_data_despite_the_alpha_tag(ms_tree):
    archive = SEN12MS(ms_tree[0])
    ref = PatchRef("ROIs1158", "spring", 1, 1)
    with rasterio.open(archive.path(ref, "lc")) as src:
        assert src.colorinterp[3] == ColorInterp.alpha  # tagged like the real files
    lc = np.concatenate([archive.read(r, "lc").array for r in archive.patches()], axis=2)
    assert 1 <= lc[0].min() and lc[0].max() <= 17
    for band, legend in zip(lc[1:], (LCCS_LAND_COVER, LCCS_LAND_USE, LCCS_HYDROLOGY), strict=True):
        assert set(np.unique(band).tolist()) <= legend
    hydrology = set(np.unique(lc[3]).tolist())
    assert not hydrology <= {0, 255}  # codes, not a transparency mask
    # One IGBP class, one code: the LCCS bands are functions of band 1.
    for code in np.unique(lc[0]):
        assert len(np.unique(lc[1:, lc[0] == code], axis=1)[0]) == 1
    water = lc[:, lc[0] == 17]
    if water.size:
        assert set(water[3].tolist()) == {3}


def test_lc_pixels_under_a_zero_alpha_are_read_as_stored(ms_copy):
    """Where band 4 is 0 (fully transparent as alpha), bands 1-3 must still come back."""
    archive = SEN12MS(ms_copy)
    path = archive.path(PatchRef("ROIs1158", "spring", 1, 1), "lc")
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    data[3, :64] = 0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
        assert (src.read_masks(1)[:64] == 0).all()  # what a masking reader would drop
    np.testing.assert_array_equal(read_raster(path).array, data)


def test_sen12ms_incomplete_patch(ms_copy):
    gone = PatchRef("ROIs1158", "spring", 1, 3)
    path = ms_copy / "ROIs1158_spring" / "s2_1" / "ROIs1158_spring_s2_1_p3.tif"
    path.unlink()
    archive = SEN12MS(ms_copy)
    assert archive.incomplete() == [gone]
    assert gone not in archive.patches() and len(archive.patches()) == 7
    assert gone in archive.patches("s1", "lc")
    with pytest.raises(CloudbenchError, match="no s2 file for ROIs1158_spring_1_p3"):
        archive.path(gone, "s2")
    with pytest.raises(CloudbenchError, match="unknown modality"):
        archive.patches("s2_cloudy")


def test_sen12ms_scene_folders_match_exactly(tmp_path):
    refs = write_sen12ms(tmp_path, scenes=[146, 1, 14], patches_per_scene=2)
    assert [(r.scene, r.patch) for r in refs] == [(s, p) for s in (1, 14, 146) for p in (1, 2)]
    season = tmp_path / "ROIs1158_spring"
    # Misplaced files: right names, wrong scene folders; the reader must not take them.
    shutil.copy(season / "s1_14" / "ROIs1158_spring_s1_14_p1.tif", season / "s1_1")
    shutil.copy(season / "s1_1" / "ROIs1158_spring_s1_1_p2.tif", season / "s1_146")
    shutil.copy(
        season / "s2_146" / "ROIs1158_spring_s2_146_p1.tif",
        season / "s2_14" / "ROIs1158_spring_s2_146_p9.tif",
    )
    archive = SEN12MS(tmp_path)
    assert archive.patches() == refs
    assert archive.incomplete() == []
    for ref in refs:
        for mod in ("s1", "s2", "lc"):
            path = archive.path(ref, mod)
            assert path.parent.name == f"{mod}_{ref.scene}"
            assert path.name == f"ROIs1158_spring_{mod}_{ref.scene}_p{ref.patch}.tif"
    # Each scene's files hold that scene's world.
    for scene in (1, 14, 146):
        world = world_of(0, scene, 2)
        ref = PatchRef("ROIs1158", "spring", scene, 1)
        np.testing.assert_array_equal(
            archive.read(ref, "lc").array[0], world.read_labels(window(world, 1))
        )
    s1_1 = archive.read(PatchRef("ROIs1158", "spring", 1, 1), "s1").array
    s1_14 = archive.read(PatchRef("ROIs1158", "spring", 14, 1), "s1").array
    assert not np.array_equal(s1_1, s1_14)


def test_sen12ms_foreign_names_are_ignored(ms_copy):
    season = ms_copy / "ROIs1158_spring"
    src = season / "s1_1" / "ROIs1158_spring_s1_1_p1.tif"
    foreign = [
        season / "s1_1" / "notes.txt",
        season / "s1_1" / "ROIs1158_spring_s1_1_p1.tif.aux.xml",
        season / "s1_1" / "x_ROIs1158_spring_s1_1_p7.tif",
        season / "s1_1" / "ROIs1158_spring_s1_1_p7.tiff",
        season / "s1_1" / "ROIs1158_spring_s1_1_p7_copy.tif",
        season / "s1_1" / "ROIs1158_spring_s3_1_p7.tif",
        season / "s1_1" / "ROIs1158_spring_s2_cloudy_1_p7.tif",  # not a SEN12MS modality
        season / "s1_1" / "ROIs1868_summer_s1_1_p7.tif",  # another season's name
        season / "s1_1_old" / "ROIs1158_spring_s1_1_p7.tif",
        season / "S1_1" / "ROIs1158_spring_s1_1_p7.tif",
        ms_copy / "ROIs1158_autumn" / "s1_1" / "ROIs1158_autumn_s1_1_p7.tif",
        ms_copy / "ROIs1158_spring_s1" / "s1_1" / "ROIs1158_spring_s1_1_p7.tif",  # CR layout
        ms_copy / "ROIs1158_spring_s1_1_p7.tif",
    ]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, path)
    archive = SEN12MS(ms_copy)
    assert archive.incomplete() == []
    assert archive.patches() == [
        PatchRef("ROIs1158", "spring", s, p) for s in (1, 2) for p in (1, 2, 3, 4)
    ]


@pytest.mark.parametrize("reader", [SEN12MS, SEN12MSCR])
def test_empty_or_missing_root_names_the_layout(reader, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unrelated" / "ROIs1158_spring").mkdir(parents=True)
    (tmp_path / "unrelated" / "ROIs1158_spring" / "readme.txt").write_text("nothing")
    for root in (tmp_path / "missing", tmp_path / "empty", tmp_path / "unrelated"):
        with pytest.raises(CloudbenchError) as err:
            reader(root)
        assert reader.layout in str(err.value)
        assert str(root) in str(err.value)


def test_readers_do_not_take_each_others_layout(ms_tree, cr_tree):
    with pytest.raises(CloudbenchError, match="SEN12MS-CR patches"):
        SEN12MSCR(ms_tree[0])
    with pytest.raises(CloudbenchError, match="SEN12MS patches"):
        SEN12MS(cr_tree[0])
    assert SEN12MSCR.looks_like(cr_tree[0]) and not SEN12MSCR.looks_like(ms_tree[0])


def test_write_sen12ms_is_deterministic(ms_tree, tmp_path):
    first = tree_hashes(ms_tree[0])
    write_sen12ms(tmp_path / "again", nan_patch=NAN_PATCH)
    assert tree_hashes(tmp_path / "again") == first
    write_sen12ms(tmp_path / "other", scenes=1, patches_per_scene=1, seed=1)
    other = tree_hashes(tmp_path / "other")
    name = "ROIs1158_spring/s2_1/ROIs1158_spring_s2_1_p1.tif"
    assert other[name] != first[name]


def test_nan_patch_has_nan(ms_tree):
    archive = SEN12MS(ms_tree[0])
    for ref in archive.patches():
        s1 = archive.read(ref, "s1").array
        nans = int(np.isnan(s1).sum())
        if (ref.scene, ref.patch) == NAN_PATCH:
            assert 0 < nans < s1.size // 4
            assert np.isnan(s1[0]).sum() == np.isnan(s1[1]).sum()
        else:
            assert nans == 0
    with pytest.raises(ValueError, match="nan_patch"):
        write_sen12ms(ms_tree[0] / "never", nan_patch=(3, 1))
    assert not (ms_tree[0] / "never").exists()


# --------------------------------------------------------------------------- SEN12MS-CR fixtures


def test_sen12ms_cr_layout_and_patches(cr_tree):
    root, refs = cr_tree
    expected = [PatchRef("ROIs1868", "summer", 1, p) for p in (1, 2, 3, 4)]
    assert refs == expected
    archive = SEN12MSCR(root)
    assert archive.patches() == expected and archive.incomplete() == []
    assert archive.path(expected[2], "s2_cloudy") == (
        root / "ROIs1868_summer_s2_cloudy" / "s2_cloudy_1" / "ROIs1868_summer_s2_cloudy_1_p3.tif"
    )
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "ROIs1868_summer_s1",
        "ROIs1868_summer_s2",
        "ROIs1868_summer_s2_cloudy",
    ]
    assert (root / SYNTHETIC_MARKER).is_file()


def test_sen12ms_cr_reads_and_values(cr_tree):
    archive = SEN12MSCR(cr_tree[0])
    world = world_of(100, 1, 4)
    clear, cloudy = clearest(world), half_cloudy(world)
    assert clear != cloudy
    radar = s1_near(world, clear)
    for ref in archive.patches():
        grid = window(world, ref.patch)
        s1, s2, s2c = (archive.read(ref, m) for m in ("s1", "s2", "s2_cloudy"))
        assert (s1.array.shape, s1.array.dtype) == ((2, P, P), np.float32)
        assert (s2.array.shape, s2.array.dtype) == ((13, P, P), np.uint16)
        assert (s2c.array.shape, s2c.array.dtype) == ((13, P, P), np.uint16)
        assert s1.crs == s2.crs == s2c.crs == grid.crs
        assert s1.transform == s2.transform == s2c.transform == grid.transform
        np.testing.assert_array_equal(s2.array, dn(world.read(clear, grid, S2_L1C_BANDS)))
        np.testing.assert_array_equal(s2c.array, dn(world.read(cloudy, grid, S2_L1C_BANDS)))
        np.testing.assert_array_equal(s1.array, world.read(radar, grid, S1_BANDS))


def test_sen12ms_cr_cloudy_image_is_cloudy(cr_tree):
    archive = SEN12MSCR(cr_tree[0])
    cloudy = [cloudy_share(archive.read(r, "s2_cloudy").array) for r in archive.patches()]
    clear = [cloudy_share(archive.read(r, "s2").array) for r in archive.patches()[:2]]
    assert 0.2 <= np.mean(cloudy) <= 0.8, cloudy
    assert min(cloudy) > 0.1, cloudy
    assert max(clear) < 0.05, clear


def test_sen12ms_cr_incomplete(cr_tree, tmp_path):
    root = Path(shutil.copytree(cr_tree[0], tmp_path / "cr"))
    cloudy_dir = root / "ROIs1868_summer_s2_cloudy" / "s2_cloudy_1"
    (cloudy_dir / "ROIs1868_summer_s2_cloudy_1_p2.tif").unlink()
    # A cloudy file under the cloud-free season folder is misplaced, not a substitute.
    misplaced = root / "ROIs1868_summer_s2" / "s2_cloudy_1" / "ROIs1868_summer_s2_cloudy_1_p2.tif"
    misplaced.parent.mkdir()
    shutil.copy(
        cloudy_dir / "ROIs1868_summer_s2_cloudy_1_p1.tif",
        misplaced,
    )
    archive = SEN12MSCR(root)
    gone = PatchRef("ROIs1868", "summer", 1, 2)
    assert archive.incomplete() == [gone]
    assert gone not in archive.patches() and gone in archive.patches("s1", "s2")


def test_write_sen12ms_cr_is_deterministic(cr_tree, tmp_path):
    write_sen12ms_cr(tmp_path / "again")
    assert tree_hashes(tmp_path / "again") == tree_hashes(cr_tree[0])


def test_cloudy_folder(tmp_path):
    paths = write_cloudy_folder(tmp_path / "clouds", images=2)
    assert paths == [tmp_path / "clouds" / "cloudy_000.tif", tmp_path / "clouds" / "cloudy_001.tif"]
    shares = []
    for path in paths:
        raster = read_raster(path)
        assert (raster.array.shape, raster.array.dtype) == ((13, P, P), np.uint16)
        assert raster.crs.to_epsg() == 32649
        shares.append(cloudy_share(raster.array))
    assert all(0.2 <= s <= 0.8 for s in shares), shares
    assert not np.array_equal(read_raster(paths[0]).array, read_raster(paths[1]).array)


# --------------------------------------------------------------------------- real files


def realdata(name: str) -> Path:
    root = REALDATA / name
    if not root.is_dir():
        pytest.skip(f"real sample data not available at {root}")
    return root


def test_real_sen12ms_patch():
    archive = SEN12MS(realdata("sen12ms"))
    ref = PatchRef("ROIs1158", "spring", 1, 30)
    assert ref.id == "ROIs1158_spring_1_p30"
    assert archive.patches() == []  # no s2 for this patch
    assert archive.patches("s1", "lc") == [ref]
    assert archive.incomplete() == [ref]
    lc, s1 = archive.read(ref, "lc"), archive.read(ref, "s1")
    assert (lc.array.shape, lc.array.dtype) == ((4, P, P), np.uint8)
    assert 1 <= lc.array[0].min() and lc.array[0].max() <= 17
    assert lc.array[3].min() > 0  # band 4 holds codes; as alpha it would hide everything at 0
    assert (s1.array.shape, s1.array.dtype) == ((2, P, P), np.float32)
    assert lc.crs == s1.crs and lc.transform == s1.transform


def test_real_sen12ms_cr_patch():
    archive = SEN12MSCR(realdata("sen12ms_cr"))
    ref = PatchRef("ROIs1868", "summer", 19, 30)
    assert archive.patches() == []  # no cloud-free s2 in the sample
    assert archive.patches("s1", "s2_cloudy") == [ref]
    s2c, s1 = archive.read(ref, "s2_cloudy"), archive.read(ref, "s1")
    assert (s2c.array.shape, s2c.array.dtype) == ((13, P, P), np.uint16)
    assert (s1.array.shape, s1.array.dtype) == ((2, P, P), np.float32)
    assert s2c.crs == s1.crs and s2c.transform == s1.transform
    assert 0.2 <= cloudy_share(s2c.array) <= 0.8  # the bar the fixture's cloudy patches meet


def test_fixture_files_follow_the_real_files_conventions(ms_tree, cr_tree, tmp_path):
    real_ms = SEN12MS(realdata("sen12ms"))
    real_cr = SEN12MSCR(realdata("sen12ms_cr"))
    ms_ref, cr_ref = PatchRef("ROIs1158", "spring", 1, 30), PatchRef("ROIs1868", "summer", 19, 30)
    ours_ms, ours_cr = SEN12MS(ms_tree[0]), SEN12MSCR(cr_tree[0])
    ms1, cr1 = ours_ms.patches()[0], ours_cr.patches()[0]
    folder = write_cloudy_folder(tmp_path / "clouds", images=1)[0]
    real_s2 = real_cr.path(cr_ref, "s2_cloudy")
    pairs = [
        (real_ms.path(ms_ref, "lc"), ours_ms.path(ms1, "lc")),
        (real_ms.path(ms_ref, "s1"), ours_ms.path(ms1, "s1")),
        (real_cr.path(cr_ref, "s1"), ours_cr.path(cr1, "s1")),
        (real_s2, ours_cr.path(cr1, "s2_cloudy")),
        (real_s2, ours_cr.path(cr1, "s2")),
        (real_s2, ours_ms.path(ms1, "s2")),  # the sample has no SEN12MS s2: same 13-band format
        (real_s2, folder),
    ]
    for real, ours in pairs:
        assert conventions(ours) == conventions(real), (real.name, ours.name)
    lc = conventions(ours_ms.path(ms1, "lc"))
    assert lc["dtype"] == "uint8" and lc["count"] == 4 and lc["colorinterp"][3] == ColorInterp.alpha
    assert lc["compression"] is None and not lc["tiled"]
