"""Finetune (SAR only): the source ResNet-50 applied to the SAR images, partly retrained.

The "Opt to SAR" comparator of the ESCCS paper (Tables I–IV, "Finetune (SAR only)"; the paper's
ref. [10]): "freezing parts of the encoder and retraining the classifier". The source model (a
ResNet-50 trained on cloud-free optical images) is copied (the shared source model is left as it
is) and applied to the SAR view (VV, VH, VV/VH: three channels, like the source's R, G, B); the
layers from ``trainable_from`` on and a new linear classifier for the target classes are trained
with cross-entropy on the labeled SAR images.

Choices the paper leaves open:

- which part is frozen: ``trainable_from`` (default ``layer4``: the stem, ``layer1``–``layer3``
  are frozen; ``fc`` trains the classifier alone);
- the frozen layers stay in eval mode, so their batch-norm statistics remain the source domain's
  (the optical statistics, applied to SAR inputs); the trained layers' batch norms adapt;
- the classifier is new (``nn.Linear(2048, K)``, PyTorch's default initialisation);
- the SAR images are standardised per channel like every harness input (train-split statistics),
  then fed to the source network as they are (no conversion to the source's value range);
- when the SAR view does not have as many channels as the source network's input (e.g. VV, VH
  only), the first convolution is replaced by a new one (torchvision's initialisation) and
  trained too;
- training uses the engine with the spec's settings (augmentation included) on the labeled
  samples only; the unlabeled ones are not used.

Multilabel datasets (CBEN, BigEarthNet): the new classifier has one logit per class and the
model is trained with BCE-with-logits on the multi-hot labels (``multilabel_loss: bce``, the
default) or MultiLabelSoftMargin (``soft-margin``), :func:`cloudbench.harness.losses.task_loss`,
instead of cross-entropy. Predictions are the (N, K) logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal, cast

from torch import Tensor, nn

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.losses import TaskLossParams, task_loss
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import sar_forward
from cloudbench.models.classifiers import encoder

TrainableFrom = Literal["layer2", "layer3", "layer4", "fc"]


class Params(TaskLossParams):
    trainable_from: TrainableFrom = "layer4"
    """The first ResNet-50 stage that is trained; the stages before it (stem, ``layer1`` …)
    are frozen, in eval mode. ``fc``: only the new classifier is trained."""


class PartlyFrozen(nn.Module):
    """A ResNet whose children before ``trainable_from`` are frozen: no gradients, and kept in
    eval mode by :meth:`train` (their batch-norm statistics do not change)."""

    def __init__(self, network: nn.Module, trainable_from: str,
                 also_trained: tuple[str, ...] = ()) -> None:
        super().__init__()
        names = [name for name, _ in network.named_children()]
        if trainable_from not in names:
            raise ValueError(f"{trainable_from!r} is not a child of the network: {names}")
        self.network = network
        before = names[: names.index(trainable_from)]
        self.frozen = tuple(name for name in before if name not in also_trained)
        for name in self.frozen:
            getattr(network, name).requires_grad_(False)

    def train(self, mode: bool = True) -> PartlyFrozen:
        super().train(mode)
        for name in self.frozen:
            getattr(self.network, name).eval()
        return self

    def forward(self, image: Tensor) -> Tensor:
        return self.network(image)


def build_model(source_classifier: nn.Module, in_channels: int, num_classes: int,
                trainable_from: str) -> PartlyFrozen:
    """A copy of the source ResNet-50 with a new classifier, frozen before ``trainable_from``."""
    network, dim = encoder(copy.deepcopy(source_classifier))
    network.fc = nn.Linear(dim, num_classes)
    also_trained: tuple[str, ...] = ()
    old = network.conv1
    assert isinstance(old, nn.Conv2d)
    if old.in_channels != in_channels:
        # torchvision's ResNet stem convolution, for the SAR channels
        conv = nn.Conv2d(in_channels, old.out_channels, kernel_size=7, stride=2, padding=3,
                         bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        network.conv1 = conv
        also_trained = ("conv1",)
    return PartlyFrozen(network, trainable_from, also_trained).train()


@register
class FinetuneSAR(Method):
    name = "finetune-sar"
    modalities = ("s1",)
    tasks = ("multiclass", "multilabel")
    needs_source = True
    Params = Params

    def fit(self, context: FitContext) -> None:
        assert context.source is not None
        self.engine: Engine = context.engine
        channels = int(context.labeled.inputs["image_s1"].shape[1])
        params = cast(Params, self.params)
        self.model = build_model(context.source.classifier, channels, context.num_classes,
                                 params.trainable_from).to(self.engine.device)

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            logits = sar_forward(model, batch)
            return {"loss": task_loss(logits, batch["label"], context.task,
                                      params.multilabel_loss)}

        self.engine.fit(self.model, context.labeled.inputs, loss, context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, sar_forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, sar_forward
