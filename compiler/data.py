"""Real data for training and accuracy checks: scikit-learn's handwritten digits.

The digits ship inside scikit-learn (1797 grayscale 8x8 images, 10 classes), so nothing is
downloaded. The split is fixed (stratified, seed 0) so that accuracies are comparable across runs,
sessions and compression methods.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.25
NUM_CLASSES = 10

LossFn = Callable[["torch.nn.Module", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Digits:
    """The fixed digits split as float32 arrays in NCHW layout, pixel values scaled to [0, 1]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(resolution: int = 8) -> Digits:
    """Load the fixed train/test split of scikit-learn's digits.

    Parameters
    ----------
    resolution : int
        Side of the square images returned. 8 is the native size; larger sides are bilinear
        upsamplings (for models whose stem downsamples too much for 8x8 inputs).

    Returns
    -------
    Digits
        ``x_*`` of shape ``(N, 1, resolution, resolution)`` float32, ``y_*`` int64 labels.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    if resolution != 8:
        x_tr, x_te = _resize(x_tr, resolution), _resize(x_te, resolution)
    return Digits(x_tr, y_tr, x_te, y_te)


def _resize(x: np.ndarray, side: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = F.interpolate(torch.from_numpy(x), size=(side, side), mode="bilinear", align_corners=False)
    return t.numpy()


def cross_entropy(model, x, y):
    """The default loss: cross-entropy of the model's logits against the labels."""
    import torch.nn.functional as F

    return F.cross_entropy(model(x), y)


def train(
    model,
    epochs: int = 10,
    *,
    data: Digits | None = None,
    resolution: int = 8,
    lr: float = 3e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    loss_fn: LossFn | None = None,
    patience: int | None = None,
    seed: int = 0,
    threads: int | None = 1,
    on_epoch: Callable[[int, float, float], None] | None = None,
):
    """Train ``model`` on the digits training split, in place, and return it.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier taking ``(N, 1, resolution, resolution)`` and returning ``(N, 10)`` logits.
    epochs : int
        Maximum number of passes over the training split.
    data : Digits, optional
        The split to use; ``load_digits(resolution)`` when omitted.
    lr, batch_size, weight_decay : float, int, float
        Optimizer settings.
    optimizer : {"adam", "sgd"}
        ``sgd`` uses momentum 0.9.
    loss_fn : callable, optional
        ``loss_fn(model, x, y) -> scalar tensor``; cross-entropy when omitted. Compression methods
        pass their own (distillation, regularizers) here.
    patience : int, optional
        Early stop: after this many epochs without a better test accuracy, stop and restore the
        best weights seen. The digits have no separate validation split, so an early-stopped
        model's test accuracy is slightly optimistic.
    seed : int
        Seed of the batch order.
    threads : int, optional
        torch threads while training (restored afterwards). One by default: the small digits
        models train 10-100x slower when two threads contend on a loaded 2-core machine.
    on_epoch : callable, optional
        Called as ``on_epoch(epoch, mean_loss, test_accuracy)`` after each epoch.
    """
    import torch

    data = data or load_digits(resolution)
    loss_fn = loss_fn or cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _epochs(model, epochs, opt, loss_fn, x_all, y_all, gen, batch_size, data, patience,
                on_epoch)
    finally:
        torch.set_num_threads(saved_threads)
    model.eval()
    return model


def _epochs(model, epochs, opt, loss_fn, x_all, y_all, gen, batch_size, data, patience,
            on_epoch) -> None:
    import torch

    best_acc, best_state, stale = -1.0, None, 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model, x_all[idx], y_all[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        acc = evaluate(model, data=data)
        if on_epoch is not None:
            on_epoch(epoch, total / count, acc)
        if patience is not None:
            if acc > best_acc:
                best_acc, best_state, stale = acc, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)


def evaluate(model, *, data: Digits | None = None, resolution: int = 8) -> float:
    """Top-1 accuracy of ``model`` on the digits test split (a float in [0, 1])."""
    import torch

    data = data or load_digits(resolution)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x_test))
    model.train(was_training)
    return float((logits.argmax(1).numpy() == data.y_test).mean())


def accuracy_of(predict: Callable[[np.ndarray], np.ndarray], data: Digits) -> float:
    """Top-1 accuracy of any numpy predictor (a compiled module, onnxruntime) on the test split."""
    logits = predict(data.x_test)
    return float((np.asarray(logits).argmax(1) == data.y_test).mean())
