"""Fine-tuning: train the current model on the task loss (the recovery step of most recipes)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Method, TrainSettings, register_method


class FinetuneSettings(TrainSettings):
    """Settings of ``finetune``.

    Attributes
    ----------
    loss : {"cross_entropy", "mse"}
        ``mse`` compares the softmax with the one-hot labels.
    label_smoothing : float
        Label smoothing of the cross-entropy (Szegedy et al., 2016), in [0, 1).
    epochs, lr, optimizer, batch_size, weight_decay, patience, seed
        As in ``squeezer.data.train``; ``patience`` stops early on the evaluation split.
    """

    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    label_smoothing: float = Field(0.0, ge=0, lt=1)


@register_method("finetune")
class Finetune(Method[FinetuneSettings]):
    """Train the model for ``epochs`` on the task loss, together with the active regularizers."""

    Settings = FinetuneSettings

    def loss_term(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        if self.settings.loss == "mse":
            target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
            return F.mse_loss(logits.softmax(1), target)
        return F.cross_entropy(logits, y, label_smoothing=self.settings.label_smoothing)
