"""The cloud-mask library: agreement with s2cloudless, opacity, C, determinism, resume, errors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from conftest import REALDATA
from pydantic import ValidationError

from cloudbench import cloudlib
from cloudbench.cloudlib import (
    LibraryConfig,
    MaskLibrary,
    build_library,
    cloud_images,
    is_library,
)
from cloudbench.clouds import THICK, THIN, CloudMaskConfig, cloud_mask, opacity
from cloudbench.errors import CloudbenchError
from cloudbench.sources import fixtures
from cloudbench.sources.sen12ms import SEN12MSCR, read_raster

# Small windows so that the synthetic clouds also give some thin-dominated windows.
CONFIG = LibraryConfig(window=32)
ARRAYS = ("masks.npy", "alpha.npy", "windows.parquet")


def _reflectance(path: Path) -> np.ndarray:
    return read_raster(path).array.astype(np.float32) / np.float32(10000)


@pytest.fixture(scope="module")
def cr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic SEN12MS-CR tree: 3 cloudy 256 x 256 L1C patches of one scene."""
    root = tmp_path_factory.mktemp("cr") / "SEN12MSCR"
    fixtures.write_sen12ms_cr(root, scenes=1, patches_per_scene=3)
    return root


@pytest.fixture(scope="module")
def direct(cr_root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """source id -> (reflectance, cloud type, probability), s2cloudless run directly."""
    out = {}
    for sid, path in cloud_images(cr_root):
        refl = _reflectance(path)
        kind, prob = cloud_mask(refl, CONFIG.clouds)
        out[sid] = (refl, kind, prob)
    return out


@pytest.fixture(scope="module")
def serial(cr_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "lib"
    assert build_library(cr_root, out, CONFIG, workers=1, chunk_size=2, progress=False) == out
    return out


def assert_same_library(a: Path, b: Path) -> None:
    for name in ARRAYS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((p / "library.json").read_text()) for p in (a, b))
    ma.pop("created"), mb.pop("created")
    assert ma == mb


# --------------------------------------------------------------------------- content


def test_sources_are_sorted_patch_ids(cr_root: Path) -> None:
    images = cloud_images(cr_root)
    assert [sid for sid, _ in images] == [
        "ROIs1868_summer_1_p1", "ROIs1868_summer_1_p2", "ROIs1868_summer_1_p3"
    ]
    assert all(p.parent.parent.name == "ROIs1868_summer_s2_cloudy" for _, p in images)
    assert [sid for sid, _ in cloud_images(cr_root, limit=2)] == [s for s, _ in images[:2]]


def test_masks_and_alpha_agree_with_s2cloudless(serial: Path, direct: dict) -> None:
    lib = MaskLibrary(serial)
    win, windows = CONFIG.window, lib.windows
    # Exactly the windows with enough cloud, pixel-exact masks, and the opacity of clouds.py.
    expected = []
    for sid, (_, kind, _) in direct.items():
        for row in range(0, 256, win):
            for col in range(0, 256, win):
                block = kind[row : row + win, col : col + win]
                if (block > 0).mean() >= CONFIG.min_cloud_fraction:
                    expected.append((sid, row, col))
    assert list(zip(windows["source_id"], windows["row"], windows["col"], strict=True)) == expected
    for i, (sid, row, col) in enumerate(expected):
        _, kind, prob = direct[sid]
        np.testing.assert_array_equal(lib.masks[i], kind[row : row + win, col : col + win])
        alpha = opacity(kind, prob, CONFIG.clouds)[row : row + win, col : col + win]
        np.testing.assert_array_equal(lib.alpha[i], alpha.astype(np.float16))
    masks, alpha = np.asarray(lib.masks), np.asarray(lib.alpha, dtype=np.float32)
    assert masks.dtype == np.uint8 and lib.alpha.dtype == np.float16
    assert (alpha[masks == THICK] == 1).all()
    assert (alpha[masks == 0] == 0).all()
    thin = alpha[masks == THIN]
    # The library stores alpha as float16, which cannot hold thin_alpha_max = 0.7: a thin
    # alpha just under 0.7 rounds to float16(0.7) = 0.7002, so compare with that.
    alpha_max = np.float32(np.float16(CONFIG.clouds.thin_alpha_max))
    assert thin.size and (thin > 0).all() and (thin <= alpha_max).all()


def test_window_fractions_and_kinds_match_their_masks(serial: Path) -> None:
    lib = MaskLibrary(serial)
    masks = np.asarray(lib.masks).reshape(len(lib), -1)
    thin, thick = (masks == THIN).mean(axis=1), (masks == THICK).mean(axis=1)
    w = lib.windows
    np.testing.assert_array_equal(w["thin_fraction"], thin)
    np.testing.assert_array_equal(w["thick_fraction"], thick)
    np.testing.assert_array_equal(w["cloud_fraction"], thin + thick)
    assert (w["cloud_fraction"] >= CONFIG.min_cloud_fraction).all()
    assert list(w["kind"]) == ["thin" if a > b else "thick" for a, b in zip(thin, thick,
                                                                              strict=True)]
    assert lib.counts == {"thin": int((w["kind"] == "thin").sum()),
                          "thick": int((w["kind"] == "thick").sum())}
    assert lib.counts["thin"] > 0 and lib.counts["thick"] > 0
    assert list(w["index"]) == list(range(len(w)))
    assert list(w.columns) == list(cloudlib.WINDOW_COLUMNS)
    assert w.equals(w.sort_values(["source_id", "row", "col"]))


def test_cloud_reflectance_is_the_mean_of_thick_pixels(serial: Path, direct: dict) -> None:
    lib = MaskLibrary(serial)
    thick = np.concatenate(
        [refl[:, kind == THICK].astype(np.float64) for refl, kind, _ in direct.values()], axis=1
    )
    assert lib.cloud_reflectance.dtype == np.float32 and lib.cloud_reflectance.shape == (13,)
    np.testing.assert_allclose(lib.cloud_reflectance, thick.mean(axis=1), rtol=1e-6)
    assert lib.meta["pixels"]["thick"] == thick.shape[1]
    assert lib.source_ids == list(direct)
    assert lib.config == CONFIG
    assert lib.meta["num_images"] == 3 and is_library(serial)
    assert lib.source == str(Path(lib.source).resolve())


def test_library_pickles_without_its_arrays(serial: Path) -> None:
    lib = MaskLibrary(serial)
    lib.masks  # noqa: B018  (open the memory maps)
    copy = pickle.loads(pickle.dumps(lib))
    assert len(pickle.dumps(lib)) < 200_000
    np.testing.assert_array_equal(copy.masks, lib.masks)


# --------------------------------------------------------------------------- engine


def test_parallel_chunked_build_gives_the_same_bytes(serial: Path, cr_root: Path,
                                                      tmp_path: Path) -> None:
    out = build_library(cr_root, tmp_path / "lib", CONFIG, workers=2, chunk_size=1,
                        progress=False)
    assert_same_library(serial, out)
    assert not (out / "chunks").exists()


def test_dask_scheduler_gives_the_same_bytes(serial: Path, cr_root: Path,
                                             tmp_path: Path) -> None:
    import distributed  # a dependency of cloudbench (dask[distributed]); imported late: slow

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        out = build_library(cr_root, tmp_path / "lib", CONFIG, chunk_size=1,
                            scheduler=cluster.scheduler_address, progress=False)
    assert_same_library(serial, out)


def test_resume_rebuilds_only_missing_or_damaged_chunks(
    serial: Path, cr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lib"

    def stop(*args: object) -> None:
        raise KeyboardInterrupt  # killed after the chunks, before finalize

    with monkeypatch.context() as m:
        m.setattr(cloudlib, "_finalize", stop)
        with pytest.raises(KeyboardInterrupt):
            build_library(cr_root, out, CONFIG, workers=1, chunk_size=1, progress=False)
    chunks = sorted((out / "chunks").glob("*.npz"))
    assert [p.name for p in chunks] == ["000000.npz", "000001.npz", "000002.npz"]
    assert not is_library(out)
    with pytest.raises(CloudbenchError, match="unfinished build"):
        MaskLibrary(out)
    chunks[1].unlink()
    chunks[2].write_bytes(chunks[2].read_bytes()[:100])  # damaged (not by our writer)

    built = []
    real = cloudlib._build_chunk

    def counting(chunk: cloudlib._Chunk) -> int:
        built.append(chunk.number)
        return real(chunk)

    monkeypatch.setattr(cloudlib, "_build_chunk", counting)
    build_library(cr_root, out, CONFIG, workers=1, chunk_size=1, progress=False)
    assert built == [1, 2]
    assert_same_library(serial, out)
    assert not (out / "chunks").exists()


def test_complete_library_returns_at_once_and_other_configs_are_refused(
    serial: Path, cr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (serial / "library.json").read_bytes()

    def fail(*args: object) -> None:
        raise AssertionError("nothing should be built")

    monkeypatch.setattr(cloudlib, "_build_chunk", fail)
    assert build_library(cr_root, serial, CONFIG, progress=False) == serial
    assert (serial / "library.json").read_bytes() == before
    with pytest.raises(CloudbenchError, match="another config"):
        build_library(cr_root, serial, LibraryConfig(window=64), progress=False)
    with pytest.raises(CloudbenchError, match="another config"):
        build_library(cr_root / "ROIs1868_summer_s2_cloudy", serial, CONFIG, progress=False)
    # An unfinished build of another config is refused too.
    unfinished = tmp_path / "unfinished"
    (unfinished / "chunks").mkdir(parents=True)
    (unfinished / "chunks" / "build.json").write_text(json.dumps({"hash": "0123"}))
    with pytest.raises(CloudbenchError, match="unfinished"):
        build_library(cr_root, unfinished, CONFIG, progress=False)


def test_empty_library_is_an_error(cr_root: Path, tmp_path: Path) -> None:
    config = LibraryConfig(window=256, min_cloud_fraction=1.0, max_images=1)
    with pytest.raises(CloudbenchError, match="would be empty"):
        build_library(cr_root, tmp_path / "lib", config, workers=1, progress=False)


# --------------------------------------------------------------------------- folder sources


def test_folder_source_at_20_m(tmp_path: Path) -> None:
    folder = tmp_path / "cloudy"
    fixtures.write_cloudy_folder(folder / "b", images=2)
    fixtures.write_cloudy_folder(folder / "a" / "deep", images=1, seed=300)
    (folder / "README.txt").write_text("not an image")
    ids = [sid for sid, _ in cloud_images(folder)]
    assert ids == ["a/deep/cloudy_000.tif", "b/cloudy_000.tif", "b/cloudy_001.tif"]

    config = LibraryConfig(clouds=CloudMaskConfig(resolution=20), max_images=2, window=64)
    lib = MaskLibrary(build_library(folder, tmp_path / "lib", config, workers=1,
                                    progress=False))
    assert lib.source_ids == ids[:2]
    assert set(lib.windows["source_id"]) <= set(ids[:2])
    fine = {}
    for sid in ids[:2]:
        refl = _reflectance(folder / sid)
        coarse = refl.reshape(13, 128, 2, 128, 2).astype(np.float64).mean(axis=(2, 4))
        kind, _ = cloud_mask(coarse.astype(np.float32), config.clouds)
        fine[sid] = np.repeat(np.repeat(kind, 2, axis=0), 2, axis=1)
    assert len(lib) > 0
    for i, row in lib.windows.iterrows():
        r, c = row["row"], row["col"]
        agree = (lib.masks[i] == fine[row["source_id"]][r : r + 64, c : c + 64]).mean()
        assert agree > 0.999, (row["source_id"], r, c, agree)


def _write_tif(path: Path, bands: int, dtype: str, res: float = 10.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=bands, dtype=dtype,
                       crs="EPSG:32631", transform=Affine(res, 0, 7e5, 0, -res, 1.3e6)) as dst:
        dst.write(np.ones((bands, 8, 8), dtype=dtype))


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CloudbenchError, match="no cloud source"):
        build_library(tmp_path / "nowhere", out, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CloudbenchError, match=r"no \*\.tif"):
        build_library(tmp_path / "empty", out, progress=False)
    _write_tif(tmp_path / "four" / "x" / "rgbn.tif", 4, "uint16")
    with pytest.raises(CloudbenchError, match="rgbn.tif: 4 bands"):
        build_library(tmp_path / "four", out, progress=False)
    _write_tif(tmp_path / "bytes" / "b.tif", 13, "uint8")
    with pytest.raises(CloudbenchError, match="b.tif: 13 bands of uint8"):
        cloud_images(tmp_path / "bytes")
    _write_tif(tmp_path / "coarse" / "c20.tif", 13, "uint16", res=20.0)
    with pytest.raises(CloudbenchError, match="c20.tif: 20 x 20 pixels"):
        cloud_images(tmp_path / "coarse")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "c.tif").write_text("not a tiff")
    with pytest.raises(CloudbenchError, match="c.tif is not a readable GeoTIFF"):
        cloud_images(tmp_path / "broken")
    with pytest.raises(CloudbenchError, match="not a folder"):
        cloud_images(tmp_path / "broken" / "c.tif")
    s1_only = tmp_path / "cr" / "ROIs1_summer_s1" / "s1_1"
    s1_only.mkdir(parents=True)
    shutil.copy(tmp_path / "four" / "x" / "rgbn.tif", s1_only / "ROIs1_summer_s1_1_p1.tif")
    with pytest.raises(CloudbenchError, match="no s2_cloudy patches"):
        cloud_images(tmp_path / "cr")
    assert not out.exists()  # nothing written for bad input


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="multiple of 10"):
        LibraryConfig(clouds=CloudMaskConfig(resolution=15))
    with pytest.raises(ValidationError, match="Extra inputs"):
        LibraryConfig.model_validate({"windows": 32})
    with pytest.raises(ValidationError):
        LibraryConfig(min_cloud_fraction=0)
    assert LibraryConfig(clouds=CloudMaskConfig(resolution=160)).factor == 16
    assert LibraryConfig().clouds == CloudMaskConfig()


