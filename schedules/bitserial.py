"""Bit-serial kernels: the default schedule rule and the MetaSchedule design spaces.

The kernels themselves are in :mod:`squeezer.schedules.bitserial_conv2d` and
:mod:`squeezer.schedules.bitserial_dense`, their bit layouts in :mod:`squeezer.schedules.bitpack`.
Both are recognized by the ``squeezer.kernel`` annotation of their ``acc`` block, which survives
``FuseTIR`` (a bias add or activation fused after the epilogue is inlined into it).

Popcount: LLVM lowers ``popcount`` of a vector to ``vpopcntq``/``vpopcntd`` when the target has
AVX512-VPOPCNTDQ, and otherwise to a byte-table sequence (AVX2 ``vpshufb``) that is slower than
scalar ``popcnt`` on 64-bit words. The schedules therefore vectorize the product only on targets
with VPOPCNTDQ and leave it scalar (unrolled, one ``popcnt`` per word) elsewhere.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from . import bitdecode
from . import bitmask_dense as mask
from . import bitserial_conv2d as conv
from . import bitserial_dense as dense
from ._common import AnalyzedRule, vector_lanes
from .spaces import register_space

KERNELS = (conv.KERNEL, dense.KERNEL, bitdecode.KERNEL, mask.KERNEL)


def kernel_of(sch: s_tir.Schedule) -> str | None:
    """The bit-serial (or weight decode) kernel of the function being scheduled, or None."""
    for name in ("acc", "decode", "part"):
        try:
            block = sch.get(sch.get_sblock(name))
        except Exception:  # noqa: BLE001 - no such block: another kernel
            continue
        kind = block.annotations.get("squeezer.kernel")
        if kind is not None and str(kind) in KERNELS:
            return str(kind)
    return None


class Bitserial(AnalyzedRule):
    """Default schedule of the bit-serial conv2d and dense kernels, the float-input
    masked-sum dense kernel and the weight decoders."""

    def analyze(self, sch: s_tir.Schedule) -> str | None:
        return kernel_of(sch)

    def schedule(self, sch: s_tir.Schedule, found: str, target: Target) -> None:
        if found == bitdecode.KERNEL:
            bitdecode.schedule_decode(sch, target)
        elif found == mask.KERNEL:
            km = mask.default_mask_knobs(sch)
            mask.schedule_mask(sch, km.rows, km.cols, target)
        elif found == conv.KERNEL:
            kn = conv.default_conv_knobs(sch, target)
            conv.schedule_conv(sch, kn.rows, kn.vecs, target)
        else:
            kd = dense.default_dense_knobs(sch, target)
            dense.schedule_dense(sch, kd.rows, kd.vecs, target)


def _sample(sch: s_tir.Schedule, choices: list[int]):
    """A sampled value among ``choices`` (uniform); used as a split factor so that the
    search mutates it."""
    return sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices))


@register_space(conv.KERNEL)
def bitserial_conv2d_space(sch: s_tir.Schedule) -> None:
    """Tuning space: the register tile, weight rows x pixel vectors (tiles too large for the
    registers are valid, only slow: the search discards them)."""
    target = Target.current()
    rows, tw, bits, planes = conv.conv_shapes(sch)
    r = _sample(sch, conv.conv_row_choices(rows, planes))
    v = _sample(sch, conv.conv_vec_choices(tw, vector_lanes(target, bits)))
    conv.schedule_conv(sch, r, v, target)


@register_space(dense.KERNEL)
def bitserial_dense_space(sch: s_tir.Schedule) -> None:
    """Tuning space: the register tile, rows of X x output vectors."""
    target = Target.current()
    m, planes, cols, bits = dense.dense_shapes(sch)
    r = _sample(sch, dense.dense_row_choices(m))
    v = _sample(sch, dense.dense_vec_choices(cols, vector_lanes(target, bits)))
    dense.schedule_dense(sch, r, v, target)


@register_space(mask.KERNEL)
def bitmask_dense_space(sch: s_tir.Schedule) -> None:
    """Tuning space: the register tile, rows of X x output columns."""
    target = Target.current()
    m, n, _ = mask.mask_shapes(sch)
    r = _sample(sch, mask.mask_row_choices(m))
    c = _sample(sch, mask.mask_col_choices(n))
    mask.schedule_mask(sch, r, c, target)
