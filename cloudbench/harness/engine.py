"""The one training engine every harness method uses.

A split's inputs are tensors held on the device, so that a batch is an ``index_select`` of
them (no DataLoader, no per-sample Python, no host-to-device copy per batch), or, for a split
larger than the device, :class:`~cloudbench.harness.stream.Stored` columns streamed from the
store's memory-mapped arrays, read ahead by a background thread and decoded on the device
(:mod:`cloudbench.harness.stream`); both give the same batches. On top of that the engine
trains with bf16 autocast where the hardware has bf16 arithmetic, channels-last tensors,
on-device augmentation (random flips and 90° rotations, the same per sample for every image
key), a warm-up and a cosine/step/constant learning-rate schedule, early stopping, and
checkpoints that resume a killed run to exactly the weights an uninterrupted run ends with.

A method plugs in through two functions: ``loss_fn(model, batch) -> {"loss": …, other terms}``
for training and ``forward(model, batch) -> outputs`` for :meth:`Engine.predict`::

    engine = Engine()                                   # cuda when available, else cpu
    train = dataset.to_tensors(engine.device)
    def loss_fn(model, batch):
        return {"loss": F.cross_entropy(model(batch["image_s2"]), batch["label"])}
    history = engine.fit(model, train, loss_fn, TrainConfig(epochs=50))
    logits = engine.predict(model, test, lambda m, b: m(b["image_s2"]))

Determinism: with the same seed, inputs and settings, :meth:`Engine.fit` gives bitwise identical
weights on CPU (same machine, same number of threads). The shuffling and the augmentation draw
from CPU generators seeded from ``(seed, epoch)``, and the global RNG (dropout) is seeded from
``seed`` at the start of ``fit`` and saved in checkpoints. On a GPU the shuffles and
augmentations are the same, but the weights are only close, not identical, from run to run:
some cuDNN convolution backward algorithms and other backward kernels (max pooling, adaptive
average pooling) accumulate with atomic additions in varying order, and cuDNN's algorithm
choice may change between runs with ``torch.backends.cudnn.benchmark``.
``torch.use_deterministic_algorithms(True)`` (with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) makes GPU
runs repeatable at some cost in speed.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.flop_counter import FlopCounterMode

from cloudbench.errors import CloudbenchError
from cloudbench.harness.stream import Batches, Inputs
from cloudbench.store import atomic_torch_save

if TYPE_CHECKING:
    from lightning.fabric import Fabric

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], Mapping[str, Any]]
"""``loss_fn(model, batch)``: ``{"loss": total to backpropagate, other scalar terms…}``."""
ScoreFn = Callable[[nn.Module, Any], float]
"""``score_fn(model, inputs)``: a validation score of the validation inputs (a dict of
columns, see :meth:`Engine.fit`), higher is better."""
ForwardFn = Callable[[nn.Module, Batch], Tensor]
"""``forward(model, batch)``: the outputs (B, …) of a batch."""
AmpMode = Literal["auto", "bf16", "off"]

CHECKPOINT_FORMAT = "cloudbench-engine-checkpoint"
CHECKPOINT_VERSION = 1
_SHUFFLE, _AUGMENT = 0, 1
"""Streams of the per-epoch generators."""
PLACEMENT_SETTINGS = frozenset({"data", "memory_budget_gb", "prefetch"})
"""Settings that decide where the data is kept, never what is computed."""
_RESUMABLE_CHANGES = frozenset({"checkpoint_every"}) | PLACEMENT_SETTINGS
"""Settings a run may change when it resumes a checkpoint (all others must match)."""


class TrainConfig(BaseModel):
    """How :meth:`Engine.fit` trains. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    epochs: int = Field(200, ge=1)
    """Epochs to train (each visits every sample once)."""
    batch_size: int = Field(64, ge=1)
    """Samples per step; the last, partial batch of an epoch is kept (a rest of one sample joins
    the batch before it: batch norm cannot train on one sample)."""
    optimizer: Literal["sgd", "adamw", "lars"] = "sgd"
    """SGD (with ``momentum``) or AdamW (default betas), PyTorch's fused implementations on CPU
    and CUDA, or LARS (timm's ``Lars``: SGD with ``momentum`` and a layer-wise trust ratio,
    coefficient 0.001, applied to every parameter; the optimiser of MAE's linear probe);
    ``weight_decay`` applies to all the parameters optimised."""
    lr: float = Field(1e-2, gt=0)
    """Peak learning rate (after warm-up, before the schedule decays it)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (unused by AdamW)."""
    weight_decay: float = Field(5e-4, ge=0)
    """L2 penalty (SGD) or decoupled weight decay (AdamW)."""
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    """Learning rate per epoch after warm-up: cosine from ``lr`` towards 0 over the remaining
    epochs; step: ×0.1 from 50% and again from 75% of ``epochs``; or constant."""
    warmup_epochs: int = Field(0, ge=0)
    """Epochs of linear warm-up: epoch ``e`` (0-based) uses ``lr * (e + 1) / (warmup + 1)``."""
    amp: AmpMode = "auto"
    """bf16 autocast: ``auto`` uses it on CUDA GPUs that support bf16 and on CPUs whose
    /proc/cpuinfo flags include ``avx512_bf16`` or ``amx_bf16``, not elsewhere; ``bf16``
    always; ``off`` never. No gradient scaling is needed for bf16."""
    channels_last: bool = True
    """Channels-last memory format for the model and the 4-D image tensors of each batch."""
    compile: bool = False
    """``torch.compile`` the model (the first epoch then includes compilation; it applies to
    calls of the model itself, not to other methods such as ``forward_parts``)."""
    augment: bool = True
    """Random horizontal/vertical flips and 90° rotations on the device, one transform per
    sample applied to all its image keys (keys starting with ``image``, and ``cloud_mask``);
    see :func:`augment`."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many epochs without improvement of the validation score (of the training
    loss without validation) and restore the best weights; None: train all epochs."""
    checkpoint_every: int | None = Field(None, ge=1)
    """With a checkpoint path, save every this many epochs (None: every epoch); the last epoch
    is always saved."""
    shuffle_block: int = Field(1, ge=1)
    """Each epoch shuffles blocks of this many consecutive samples (store rows, for a store's
    split) rather than single samples, so that a streamed batch reads a few runs of
    neighbouring rows instead of scattered ones; 1: every sample on its own."""
    data: Literal["auto", "resident", "stream"] = "auto"
    """Where the harness keeps a split (:func:`cloudbench.harness.data.place`): ``resident``,
    decoded on the device; ``stream``, in the store, read batch by batch; ``auto``, resident
    while it fits ``memory_budget_gb``, else streamed. Both give the same batches."""
    memory_budget_gb: float | None = Field(None, gt=0)
    """Memory (GB of the training device: GPU memory, or RAM on the CPU) that resident splits
    and the stream's batches in flight may take; None: half of what is free when the run
    starts."""
    prefetch: int = Field(2, ge=1)
    """Batches of a streamed split read ahead of the one being trained on."""

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})"
            )
        return self


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """The multiple of ``config.lr`` used in (0-based) ``epoch``."""
    warmup = config.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        milestones = (int(config.epochs * 0.5), int(config.epochs * 0.75))
        return float(0.1 ** sum(epoch >= m for m in milestones))
    span = max(1, config.epochs - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / span))


