"""SPL: self-paced, texture-guided single-image thick cloud removal, then classify.

The "Opt to Opt" comparator of the ESCCS paper (Tables I–IV, "SPL"; the paper's ref. [18]: Tao
et al., "Thick Cloud Removal in Optical Remote Sensing Images Using a Texture Complexity Guided
Self-Paced Learning Method", IEEE TGRS 2022, doi 10.1109/TGRS.2022.3157917). The ESCCS paper:
"SPL incorporated a Self-paced Learning strategy for cloud removal before final
classification. The pre-trained cloud remove model is modified by 20 cloud/cloud-free sample
pairs to adopt the target scenarios."

Only the abstract of [18] is available here. **What follows the abstract**: single-image cloud
removal (the optical image alone, no SAR, no other date); pre-training on *self-generated*
cloud-corrupted samples (no real pairs needed); the samples ranked by texture complexity from
low to high and learned easy to hard (self-paced learning); a generative adversarial network;
an SSIM loss for structural coherence. **What follows the ESCCS paper**: the pre-trained model is
then fine-tuned on 20 real (cloudy, cloud-free) pairs of the target domain, and the classifier
reads the reconstructions (here f_S, ``finetune-optical``, as for every "cloud removal then
classify" pipeline of the harness, :class:`~cloudbench.baselines.cloud_removal.CRThenClassify`).
**Everything else is ours** (the paper's network, texture measure, schedule and weights are not
available): each is a parameter below, with the choice made and why.

1. **Input** (ours): the network reads the optical image (reflectance in [0, 1]) and a
   one-channel cloud mask M (1 where cloudy by ``mask``: thin or thick, or thick only), given in
   the network's second-input slot (``s1_bands = 1``, no SAR: :class:`MaskChannel`); at test
   time M is the test image's own cloud mask. Any cloud-removal network of the harness but
   ``sscr`` (which needs SAR); default ``unet``.
2. **Self-generated samples** (the abstract; the construction is ours): the clean images are
   the training split's cloud-free samples (cloud state ``clear``: under 1% cloud), at most
   ``samples`` of them (a seeded draw). Each borrows the mask M of a clouded training sample
   (a seeded assignment that uses every donor as evenly as possible; donors are samples of
   state thin, thick or mixed whose mask by ``mask`` is not empty, at most ``samples`` of
   them) and is corrupted as an opaque cloud would (:func:`corrupt`)::

       x̃ = x · (1 − M) + M · c          (per band, reflectance)

   with c the per-band cloud reflectance: the mean reflectance of the donors' thick-cloud
   pixels (``cloud_mask`` 2; of all their cloudy pixels where they have none), or the fixed
   ``cloud_reflectance``. The triples (x̃, M, x) are held in the harness's standardised units,
   as the real pairs are (``image_s2``, ``cloud_mask`` = 2 on M, ``image_s2_clear``).
3. **Texture complexity** (ours; :func:`texture_complexity`): the mean Sobel gradient magnitude
   of the clean image's band mean over the corrupted pixels M. The network has to invent what
   is under M; a flat region under the cloud is easy (interpolation from the border will do),
   a busy one is hard. The band mean weighs every band alike and keeps the measure one number
   per pixel, whatever the bands. Samples are ranked from low to high.
4. **Self-paced schedule** (the abstract's "easy to hard"; the schedule is ours): ``stages`` K
   stages; stage k (0-based) trains on the easiest share λ_k of the ranked samples (at least
   one), λ_k = ``start_share`` + (1 − ``start_share``) · k / (K − 1) (λ = 1 for K = 1), growing
   linearly to the whole set (:func:`curriculum_shares`). Each stage is one
   :meth:`Engine.fit <cloudbench.harness.engine.Engine.fit>` of ``pretrain_epochs // stages``
   epochs, the last stage also taking the remainder (:func:`stage_epochs`); **each stage
   restarts the optimiser and the learning-rate schedule** (warm-up included). A fixed,
   predefined curriculum rather than a loss-driven self-paced regulariser: the abstract says the
   samples are ranked by texture complexity, not by their loss. Logged as stage
   ``spl-pretrain``, epochs numbered across the stages, with the terms ``curriculum_stage``,
   ``share`` and ``samples``.
5. **Loss** (L1 and the adversarial loss are ours, SSIM is the abstract's; :func:`spl_loss`)::

       L_G = l1_weight · L1(ŷ, y) + ssim_weight · (1 − SSIM(ŷ, y)) + adversarial_weight · L_adv
       L_adv = mean((D(ŷ) − 1)²)                       (LSGAN, Mao et al. 2017)
       L_D = ½ [mean((D(y) − 1)²) + mean(D(ŷ)²)]

   on [0, 1] reflectance, in fp32; SSIM with an 11 × 11 Gaussian window, σ 1.5, data range 1,
   K1 0.01, K2 0.03 (torchmetrics, the harness's SSIM metric). D is a PatchGAN
   (:class:`~cloudbench.models.translation.PatchDiscriminator` with 3 × 3 tail convolutions,
   ``tail_kernel`` 3: 4 × 4 stride-2 convolutions, LeakyReLU 0.2, instance norm, no batch
   norm) on the image alone (unconditional: it judges whether a reconstruction looks like a
   cloud-free image). **Generator and discriminator train simultaneously**, in the same
   ``engine.fit`` with one optimiser over both (:class:`SPLPair`): L_adv goes through D with
   detached parameters (``torch.func.functional_call``) and L_D sees the detached ŷ, so the
   total ``L_G + L_D`` gives each network only its own gradients. The LSGAN labels (real 1,
   fake 0) and the ½ on L_D are pix2pix's. ``adversarial_weight`` 0: no discriminator.
6. **Fine-tuning** (the ESCCS paper): the same loss on the real (cloudy, cloud-free) pairs of
   the run's train split (``pairs``: 20, the ESCCS paper's number; a seeded draw of clouded
   samples, :func:`~cloudbench.harness.cr_stage.training_pairs`), ``finetune_epochs`` epochs,
   one more ``engine.fit`` (optimiser and schedule restarted; the discriminator continues from
   pre-training). Logged as stage ``spl-finetune``. A store without cloud-free targets stops
   the run before anything trains (:meth:`SPL.check_data`): SPL needs the 20 pairs.

Settings: the run's training settings with ``cr_train``'s overrides (default AdamW, lr 1e-3, no
weight decay) for both phases, epochs from ``pretrain_epochs`` and ``finetune_epochs``
(``cr_train`` may not set ``epochs``). The engine's flips and 90° rotations apply to input,
mask and target alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from cloudbench.baselines.cloud_removal import CRModel, CRThenClassify, ThenParams
from cloudbench.errors import CloudbenchError
from cloudbench.harness import cr_stage, stream
from cloudbench.harness.cr_losses import frozen, lsgan_discriminator, lsgan_generator
from cloudbench.harness.data import CLEAR_KEY, SplitData
from cloudbench.harness.engine import TrainConfig
from cloudbench.harness.methods import FitContext, register
from cloudbench.models.translation import PatchDiscriminator
from cloudbench.store import Store

THICK = 2
"""``cloud_mask`` value of thick cloud (0 clear, 1 thin)."""
DONOR_STATES = ("thin", "thick", "mixed")
"""Cloud states of the training samples that lend their cloud masks."""
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


class Params(ThenParams):
    model: CRModel = "unet"
    """The cloud-removal network (any but ``sscr``, which needs SAR); it reads the optical image
    and the one-channel cloud mask."""
    pairs: int | None = Field(20, ge=1)
    """Real (cloudy, cloud-free) pairs of the fine-tuning (the ESCCS paper: 20); None: all."""
    mask: Literal["cloudy", "thick"] = "cloudy"
    """The cloud mask the network reads and the self-generated samples borrow: ``cloudy``
    (thin or thick, ``cloud_mask`` > 0) or ``thick`` (``cloud_mask`` 2)."""
    samples: int = Field(1000, ge=1)
    """At most this many self-generated samples (cloud-free training images, a seeded draw), and
    at most this many mask donors."""
    stages: int = Field(3, ge=1)
    """Stages K of the easy-to-hard schedule."""
    start_share: float = Field(0.5, gt=0, le=1)
    """Share of the ranked samples the first stage trains on (growing linearly to 1)."""
    pretrain_epochs: int = Field(60, ge=1)
    """Epochs of the pre-training, split over the stages (``// stages`` each, the last also the
    remainder); at least ``stages``."""
    finetune_epochs: int = Field(100, ge=1)
    """Epochs of the fine-tuning on the real pairs."""
    l1_weight: float = Field(1.0, ge=0)
    """Weight of the L1 term."""
    ssim_weight: float = Field(1.0, ge=0)
    """Weight of the structural term 1 − SSIM."""
    adversarial_weight: float = Field(0.01, ge=0)
    """Weight of the generator's LSGAN term (pix2pix's ratio 1 : 100 to L1); 0: no
    discriminator."""
    cloud_reflectance: float | list[float] | None = None
    """The reflectance the self-generated clouds are filled with: one value for every band, or
    one per band; None: the mean reflectance of the donors' thick-cloud pixels, per band."""
    discriminator_width: int = Field(64, ge=1)
    """Channels of the PatchGAN's first layer (doubling per down-sampling, at most 8×)."""
    discriminator_layers: int = Field(3, ge=1)
    """Stride-2 down-samplings of the PatchGAN (pix2pix's: 3); patches need at least
    2^layers pixels a side."""

    @property
    def chosen_loss(self) -> Any:
        """SPL's own loss (:func:`spl_loss`): no variance head."""
        return "spl"

    @model_validator(mode="after")
    def _check_spl(self) -> Params:
        if self.model == "sscr":
            raise ValueError("SPL is single-image cloud removal: the sscr model needs SAR; use "
                             "unet, utae or uncrtaints")
        if self.loss is not None:
            raise ValueError("SPL trains with its own loss (l1_weight, ssim_weight, "
                             "adversarial_weight); loss is not one of its parameters")
        if self.cr_weights is not None:
            raise ValueError("SPL trains its own model (pre-training, then fine-tuning); "
                             "cr_weights would skip both")
        if "epochs" in self.cr_train:
            raise ValueError("SPL's epochs are pretrain_epochs and finetune_epochs, not "
                             "cr_train.epochs")
        if self.pretrain_epochs < self.stages:
            raise ValueError(f"pretrain_epochs ({self.pretrain_epochs}) must be at least "
                             f"stages ({self.stages}): one epoch per stage")
        if isinstance(self.cloud_reflectance, list):
            if not self.cloud_reflectance:
                raise ValueError("cloud_reflectance: give one value, or one per band")
            values = self.cloud_reflectance
        else:
            values = [] if self.cloud_reflectance is None else [self.cloud_reflectance]
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError("cloud_reflectance is reflectance: each value in [0, 1]")
        return self


