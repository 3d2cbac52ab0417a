"""The TorchGeo datasets and data module over a store: values, bands, splits, errors, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchgeo.datasets
from conftest import GROUPS, L2A_BANDS, grouped_store, make_store
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from cloudbench.config import class_scheme
from cloudbench.datasets import (
    CBEN,
    BigEarthNetClean,
    CloudBenchDataModule,
    CloudBenchDataset,
    DatasetNotFoundError,
    HunanCloud,
    SEN12MSCloud,
)
from cloudbench.errors import CloudbenchError, StoreError
from cloudbench.sources.base import S2_L2A_BANDS
from cloudbench.store import Store

CLASSES = ("Forest", "Water", "Urban/Built-up")
ML_CLASSES = ("A", "B", "C", "D")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 multiclass samples (20 per class; 16 per class in train) with ``s2_clear``."""
    return make_store(tmp_path_factory.mktemp("demo") / "ds", with_clear=True)


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("ml") / "ds", task="multilabel", classes=ML_CLASSES)


def stored(root: Path, name: str) -> np.ndarray:
    return np.load(root / f"{name}.npy")


def s2_reflectance(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 10000)


# --------------------------------------------------------------------------------------------
# Sample values
# --------------------------------------------------------------------------------------------


def test_samples_equal_the_stored_arrays(demo: Path) -> None:
    ds = CloudBenchDataset(demo, split="test")
    table = Store(demo).samples
    s1, s2, clear, cloud = (stored(demo, n) for n in ("s1", "s2", "s2_clear", "cloud_mask"))
    assert list(ds.indices) == list(np.flatnonzero(table["split"] == "test"))
    for i, row in enumerate(ds.indices):
        sample = ds[i]
        assert set(sample) == {
            "image_s1", "image_s2", "image_s2_clear", "label", "cloud_mask", "cloud_fraction",
        }
        assert sample["image_s1"].dtype == torch.float32
        assert torch.equal(sample["image_s1"], torch.from_numpy(s1[row]))
        assert torch.equal(sample["image_s2"], s2_reflectance(s2[row]))
        assert torch.equal(sample["image_s2_clear"], s2_reflectance(clear[row]))
        assert sample["cloud_mask"].dtype == torch.uint8
        assert torch.equal(sample["cloud_mask"], torch.from_numpy(cloud[row, 0]))
        assert sample["label"].dtype == torch.int64 and sample["label"].shape == ()
        assert int(sample["label"]) == table["label"].iloc[row]
        assert sample["cloud_fraction"].dtype == torch.float32
        assert float(sample["cloud_fraction"]) == np.float32(table["cloud_fraction"].iloc[row])
        assert ds.ids[i] == table["id"].iloc[row]
        assert ds.cloud_states[i] == table["cloud_state"].iloc[row]


def test_properties(demo: Path, multilabel: Path) -> None:
    ds = CloudBenchDataset(demo)
    assert ds.classes == list(CLASSES)
    assert (ds.task, ds.num_classes) == ("multiclass", 3)
    assert isinstance(ds.store, Store) and ds.store.root == demo
    ml = CloudBenchDataset(multilabel)
    assert (ml.task, ml.num_classes, ml.classes) == ("multilabel", 4, list(ML_CLASSES))


def test_no_clear_image_where_the_store_has_none(small_store: Path) -> None:
    assert "image_s2_clear" not in CloudBenchDataset(small_store)[0]


def test_multilabel_label_is_int64_multi_hot_of_the_stored_lists(multilabel: Path) -> None:
    ds = CloudBenchDataset(multilabel)
    table = Store(multilabel).samples
    for i, row in enumerate(ds.indices):
        label = ds[i]["label"]
        assert label.dtype == torch.int64 and label.shape == (4,)
        assert torch.nonzero(label).flatten().tolist() == list(table["label"].iloc[row])


def test_transforms_are_applied(demo: Path) -> None:
    def mark(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**sample, "marked": sample["label"] + 100}

    ds = CloudBenchDataset(demo, transforms=mark)
    assert int(ds[3]["marked"]) == int(ds[3]["label"]) + 100
    assert [int(s["marked"]) for s in ds.__getitems__([0, 1])] == [
        int(ds[0]["label"]) + 100, int(ds[1]["label"]) + 100,
    ]


# --------------------------------------------------------------------------------------------
# Bands
# --------------------------------------------------------------------------------------------


