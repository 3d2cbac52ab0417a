"""GeoTIFF export: georeferencing, values, band names, resumability and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform
from shapely.geometry import Point

from cloudbench.errors import CloudbenchError
from cloudbench.export import export_geotiff
from cloudbench.store import Store
from tests.conftest import make_store


def test_files_match_the_store(small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "tif"
    dataset = Store(small_store)
    written = export_geotiff(small_store, out, progress=False)
    assert written == len(dataset) * len(dataset.arrays)
    for name, info in dataset.arrays.items():
        data = dataset.array(name)
        for row, sample in dataset.samples.iterrows():
            with rasterio.open(out / name / f"{sample['id']}.tif") as src:
                assert src.crs == CRS.from_user_input(sample["crs"])
                assert src.transform == Affine(*sample["transform"])
                assert src.descriptions == info.bands
                assert src.nodata is None
                assert src.compression.name == "deflate"
                image = src.read()
            assert image.dtype == np.dtype(info.dtype)
            assert image.shape == data.shape[1:]
            np.testing.assert_array_equal(image, data[row])
    assert not list(out.rglob("*.tmp"))


def test_first_pixel_lies_in_the_footprint(small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "tif"
    export_geotiff(small_store, out, arrays=["s2"], progress=False)
    for _, sample in Store(small_store).samples.iloc[[0, 7, -1]].iterrows():
        with rasterio.open(out / "s2" / f"{sample['id']}.tif") as src:
            x, y = src.transform @ (0.5, 0.5)
            (lon,), (lat,) = warp_transform(src.crs, "EPSG:4326", [x], [y])
        assert sample.geometry.contains(Point(lon, lat))


def test_split_and_array_selection(small_store: Path, tmp_path: Path) -> None:
    table = Store(small_store).samples
    test_ids = set(table.loc[table["split"] == "test", "id"])
    out = tmp_path / "tif"
    written = export_geotiff(small_store, out, split="test", arrays=["cloud_mask"], progress=False)
    assert written == len(test_ids)
    assert [p.name for p in out.iterdir()] == ["cloud_mask"]
    assert {p.stem for p in (out / "cloud_mask").iterdir()} == test_ids


def test_rerun_writes_only_missing_files(tmp_path: Path) -> None:
    root = make_store(tmp_path / "ds", n=12, with_clear=True)
    out = tmp_path / "tif"
    assert export_geotiff(root, out, progress=False) == 12 * 4
    victim = out / "s2_clear" / "p00003.tif"
    victim.unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    assert export_geotiff(root, out, progress=False) == 1
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert export_geotiff(root, out, progress=False) == 0


def test_rerun_over_a_half_written_file(small_store: Path, tmp_path: Path) -> None:
    """The files a kill mid-file leaves (a complete file missing, its .tmp half written) are
    made by hand, not by killing a process."""
    out = tmp_path / "tif"
    export_geotiff(small_store, out, arrays=["s1"], progress=False)
    killed = out / "s1" / "p00004.tif"
    killed.unlink()
    killed.with_name("p00004.tif.tmp").write_bytes(b"II*\0 half a file")
    assert export_geotiff(small_store, out, arrays=["s1"], progress=False) == 1
    with rasterio.open(killed) as src:
        np.testing.assert_array_equal(src.read(), Store(small_store).array("s1")[4])
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arrays": ["s2", "rgb"]}, "'rgb'; allowed: s1, s2, cloud_mask"),
        ({"split": "validation"}, "'validation'; allowed: train, val, test"),
    ],
)
def test_unknown_names_are_refused(
    small_store: Path, tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(CloudbenchError, match=message):
        export_geotiff(small_store, tmp_path / "tif", progress=False, **kwargs)
    assert not (tmp_path / "tif").exists()


def test_band_selection_keeps_named_bands_in_dataset_order(small_store: Path, tmp_path: Path):
    out = tmp_path / "rgb"
    written = export_geotiff(small_store, out, split="test", bands=["B04", "B03", "B02", "VV"],
                             progress=False)
    store = Store(small_store)
    rows = np.flatnonzero(store.samples["split"] == "test")
    assert written == 3 * len(rows)  # s2 (3 bands), s1 (VV), cloud mask
    first = store.samples.iloc[rows[0]]["id"]
    with rasterio.open(out / "s2" / f"{first}.tif") as src:
        assert src.descriptions == ("B02", "B03", "B04")
        np.testing.assert_array_equal(src.read(), store.array("s2")[rows[0]][[1, 2, 3]])
    with rasterio.open(out / "s1" / f"{first}.tif") as src:
        assert src.descriptions == ("VV",)
        np.testing.assert_array_equal(src.read(), store.array("s1")[rows[0]][[0]])


def test_band_selection_skips_arrays_without_those_bands(small_store: Path, tmp_path: Path):
    export_geotiff(small_store, tmp_path / "sar", bands=["VH"], arrays=["s1", "s2"],
                   progress=False)
    assert (tmp_path / "sar" / "s1").is_dir()
    assert not (tmp_path / "sar" / "s2").exists()


def test_unknown_band_is_refused(small_store: Path, tmp_path: Path):
    with pytest.raises(CloudbenchError, match="unknown band 'B99'; available: VV, VH, B01"):
        export_geotiff(small_store, tmp_path / "x", bands=["B04", "B99"], progress=False)
