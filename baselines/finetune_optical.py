"""Finetune (optical only): the source encoder, frozen, with a new classifier.

The comparator of the ESCCS paper (Tables I–IV, "Finetune (Opt only)"; the paper's ref. [10]):
the source model's ResNet-50 trunk is frozen and a new linear classifier is trained on the
labeled target optical images (20 per class by default). This is also how cloudbench obtains
the paper's f_S (:func:`cloudbench.harness.transfer.adapt_source`). Choices the paper leaves
open: the trunk runs in eval mode (its batch norm statistics stay those of the source domain);
because it is frozen, its features are computed once per image, without augmentation, and the
classifier is trained on them with the engine (cross-entropy, the spec's optimiser and
schedule).

Multilabel datasets (CBEN, BigEarthNet): the classifier has one logit per class and is trained
with BCE-with-logits on the multi-hot labels (``multilabel_loss: bce``, the default) or
MultiLabelSoftMargin (``soft-margin``), :func:`cloudbench.harness.losses.task_loss`.
Predictions are the (N, K) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from torch import Tensor, nn

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.losses import TaskLossParams
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import adapt_source, optical_forward, predict_source


@register
class FinetuneOptical(Method):
    name = "finetune-optical"
    modalities = ("s2",)
    tasks = ("multiclass", "multilabel")
    needs_source = True
    Params = TaskLossParams

    def fit(self, context: FitContext) -> None:
        assert context.source is not None
        self.engine: Engine = context.engine
        params = cast(TaskLossParams, self.params)
        self.model = adapt_source(self.engine, context.source.encoder(), context.labeled,
                                  context.num_classes, context.train,
                                  log=lambda entry: context.log("head", entry),
                                  multilabel_loss=params.multilabel_loss)

    def predict(self, split: SplitData) -> Tensor:
        return predict_source(self.engine, self.model, split.inputs)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, optical_forward