def test_band_order_and_derived_ratio(demo: Path) -> None:
    ds = CloudBenchDataset(demo, bands=("B02", "VH", "VV/VH", "B8A", "VV"))
    assert ds.s1_bands == ("VH", "VV/VH", "VV") and ds.s2_bands == ("B02", "B8A")
    row = ds.indices[4]
    s1 = stored(demo, "s1")[row]
    sample = ds[4]
    expected = np.stack([s1[1], s1[0] - s1[1], s1[0]])
    assert torch.equal(sample["image_s1"], torch.from_numpy(expected))
    s2_index = [S2_L2A_BANDS.index("B02"), S2_L2A_BANDS.index("B8A")]
    assert torch.equal(sample["image_s2"], s2_reflectance(stored(demo, "s2")[row, s2_index]))
    assert torch.equal(
        sample["image_s2_clear"], s2_reflectance(stored(demo, "s2_clear")[row, s2_index])
    )


def test_default_bands_are_all_s1_then_all_s2(demo: Path) -> None:
    ds = CloudBenchDataset(demo)
    assert ds.bands == ("VV", "VH", *S2_L2A_BANDS)
    sample = ds[0]
    assert sample["image_s1"].shape == (2, 16, 16)
    assert sample["image_s2"].shape == (12, 16, 16)


def test_single_modality_views(demo: Path) -> None:
    sar = CloudBenchDataset(demo, bands=CloudBenchDataset.SAR)[0]
    assert "image_s2" not in sar and "image_s2_clear" not in sar
    assert sar["image_s1"].shape == (3, 16, 16)
    rgb = CloudBenchDataset(demo, bands=CloudBenchDataset.OPTICAL_RGB)[0]
    assert "image_s1" not in rgb and rgb["image_s2"].shape == (3, 16, 16)


def test_unknown_band_lists_the_available_names(demo: Path) -> None:
    with pytest.raises(CloudbenchError, match=r"unknown bands \[.B10.\]; available: VV, VH, VV/VH"):
        CloudBenchDataset(demo, bands=("B04", "B10"))


@pytest.mark.parametrize("bands", [(), ("B04", "B04")])
def test_bands_must_be_distinct_and_not_empty(demo: Path, bands: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="distinct and at least one"):
        CloudBenchDataset(demo, bands=bands)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def ids(root: Path, split: str, **kwargs: Any) -> list[str]:
    return CloudBenchDataset(root, split=split, **kwargs).ids


def test_train_and_test_partition_the_store(demo: Path) -> None:
    train, test = ids(demo, "train"), ids(demo, "test")
    assert (len(train), len(test)) == (48, 12)
    assert sorted(train + test) == sorted(Store(demo).samples["id"])


def test_labeled_split_draws_k_per_class_seeded(demo: Path) -> None:
    labeled = CloudBenchDataset(demo, split="labeled", labeled_per_class=5)
    counts = np.bincount([int(labeled[i]["label"]) for i in range(len(labeled))], minlength=3)
    assert counts.tolist() == [5, 5, 5]
    train = ids(demo, "train")
    unlabeled = ids(demo, "unlabeled", labeled_per_class=5)
    assert not set(labeled.ids) & set(unlabeled)
    assert sorted(labeled.ids + unlabeled) == sorted(train)
    assert ids(demo, "labeled", labeled_per_class=5) == labeled.ids
    assert ids(demo, "labeled", labeled_per_class=5, seed=1) != labeled.ids
    assert ids(demo, "unlabeled", labeled_per_class=5, seed=1) != unlabeled


def test_labeled_takes_all_a_class_has(demo: Path) -> None:
    assert ids(demo, "labeled", labeled_per_class=100) == ids(demo, "train")
    assert ids(demo, "unlabeled", labeled_per_class=100) == []


def test_multilabel_labeled_split(multilabel: Path) -> None:
    labeled = CloudBenchDataset(multilabel, split="labeled", labeled_per_class=3)
    assert len(labeled) == 4 * 3  # each class draws 3 samples not drawn before
    hot = torch.stack([labeled[i]["label"] for i in range(len(labeled))])
    assert (hot.sum(dim=0) >= 3).all()
    assert set(labeled.ids) <= set(ids(multilabel, "train"))
    assert ids(multilabel, "labeled", labeled_per_class=3) == labeled.ids
    assert ids(multilabel, "labeled", labeled_per_class=3, seed=5) != labeled.ids


