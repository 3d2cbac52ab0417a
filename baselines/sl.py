"""SL: supervised learning on the labeled optical + SAR pairs only.

The lower reference of the ESCCS paper (Tables I–IV, "SL"): a GoogLeNet-based network trained
from scratch with cross-entropy on the labeled target pairs (20 per class by default); no source
model, no unlabeled data. The paper does not say how one network takes both modalities; the
default ``fusion: two-stream`` uses one GoogLeNet per modality with one linear head on the
concatenated features (and logs each modality's share of the logits as ``loss_s2`` /
``loss_s1`` for the modality-imbalance curves); ``fusion: early`` stacks the six channels into one
GoogLeNet.

Multilabel datasets (CBEN, BigEarthNet): the same networks with one logit per class, trained
with BCE-with-logits on the multi-hot labels (``multilabel_loss: bce``, the default) or
MultiLabelSoftMargin (``soft-margin``), :func:`cloudbench.harness.losses.task_loss`; the
per-modality terms use the same loss. Predictions are the (N, K) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

from torch import Tensor, nn

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.losses import TaskLossParams, task_loss
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.models.classifiers import EarlyFusion, TwoStream

MODALITIES = {"s2": "image_s2", "s1": "image_s1"}


class Params(TaskLossParams):
    fusion: Literal["two-stream", "early"] = "two-stream"
    """``two-stream``: one GoogLeNet per modality, one head on both; ``early``: one GoogLeNet on
    the stacked channels."""


def _views(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {modality: batch[key] for modality, key in MODALITIES.items()}


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(_views(batch))


@register
class SL(Method):
    name = "sl"
    modalities = ("s2", "s1")
    tasks = ("multiclass", "multilabel")
    Params = Params

    def fit(self, context: FitContext) -> None:
        self.engine: Engine = context.engine
        channels = {m: int(context.labeled.inputs[k].shape[1]) for m, k in MODALITIES.items()}
        params = cast(Params, self.params)
        network = TwoStream if params.fusion == "two-stream" else EarlyFusion
        self.model = network(channels, context.num_classes).to(self.engine.device)

        def criterion(logits: Tensor, label: Tensor) -> Tensor:
            return task_loss(logits, label, context.task, params.multilabel_loss)

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            label = batch["label"]
            if params.fusion == "two-stream":
                logits, parts = cast(TwoStream, model).forward_parts(_views(batch))
                terms = {f"loss_{m}": criterion(p, label).detach() for m, p in parts.items()}
                return {"loss": criterion(logits, label), **terms}
            return {"loss": criterion(model(_views(batch)), label)}

        self.engine.fit(self.model, context.labeled.inputs, loss, context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, _forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, _forward
