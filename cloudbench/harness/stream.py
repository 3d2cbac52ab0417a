"""Splits left in the store, and the batches the engine makes of any split.

A split's inputs map keys to tensors: either ``Tensor`` (resident: the whole split decoded on
the device, the fast path for data that fits) or :class:`Stored` (streamed: rows of the store's
memory-mapped arrays, read batch by batch). A :class:`Stored` column reads only a batch's rows
and channels, in the store's own dtypes (uint16 S2, float32 S1 in dB, uint8 cloud mask: what
travels to the device), and decodes them there: physical units, the native-resolution S2 groups
upsampled, then standardised. A resident column is made by the same decoding
(:meth:`Stored.materialise`), chunk by chunk, and every step is per sample, so a split gives
bitwise the same batches resident or streamed.

:class:`Batches` turns any inputs and an order into device batches: resident columns by
``index_select``, stored ones read by a background thread ``prefetch`` batches ahead (each batch's
rows sorted, so runs of neighbouring rows are read together), pinned on CUDA (PyTorch's caching
host allocator keeps the pinned buffers for reuse) and copied without blocking, so the read and
the copy overlap the computation on the batch before.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from cloudbench.datasets import CloudBenchDataset
from cloudbench.errors import CloudbenchError

Batch = dict[str, Tensor]


@dataclass(frozen=True, eq=False)
class Stored:
    """One image key (or ``cloud_mask``) of a split, left in the store.

    ``rows`` are the store rows of the split's samples, in split order; ``mean`` and ``std``
    ((C,) float32), when set, standardise each decoded channel as ``(x - mean) / std``.
    """

    dataset: CloudBenchDataset
    key: str
    rows: np.ndarray
    mean: Tensor | None = None
    std: Tensor | None = None

    @functools.cached_property
    def _empty(self) -> Tensor:
        return self.dataset.decode(
            self.key, [torch.from_numpy(b) for b in self.dataset.raw(self.key, self.rows[:0])])

    @property
    def shape(self) -> torch.Size:
        """(N, C, H, W) for images, (N, H, W) for the cloud mask, as a tensor's."""
        return torch.Size((len(self.rows), *self._empty.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self._empty.dtype

    @property
    def device(self) -> torch.device:
        """Where the column is: the host (the store)."""
        return torch.device("cpu")

    def dim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one decoded sample: what a resident copy costs per sample."""
        return int(np.prod(self.shape[1:])) * self._empty.element_size()

    @property
    def wire_bytes(self) -> int:
        """Bytes of one sample as stored and streamed."""
        return sum(b[0].nbytes for b in self.dataset.raw(self.key, self.rows[:1])) \
            if len(self.rows) else 0

    def take(self, index: np.ndarray | Tensor) -> Stored:
        """The samples at ``index`` (positions in this column), in that order."""
        index = index.cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
        return replace(self, rows=self.rows[index])

    def cat(self, other: Stored) -> Stored:
        """This column's samples, then ``other``'s: columns of any splits of one store that
        decode alike (the same key, bands, upsampling and standardisation)."""
        mine, theirs = self.dataset, other.dataset
        same = (mine.root == theirs.root and mine.bands == theirs.bands
                and mine.upsample == theirs.upsample and other.key == self.key
                and _same(self.mean, other.mean) and _same(self.std, other.std))
        if not same:
            raise CloudbenchError(f"cannot join {self.key} columns that decode differently "
                                  f"({mine.root} {mine.split}, {theirs.root} {theirs.split})")
        return replace(self, rows=np.concatenate([self.rows, other.rows]))

    def standardised(self, mean: Tensor, std: Tensor) -> Stored:
        return replace(self, mean=mean.float().cpu(), std=std.float().cpu())

    def read(self, positions: np.ndarray) -> list[np.ndarray]:
        """The stored blocks of the samples at ``positions``, in that order (host memory).

        The rows are read once each, in ascending order, then put in the order asked for.
        """
        rows = self.rows[positions]
        unique, inverse = np.unique(rows, return_inverse=True)
        blocks = self.dataset.raw(self.key, unique)
        if not np.array_equal(unique, rows):
            blocks = [b[inverse.reshape(-1)] for b in blocks]
        return blocks

    def decode(self, blocks: Sequence[Tensor]) -> Tensor:
        """The batch from :meth:`read`'s blocks, on their device, standardised."""
        image = self.dataset.decode(self.key, blocks)
        if self.mean is not None and self.std is not None:
            shape = (1, -1, 1, 1)
            image = (image - self.mean.to(image.device).reshape(shape)) \
                / self.std.to(image.device).reshape(shape)
        return image

    def materialise(self, device: torch.device, chunk_size: int = 512) -> Tensor:
        """The whole column decoded on ``device`` (the resident copy), ``chunk_size`` samples
        at a time."""
        out = torch.empty(self.shape, dtype=self.dtype, device=device)
        for start in range(0, len(self), chunk_size):
            positions = np.arange(start, min(len(self), start + chunk_size))
            blocks = [torch.from_numpy(b).to(device) for b in self.read(positions)]
            out[start:positions[-1] + 1] = self.decode(blocks)
        return out


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))


