"""CycIT: CycleGAN translation of the target's SAR images into optical ones, then classify.

The "Opt to SAR" comparator of the ESCCS paper (Tables I–IV, "CycIT"; the paper's refs. [23],
[24]). The ESCCS paper: "CycIT used CycGAN [24] to translate SAR images into an optical style
before final classification [23]. The pre-trained translation model is modified by 20
optical-SAR sample pairs to adopt the target scenarios." CycleGAN [24] is Zhu et al. 2017,
"Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks" (ICCV); its
networks are :mod:`cloudbench.models.translation`. Ref. [23] (Song et al., as the ESCCS
paper's introduction describes it) went the other way, translating the source's labelled optical
images into SAR style and re-training the source model on them; the comparator of the tables
translates the target's SAR into optical style, and that is what this file does (the Cycle-GAN
learns both directions; G: SAR → optical is the one used). **What follows the paper**: a CycleGAN
between SAR and optical images, pre-trained, then fine-tuned on 20 optical–SAR pairs of the
target domain, and a classifier reading the translations. **What follows CycleGAN**: the
networks, the LSGAN objective, the cycle and identity losses and their weights. **Everything
else is ours**, each a parameter below where one can differ.

**The translation.** G: SAR → optical and F: optical → SAR are ResNet generators
(:class:`~cloudbench.models.translation.ResnetGenerator`, ``generator_width``,
``generator_blocks``: CycleGAN's 64 and 9), D_opt and D_SAR 70 × 70 PatchGANs
(:class:`~cloudbench.models.translation.PatchDiscriminator`, ``discriminator_width``,
``discriminator_layers``: 64 and 3), all with instance norm and CycleGAN's N(0, 0.02)
initialisation. Units (:class:`~cloudbench.harness.cr_stage.Units`, as the harness's
cloud-removal networks): the optical image is reflectance clipped to [0, 1] (the run's optical
bands, C of them), the SAR image VV and VH in dB clipped to [−25, 0] and mapped to [0, 1]; the
networks read and write both as ``2u − 1`` in [−1, 1] (CycleGAN's scale, tanh outputs), and
every loss below is on that scale. x is a SAR image, y an optical one::

    L_GAN(G)  = mean((D_opt(G(x)) − 1)²)          L_GAN(F) = mean((D_SAR(F(y)) − 1)²)
    L_cyc     = ‖F(G(x)) − x‖₁ + ‖G(F(y)) − y‖₁    (mean absolute differences)
    L_id      = ‖G(y) − y‖₁ + ‖F(x) − x‖₁
    L_D       = ½ [mean((D_opt(y) − 1)²) + mean(D_opt(G(x))²)]
              + ½ [mean((D_SAR(x) − 1)²) + mean(D_SAR(F(y))²)]
    loss      = L_GAN(G) + L_GAN(F) + λ_cyc · L_cyc + λ_id · L_id + L_D

(:func:`cycle_gan_loss`) with λ_cyc = ``cycle_weight`` (CycleGAN's 10) and λ_id =
``identity_factor`` · λ_cyc (CycleGAN's ``lambda_identity`` 0.5: 5), LSGAN labels real 1, fake
0 (Mao et al. 2017, CycleGAN's ``gan_mode lsgan``). **The four networks train simultaneously**,
in one ``engine.fit`` with one optimiser over all of them (:class:`CycleGAN`): the generators'
adversarial terms go through the discriminators with detached parameters
(``torch.func.functional_call``) and L_D sees detached translations, so the one total gives each
network only its own gradients (as SPL does). CycleGAN alternates a generator step and a
discriminator step instead, and keeps a pool of 50 past translations for D; there is no pool
here: D sees the batch's own translations (as pix2pix's), which keeps the step stateless for
checkpoints and data parallelism.

**Channels.** The identity terms feed an optical image to G and a SAR image to F, which
needs one input channel count for both: both generators read max(C, 2) channels, a
translation or an image with fewer channels being zero-padded to that count (0 is the middle of
the [−1, 1] scale). G writes C channels, F writes 2. With C = 2 nothing is padded (CycleGAN
exactly); with RGB, G and F read (VV, VH, 0) or (R, G, B). ``identity_factor`` 0 drops L_id
(and two generator passes per step).

**Pre-training** (stage ``cycit-pretrain``, ``pretrain_epochs``): unpaired, on the run's
train split (labelled and unlabelled samples): the SAR images of up to ``samples`` training
samples (a seeded draw) and the optical images of up to ``samples`` training samples of cloud
state ``clear`` (under 1% cloud; a second draw): CycleGAN learns from cloud-free optical
images, and a clouded image would teach G to draw clouds. The smaller set is repeated to the
larger's size, each image as evenly as possible, and both are shuffled independently (seeded),
so each SAR image stands beside an unrelated optical one; no term of the loss couples the two,
so this only decides which images share a batch, and the engine reshuffles the rows each epoch.
The engine's flips and 90° rotations apply to both.

**Fine-tuning** (stage ``cycit-finetune``, ``finetune_epochs``, optimiser and schedule
restarted): on ``pairs`` (20, the paper's number) optical–SAR pairs, a seeded draw of the
training samples of cloud state ``clear`` (a sample's own optical and SAR images, so cloud-free
pairs), with the same loss plus a paired L1 term, ``paired_weight`` ·
(‖G(x) − y‖₁ + ‖F(y) − x‖₁) (logged as ``paired``; ``paired_weight`` 0: the unpaired loss on
paired batches). The unpaired loss alone cannot use what 20 pairs add, that G(x) is *this* y;
the paired term is pix2pix's L1, weighted as the cycle term (10). A store with no clear
training sample is refused before anything trains (:meth:`CycIT.check_data`); with fewer than
``pairs`` clear samples, all of them are the pairs. The cloud-free targets ``s2_clear``, where a
store has them, are not used for training, so SEN12MS Cloud and Hunan Cloud are treated alike.

Settings of both phases: the run's training settings with ``translation_train``'s overrides
(default AdamW without weight decay, i.e. Adam, lr 2e-4 as CycleGAN's, whose β₁ 0.5 the engine
does not offer (it uses 0.9); batch 4: CycleGAN's is 1; with instance norm and no batch
statistics a batch changes only how many images share a step); epochs from
``pretrain_epochs`` and ``finetune_epochs`` (``translation_train`` may not set ``epochs``).
CycleGAN's schedule (constant, then linear to 0) is not one of the engine's; the run's (cosine
by default) applies.

**Classification.** The classifier (``classifier``, default ``finetune-optical``: f_S, the
frozen source trunk with a linear classifier) is tested on G's translations of the test
split's SAR images: the target is classified from SAR alone. What it is trained on the paper
leaves open. By default (``classifier_inputs: translated``) on G's translations of the
labelled (and unlabelled) samples' SAR images, as :class:`~cloudbench.baselines.
cloud_removal.CRThenClassify` trains its classifier on reconstructions: the classifier meets
in training the images it is tested on. ``optical`` trains it on the labelled samples' real
optical images instead (the optical model as it is), which is the other reading of the paper's
"translate SAR images into an optical style before final classification"; the labelled
target images are cloudy where the target is, and a translation is not the image (instance
norm in G removes a per-image offset of a channel, and G's output is smoother than the image it
imitates), so that classifier meets a shifted domain at test time (on the small synthetic
task of ``tests/test_cyc_it.py``: 0.27 OA where ``translated`` reaches 0.85, chance 0.33).
It handles what the classifier handles (f_S: multiclass and multilabel).

**Pixel metrics.** Every test split also gets the translation's pixel metrics (RMSE, MAE,
PSNR, SSIM, SAM of G(x) against the sample's optical image on [0, 1] reflectance, overall and
per clear/thin/thick pixels of its cloud mask, :func:`cloudbench.harness.cr_stage.reconstruct`):
the target is the store's cloud-free ``s2_clear`` where it has one (SEN12MS Cloud), otherwise
the optical image itself, so on cloudy pixels (``pixels=thin``, ``pixels=thick``) the
"target" is the cloud, and only ``pixels=clear`` measures the translation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from cloudbench.baselines.cloud_removal import CRThenClassify
from cloudbench.errors import CloudbenchError
from cloudbench.harness import cr_stage, stream
from cloudbench.harness.cr_losses import frozen, lsgan_discriminator, lsgan_generator
from cloudbench.harness.data import CLEAR_KEY, SplitData
from cloudbench.harness.engine import TrainConfig
from cloudbench.harness.methods import FitContext, create, register
from cloudbench.harness.transfer import pooled
from cloudbench.models.cloud_removal import CloudRemovalNet
from cloudbench.models.translation import PatchDiscriminator, ResnetGenerator, init_gan_weights
from cloudbench.store import Store

CLEAR = "clear"
"""The cloud state of the training samples whose optical images count as cloud-free."""
NOT_CLASSIFIERS = ("cloud-removal", "cr-then-classify", "spl", "cyc-it")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    classifier: str = "finetune-optical"
    """The harness method that classifies the translated images."""
    classifier_params: dict[str, Any] = Field(default_factory=dict)
    """Its parameters."""
    classifier_inputs: Literal["translated", "optical"] = "translated"
    """What the classifier is trained on: G's translations of the labelled samples' SAR images
    (``translated``) or their real optical images (``optical``)."""
    samples: int = Field(1000, ge=1)
    """At most this many SAR images and this many cloud-free optical images pre-train the
    CycleGAN (seeded draws of training samples)."""
    pairs: int | None = Field(20, ge=1)
    """Cloud-free optical–SAR pairs of the fine-tuning (the ESCCS paper: 20); None: every clear
    training sample."""
    pretrain_epochs: int = Field(200, ge=1)
    """Epochs of the unpaired pre-training (CycleGAN's 100 + 100)."""
    finetune_epochs: int = Field(100, ge=1)
    """Epochs of the fine-tuning on the pairs."""
    cycle_weight: float = Field(10.0, ge=0)
    """λ_cyc, the weight of the cycle-consistency L1 (CycleGAN: 10)."""
    identity_factor: float = Field(0.5, ge=0)
    """The identity term's weight as a multiple of ``cycle_weight`` (CycleGAN's
    ``lambda_identity``: 0.5); 0: no identity term."""
    paired_weight: float = Field(10.0, ge=0)
    """Weight of the paired L1 term of the fine-tuning (0: the unpaired loss alone)."""
    generator_width: int = Field(64, ge=1)
    """Channels of the generators' first layer (CycleGAN: 64)."""
    generator_blocks: int = Field(9, ge=0)
    """Residual blocks of the generators (CycleGAN at 256 px: 9)."""
    discriminator_width: int = Field(64, ge=1)
    """Channels of the PatchGANs' first layer (doubling per down-sampling, at most 8×)."""
    discriminator_layers: int = Field(3, ge=1)
    """Stride-2 down-samplings of the PatchGANs (the 70 × 70 PatchGAN: 3); patches need at
    least 3 · 2^layers pixels a side."""
    translation_train: dict[str, Any] = Field(
        default_factory=lambda: {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.0,
                                 "batch_size": 4})
    """Overrides of the run's training settings for both translation phases."""

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.classifier in NOT_CLASSIFIERS:
            raise ValueError(f"classifier {self.classifier!r} is not a classifier")
        create(self.classifier, self.classifier_params)
        unknown = sorted(set(self.translation_train) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"translation_train: unknown training settings {unknown}")
        if "epochs" in self.translation_train:
            raise ValueError("CycIT's epochs are pretrain_epochs and finetune_epochs, not "
                             "translation_train.epochs")
        TrainConfig.model_validate(self.translation_train)
        return self


# --------------------------------------------------------------------------------------------
# The loss, testable on its own


def pad_channels(image: Tensor, channels: int) -> Tensor:
    """``image`` (B, C, H, W) with zero channels appended up to ``channels`` (≥ C)."""
    return F.pad(image, (0, 0, 0, 0, 0, channels - image.shape[1]))


def cycle_gan_loss(sar: Tensor, optical: Tensor, g: Callable[[Tensor], Tensor],
                   f: Callable[[Tensor], Tensor], d_optical: nn.Module, d_sar: nn.Module, *,
                   cycle_weight: float = 10.0, identity_factor: float = 0.5,
                   paired_weight: float | None = None) -> dict[str, Tensor]:
    """CycleGAN's loss of a batch (the module docstring's equations), in fp32.

    ``sar`` x (B, S, H, W) and ``optical`` y (B, C, H, W) are on the networks' [−1, 1] scale;
    ``g`` (G) and ``f`` (F) read max(S, C) channels (their inputs are zero-padded to that
    count, :func:`pad_channels`) and write C and S channels. ``loss`` = ``gan`` +
    cycle_weight · ``cycle`` + cycle_weight · identity_factor · ``identity`` + ``d`` (the
    identity term is not computed when identity_factor is 0); with ``paired_weight`` (a
    paired batch: y is x's own optical image) also + paired_weight · ``paired``, ``paired`` =
    ‖G(x) − y‖₁ + ‖F(y) − x‖₁. ``gan`` goes through the discriminators with detached
    parameters (it trains the generators only), ``d`` sees detached translations (it trains
    the discriminators only). Returns ``loss`` and the detached terms ``gan``, ``cycle``,
    ``identity``, ``d`` (and ``paired``).
    """
    channels = max(sar.shape[1], optical.shape[1])

    def to_optical(image: Tensor) -> Tensor:
        return g(pad_channels(image, channels)).float()

    def to_sar(image: Tensor) -> Tensor:
        return f(pad_channels(image, channels)).float()

    sar, optical = sar.float(), optical.float()
    fake_optical, fake_sar = to_optical(sar), to_sar(optical)
    cycle = F.l1_loss(to_sar(fake_optical), sar) + F.l1_loss(to_optical(fake_sar), optical)
    identity = sar.new_zeros(())
    if identity_factor > 0:
        identity = F.l1_loss(to_optical(optical), optical) + F.l1_loss(to_sar(sar), sar)
    gan = (lsgan_generator(frozen(d_optical, fake_optical))
           + lsgan_generator(frozen(d_sar, fake_sar)))
    d = (lsgan_discriminator(d_optical(optical), d_optical(fake_optical.detach()))
         + lsgan_discriminator(d_sar(sar), d_sar(fake_sar.detach())))
    loss = gan + cycle_weight * cycle + cycle_weight * identity_factor * identity + d
    terms = {"gan": gan.detach(), "cycle": cycle.detach(), "identity": identity.detach(),
             "d": d.detach()}
    if paired_weight is not None:
        paired = F.l1_loss(fake_optical, optical) + F.l1_loss(fake_sar, sar)
        loss = loss + paired_weight * paired
        terms["paired"] = paired.detach()
    return {"loss": loss, **terms}


# --------------------------------------------------------------------------------------------
# The networks in the harness's units


class SARToOptical(CloudRemovalNet):
    """G as a network of the harness's cloud-removal stage (what a
    :class:`~cloudbench.harness.cr_stage.Reconstructor` runs): it reads the SAR slot (VV, VH
    in [0, 1]), not the optical image, and returns ``{"mean": G's image}`` mapped from [−1, 1]
    to [0, 1] reflectance."""

    size_multiple = ResnetGenerator.size_multiple

    def __init__(self, generator: ResnetGenerator, optical_bands: int, channels: int) -> None:
        super().__init__()
        self._set_bands(optical_bands, len(cr_stage.SAR_BANDS))
        self.generator = generator
        self.channels = channels
        """The generator's input channels (the SAR image is zero-padded to them)."""

    def predict(self, s2_cloudy: Tensor, s1: Tensor) -> dict[str, Tensor]:
        signed = pad_channels(2 * s1 - 1, self.channels)
        return {"mean": (self.generator(signed).float() + 1) / 2}


class CycleGAN(nn.Module):
    """G (inside ``translator``), F (``inverse``), D_opt and D_SAR, trained together by one
    ``engine.fit``: ``cyclegan(batch, paired)`` is :func:`cycle_gan_loss` of the batch's SAR
    and optical images in the translator's units (the whole computation in ``forward``, so
    that a data-parallel wrapper sees it)."""

    def __init__(self, translator: cr_stage.Reconstructor, inverse: ResnetGenerator,
                 d_optical: PatchDiscriminator, d_sar: PatchDiscriminator, *,
                 cycle_weight: float, identity_factor: float, paired_weight: float) -> None:
        super().__init__()
        self.translator = translator
        self.inverse = inverse
        self.d_optical = d_optical
        self.d_sar = d_sar
        self.weights = {"cycle_weight": cycle_weight, "identity_factor": identity_factor}
        self.paired_weight = paired_weight

    def forward(self, batch: dict[str, Tensor], paired: bool = False) -> dict[str, Tensor]:
        units = self.translator.units
        net = cast(SARToOptical, self.translator.net)
        return cycle_gan_loss(2 * units.radar(batch["image_s1"]) - 1,
                              2 * units.optical(batch["image_s2"]) - 1, net.generator,
                              self.inverse, self.d_optical, self.d_sar, **self.weights,
                              paired_weight=self.paired_weight if paired else None)


# --------------------------------------------------------------------------------------------
# The training sets


def _draw(positions: np.ndarray, most: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``most`` of ``positions`` (a sorted draw without replacement); all for None."""
    if most is None or len(positions) <= most:
        return positions
    return np.sort(rng.choice(positions, size=most, replace=False))


def clear_positions(states: list[str]) -> np.ndarray:
    """Positions of the samples of cloud state ``clear``; raises when there are none."""
    clear = np.flatnonzero(np.asarray(states, dtype=object) == CLEAR)
    if not len(clear):
        raise CloudbenchError("CycIT learns from cloud-free optical images (cloud state clear), "
                              "and the train split has none")
    return clear


def unpaired_inputs(inputs: Mapping[str, stream.Column], states: list[str], samples: int,
                    seed: int) -> dict[str, stream.Column]:
    """The pre-training rows of ``inputs`` (the pooled training samples, cloud states
    ``states``): ``image_s1`` of up to ``samples`` samples and ``image_s2`` of up to
    ``samples`` clear samples (two seeded draws), the smaller set repeated to the larger's
    size as evenly as possible and each shuffled on its own (module docstring)."""
    rng = np.random.default_rng(seed)
    sar = _draw(np.arange(len(states)), samples, rng)
    optical = _draw(clear_positions(states), samples, rng)
    rows = max(len(sar), len(optical))

    def rows_of(pool: np.ndarray) -> Tensor:
        return torch.from_numpy(rng.permutation(np.resize(pool, rows)))

    return {**stream.take({"image_s1": inputs["image_s1"]}, rows_of(sar)),
            **stream.take({"image_s2": inputs["image_s2"]}, rows_of(optical))}


def paired_inputs(inputs: Mapping[str, stream.Column], states: list[str], pairs: int | None,
                  seed: int) -> dict[str, stream.Column]:
    """The fine-tuning pairs: ``image_s1`` and ``image_s2`` of up to ``pairs`` clear samples
    of ``inputs`` (a seeded draw), in their order."""
    chosen = _draw(clear_positions(states), pairs, np.random.default_rng(seed))
    return stream.take({k: inputs[k] for k in ("image_s1", "image_s2")},
                       torch.from_numpy(chosen))


def check_size(height: int, width: int, discriminator_layers: int) -> None:
    """Refuse patches the networks cannot read: the generators need multiples of 4, at least
    8, the PatchGANs at least 3 · 2^layers pixels a side."""
    least = max(8, 3 * 2 ** discriminator_layers)
    if height % ResnetGenerator.size_multiple or width % ResnetGenerator.size_multiple \
            or min(height, width) < least:
        raise CloudbenchError(
            f"CycIT's networks read patches whose sides are multiples of 4 and at least {least} "
            f"pixels (discriminator_layers {discriminator_layers}); the run's are "
            f"{height} × {width}")


# --------------------------------------------------------------------------------------------
# The method


@register
class CycIT(CRThenClassify):
    name = "cyc-it"
    Params = Params

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.s: Params = params

    def check_data(self, dataset: Path, tests: Mapping[str, Path]) -> None:
        """Before anything trains: the train split has clear samples (the cloud-free optical
        images and the pairs). The translation trains on the run's own train split only, so
        ``scene_overlap`` is 0."""
        self.overlap = 0
        samples = Store(dataset).samples
        states = samples.loc[samples["split"] == "train", "cloud_state"].astype(str)
        if not (states == CLEAR).any():
            raise CloudbenchError(
                f"CycIT learns from cloud-free optical images and fine-tunes on cloud-free "
                f"optical-SAR pairs (cloud state clear), and the train split of {dataset} has "
                f"none; leave cyc-it out for this dataset")

    def fit_cloud_removal(self, context: FitContext) -> cr_stage.Reconstructor:
        """Pre-train the CycleGAN unpaired, fine-tune it on the pairs; returns G in the
        harness's units."""
        self.engine, self.bootstrap, self.seed = context.engine, context.bootstrap, context.seed
        p, labeled = self.s, context.labeled
        inputs = pooled(labeled, context.unlabeled)
        height, width = inputs["image_s2"].shape[-2:]
        check_size(height, width, p.discriminator_layers)
        units = cr_stage.Units(labeled, sar=True)
        bands, sar = int(units.s2_mean.shape[1]), len(cr_stage.SAR_BANDS)
        channels = max(bands, sar)

        def generator(out_channels: int) -> ResnetGenerator:
            return ResnetGenerator(channels, out_channels, p.generator_width, p.generator_blocks)

        def discriminator(in_channels: int) -> PatchDiscriminator:
            return PatchDiscriminator(in_channels, p.discriminator_width, p.discriminator_layers)

        translator = cr_stage.Reconstructor(SARToOptical(generator(bands), bands, channels),
                                            units)
        cyclegan = CycleGAN(translator, generator(sar), discriminator(bands), discriminator(sar),
                            cycle_weight=p.cycle_weight, identity_factor=p.identity_factor,
                            paired_weight=p.paired_weight)
        init_gan_weights(cyclegan).to(self.engine.device)

        config = {**context.train.model_dump(), **p.translation_train}
        states = [*labeled.cloud_states, *context.unlabeled.cloud_states]
        self.engine.fit(cyclegan, unpaired_inputs(inputs, states, p.samples, context.seed),
                        lambda m, batch: m(batch),
                        TrainConfig.model_validate({**config, "epochs": p.pretrain_epochs}),
                        log=lambda entry: context.log("cycit-pretrain", entry))
        self.engine.fit(cyclegan, paired_inputs(inputs, states, p.pairs, context.seed),
                        lambda m, batch: m(batch, paired=True),
                        TrainConfig.model_validate({**config, "epochs": p.finetune_epochs}),
                        log=lambda entry: context.log("cycit-finetune", entry))
        return translator

    def fit(self, context: FitContext) -> None:
        self.model = self.fit_cloud_removal(context)
        self.keep = list(range(len(context.labeled.bands["image_s2"])))
        if self.s.classifier_inputs == "translated":
            context = replace(context, labeled=self._reconstructed(context.labeled),
                              unlabeled=self._reconstructed(context.unlabeled))
        self.classifier.fit(context)

    def _reconstructed(self, split: SplitData, score: bool = False) -> SplitData:
        """``split`` with its optical view replaced by G's translation of its SAR view; scored
        against ``image_s2_clear``, or against ``image_s2`` where the split has no cloud-free
        target."""
        if score and CLEAR_KEY not in split.inputs:
            split = replace(split, inputs={**split.inputs, CLEAR_KEY: split.inputs["image_s2"]})
        return super()._reconstructed(split, score)