def test_unknown_split_names_the_splits(demo: Path) -> None:
    with pytest.raises(CloudbenchError, match="unknown split 'validation'; choose one of train, "
                                         "val, test, labeled, unlabeled"):
        CloudBenchDataset(demo, split="validation")


def test_negative_labeled_per_class(demo: Path) -> None:
    with pytest.raises(ValueError, match="labeled_per_class must be >= 0"):
        CloudBenchDataset(demo, split="labeled", labeled_per_class=-1)


# --------------------------------------------------------------------------------------------
# Batched reads
# --------------------------------------------------------------------------------------------


def assert_samples_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_getitems_equals_getitem(demo: Path) -> None:
    ds = CloudBenchDataset(demo, split="labeled", labeled_per_class=6, bands=("VV/VH", "B04"))
    indices = [7, 0, 7, 3, 17, -1]  # unsorted, repeated and negative
    batch = ds.__getitems__(indices)
    assert len(batch) == len(indices)
    for index, sample in zip(indices, batch, strict=True):
        assert_samples_equal(sample, ds[index])
    assert not torch.equal(batch[0]["image_s2"], batch[1]["image_s2"])


def test_index_out_of_range(demo: Path) -> None:
    ds = CloudBenchDataset(demo, split="test")
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_getitems_reads_each_array_once(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = CloudBenchDataset(demo)
    opened: list[str] = []
    array = ds.store.array

    def counting(name: str) -> np.ndarray:
        opened.append(name)
        return array(name)

    monkeypatch.setattr(ds.store, "array", counting)
    assert len(ds.__getitems__(list(range(8)))) == 8
    assert sorted(opened) == ["cloud_mask", "s1", "s2", "s2_clear"]


@pytest.mark.parametrize("root_name", ["demo", "multilabel"])
def test_to_tensors_equals_stacked_samples(root_name: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(root_name)
    ds = CloudBenchDataset(root, split="unlabeled", labeled_per_class=4)
    tensors = ds.to_tensors(chunk_size=7)  # several chunks, the last partial
    samples = [ds[i] for i in range(len(ds))]
    assert set(tensors) == set(samples[0])
    for key, value in tensors.items():
        assert torch.equal(value, torch.stack([s[key] for s in samples])), key
    table = Store(root).samples
    assert ds.ids == table["id"].iloc[ds.indices].tolist()
    assert ds.cloud_states == table["cloud_state"].iloc[ds.indices].tolist()


def test_dataloader_collates_batches(demo: Path, multilabel: Path) -> None:
    ds = CloudBenchDataset(demo, bands=CloudBenchDataset.SAR)
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["image_s1"].shape == (8, 3, 16, 16)
    assert batch["cloud_mask"].shape == (8, 16, 16) and batch["label"].shape == (8,)
    whole = ds.to_tensors()
    for key in batch:
        assert torch.equal(batch[key], whole[key][:8]), key
    ml_batch = next(iter(DataLoader(CloudBenchDataset(multilabel), batch_size=8, shuffle=True)))
    assert ml_batch["label"].shape == (8, 4) and ml_batch["label"].dtype == torch.int64


# --------------------------------------------------------------------------------------------
# Missing and mismatched stores
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "command"),
    [
        (CloudBenchDataset, "cloudbench build demo --out {root}"),
        (SEN12MSCloud, "cloudbench build sen12ms-cloud --sen12ms-root"),
        (HunanCloud, "cloudbench build hunan-cloud --labels"),
        (CBEN, "cloudbench build cben --bigearthnet-root"),
        (BigEarthNetClean, "cloudbench build bigearthnet --bigearthnet-root … --out {root}"),
    ],
)
def test_missing_dataset_names_the_build_command(
    tmp_path: Path, cls: type[CloudBenchDataset], command: str
) -> None:
    root = tmp_path / "absent"
    with pytest.raises(torchgeo.datasets.DatasetNotFoundError) as caught:
        cls(root)
    assert isinstance(caught.value, DatasetNotFoundError)
    assert f"no dataset at {root}" in str(caught.value)
    assert command.format(root=root) in str(caught.value)


def test_unfinished_build_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "ds" / "shards").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="an unfinished build .* re-run: cloudbench"):
        CloudBenchDataset(tmp_path / "ds")


def test_a_damaged_store_raises_store_error(small_store: Path) -> None:
    (small_store / "samples.parquet").write_bytes(b"not parquet")
    with pytest.raises(StoreError, match="not a readable GeoParquet") as caught:
        CloudBenchDataset(small_store)
    assert not isinstance(caught.value, DatasetNotFoundError)


