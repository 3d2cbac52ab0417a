"""Cutting rasters into patches and labelling patches by majority class, vectorised."""

from __future__ import annotations

import numpy as np


def cut(array: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (N, C, size, size) non-overlapping patches, row-major; edges are dropped."""
    c, h, w = array.shape
    rows, cols = h // size, w // size
    blocks = array[:, : rows * size, : cols * size].reshape(c, rows, size, cols, size)
    return np.ascontiguousarray(blocks.transpose(1, 3, 0, 2, 4).reshape(rows * cols, c, size, size))


def majority_labels(
    classes: np.ndarray, size: int, num_classes: int, purity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Majority class and its share for each patch of a class-index map.

    ``classes`` is (H, W) with class indices, or -1 for pixels of no class (no data, or a code
    the scheme does not map). The share is taken over all pixels of the patch, so unmapped pixels
    count against purity. Returns (label int64 (N,), share float64 (N,)); patches whose share is
    below ``purity`` get label -1.
    """
    patches = cut(classes[None], size).reshape(-1, size * size)
    n = len(patches)
    valid = patches >= 0
    offsets = np.arange(n)[:, None] * num_classes
    counts = np.bincount(
        (patches + offsets)[valid], minlength=n * num_classes
    ).reshape(n, num_classes)
    label = counts.argmax(axis=1)
    share = counts[np.arange(n), label] / (size * size)
    return np.where(share >= purity, label, -1), share
