"""Relax graph passes: recognize compressed structure and rewrite to squeezer's operators.

``inference_passes()`` is the ordered list the compiler's ``graph`` stage runs. Later issues add
their passes (sparse weights to BSR/CSR operators, QDQ folding, bit-packed weights) here, one
import line each.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .binarize import binarize
from .fold_qdq import fold_qdq
from .int4_weights import int4_weights
from .int8_kernels import int8_kernels
from .sparsify_weights import sparsify_weights


def inference_passes(float_fallback: list[dict] | None = None, requant: str = "int64",
                     partition: tvm.transform.Pass | None = None) -> list[tvm.transform.Pass]:
    """Graph passes for inference, in order.

    Batch norm is folded into the preceding convolution's weights where the pattern allows it
    (conv2d directly followed by batch_norm, constant statistics); what remains is decomposed
    into elementwise arithmetic, which ``FuseOps`` then fuses into the producer's epilogue.
    Products whose constant weights are sparse enough for the sparse kernel to win become
    ``sparse_matmul`` calls (``sparsify_weights``). QDQ pairs around quantized operators become
    integer operators (``fold_qdq``, first: ``FoldConstant`` would turn int8 weights into float);
    ``float_fallback`` receives the operators of a quantized model that stay float, with why.
    Binary, ternary and HORQ weights on binarized inputs become bit-serial kernels; low-bit
    weights without a kernel for their layer are stored packed and decoded (``binarize``).
    ``requant="vta32"`` gives the accelerator's int32 requantization (the CPU reference of a VTA
    compile); ``partition`` (``vta_partition``) then takes the accelerator's layers out first.
    """
    return [
        fold_qdq(log=float_fallback, requant=requant),
        *([partition] if partition is not None else []),
        int8_kernels(),
        relax.transform.FoldConstant(),
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.FoldConstant(),
        int4_weights(float_fallback=float_fallback),
        binarize(float_fallback=float_fallback),
        sparsify_weights(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
    ]