def scheme_store(tmp_path: Path, kind: str, scheme: str, **kwargs: object) -> Path:
    spec = class_scheme(scheme)
    options = {"kind": kind, "task": spec.task, "classes": spec.classes, "n": 40, **kwargs}
    return make_store(tmp_path / kind, **options)  # type: ignore[arg-type]


def test_named_classes_open_their_kind(tmp_path: Path) -> None:
    sen = SEN12MSCloud(scheme_store(tmp_path, "sen12ms-cloud", "simplified_igbp"))
    assert sen.classes == list(class_scheme("simplified_igbp").classes)
    cben = CBEN(scheme_store(tmp_path, "cben", "bigearthnet19"), bands=CBEN.EARLY_FUSION_BANDS)
    sample = cben[0]
    assert sample["image_s1"].shape[0] + sample["image_s2"].shape[0] == 14
    assert sample["label"].shape == (19,)


def test_named_class_refuses_another_kind(tmp_path: Path) -> None:
    root = scheme_store(tmp_path, "sen12ms-cloud", "simplified_igbp")
    with pytest.raises(StoreError, match="'sen12ms-cloud' dataset, not 'cben': open it with "
                                         "SEN12MSCloud, not CBEN"):
        CBEN(root)
    assert CloudBenchDataset(root).classes[0] == "Forest"  # the generic class opens any kind


def test_named_class_refuses_other_classes(tmp_path: Path) -> None:
    root = make_store(tmp_path / "ds", kind="sen12ms-cloud", n=30)
    with pytest.raises(StoreError, match="not the simplified_igbp classes"):
        SEN12MSCloud(root)


def test_hunan_cloud_checks_class_names_only(tmp_path: Path) -> None:
    subset = make_store(tmp_path / "subset", kind="hunan-cloud", classes=("Water", "Forest"), n=30)
    assert HunanCloud(subset).classes == ["Water", "Forest"]
    other = make_store(tmp_path / "other", kind="hunan-cloud", classes=("Water", "Glacier"), n=30)
    with pytest.raises(StoreError, match=r"classes \['Glacier'\] are not in the hunan_cloud"):
        HunanCloud(other)


# --------------------------------------------------------------------------------------------
# Native-resolution S2 groups (CBEN, BigEarthNetClean)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cben(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return grouped_store(tmp_path_factory.mktemp("cben") / "ds", "cben")


def expected_s2(root: Path, row: int, band: str, upsample: str) -> torch.Tensor:
    """The band as reflectance on s2's 12x12 grid, upsampled independently of the dataset."""
    name = next(n for n, (bands, _) in GROUPS.items() if band in bands)
    bands, factor = GROUPS[name]
    image = stored(root, name)[row, bands.index(band)].astype(np.float32) / 10000
    if upsample == "nearest":
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
        return torch.from_numpy(image)
    if factor == 1:
        return torch.from_numpy(image)
    fine = F.interpolate(torch.from_numpy(image)[None, None], size=(12, 12), mode="bilinear",
                         align_corners=False)
    return fine[0, 0]


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_bands_come_from_their_group_upsampled_in_the_order_asked(
    cben: Path, upsample: str
) -> None:
    bands = ("B09", "B04", "B8A", "B01", "B02", "B12")
    ds = CBEN(cben, split="test", bands=("VH", *bands), upsample=upsample)  # type: ignore[arg-type]
    assert ds.s2_bands == bands
    for i, row in enumerate(ds.indices):
        image = ds[i]["image_s2"]
        assert image.dtype == torch.float32 and image.shape == (6, 12, 12)
        for k, band in enumerate(bands):
            assert torch.equal(image[k], expected_s2(cben, row, band, upsample)), band
        assert torch.equal(ds[i]["image_s1"][0], torch.from_numpy(stored(cben, "s1")[row, 1]))


