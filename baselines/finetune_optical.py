"""Finetune (optical only): the source encoder, frozen, with a new classifier.

The comparator of the ESCCS paper (Tables I–IV, "Finetune (opt)"): the source model's ResNet-50
trunk is frozen and a new linear classifier is trained on the labeled target optical images
(20 per class by default). Choices the paper leaves open: the trunk runs in eval mode (its batch
norm statistics stay those of the source domain); because it is frozen, its features are
computed once per image, without augmentation, and the classifier is trained on them with the
engine (cross-entropy, the spec's optimiser and schedule).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.methods import FitContext, Method, register


def _features(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["image_s2"])


def _classify(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["features"])


@register
class FinetuneOptical(Method):
    name = "finetune-optical"
    modalities = ("s2",)
    needs_source = True

    def fit(self, context: FitContext) -> None:
        assert context.source is not None
        self.engine: Engine = context.engine
        trunk, dim = context.source.encoder()
        self.trunk = trunk.eval().requires_grad_(False)
        features = self.engine.predict(self.trunk, context.labeled.inputs, _features)
        self.head = nn.Linear(dim, context.num_classes).to(self.engine.device)

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            return {"loss": F.cross_entropy(model(batch["features"]), batch["label"])}

        inputs = {"features": features.to(self.engine.device), "label": context.labeled.labels}
        self.engine.fit(self.head, inputs, loss, context.train,
                        log=lambda entry: context.log("head", entry))

    def predict(self, split: SplitData) -> Tensor:
        features = self.engine.predict(self.trunk, split.inputs, _features)
        return self.engine.predict(self.head, {"features": features.to(self.engine.device)},
                                   _classify)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return nn.Sequential(self.trunk, self.head), _features