# --------------------------------------------------------------------------- MaskLibrary


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "masks.npy").unlink(), "masks.npy is missing"),
        (lambda p: np.save(p / "alpha.npy", np.zeros((1, 32, 32), np.float16)),
         r"alpha.npy: float16\[1, 32, 32\]"),
        (lambda p: (p / "masks.npy").write_bytes(b"junk"), "masks.npy is not a readable"),
        (lambda p: (p / "windows.parquet").write_bytes(b"junk"), "windows.parquet is not a"),
        (lambda p: (p / "windows.parquet").unlink(), "windows.parquet is missing"),
        (lambda p: pd.DataFrame({"index": [0]}).to_parquet(p / "windows.parquet"),
         "windows.parquet: columns"),
        (lambda p: (p / "library.json").write_text("{"), "library.json is not valid JSON"),
        (lambda p: (p / "library.json").unlink(), "library.json is missing"),
        (lambda p: _edit_meta(p, schema_version=99), "library.json: schema version 99"),
        (lambda p: _edit_meta(p, cloud_reflectance=[0.5]), "cloud_reflectance must be 13"),
        (lambda p: _edit_meta(p, config={"window": 0}), "library.json: invalid config"),
    ],
)
def test_mask_library_validation(serial: Path, tmp_path: Path, damage, message: str) -> None:
    copy = tmp_path / "lib"
    shutil.copytree(serial, copy)
    MaskLibrary(copy)
    damage(copy)
    with pytest.raises(CloudbenchError, match=message):
        MaskLibrary(copy)


