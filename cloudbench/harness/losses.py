"""The classification loss of a dataset's task, shared by the methods that handle both tasks.

Multiclass: cross-entropy of (N, K) logits against (N,) class indices. Multilabel: a logistic
loss of (N, K) logits against the (N, K) multi-hot labels, chosen with the method parameter
``multilabel_loss`` (:class:`TaskLossParams`):

* ``bce``: ``binary_cross_entropy_with_logits``, the mean over samples and classes of
  ``-[y log σ(x) + (1 - y) log σ(-x)]`` (PyTorch's ``BCEWithLogitsLoss``, TorchGeo's
  multi-label task);
* ``soft-margin``: ``multilabel_soft_margin_loss`` (``MultiLabelSoftMarginLoss``), the mean over
  classes of the same term, then over samples.

Without class weights the two are the same objective (equal up to floating-point rounding);
both names are offered so that a spec can state the loss a paper names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from torch import Tensor
from torch.nn import functional as F

MultilabelLoss = Literal["bce", "soft-margin"]


class TaskLossParams(BaseModel):
    """Hyperparameters of a method that trains on multiclass and multilabel datasets; a
    method's own ``Params`` extend it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    multilabel_loss: MultilabelLoss = "bce"
    """The loss on multilabel datasets: ``bce`` (BCE-with-logits) or ``soft-margin``
    (MultiLabelSoftMargin); multiclass datasets always use cross-entropy."""


def task_loss(logits: Tensor, label: Tensor, task: str,
              multilabel_loss: MultilabelLoss = "bce") -> Tensor:
    """The mean loss of (N, K) ``logits`` (computed in fp32) for ``task``: cross-entropy against
    (N,) class indices (``multiclass``), or ``multilabel_loss`` against (N, K) 0/1 labels."""
    logits = logits.float()
    if task == "multiclass":
        return F.cross_entropy(logits, label)
    if task != "multilabel":
        raise ValueError(f"task must be multiclass or multilabel; got {task!r}")
    target = label.to(logits.dtype)
    if multilabel_loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if multilabel_loss == "soft-margin":
        return F.multilabel_soft_margin_loss(logits, target)
    raise ValueError(f"multilabel_loss must be bce or soft-margin; got {multilabel_loss!r}")
