"""Cutting rasters into patches and labelling patches by majority class, vectorised."""

from __future__ import annotations

import numpy as np

UNMAPPED = -1
"""Class-map value of a labelled pixel whose land-cover code the scheme does not map."""
NO_LABEL_DATA = -2
"""Class-map value of a pixel without label data (outside the label source, its no-data)."""

IMPURE = -1
"""``majority_labels``: the majority class holds less than ``purity`` of the labelled pixels."""
NO_LABELS = -2
"""``majority_labels``: the patch has no labelled pixel."""
SPARSE_LABELS = -3
"""``majority_labels``: labelled pixels cover less than ``min_labelled`` of the patch."""


def cut(array: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (N, C, size, size) non-overlapping patches, row-major; edges are dropped."""
    c, h, w = array.shape
    rows, cols = h // size, w // size
    blocks = array[:, : rows * size, : cols * size].reshape(c, rows, size, cols, size)
    return np.ascontiguousarray(blocks.transpose(1, 3, 0, 2, 4).reshape(rows * cols, c, size, size))


def majority_labels(
    classes: np.ndarray, size: int, num_classes: int, purity: float,
    min_labelled: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Majority class and its share for each patch of a class-index map.

    ``classes`` is (H, W): class indices ``0 .. num_classes - 1``, ``UNMAPPED`` (-1) for a
    labelled pixel of no class (a code the scheme does not map) and ``NO_LABEL_DATA`` (-2) for a
    pixel without label data. No-data pixels are left out of the purity rule altogether; unmapped
    pixels are labelled pixels of no class, so they count against purity.

    The share is the majority class's count over the patch's *labelled* pixels (all but
    no-data; 0 for a patch without any). Returns (label int64 (N,), share float64 (N,)); a patch
    gets ``NO_LABELS`` (-2) when it has no labelled pixel, ``SPARSE_LABELS`` (-3) when its
    labelled pixels cover less than ``min_labelled`` of it (default: ``purity``), ``IMPURE``
    (-1) when its share is below ``purity``, else its majority class (ties: the lowest index).
    A map without no-data pixels gets exactly the plain rule: share over the whole patch.
    """
    min_labelled = purity if min_labelled is None else min_labelled
    patches = cut(classes[None], size).reshape(-1, size * size)
    n = len(patches)
    valid = patches >= 0
    offsets = np.arange(n)[:, None] * num_classes
    counts = np.bincount(
        (patches + offsets)[valid], minlength=n * num_classes
    ).reshape(n, num_classes)
    labelled = (patches != NO_LABEL_DATA).sum(axis=1)
    label = counts.argmax(axis=1)
    share = counts[np.arange(n), label] / np.maximum(labelled, 1)
    out = np.where(share >= purity, label, IMPURE)
    out = np.where(labelled < min_labelled * size * size, SPARSE_LABELS, out)
    out = np.where(labelled == 0, NO_LABELS, out)
    return out, share