def _edit_meta(path: Path, **fields: object) -> None:
    meta = json.loads((path / "library.json").read_text())
    meta.update(fields)
    (path / "library.json").write_text(json.dumps(meta))


def test_mask_library_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CloudbenchError, match="no cloud-mask library folder"):
        MaskLibrary(tmp_path / "nowhere")
    assert not is_library(tmp_path)


# --------------------------------------------------------------------------- real data

REAL_CR = REALDATA / "sen12ms_cr"


@pytest.mark.skipif(not REAL_CR.is_dir(), reason="real SEN12MS-CR sample not available")
def test_real_sen12ms_cr_patch(tmp_path: Path) -> None:
    lib = MaskLibrary(build_library(REAL_CR, tmp_path / "lib", workers=1, progress=False))
    assert lib.source_ids == ["ROIs1868_summer_19_p30"]
    pixels = lib.meta["pixels"]
    cover = (pixels["thin"] + pixels["thick"]) / pixels["valid"]
    assert 0.3 < cover < 0.7  # about half of the patch is cloud
    windows = lib.windows
    in_windows = (windows["cloud_fraction"] * 64 * 64).sum() / 256**2
    assert 0.3 < in_windows <= cover
    c = dict(zip(lib.meta["bands"], lib.cloud_reflectance, strict=True))
    assert c["B02"] > 0.25 and c["B04"] > 0.25 and c["B08"] > 0.25  # bright, white cloud
    # Pixel-exact agreement with s2cloudless run on the s2_cloudy file directly.
    archive = SEN12MSCR(REAL_CR)
    (ref,) = archive.patches("s2_cloudy")
    kind, _ = cloud_mask(_reflectance(archive.path(ref, "s2_cloudy")), CloudMaskConfig())
    for i, row in windows.iterrows():
        r, c0 = row["row"], row["col"]
        np.testing.assert_array_equal(lib.masks[i], kind[r : r + 64, c0 : c0 + 64])