def test_bilinear_keeps_constants_constant_and_stays_within_the_coarse_values(cben: Path) -> None:
    ds = CBEN(cben, bands=("B05", "B01", "B09"))
    images = ds.to_tensors()["image_s2"]
    torch.testing.assert_close(images[:, 0], torch.full_like(images[:, 0], 0.5))
    coarse = torch.from_numpy(stored(cben, "s2_60m")[ds.indices].astype(np.float32) / 10000)
    low, high = coarse.amin(dim=(2, 3), keepdim=True), coarse.amax(dim=(2, 3), keepdim=True)
    ulp = 1e-7  # float32 rounding of the weighted sums
    assert ((images[:, 1:] >= low - ulp) & (images[:, 1:] <= high + ulp)).all()
    assert not torch.equal(images[:, 1:], CBEN(cben, bands=("B01", "B09"),
                                               upsample="nearest").to_tensors()["image_s2"])


def test_default_bands_of_a_grouped_store_are_in_esa_order(cben: Path) -> None:
    assert CBEN(cben).bands == CBEN.EARLY_FUSION_BANDS == ("VV", "VH", *L2A_BANDS)
    generic = CloudBenchDataset(cben)
    assert generic.bands == ("VV", "VH", *L2A_BANDS)
    sample = generic[0]
    assert sample["image_s2"].shape == (12, 12, 12) and "image" not in sample
    for k, band in enumerate(L2A_BANDS):
        assert torch.equal(sample["image_s2"][k], expected_s2(cben, generic.indices[0], band,
                                                                "bilinear"))


def test_early_fusion_image_is_vv_vh_then_the_12_bands(cben: Path) -> None:
    ds = CBEN(cben, split="val", upsample="nearest", early_fusion=True)
    row = ds.indices[2]
    sample = ds[2]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (14, 12, 12)
    s1 = torch.from_numpy(stored(cben, "s1")[row])
    assert torch.equal(sample["image"][:2], s1)
    for k, band in enumerate(L2A_BANDS):
        assert torch.equal(sample["image"][2 + k], expected_s2(cben, row, band, "nearest")), band
    reordered = CBEN(cben, split="val", bands=("B12", *L2A_BANDS[:-1], "VH", "VV"),
                     upsample="nearest", early_fusion=True)
    assert torch.equal(reordered[2]["image"], sample["image"])


def test_early_fusion_needs_its_bands(cben: Path) -> None:
    with pytest.raises(CloudbenchError, match=r"early_fusion needs all of VV, VH, B01.*lack "
                                              r"\['VV', 'B01', 'B03'"):
        CBEN(cben, bands=("VH", "B02", "B04"), early_fusion=True)


def test_grouped_store_errors(cben: Path) -> None:
    with pytest.raises(CloudbenchError, match=r"unknown bands \['B10'\]; available: VV, VH, "
                                              r"VV/VH, B01, B02, B03, B04, B05, B06, B07, B08, "
                                              r"B8A, B09, B11, B12$"):
        CBEN(cben, bands=("B04", "B10"))
    with pytest.raises(CloudbenchError, match="unknown upsample 'bicubic'; choose one of "
                                              "bilinear, nearest"):
        CBEN(cben, upsample="bicubic")  # type: ignore[arg-type]


def test_val_split(cben: Path) -> None:
    table = Store(cben).samples
    parts = {split: CBEN(cben, split=split).ids for split in ("train", "val", "test")}
    for split, part in parts.items():
        assert part == table["id"][table["split"] == split].tolist() and len(part) == 4
    dm = CloudBenchDataModule(CBEN, root=cben, batch_size=2, val_split="val")
    dm.setup("fit")
    assert isinstance(dm.val_dataset, CBEN) and dm.val_dataset.ids == parts["val"]


def test_grouped_batches_equal_samples(cben: Path) -> None:
    ds = CBEN(cben, split="train", early_fusion=True)
    tensors = ds.to_tensors(chunk_size=3)  # two chunks, the last partial
    assert set(tensors) == {"image_s1", "image_s2", "image", "label", "cloud_mask",
                            "cloud_fraction"}
    for i in range(len(ds)):
        assert_samples_equal({key: value[i] for key, value in tensors.items()}, ds[i])
    indices = [3, 0, 3, 1]  # unsorted and repeated
    for index, sample in zip(indices, ds.__getitems__(indices), strict=True):
        assert_samples_equal(sample, ds[index])