# --------------------------------------------------------------------------------------------
# Devices and precision
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: cuda when available, else cpu; anything else as ``torch.device`` reads it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether /proc/cpuinfo lists ``avx512_bf16`` or ``amx_bf16`` (False where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_amp(amp: AmpMode, device: torch.device) -> bool:
    """Whether bf16 autocast is used for ``amp`` on ``device`` (see :attr:`TrainConfig.amp`)."""
    if amp == "off":
        return False
    if amp == "bf16":
        return True
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16()


def end_process_group() -> None:
    """Destroy this process's process group, if any: what a data-parallel process does before
    it exits (a group left to the interpreter's exit can abort the process while gloo's
    threads still run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def describe_device(device: torch.device) -> str:
    """The device in words, e.g. ``NVIDIA H100`` or ``AMD EPYC, 2 cores, 2 torch threads``."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def is_image_key(key: str) -> bool:
    """Keys that are images of a sample: ``image*`` and ``cloud_mask``."""
    return key.startswith("image") or key == "cloud_mask"


def augment(batch: Mapping[str, Tensor], generator: torch.Generator,
            share: tuple[int, int] | None = None) -> Batch:
    """Random flips and 90° rotations, one per sample, the same for all its image keys.

    Each sample draws one of the 8 symmetries of the square (identity, 3 rotations, 4
    reflections) uniformly from ``generator`` (a CPU generator), and every image key of the
    sample (see :func:`is_image_key`; (B, …, H, W) tensors, any dtype, e.g. (B, C, H, W) images
    and the (B, H, W) cloud mask) gets that transform; other keys are returned as they are.
    When any image is not square, only the 4 flips (none, horizontal, vertical, both) are
    drawn. It is one gather per key on the tensors' device: a pixel permutation per sample
    taken from a table of the 8 (or 4) permutations, no Python loop over samples.

    ``share``: ``(offset, size)`` when ``batch`` is one process's part of a larger batch
    (data parallelism, :func:`shard`): the draws are made for the whole batch and this part
    takes those from ``offset`` on, so each sample gets the transform it would get in one
    process.
    """
    images = [k for k, v in batch.items() if is_image_key(k) and v.dim() >= 3]
    if not images:
        return dict(batch)
    size = batch[images[0]].shape[0]
    offset, drawn = share if share is not None else (0, size)
    square = all(batch[k].shape[-1] == batch[k].shape[-2] for k in images)
    choice = torch.randint(0, 8 if square else 4, (drawn,), generator=generator)
    choice = choice[offset:offset + size]
    out = dict(batch)
    for key in images:
        x = batch[key]
        h, w = x.shape[-2:]
        table = _pixel_permutations(h, w, square, x.device)
        index = table[choice.to(x.device, non_blocking=True)]  # (B, H*W)
        flat = x.reshape(size, -1, h * w)
        moved = flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1))
        out[key] = moved.reshape(x.shape)
    return out