# --------------------------------------------------------------------------------------------
# The pieces, each testable on its own


class MaskChannel:
    """``extra_input`` of the network: the batch's cloud mask as one float channel (B, 1, H, W),
    1 where cloudy (``cloudy``: ``cloud_mask`` > 0; ``thick``: ``cloud_mask`` 2)."""

    def __init__(self, mask: Literal["cloudy", "thick"]) -> None:
        self.mask = mask

    def __call__(self, batch: Mapping[str, Tensor]) -> Tensor:
        return cloud_region(batch["cloud_mask"], self.mask).unsqueeze(1).float()


def cloud_region(cloud_mask: Tensor, mask: Literal["cloudy", "thick"]) -> Tensor:
    """(N, H, W) bool: the pixels ``mask`` calls cloudy, from a (N, H, W) or (N, 1, H, W)
    ``cloud_mask`` (0 clear, 1 thin, 2 thick)."""
    flat = cloud_mask.reshape(cloud_mask.shape[0], *cloud_mask.shape[-2:])
    return flat == THICK if mask == "thick" else flat > 0


def corrupt(clean: Tensor, region: Tensor, cloud: Tensor) -> Tensor:
    """``clean · (1 − M) + M · c``: (N, C, H, W) reflectance with the pixels of ``region``
    (N, H, W; M) replaced by the per-band cloud reflectance ``cloud`` (C,)."""
    m = region.to(clean.dtype).unsqueeze(1)
    return clean * (1 - m) + m * cloud.to(clean).reshape(1, -1, 1, 1)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def texture_complexity(clean: Tensor, region: Tensor) -> Tensor:
    """(N,) mean Sobel gradient magnitude of the band mean of ``clean`` (N, C, H, W) over the
    pixels of ``region`` (N, H, W); borders replicated; 0 where ``region`` is empty."""
    gray = clean.float().mean(dim=1, keepdim=True)
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.T]).unsqueeze(1).to(gray)  # (2, 1, 3, 3)
    gradient = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradient.pow(2).sum(dim=1).sqrt()  # (N, H, W)
    inside = region.to(magnitude.dtype)
    return (magnitude * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2)).clamp_min(1)