def test_only_the_groups_holding_selected_bands_are_read(
    cben: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = CBEN(cben, bands=("B04", "B8A"))
    opened: list[str] = []
    array = ds.store.array

    def counting(name: str) -> np.ndarray:
        opened.append(name)
        return array(name)

    monkeypatch.setattr(ds.store, "array", counting)
    assert len(ds.__getitems__([0, 1, 2])) == 3
    assert sorted(opened) == ["cloud_mask", "s2", "s2_20m"]  # no s1, no s2_60m


def test_clean_twin_opens_its_kind_only(cben: Path, tmp_path: Path) -> None:
    clean = grouped_store(tmp_path / "clean", "bigearthnet")
    ds = BigEarthNetClean(clean, split="val", early_fusion=True)
    assert ds.bands == CBEN.EARLY_FUSION_BANDS and ds[0]["image"].shape == (14, 12, 12)
    assert ds[0]["label"].shape == (19,)
    with pytest.raises(StoreError, match="'bigearthnet' dataset, not 'cben': open it with "
                                         "BigEarthNetClean, not CBEN"):
        CBEN(clean)
    with pytest.raises(StoreError, match="'cben' dataset, not 'bigearthnet': open it with CBEN, "
                                         "not BigEarthNetClean"):
        BigEarthNetClean(cben)


def test_plot_finds_true_colour_in_a_grouped_store(cben: Path) -> None:
    ds = CBEN(cben, bands=("B05", "B02", "VV", "B03", "B01", "B04"))
    fig = ds.plot(ds[0])
    assert [ax.get_title() for ax in fig.axes] == [
        "Sentinel-2 true colour", "Sentinel-1 VV", "Cloud mask",
    ]
    rgb = fig.axes[0].get_images()[0].get_array()
    assert rgb is not None and rgb.shape == (12, 12, 3)


# --------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------


def test_plot_has_a_panel_per_image(demo: Path) -> None:
    ds = CloudBenchDataset(demo)
    sample = ds[0]
    fig = ds.plot({**sample, "prediction": torch.tensor(1)}, suptitle="patch")
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # S2, S2 cloud-free, S1, cloud mask
    assert [ax.get_title() for ax in fig.axes] == [
        "Sentinel-2 true colour", "Sentinel-2 cloud-free true colour",
        "Sentinel-1 VV, VH, VV/VH", "Cloud mask",
    ]
    label = CLASSES[int(sample["label"])]
    assert fig.get_suptitle() == f"patch\nlabel: {label}\nprediction: Water"
    rgb = fig.axes[0].get_images()[0].get_array()
    assert rgb is not None and rgb.shape == (16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1


def test_plot_only_what_the_sample_has(demo: Path, multilabel: Path) -> None:
    sar = CloudBenchDataset(demo, bands=("VV",))
    fig = sar.plot(sar[0], show_titles=False)
    assert len(fig.axes) == 2  # S1, cloud mask
    assert fig.get_suptitle() == "" and fig.axes[0].get_title() == ""
    ml = CloudBenchDataset(multilabel, bands=("B03",))
    sample = ml[0]
    fig = ml.plot(sample)
    assert [ax.get_title() for ax in fig.axes] == ["Sentinel-2 B03", "Cloud mask"]
    names = [n for n, on in zip(ML_CLASSES, sample["label"].tolist(), strict=True) if on]
    assert fig.get_suptitle() == f"label: {', '.join(names)}"


# --------------------------------------------------------------------------------------------
# Data module
# --------------------------------------------------------------------------------------------


def test_data_module_without_a_trainer(demo: Path) -> None:
    dm = CloudBenchDataModule(root=demo, batch_size=8, bands=("B04", "VV"))
    dm.setup("fit")
    assert dm.val_dataset is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_s2"].shape == (8, 1, 16, 16)
    assert batch["image_s1"].shape == (8, 1, 16, 16)
    assert batch["label"].shape == (8,) and batch["cloud_fraction"].shape == (8,)
    assert dm.aug(batch) is batch  # TorchGeo's default would normalise an absent 'image' key
    dm.setup("test")
    assert isinstance(dm.test_dataset, CloudBenchDataset) and dm.test_dataset.split == "test"
    assert len(next(iter(dm.test_dataloader()))["label"]) == 8


def test_data_module_splits(multilabel: Path) -> None:
    dm = CloudBenchDataModule(
        root=multilabel, batch_size=4, train_split="labeled", val_split="unlabeled",
        labeled_per_class=2,
    )
    dm.setup("fit")
    assert isinstance(dm.train_dataset, CloudBenchDataset)
    assert isinstance(dm.val_dataset, CloudBenchDataset)
    assert len(dm.train_dataset) == 8
    assert len(dm.val_dataset) == 48 - 8
    assert next(iter(dm.val_dataloader()))["label"].shape == (4, 4)