Column = Tensor | Stored
Inputs = Mapping[str, Column]


def is_stored(inputs: Inputs) -> bool:
    """Whether any column of ``inputs`` is left in the store."""
    return any(isinstance(v, Stored) for v in inputs.values())


def take(inputs: Inputs, index: Tensor) -> dict[str, Column]:
    """The samples of ``inputs`` at ``index`` (N',), every column alike."""
    return {k: v.take(index) if isinstance(v, Stored) else v.index_select(0, index.to(v.device))
            for k, v in inputs.items()}


def cat(first: Column, second: Column) -> Column:
    """One column of ``first``'s samples then ``second``'s (both stored, or both tensors)."""
    if isinstance(first, Stored) and isinstance(second, Stored):
        return first.cat(second)
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return torch.cat([first, second.to(first.device)])
    raise CloudbenchError("cannot join a resident and a streamed split")


def resident(inputs: Inputs, device: torch.device) -> dict[str, Column]:
    """``inputs`` on ``device``: every stored column decoded there, the tensors moved."""
    return {k: v.materialise(device) if isinstance(v, Stored) else v.to(device)
            for k, v in inputs.items()}


def sample_bytes(inputs: Inputs) -> int:
    """Bytes per sample of ``inputs`` decoded (its resident cost), all columns."""
    total = 0
    for value in inputs.values():
        if isinstance(value, Stored):
            total += value.sample_bytes
        else:
            total += int(np.prod(value.shape[1:])) * value.element_size()
    return total


class Batches:
    """Device batches of ``inputs`` for lists of positions (see the module docstring).

    ``prefetch``: how many batches of stored columns are read ahead (>= 1).
    """

    def __init__(self, inputs: Inputs, device: torch.device, prefetch: int = 2) -> None:
        if prefetch < 1:
            raise CloudbenchError(f"prefetch must be >= 1, got {prefetch}")
        self.inputs = dict(inputs)
        self.device = device
        self.prefetch = prefetch
        self._stored = {k: v for k, v in self.inputs.items() if isinstance(v, Stored)}

    def __call__(self, order: Tensor, bounds: Iterable[tuple[int, int]]) -> Iterator[Batch]:
        """The batches ``order[first:stop]`` for each ``(first, stop)`` of ``bounds``, in turn;
        ``order`` is a (N,) CPU tensor of positions."""
        orders = {torch.device("cpu"): order}
        for value in self.inputs.values():
            if not isinstance(value, Stored) and value.device not in orders:
                orders[value.device] = order.to(value.device)
        if not self._stored:
            for first, stop in bounds:
                yield self._resident(orders, first, stop)
            return
        pending: deque[tuple[int, int, Future[dict[str, list[Tensor]]]]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloudbench-stream") as pool:
            try:
                for first, stop in bounds:
                    future = pool.submit(self._read, order[first:stop].numpy())
                    pending.append((first, stop, future))
                    if len(pending) > self.prefetch:
                        yield self._assemble(orders, *pending.popleft())
                while pending:
                    yield self._assemble(orders, *pending.popleft())
            finally:
                for *_, future in pending:
                    future.cancel()

    def _resident(self, orders: Mapping[torch.device, Tensor], first: int, stop: int) -> Batch:
        return {key: value.index_select(0, orders[value.device][first:stop])
                .to(self.device, non_blocking=True)
                for key, value in self.inputs.items() if not isinstance(value, Stored)}

    def _read(self, rows: np.ndarray) -> dict[str, list[Tensor]]:
        """Host part, in the reader thread: the stored blocks, pinned for a CUDA device."""
        blocks = {}
        for key, column in self._stored.items():
            tensors = [torch.from_numpy(b) for b in column.read(rows)]
            if self.device.type == "cuda":
                tensors = [t.pin_memory() for t in tensors]
            blocks[key] = tensors
        return blocks

    def _assemble(self, orders: Mapping[torch.device, Tensor], first: int, stop: int,
                  future: Future[dict[str, list[Tensor]]]) -> Batch:
        batch = self._resident(orders, first, stop)
        for key, blocks in future.result().items():
            moved = [b.to(self.device, non_blocking=True) for b in blocks]
            batch[key] = self._stored[key].decode(moved)
        return {key: batch[key] for key in self.inputs}