def curriculum_shares(stages: int, start_share: float) -> list[float]:
    """λ_k = start_share + (1 − start_share) · k / (K − 1), k = 0 … K − 1 ([1.0] for K = 1)."""
    if stages == 1:
        return [1.0]
    return [start_share + (1.0 - start_share) * k / (stages - 1) for k in range(stages)]


def stage_sizes(n: int, shares: Sequence[float]) -> list[int]:
    """Samples per stage: the easiest ⌈λ_k · n⌉ (at least 1, at most n)."""
    return [min(n, max(1, math.ceil(share * n - 1e-9))) for share in shares]


def stage_epochs(epochs: int, stages: int) -> list[int]:
    """``epochs // stages`` per stage, the last also the remainder."""
    each = epochs // stages
    return [each] * (stages - 1) + [epochs - each * (stages - 1)]


def spl_loss(fake: Tensor, real: Tensor, discriminator: nn.Module | None, *,
             l1_weight: float = 1.0, ssim_weight: float = 1.0,
             adversarial_weight: float = 0.01) -> dict[str, Tensor]:
    """SPL's loss of a batch (module docstring, item 5), in fp32.

    ``fake`` is the reconstruction ŷ, ``real`` the cloud-free target y, both (B, C, H, W) in
    [0, 1]. ``loss`` = l1_weight · l1 + ssim_weight · (1 − ssim) + adversarial_weight · adv +
    disc, where ``adv`` = mean((D(ŷ) − 1)²) is computed through D with detached parameters (it
    trains the generator only) and ``disc`` = ½ [mean((D(y) − 1)²) + mean(D(ŷ.detach())²)]
    (it trains D only); without a discriminator (or with ``adversarial_weight`` 0) both are 0
    and D is not run. Returns ``loss`` and the detached terms ``l1``, ``ssim`` (the SSIM, not
    1 − SSIM), ``adv``, ``disc``.
    """
    with torch.autocast(fake.device.type, enabled=False):
        fake, real = fake.float(), real.float()
        l1 = F.l1_loss(fake, real)
        ssim = structural_similarity_index_measure(
            fake, real, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW,
            data_range=1.0)
        assert isinstance(ssim, Tensor)
    loss = l1_weight * l1 + ssim_weight * (1.0 - ssim)
    adv = disc = fake.new_zeros(())
    if discriminator is not None and adversarial_weight > 0:
        adv = lsgan_generator(frozen(discriminator, fake))
        disc = lsgan_discriminator(discriminator(real), discriminator(fake.detach()))
        loss = loss + adversarial_weight * adv + disc
    return {"loss": loss, "l1": l1.detach(), "ssim": ssim.detach(), "adv": adv.detach(),
            "disc": disc.detach()}