@functools.lru_cache(maxsize=32)
def _pixel_permutations(h: int, w: int, square: bool, device: torch.device) -> Tensor:
    """(8 or 4, H*W) source pixel of each output pixel, per transform.

    Square: transform ``t`` is ``rot90(k = t % 4)`` then, for ``t >= 4``, a horizontal flip.
    Otherwise ``t`` bit 0 flips horizontally and bit 1 vertically.
    """
    base = torch.arange(h * w).reshape(h, w)
    if square:
        maps = [torch.rot90(base, t % 4, (0, 1)) for t in range(8)]
        maps = [m.flip(1) if t >= 4 else m for t, m in enumerate(maps)]
    else:
        maps = [base.flip(1) if t & 1 else base for t in range(4)]
        maps = [m.flip(0) if t & 2 else m for t, m in enumerate(maps)]
    return torch.stack([m.reshape(-1) for m in maps]).to(device)


def _channels_last(batch: Batch) -> Batch:
    return {
        k: v.contiguous(memory_format=torch.channels_last)
        if is_image_key(k) and v.dim() == 4 else v
        for k, v in batch.items()
    }


def batch_length(inputs: Inputs) -> int:
    """The common first dimension N of ``inputs`` (raises when empty or unequal)."""
    if not inputs:
        raise CloudbenchError("inputs hold no tensors")
    lengths = {k: (v.shape[0] if v.dim() else None) for k, v in inputs.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise CloudbenchError(f"inputs must share their first dimension, got {lengths}")
    n = next(iter(lengths.values()))
    assert n is not None
    if n == 0:
        raise CloudbenchError("inputs hold no samples")
    return int(n)


def batch_bounds(n: int, batch_size: int, smallest: int = 2) -> list[tuple[int, int]]:
    """``(start, stop)`` of an epoch's batches: full batches, then the partial rest, except that a
    rest of fewer than ``smallest`` samples joins the batch before it (a batch of one fails in
    batch norm; with data parallelism every process needs two: ``smallest`` is twice their
    number)."""
    bounds = [(first, min(n, first + batch_size)) for first in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < smallest:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def shard(order: Tensor, bounds: Sequence[tuple[int, int]], rank: int,
          world: int) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """One process's part of every batch under data parallelism: batch ``order[first:stop]``
    is cut into ``world`` consecutive parts as equal as can be (``torch.tensor_split``) and
    process ``rank`` takes part ``rank``. Returns the process's order, its batches' bounds in
    it, and per batch ``(offset, size)``: where its part starts in the whole batch and how big
    the whole batch is."""
    parts, local, shares = [], [], []
    start = 0
    for first, stop in bounds:
        mine = torch.tensor_split(torch.arange(first, stop), world)[rank]
        parts.append(order[mine])
        local.append((start, start + len(mine)))
        shares.append((int(mine[0]) - first if len(mine) else 0, stop - first))
        start += len(mine)
    return torch.cat(parts), local, shares


def epoch_order(n: int, seed: int, epoch: int, shuffle_block: int = 1) -> Tensor:
    """The (N,) order in which an epoch visits the samples: a permutation drawn from
    ``(seed, epoch)``, of single samples, or of blocks of ``shuffle_block`` consecutive ones."""
    generator = _generator(seed, epoch, _SHUFFLE)
    if shuffle_block == 1:
        return torch.randperm(n, generator=generator)
    blocks = torch.randperm(-(-n // shuffle_block), generator=generator)
    order = (blocks[:, None] * shuffle_block + torch.arange(shuffle_block)).reshape(-1)
    return order[order < n]


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for one epoch and purpose, independent of the others."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _scalar_terms(terms: Mapping[str, Any]) -> Iterator[tuple[str, Tensor | float]]:
    for name, value in terms.items():
        if isinstance(value, Tensor):
            if value.numel() == 1:
                yield name, value.detach().reshape(()).float()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield name, float(value)


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """Samples per second of the last :meth:`Engine.fit` and of the last :meth:`Engine.predict`.

    ``train_samples_per_second`` counts the epochs trained by that call, without the first when
    it trained more than one (warm-up: allocations, compilation, algorithm selection), and is
    None when it trained none (a finished checkpoint); ``predict_samples_per_second`` counts all
    batches. None until measured.
    """

    train_samples_per_second: float | None = None
    predict_samples_per_second: float | None = None


@dataclass
class _EarlyStopping:
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, Tensor] | None = None


class Engine:
    """Trains, predicts and profiles on one device, or on several through Lightning Fabric.

    Args:
        device: ``auto`` (cuda when available, else cpu), or any torch device; ignored with
            ``fabric`` (its device is used).
        seed: seeds shuffling, augmentation and the global RNG in :meth:`fit`; >= 0.
        fabric: a launched :class:`lightning.fabric.Fabric` for data parallelism: every
            process runs the same calls with the same inputs. :meth:`fit` wraps the model
            with ``fabric.setup_module`` (DDP: gradients averaged across processes), gives each
            process its part of every batch (:func:`shard`; the loss weighted by the part's
            size, so the averaged gradient is the whole batch's) and reports the whole
            batch's loss terms; :meth:`predict` gives each process consecutive samples and
            gathers their outputs, trimmed to exactly N rows in order (no padding duplicates);
            checkpoints are written by process 0. Batch norm statistics are each process's
            own (DDP broadcasts process 0's running statistics).
        checkpoints: a folder: every :meth:`fit` without its own ``checkpoint`` whose
            ``config.checkpoint_every`` is set saves to ``fit-<k>.pt`` there (k counts the
            engine's fits), so re-running the same calls after a crash resumes where they
            stopped (finished fits return at once, their history logged again).
    """

    def __init__(self, device: str | torch.device = "auto", seed: int = 0, *,
                 fabric: Fabric | None = None, checkpoints: str | Path | None = None) -> None:
        if seed < 0:
            raise CloudbenchError(f"seed must be >= 0, got {seed}")
        self.fabric = fabric
        self.device = fabric.device if fabric is not None else resolve_device(device)
        self.seed = seed
        self.checkpoints = Path(checkpoints) if checkpoints is not None else None
        self.fits = 0
        self.last_throughput = Throughput()

    @property
    def rank(self) -> int:
        """This process's global rank (0 without Fabric)."""
        return self.fabric.global_rank if self.fabric is not None else 0

    @property
    def world_size(self) -> int:
        """The number of processes training together (1 without Fabric)."""
        return self.fabric.world_size if self.fabric is not None else 1

    @property
    def train_samples_per_second(self) -> float | None:
        """``last_throughput.train_samples_per_second``: the last :meth:`fit`'s speed."""
        return self.last_throughput.train_samples_per_second

    @property
    def predict_samples_per_second(self) -> float | None:
        """``last_throughput.predict_samples_per_second``: the last :meth:`predict`'s speed."""
        return self.last_throughput.predict_samples_per_second

    # ----------------------------------------------------------------------------------------

    @contextmanager
    def _autocast(self, enabled: bool) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled):
            yield

    def _prepare(self, model: nn.Module, channels_last: bool) -> None:
        model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)

    def fit(
        self,
        model: nn.Module,
        inputs: Inputs,
        loss_fn: LossFn,
        config: TrainConfig,
        *,
        params: Iterable[nn.Parameter] | None = None,
        validation: tuple[Inputs, ScoreFn] | None = None,
        checkpoint: str | Path | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train ``model`` in place on ``inputs``; return the history, one dict per epoch.

        Args:
            model: moved to the engine's device (and to channels-last with
                ``config.channels_last``).
            inputs: columns with a common first dimension N: tensors, best already on the
                device (others are copied batch by batch), or stored columns, streamed
                (:mod:`cloudbench.harness.stream`, ``config.prefetch`` batches read ahead).
                Each epoch visits them in a new random order (:func:`epoch_order`), in
                batches of ``config.batch_size`` (see :func:`batch_bounds`), augmented with
                ``config.augment``.
            loss_fn: ``loss_fn(model, batch)`` returns a dict with ``loss``, the total that is
                backpropagated, and any other terms (e.g. ``loss_s2``, ``loss_s1``); every
                entry that is a scalar (a one-element tensor or a number) is logged, others
                are ignored. It runs under bf16 autocast when ``config.amp`` resolves to it.
            config: the settings (:class:`TrainConfig`).
            params: the parameters to optimise; the model's other parameters are frozen
                (``requires_grad`` off during the fit, restored after). Buffers such as batch
                norm statistics still update. Default: all with ``requires_grad``.
            validation: ``(inputs, score_fn)``; ``score_fn(model, inputs)`` returns a float,
                higher is better. It runs after every epoch, in eval mode without gradients
                (use :meth:`predict` inside it for batching and autocast), and drives early
                stopping; without it early stopping watches the training loss.
            checkpoint: a file. Saved atomically (temporary file, then ``os.replace``) every
                ``config.checkpoint_every`` epochs (every epoch when None) and after the last
                epoch, with the model, optimizer, scheduler, epoch, history, early-stopping
                state and RNG states. If the file exists when ``fit`` starts, the run RESUMES
                from it and ends with the weights of an uninterrupted run; a checkpoint of a
                finished run returns its history at once. A checkpoint written with other
                settings (any but ``checkpoint_every``), seed or sample count is refused.
            log: called with each epoch's history entry (after the epoch's checkpoint); on
                resuming, first with each entry of the checkpoint's history, marked
                ``"resumed": True`` (so a run's log is complete, and printers can skip them).

        Returns:
            per epoch (including epochs of a resumed checkpoint): ``epoch`` (1-based), the
            sample-weighted mean over the epoch of each loss term (``loss``, …), ``val_score``
            with validation, ``lr``, ``seconds`` (training only, without validation and
            checkpointing) and ``samples_per_second``.
        """
        n = batch_length(inputs)
        if validation is not None:
            batch_length(validation[0])
        use_amp = resolve_amp(config.amp, self.device)
        self._prepare(model, config.channels_last)
        runner: nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]
        self.fits += 1
        if checkpoint is None and self.checkpoints is not None \
                and config.checkpoint_every is not None:
            checkpoint = self.checkpoints / f"fit-{self.fits:02d}.pt"
        torch.manual_seed(self.seed)
        if self.device.type == "cuda" and self.fits == 1:  # the peak covers every later fit
            torch.cuda.reset_peak_memory_stats(self.device)

        chosen = (
            [p for p in model.parameters() if p.requires_grad] if params is None
            else list(params)
        )
        if not chosen:
            raise CloudbenchError("no parameters to optimise")
        chosen_ids = {id(p) for p in chosen}
        frozen = [p for p in model.parameters() if id(p) not in chosen_ids and p.requires_grad]
        optimizer = build_optimizer(chosen, config)
        scheduler = LambdaLR(optimizer, lambda epoch: lr_factor(config, epoch))

        history: list[dict[str, Any]] = []
        stopping = _EarlyStopping()
        start, stopped = 0, False
        path = Path(checkpoint) if checkpoint is not None else None
        if path is not None and path.exists():
            state = self._load_checkpoint(path, config, n)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = list(state["history"])
            start, stopped = int(state["epoch"]), bool(state["stopped"])
            es = state["early_stopping"]
            stopping = _EarlyStopping(es["best"], es["best_epoch"], es["bad_epochs"],
                                      state["best_model"])
            torch.set_rng_state(state["rng"]["cpu"])
            if self.device.type == "cuda" and state["rng"]["cuda"]:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            if log is not None:
                for done in history:
                    log({**done, "resumed": True})

        patience = config.early_stopping_patience
        every = config.checkpoint_every or 1
        trained: list[tuple[int, float]] = []
        for p in frozen:
            p.requires_grad_(False)
        if self.fabric is not None and self.world_size > 1:
            runner = self._data_parallel(runner)
        try:
            for epoch in range(start, config.epochs):
                if stopped:
                    break
                entry = self._train_epoch(runner, model, inputs, n, loss_fn, config, optimizer,
                                          use_amp, epoch)
                scheduler.step()
                trained.append((n, entry["seconds"]))
                if validation is not None:
                    val_inputs, score_fn = validation
                    model.eval()
                    with torch.no_grad():
                        entry["val_score"] = float(score_fn(runner, dict(val_inputs)))
                history.append(entry)

                monitored = entry["val_score"] if validation is not None else -entry["loss"]
                if stopping.best is None or monitored > stopping.best:
                    stopping.best, stopping.best_epoch, stopping.bad_epochs = monitored, epoch, 0
                    if patience is not None:
                        stopping.best_state = _clone_state(model)
                else:
                    stopping.bad_epochs += 1
                    stopped = patience is not None and stopping.bad_epochs >= patience

                last = stopped or epoch + 1 == config.epochs
                if path is not None and ((epoch + 1) % every == 0 or last):
                    if self.rank == 0:
                        self._save_checkpoint(path, model, optimizer, scheduler, config, n,
                                              epoch + 1, stopped, history, stopping)
                    if self.fabric is not None:
                        self.fabric.barrier()
                if log is not None:
                    log(dict(entry))
        finally:
            for p in frozen:
                p.requires_grad_(True)

        if patience is not None and stopping.best_state is not None:
            model.load_state_dict(stopping.best_state)
        timed = trained[1:] if len(trained) > 1 else trained
        self.last_throughput.train_samples_per_second = (
            sum(s for s, _ in timed) / sum(t for _, t in timed) if timed else None
        )
        return history

    def _train_epoch(
        self,
        runner: nn.Module,
        model: nn.Module,
        inputs: Inputs,
        n: int,
        loss_fn: LossFn,
        config: TrainConfig,
        optimizer: torch.optim.Optimizer,
        use_amp: bool,
        epoch: int,
    ) -> dict[str, Any]:
        model.train()
        order = epoch_order(n, self.seed, epoch, config.shuffle_block)
        augmenter = _generator(self.seed, epoch, _AUGMENT) if config.augment else None
        lr = float(optimizer.param_groups[0]["lr"])
        sums: dict[str, Tensor | float] = {}
        counts: dict[str, int] = {}
        world = self.world_size
        bounds = batch_bounds(n, config.batch_size, smallest=2 * world)
        sizes = [stop - first for first, stop in bounds]
        shares: list[tuple[int, int] | None] = [None] * len(bounds)
        if world > 1:
            order, bounds, parts = shard(order, bounds, self.rank, world)
            shares = list(parts)
        started = time.perf_counter()
        batches = Batches(inputs, self.device, config.prefetch)(order, bounds)
        for (first, stop), whole, share, batch in zip(bounds, sizes, shares, batches,
                                                       strict=True):
            if augmenter is not None:
                batch = augment(batch, augmenter, share)
            if config.channels_last:
                batch = _channels_last(batch)
            with self._autocast(use_amp):
                terms = loss_fn(runner, batch)
            if "loss" not in terms:
                raise CloudbenchError(
                    f"loss_fn must return a dict with 'loss', got keys {sorted(terms)}"
                )
            size = stop - first
            optimizer.zero_grad(set_to_none=True)
            if self.fabric is not None:
                # DDP averages the processes' gradients: weighting each process's mean loss
                # by its share of the batch makes that average the whole batch's gradient.
                self.fabric.backward(terms["loss"] * (size * world / whole))
            else:
                terms["loss"].backward()
            optimizer.step()
            for name, value in _scalar_terms(terms):
                sums[name] = sums.get(name, 0.0) + value * size
                counts[name] = counts.get(name, 0) + size
        means = self._epoch_means(sums, counts)
        seconds = time.perf_counter() - started
        return {"epoch": epoch + 1, **means, "lr": lr, "seconds": seconds,
                "samples_per_second": n / seconds}

    def _epoch_means(self, sums: Mapping[str, Tensor | float],
                     counts: Mapping[str, int]) -> dict[str, float]:
        """Each term's sample-weighted mean over the epoch (over all processes)."""
        names = sorted(sums)
        if not names:
            return {}
        totals = torch.stack([
            torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).to(self.device),
                         torch.tensor(float(counts[k]), dtype=torch.float64, device=self.device)])
            for k in names
        ])
        if self.fabric is not None and self.world_size > 1:
            reduced = self.fabric.all_reduce(totals, reduce_op="sum")
            assert isinstance(reduced, Tensor)
            totals = reduced
        return {name: total / count
                for name, (total, count) in zip(names, totals.tolist(), strict=True)}

    def _data_parallel(self, runner: nn.Module) -> nn.Module:
        """``runner`` wrapped by Fabric for DDP; its ``forward_parts`` (the fusion models'
        per-modality logits) also goes through the wrapper, so losses on it sync gradients."""
        assert self.fabric is not None
        wrapped = self.fabric.setup_module(runner)
        if hasattr(runner, "forward_parts"):
            wrapped.mark_forward_method("forward_parts")
        return wrapped

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def _save_checkpoint(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LambdaLR,
        config: TrainConfig,
        n: int,
        epoch: int,
        stopped: bool,
        history: list[dict[str, Any]],
        stopping: _EarlyStopping,
    ) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": config.model_dump(mode="json"),
            "seed": self.seed,
            "samples": n,
            "epoch": epoch,
            "stopped": stopped,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": [dict(entry) for entry in history],
            "early_stopping": {"best": stopping.best, "best_epoch": stopping.best_epoch,
                               "bad_epochs": stopping.bad_epochs},
            "best_model": stopping.best_state,
            "rng": {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, path)

    def _load_checkpoint(self, path: Path, config: TrainConfig, n: int) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CloudbenchError(f"cannot read checkpoint {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CloudbenchError(f"{path} is not a cloudbench engine checkpoint")
        ours = {"seed": self.seed, "samples": n, **config.model_dump(mode="json")}
        theirs = {"seed": state["seed"], "samples": state["samples"], **state["config"]}
        changed = sorted(k for k in ours.keys() | theirs.keys()
                         if k not in _RESUMABLE_CHANGES and ours.get(k) != theirs.get(k))
        if changed:
            what = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in changed)
            raise CloudbenchError(
                f"checkpoint {path} was written by a run with other settings ({what}); "
                "delete it or use another path"
            )
        return state

    # ----------------------------------------------------------------------------------------
    # Inference and measurement
    # ----------------------------------------------------------------------------------------

    def predict(
        self,
        model: nn.Module,
        inputs: Inputs,
        forward: ForwardFn,
        batch_size: int = 256,
        *,
        amp: AmpMode = "auto",
        channels_last: bool = True,
        prefetch: int = 2,
    ) -> Tensor:
        """``forward(model, batch)`` over ``inputs`` in order, in eval mode without gradients.

        Batches are consecutive slices (moved to the device when not there; stored columns
        streamed with ``prefetch`` batches read ahead), in channels-last and under bf16
        autocast as in :meth:`fit`. Returns the outputs concatenated along the first
        dimension, float32, on the CPU. The model's train/eval mode is restored after.

        With Fabric, each process predicts its consecutive share of the samples
        (``torch.tensor_split``) and every process returns all N outputs, gathered in order
        and trimmed of the padding the gather needs.
        """
        if batch_size < 1:
            raise CloudbenchError(f"batch_size must be >= 1, got {batch_size}")
        n = batch_length(inputs)
        use_amp = resolve_amp(amp, self.device)
        self._prepare(model, channels_last)
        was_training = model.training
        model.eval()
        outputs: list[Tensor] = []
        started = time.perf_counter()
        shares = torch.tensor_split(torch.arange(n), self.world_size if n >= self.world_size
                                    else 1)
        mine = shares[self.rank] if len(shares) > 1 else shares[0]
        bounds = [(first, min(len(mine), first + batch_size))
                  for first in range(0, len(mine), batch_size)]
        try:
            with torch.no_grad(), self._autocast(use_amp):
                for batch in Batches(inputs, self.device, prefetch)(mine, bounds):
                    if channels_last:
                        batch = _channels_last(batch)
                    outputs.append(forward(model, batch).float())
            result = torch.cat(outputs)
            if len(shares) > 1:
                result = self._gather(result, [len(share) for share in shares])
            result = result.cpu()
        finally:
            model.train(was_training)
        self.last_throughput.predict_samples_per_second = n / (time.perf_counter() - started)
        return result

    def _gather(self, local: Tensor, sizes: Sequence[int]) -> Tensor:
        """Every process's ``local`` rows (``sizes[r]`` of them on process r), in rank order:
        padded to the largest for ``all_gather``, the padding dropped again."""
        assert self.fabric is not None
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[:len(local)] = local
        gathered = self.fabric.all_gather(padded)
        assert isinstance(gathered, Tensor)
        return torch.cat([gathered[r, :size] for r, size in enumerate(sizes)])

    def peak_memory_bytes(self) -> int:
        """Peak memory: on CUDA the most allocated on the device since this engine's first
        :meth:`fit` began (over all its fits and predictions since: every stage of a method;
        ever, before one); on CPU the process's maximum resident set size."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)

    def profile(
        self, model: nn.Module, example_batch: Inputs, forward: ForwardFn
    ) -> dict[str, float]:
        """Size and cost of a model: ``parameters`` (all), ``trainable_parameters``
        (``requires_grad``), and ``gflops``, the floating-point operations of one forward pass
        per sample of ``example_batch`` (fp32, eval mode), in 1e9, as
        :class:`torch.utils.flop_counter.FlopCounterMode` counts them (convolutions and matrix
        products, a multiply-add being two operations)."""
        parameters = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n = batch_length(example_batch)
        model.to(self.device)
        batch = next(Batches(example_batch, self.device)(torch.arange(n), [(0, n)]))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                forward(model, batch)
        finally:
            model.train(was_training)
        return {"parameters": parameters, "trainable_parameters": trainable,
                "gflops": counter.get_total_flops() / n / 1e9}


def build_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW, the fused implementation (one kernel per step) on CPU and CUDA; or LARS."""
    if config.optimizer == "lars":
        from timm.optim import Lars  # timm takes a while to import; only LARS needs it

        return Lars(params, lr=config.lr, momentum=config.momentum,
                    weight_decay=config.weight_decay, trust_coeff=0.001, always_adapt=True)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, fused=fused or None)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             fused=fused or None)
