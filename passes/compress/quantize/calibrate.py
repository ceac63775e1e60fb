"""The calibration driver: run the model on the user's data so activation observers see it.

Histogram calibrators need two passes (``observers``); quantizers with fewer passes sit out the
extra ones. Errors name what went wrong and where: empty data, NaN/inf in the data or in an
activation, or a batch the model rejects (the quantized layer reached last and the batch shape).
"""

from __future__ import annotations

import numpy as np
import torch

from squeezer.errors import InputError

from .base import ActQuant, check_finite

__all__ = ["calibrate"]


def calibrate(
    model: torch.nn.Module,
    acts: list[ActQuant],
    data: np.ndarray | torch.Tensor,
    limit: int,
    batch_size: int,
) -> int:
    """Run ``model`` on up to ``limit`` samples of ``data`` so ``acts`` calibrate; freeze them.

    Returns the number of samples used. Raises ``InputError`` for empty data, NaN/inf in the
    data or in an activation, or a batch the model rejects (naming the layer reached last and
    the batch shape).
    """
    x = torch.as_tensor(data, dtype=torch.float32)
    if x.ndim == 0 or len(x) == 0:
        raise InputError(f"calibration data is empty (shape {tuple(x.shape)})")
    check_finite(x, "calibration data")
    n = min(len(x), limit)
    reached: list[str] = []
    handles = [a.register_forward_pre_hook(lambda m, _: reached.append(m.where)) for a in acts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for p in range(max(a.observer.passes for a in acts)):
                for a in acts:
                    a.observer.pass_index = p
                    a.mode = "observe" if p < a.observer.passes else "off"
                for i in range(0, n, batch_size):
                    batch = x[i : i + batch_size]
                    reached.clear()
                    try:
                        model(batch)
                    except InputError:
                        raise
                    except Exception as err:  # a wrong shape fails in any layer, any type
                        where = (
                            f"at or after the {reached[-1]}" if reached
                            else "before any quantized layer"
                        )
                        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                        raise InputError(
                            f"calibration batch of shape {tuple(batch.shape)} failed {where}: {msg}"
                        ) from err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for a in acts:
        a.freeze()
    return n

