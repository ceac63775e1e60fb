"""Cost model of the sparse kernels: which format (dense or a BSR block shape) a layer uses.

``choose_format`` is what ``sparsify_weights`` asks per layer; ``estimate_seconds`` is also the
performance model of guided pruning. The rates are per-core throughputs measured with
``squeezer bench sparse`` on this machine class.
"""

from __future__ import annotations

import numpy as np
from tvm.target import Target

from ._common import num_cores

# Per-core throughputs of the default schedules, measured with `squeezer bench sparse` on this
# machine class (Zen 5, AVX-512, 2 cores, 2 threads; BERT-base linear shapes, MobileNetV2 and
# ResNet-18 convolution layers), weights hot in cache as in a model run back to back.
# Multiply-adds per second, counting stored values (zeros inside kept blocks included).
DENSE_MACS_PER_CORE = 45e9  # squeezer's dense kernels, p >= 16
DENSE_GEMV_MACS_PER_CORE = 16e9  # p == 1 (each weight used once)
SPARSE_MACS_PER_CORE = {(1, 1): 17e9, (1, 4): 18e9, (4, 1): 26e9, (8, 1): 30e9,
                        (16, 1): 35e9, (4, 4): 28e9}
SPARSE_GEMV_PER_CORE = {(1, 1): 2.0e9, (1, 4): 4e9, (4, 1): 5e9, (8, 1): 8e9,
                        (16, 1): 10e9, (4, 4): 6e9}
BLOCKS = tuple(SPARSE_MACS_PER_CORE)
MARGIN = 0.9  # a sparse kernel must be predicted this much faster to be chosen
VECTOR = 16  # below this many columns of B the kernels run per column (matrix-vector rates)


def stored_blocks(w: np.ndarray, block: tuple[int, int]) -> int:
    """Blocks of ``block`` shape that hold a non-zero (the BSR ``nnzb``)."""
    br, bc = block
    n, k = w.shape
    pad = np.zeros((-(-n // br) * br, -(-k // bc) * bc), dtype=bool)
    pad[:n, :k] = w != 0
    return int(pad.reshape(pad.shape[0] // br, br, -1, bc).any(axis=(1, 3)).sum())


def estimate_seconds(n: int, k: int, p: int, block: tuple[int, int] | None, nnzb: int,
                     cores: int) -> float:
    """Predicted time of the dense (``block=None``) or sparse product on ``cores`` cores.

    Below :data:`VECTOR` columns every column costs a matrix-vector product; from there on the
    batched rates apply.
    """
    if block is None:
        macs = n * k * p
        rate = DENSE_MACS_PER_CORE if p >= VECTOR else min(
            DENSE_MACS_PER_CORE, DENSE_GEMV_MACS_PER_CORE * p)
        return macs / (rate * cores)
    values = nnzb * block[0] * block[1]
    if p >= VECTOR:
        return values * p / (SPARSE_MACS_PER_CORE[block] * cores)
    return values * p / (SPARSE_GEMV_PER_CORE[block] * cores)


def choose_format(w: np.ndarray, p: int, target: Target | None = None, *,
                  log: list[dict] | None = None, where: str = "",
                  blocks: tuple[tuple[int, int], ...] = BLOCKS) -> tuple[int, int] | None:
    """The block shape to store ``w`` (``n x k``) in for a product with ``p`` columns, or
    ``None`` where the dense kernel is predicted faster."""
    cores = num_cores(target) if target is not None else 1
    n, k = w.shape
    density = float(np.count_nonzero(w)) / max(w.size, 1)
    dense = estimate_seconds(n, k, p, None, 0, cores)
    best, best_s = None, dense * MARGIN
    if density < 0.6:
        for block in blocks:
            s = estimate_seconds(n, k, p, block, stored_blocks(w, block), cores)
            if s < best_s:
                best, best_s = block, s
    if log is not None:
        log.append({"where": where, "shape": (n, k), "p": p, "density": density,
                    "format": "dense" if best is None else f"bsr{best[0]}x{best[1]}",
                    "dense_s": dense, "sparse_s": None if best is None else best_s})
    return best