class SPLPair(nn.Module):
    """The generator (the :class:`~cloudbench.harness.cr_stage.Reconstructor`) and the
    discriminator (or None), trained together by one ``engine.fit``: ``pair(batch)`` is
    :func:`spl_loss` of the batch (the whole computation in ``forward``, so that a
    data-parallel wrapper sees it)."""

    def __init__(self, generator: cr_stage.Reconstructor, discriminator: nn.Module | None, *,
                 l1_weight: float, ssim_weight: float, adversarial_weight: float) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.weights = {"l1_weight": l1_weight, "ssim_weight": ssim_weight,
                        "adversarial_weight": adversarial_weight}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        fake = self.generator(batch)["mean"]
        return spl_loss(fake, self.generator.target(batch), self.discriminator, **self.weights)


# --------------------------------------------------------------------------------------------
# Self-generated samples


def _gather(splits: Sequence[SplitData], positions: Sequence[np.ndarray], keys: Sequence[str],
            device: torch.device) -> dict[str, Tensor]:
    """The samples at ``positions`` (one array per split) of ``keys``, decoded on ``device``."""
    parts = [stream.resident(stream.take({k: s.inputs[k] for k in keys}, torch.from_numpy(p)),
                             device)
             for s, p in zip(splits, positions, strict=True) if len(p)]
    return {k: torch.cat([part[k] for part in parts]) for k in keys}  # type: ignore[misc]


