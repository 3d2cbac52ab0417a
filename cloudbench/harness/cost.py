"""The cost of a method's whole pipeline: the profile rows beside the speeds.

The runner times each run (:func:`cloudbench.harness.runner.run_one`) and records, as
``kind == "profile"`` rows (:func:`cost_rows`):

* ``train_seconds``: the wall time of the method's ``fit``, every stage it trains (a source
  model adapted to the target classes, a cloud-removal network trained inside the method, the
  classifier, …) and whatever it computes between them (pseudo-labels, reconstructions of the
  training split); plus, for a run resumed from its checkpoints, the training seconds of the
  epochs done before it was stopped (their history entries). A source model trained once per
  source domain for every run (``OUT/sources/<name>/model.pt``) is not part of it, nor a
  cloud-removal model loaded from ``cr_weights``.
* ``predict_seconds``: the wall time of the method's ``predict`` on the test split (the run's
  own, else the first of its ``test`` datasets).
* ``cloud_mask_seconds``: for a method whose prediction reads the test images' cloud mask
  (:attr:`Method.reads_cloud_mask <cloudbench.harness.methods.Method.reads_cloud_mask>`), the
  time s2cloudless takes to compute the masks of that test split: the split's size times
  :func:`cloud_mask_seconds_per_image` at its images' size.
* ``pipeline_seconds``: ``train_seconds + predict_seconds + cloud_mask_seconds``.
* ``device_hours``: ``(train_seconds + predict_seconds) × devices / 3600``, the training device's
  hours (GPU-hours when the row's ``device`` is a CUDA GPU, CPU-hours otherwise) over every
  process of a data-parallel run; s2cloudless runs on the CPU and is not counted.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from cloudbench.clouds import CloudMaskConfig, cloud_mask
from cloudbench.sources.base import S2_L1C_BANDS

MASK_PROBE_REPEATS = 3
"""Timed s2cloudless calls per probe (after one untimed call that loads the model)."""


def cloud_mask_seconds_per_image(height: int, width: int) -> float:
    """Seconds s2cloudless takes (:func:`cloudbench.clouds.cloud_mask`, default settings) for
    one (13, ``height``, ``width``) L1C image: the median of :data:`MASK_PROBE_REPEATS` timed
    calls on seeded random top-of-atmosphere reflectance in [0, 0.5), processed at the image's
    own pixel size. Its cost depends on the pixel count, not on the pixel values."""
    image = np.random.default_rng(0).uniform(0.0, 0.5, (len(S2_L1C_BANDS), height, width))
    image = image.astype(np.float32)
    config = CloudMaskConfig()
    cloud_mask(image, config)
    seconds = []
    for _ in range(MASK_PROBE_REPEATS):
        started = time.perf_counter()
        cloud_mask(image, config)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def cost_rows(train_seconds: float, predict_seconds: float, devices: int,
              cloud_mask_seconds: float | None = None) -> list[dict[str, float | str]]:
    """The cost rows (``metric``, ``value``) of one run, as the module docstring defines them;
    ``cloud_mask_seconds`` None: the method reads no cloud mask (no such row, nothing added to
    ``pipeline_seconds``)."""
    rows: list[dict[str, float | str]] = [
        {"metric": "train_seconds", "value": train_seconds},
        {"metric": "predict_seconds", "value": predict_seconds},
    ]
    pipeline = train_seconds + predict_seconds
    if cloud_mask_seconds is not None:
        rows.append({"metric": "cloud_mask_seconds", "value": cloud_mask_seconds})
        pipeline += cloud_mask_seconds
    rows += [
        {"metric": "pipeline_seconds", "value": pipeline},
        {"metric": "device_hours", "value": (train_seconds + predict_seconds) * devices / 3600},
    ]
    return rows