def _draw(positions: Sequence[np.ndarray], most: int, rng: np.random.Generator
          ) -> list[np.ndarray]:
    """At most ``most`` of the pooled ``positions`` (a draw without replacement), per split."""
    total = sum(len(p) for p in positions)
    if total <= most:
        return list(positions)
    drawn = np.sort(rng.choice(total, size=most, replace=False))
    offsets = np.cumsum([0] + [len(p) for p in positions])
    return [p[drawn[(drawn >= a) & (drawn < b)] - a]
            for p, a, b in zip(positions, offsets[:-1], offsets[1:], strict=True)]


def self_generated(splits: Sequence[SplitData], reader: cr_stage.Units, writer: cr_stage.Units,
                   p: Params, seed: int, device: torch.device
                   ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The self-generated pre-training samples of ``splits`` (item 2 of the module docstring):
    inputs (``image_s2`` corrupted, ``image_s2_clear`` clean, both standardised with
    ``writer``; ``cloud_mask`` uint8, 2 on the borrowed mask, 0 elsewhere), their texture
    complexity (N,), and the cloud reflectance used (C,). ``reader`` maps the splits' optical
    images to reflectance."""
    rng = np.random.default_rng(seed)
    states = [np.asarray(s.cloud_states, dtype=object) for s in splits]
    clear = _draw([np.flatnonzero(st == "clear") for st in states], p.samples, rng)
    if not sum(len(c) for c in clear):
        raise CloudbenchError(
            "SPL self-generates its pre-training samples from the cloud-free training images "
            "(cloud state clear), and the train split has none")
    donors = _draw([np.flatnonzero(np.isin(st, DONOR_STATES)) for st in states], p.samples, rng)
    found = _gather(splits, donors, ("image_s2", "cloud_mask"), device) \
        if sum(len(d) for d in donors) else None
    region = None
    if found is not None:
        region = cloud_region(found["cloud_mask"], p.mask)
        keep = region.flatten(1).any(dim=1)
        region, found = region[keep], {k: v[keep] for k, v in found.items()}
    if region is None or not len(region):
        raise CloudbenchError(
            f"SPL borrows the cloud masks of clouded training images ({p.mask} pixels), and the "
            f"train split has none" + (" (try mask: cloudy)" if p.mask == "thick" else ""))
    assert found is not None
    bands = reader.s2_mean.shape[1]
    if p.cloud_reflectance is not None:
        values = p.cloud_reflectance if isinstance(p.cloud_reflectance, list) \
            else [p.cloud_reflectance] * bands
        if len(values) != bands:
            raise CloudbenchError(f"cloud_reflectance has {len(values)} values, the run reads "
                                  f"{bands} optical bands")
        cloud = torch.tensor(values, dtype=torch.float32, device=device)
    else:
        flat = found["cloud_mask"].reshape(len(region), *region.shape[-2:])
        thick = flat == THICK
        pixels = thick if thick.any() else flat > 0
        donor_reflectance = reader.optical(found["image_s2"])  # (D, C, H, W)
        cloud = donor_reflectance.transpose(0, 1)[:, pixels].mean(dim=1)  # (C,)

    clean_std = _gather(splits, clear, ("image_s2",), device)["image_s2"]
    clean = reader.optical(clean_std)
    n = len(clean)
    assignment = torch.from_numpy(rng.permutation(np.resize(np.arange(len(region)), n)))
    borrowed = region[assignment.to(region.device)]
    corrupted = corrupt(clean, borrowed, cloud)
    inputs = {
        "image_s2": writer.standardised(corrupted),
        CLEAR_KEY: writer.standardised(clean),
        "cloud_mask": borrowed.to(torch.uint8) * THICK,
    }
    return inputs, texture_complexity(clean, borrowed), cloud


# --------------------------------------------------------------------------------------------
# The method


@register
class SPL(CRThenClassify):
    name = "spl"
    Params = Params
    uses_sar = False
    extra_channels = 1
    reads_cloud_mask = True  # the test image's own mask is the network's second input

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.s: Params = params

    def extra_input(self) -> MaskChannel:
        return MaskChannel(self.s.mask)

    def check_data(self, dataset: Path, tests: Mapping[str, Path]) -> None:
        """The leakage guard, and, before anything trains: the training store has cloud-free
        targets (the fine-tuning pairs, unless ``cr_store``), cloud-free training images and
        clouded ones (the self-generated samples)."""
        super().check_data(dataset, tests)
        st = Store(dataset)
        if self.s.cr_store is None and "s2_clear" not in st.arrays:
            raise CloudbenchError(
                f"SPL fine-tunes on real (cloudy, cloud-free) pairs, and {dataset} has no "
                "cloud-free targets (s2_clear): build the dataset with them (demo: "
                "clear_target), give cr_store (a store of pairs), or leave spl out")
        states = st.samples.loc[st.samples["split"] == "train", "cloud_state"].astype(str)
        if not (states == "clear").any() or not states.isin(DONOR_STATES).any():
            raise CloudbenchError(
                f"SPL self-generates its pre-training samples from cloud-free training images "
                f"and the cloud masks of clouded ones; the train split of {dataset} has "
                f"{int((states == 'clear').sum())} clear and "
                f"{int(states.isin(DONOR_STATES).sum())} clouded samples")

    def train_cloud_removal(self, context: FitContext, model: cr_stage.Reconstructor,
                            inputs: dict[str, Any], config: TrainConfig) -> None:
        """Pre-train on the self-generated samples, easy to hard, then fine-tune on ``inputs``
        (the real pairs); ``model`` is trained in place."""
        p, device = self.s, self.engine.device
        bands = int(model.units.s2_mean.shape[1])
        discriminator = None
        if p.adversarial_weight > 0:
            discriminator = PatchDiscriminator(bands, p.discriminator_width,
                                               p.discriminator_layers, tail_kernel=3)
        pair = SPLPair(model, discriminator, l1_weight=p.l1_weight, ssim_weight=p.ssim_weight,
                       adversarial_weight=p.adversarial_weight).to(device)

        def loss_fn(m: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            return m(batch)

        def settings(epochs: int) -> TrainConfig:
            return TrainConfig.model_validate({**config.model_dump(), "epochs": epochs})

        reader = cr_stage.Units(context.labeled, sar=False).to(device)
        synthetic, texture, _ = self_generated([context.labeled, context.unlabeled], reader,
                                               model.units, p, context.seed, device)
        # ranked once, easiest first: each stage trains on a leading slice (a view, no copy)
        ranked = cast(dict[str, Tensor],
                      stream.take(synthetic, torch.argsort(texture.cpu(), stable=True)))
        del synthetic
        shares = curriculum_shares(p.stages, p.start_share)
        sizes = stage_sizes(len(texture), shares)
        done = 0
        for k, (share, size, epochs) in enumerate(
                zip(shares, sizes, stage_epochs(p.pretrain_epochs, p.stages), strict=True)):
            subset = {key: value[:size] for key, value in ranked.items()}
            extra = {"curriculum_stage": k + 1, "share": share, "samples": size}

            def log(entry: dict[str, Any], offset: int = done,
                    extra: dict[str, Any] = extra) -> None:
                context.log("spl-pretrain", {**entry, **extra,
                                             "epoch": offset + int(entry["epoch"])})

            self.engine.fit(pair, subset, loss_fn, settings(epochs), log=log)
            done += epochs
        del ranked, subset
        self.engine.fit(pair, dict(inputs), loss_fn, settings(p.finetune_epochs),
                        log=lambda entry: context.log("spl-finetune", entry))
