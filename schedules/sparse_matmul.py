"""Sparse x dense products: ``Y = act(W @ B + bias)`` with ``W`` stored as BSR.

``W`` (``n x k``) is held in block compressed sparse rows: ``data (nnzb, br, bc)``, ``indices
(nnzb,)`` (block columns, in the narrowest integer type that holds them) and ``indptr
(n / br + 1,)``; CSR is the ``1 x 1`` block. The dense operand ``B`` is ``k x p`` ("kp") or
its transpose ``p x k`` ("pk", a linear layer's activations, packed to ``k x p`` in the
kernel); ``Y`` is ``n x p`` ("np", a 1x1 convolution's NCHW output) or ``p x n`` ("pn", a
linear layer's output).

The kernel keeps a tile of ``Y`` (``br`` rows x ``pt`` columns) in vector registers while it
walks the stored blocks of one block row; each block broadcasts ``br x bc`` weights against
``bc`` rows of ``B``, contiguous along ``p``. The reduction's bounds are data dependent
(``indptr[i] .. indptr[i + 1]``); each block row is therefore its own outer block, so the
data-dependent loop stays inside that block's scope and TensorIR's primitives (``vectorize``,
``cache_write``, ``reverse_compute_at``) still apply around it. With ``p == 1`` (a batch-1
linear layer) nothing runs along ``p``: the block rows are vectorized instead (blocks of
``4 x 1`` or taller).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target

from ._common import AnalyzedRule, num_cores, vector_lanes, worth_parallel
from .spaces import register_space

KERNEL = "sparse_matmul"
GEMV_LANES = 16  # independent accumulators of the CSR matrix-vector kernel (one vector)
Activation = Literal["none", "relu", "relu6"]


def index_dtype(extent: int) -> str:
    """The narrowest integer type that holds block-column indices below ``extent``."""
    if extent <= 256:
        return "uint8"
    if extent <= 32768:
        return "int16"
    return "int32"


@dataclass(frozen=True)
class SparseWeight:
    """A weight matrix in BSR form, as the kernel takes it.

    Attributes
    ----------
    shape : ``(n, k)`` of the dense matrix (rows padded up to whole blocks are not included).
    block : ``(br, bc)``.
    data, indices, indptr : BSR arrays of the padded matrix; ``indices`` is narrow.
    """

    shape: tuple[int, int]
    block: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @classmethod
    def for_product(cls, w: np.ndarray, block: tuple[int, int], p: int) -> SparseWeight:
        """``w`` stored for a product with ``p`` columns: for a CSR matrix-vector product
        (``p == 1``, 1x1 blocks) each row is padded to whole :data:`GEMV_LANES`, which the
        kernel then walks ``GEMV_LANES`` entries at a time."""
        lanes = GEMV_LANES if p == 1 and tuple(block) == (1, 1) else 1
        return cls.from_dense(w, block, row_multiple=lanes)

    @classmethod
    def from_dense(cls, w: np.ndarray, block: tuple[int, int] = (1, 1),
                   row_multiple: int = 1) -> SparseWeight:
        """Store the non-zero blocks of ``w`` (2-D); a block with any non-zero is kept whole.

        Sizes that are not a multiple of the block are padded with zero rows/columns. With
        ``row_multiple > 1`` every block row holds a multiple of that many blocks (zero blocks
        at column 0 fill up), at least one multiple.
        """
        if w.ndim != 2:
            raise ValueError(f"sparse weight must be 2-D, got shape {w.shape}")
        br, bc = block
        if br < 1 or bc < 1:
            raise ValueError(f"block shape must be positive, got {block}")
        n, k = w.shape
        padded = np.zeros((-(-n // br) * br, -(-k // bc) * bc), dtype=np.float32)
        padded[:n, :k] = w
        kb = padded.shape[1] // bc
        blocks = padded.reshape(padded.shape[0] // br, br, kb, bc).swapaxes(1, 2)
        keep = blocks.any(axis=(2, 3))
        # An empty block row keeps one zero block: the reduction then starts (and initializes
        # its accumulator) in every row, whichever schedule runs it.
        empty = ~keep.any(axis=1)
        keep[empty, 0] = True
        rows, cols = np.nonzero(keep)  # row-major: sorted by row, then column
        counts = keep.sum(axis=1)
        data = blocks[rows, cols]
        if row_multiple > 1:
            m = row_multiple
            want = np.maximum(-(-counts // m) * m, m)
            starts = np.concatenate([[0], np.cumsum(counts)])
            cols = np.concatenate([np.pad(cols[starts[r]:starts[r + 1]], (0, want[r] - c))
                                   for r, c in enumerate(counts)])
            data = np.concatenate([np.pad(data[starts[r]:starts[r + 1]],
                                          ((0, want[r] - c), (0, 0), (0, 0)))
                                   for r, c in enumerate(counts)])
            counts = want
        indptr = np.zeros(keep.shape[0] + 1, np.int32)
        np.cumsum(counts, out=indptr[1:])
        return cls((n, k), (br, bc), np.ascontiguousarray(data, dtype=np.float32),
                   cols.astype(index_dtype(kb)), indptr)

    @property
    def nnzb(self) -> int:
        return int(self.data.shape[0])

    @property
    def density(self) -> float:
        """Stored values (zeros inside kept blocks included) over the dense size."""
        return self.data.size / max(self.shape[0] * self.shape[1], 1)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes

    def to_dense(self) -> np.ndarray:
        br, bc = self.block
        rows = (self.indptr.shape[0] - 1) * br
        cols = -(-self.shape[1] // bc) * bc
        m = sp.bsr_matrix((self.data, self.indices.astype(np.int64), self.indptr),
                          shape=(rows, cols)).toarray()
        return m[: self.shape[0], : self.shape[1]]


# Gathered rows of B beyond this size come in column panels. Measured here: long tiles matter
# more than L2 residency (768x3072 at p=128 runs 1.3x faster whole than in 512 KB panels).
L2_PANEL_BYTES = 2 * 1024 * 1024


def panel_width(k: int, p: int, br: int = 1, lanes: int = 16) -> int:
    """Columns of ``B`` per panel: the widest multiple of the vector width dividing ``p``
    whose ``k`` rows fit :data:`L2_PANEL_BYTES` (all of ``p`` when it has no such divisor).

    Blocks of 8 rows or more reuse each gathered row of ``B`` for as many outputs, so their
    traffic is small: they keep all of ``p`` in one panel (fewer, longer row blocks).
    """
    widths = [w for w in range(lanes, p + 1, lanes) if p % w == 0]
    if br >= 8 or not widths:
        return p
    fitting = [w for w in widths if k * w * 4 <= L2_PANEL_BYTES]
    return max(fitting) if fitting else min(widths)


def sparse_matmul_func(w: SparseWeight, p: int, *, b_layout: Literal["kp", "pk"] = "kp",
                       y_layout: Literal["np", "pn"] = "np", bias: bool = False,
                       act: Activation = "none",
                       y_image: tuple[int, int] | None = None) -> tirx.PrimFunc:
    """The kernel's PrimFunc for ``w``'s shapes (not its values).

    Parameters are ``(B, data, indices, indptr[, bias], Y)``; the function carries
    ``squeezer.kernel = "sparse_matmul"`` so the tuner searches its registered space.
    ``y_image=(H, W)`` (with ``y_layout="np"``, ``p = H * W``) writes ``Y`` as the NCHW image
    ``(1, n, H, W)`` of a 1x1 convolution, so the bias add and activation that follow fuse
    into the kernel (no reshape between them).
    """
    if y_image is not None and (y_layout != "np" or y_image[0] * y_image[1] != p):
        raise ValueError(f"y_image {y_image} needs y_layout 'np' and p = H * W, got {p}")
    if _is_gemv(w, p) and y_image is None:
        return _gemv_func(w, b_layout=b_layout, y_layout=y_layout, act=act)
    n, k = w.shape
    br, bc = w.block
    nb, nnzb, idt = w.indptr.shape[0] - 1, max(w.nnzb, 1), str(w.indices.dtype)
    kp = -(-k // bc) * bc
    # int64 dimensions, as Relax's legalized functions use: FuseTIR matches the buffers of
    # the ops it fuses after this kernel against ours
    i64 = functools.partial(tirx.IntImm, "int64")
    b_shape = (i64(k), i64(p)) if b_layout == "kp" else (i64(p), i64(k))
    y_shape = (i64(n), i64(p)) if y_layout == "np" else (i64(p), i64(n))
    image = y_image is not None
    ih, iw = y_image if y_image is not None else (1, p)
    if image:
        y_shape = (i64(1), i64(n), i64(ih), i64(iw))
    lo, hi = (0.0, 6.0) if act == "relu6" else (0.0, 3.4e38)
    relu, pack, np_out = act != "none", b_layout == "pk", y_layout == "np"
    # p is padded to whole vectors (zeros in the packed B) so every tile vectorizes
    pw = -(-p // 16) * 16 if p > 16 else p
    copy = not pack and kp == k and pw == p
    panel = panel_width(kp, pw, br)
    @T.prim_func(s_tir=True)
    def kernel(b_h: T.handle, d_h: T.handle, i_h: T.handle, r_h: T.handle, bias_h: T.handle,
               y_h: T.handle):
        # op_pattern 4 (kOutEWiseFusable): FuseOps fuses a following bias add or activation
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL,
                     "op_pattern": 4})
        B = T.match_buffer(b_h, b_shape, "float32")
        D = T.match_buffer(d_h, (nnzb, br, bc), "float32")
        IND = T.match_buffer(i_h, (nnzb,), idt)
        PTR = T.match_buffer(r_h, (nb + 1,), "int32")
        BIAS = T.match_buffer(bias_h, (i64(n),), "float32")
        Y = T.match_buffer(y_h, y_shape, "float32")
        BK = T.alloc_buffer((kp, pw), "float32")
        ACC = T.alloc_buffer((nb * br, pw), "float32")
        SRC = B if copy else BK  # B is already k x p: no packing
        if not copy:
            for kk, pp in T.grid(kp, pw):
                with T.sblock("pack"):
                    vk, vp = T.axis.remap("SS", [kk, pp])
                    if pack:
                        BK[vk, vp] = T.if_then_else(
                            vk < k and vp < p, B[T.min(vp, p - 1), T.min(vk, k - 1)],
                            T.float32(0))
                    else:
                        BK[vk, vp] = T.if_then_else(
                            vk < k and vp < p, B[T.min(vk, k - 1), T.min(vp, p - 1)],
                            T.float32(0))
        for po, i in T.grid(pw // panel, nb):
            # One block row of one column panel per outer block: the data-dependent reduction
            # is confined to its scope, so the root scope stays a clean producer-consumer
            # pipeline. Panels keep the gathered rows of B in L2.
            with T.sblock("row"):
                vpo, vi = T.axis.remap("SS", [po, i])
                T.reads(PTR[vi:vi + 2], D[0:nnzb, 0:br, 0:bc], IND[0:nnzb],
                        SRC[0:kp, vpo * panel:vpo * panel + panel])
                T.writes(ACC[vi * br:vi * br + br, vpo * panel:vpo * panel + panel])
                T.sblock_attr({"squeezer.kernel": KERNEL})
                for jj, r, c, pp in T.grid(PTR[vi + 1] - PTR[vi], br, bc, panel):
                    with T.sblock("update"):
                        vr, vp = T.axis.remap("SS", [r, pp])
                        vj = T.axis.reduce(nnzb, jj)
                        vc = T.axis.reduce(bc, c)
                        T.reads(PTR[vi], D[PTR[vi] + vj, vr, vc], IND[PTR[vi] + vj],
                                SRC[T.Cast("int32", IND[PTR[vi] + vj]) * bc + vc,
                                    vpo * panel + vp])
                        T.writes(ACC[vi * br + vr, vpo * panel + vp])
                        with T.init():
                            ACC[vi * br + vr, vpo * panel + vp] = T.float32(0)
                        ACC[vi * br + vr, vpo * panel + vp] = ACC[
                            vi * br + vr, vpo * panel + vp] + D[PTR[vi] + vj, vr, vc] * SRC[
                            T.Cast("int32", IND[PTR[vi] + vj]) * bc + vc, vpo * panel + vp]
        if image:
            for o, hh, ww in T.grid(n, ih, iw):
                with T.sblock("epilogue"):
                    vo, vh, vw = T.axis.remap("SSS", [o, hh, ww])
                    if relu:
                        Y[0, vo, vh, vw] = T.min(T.max(ACC[vo, vh * iw + vw] + BIAS[vo],
                                                       T.float32(lo)), T.float32(hi))
                    else:
                        Y[0, vo, vh, vw] = ACC[vo, vh * iw + vw] + BIAS[vo]
        else:
            for o, pp in T.grid(n, p):
                with T.sblock("epilogue"):
                    vo, vp = T.axis.remap("SS", [o, pp])
                    if np_out:
                        if relu:
                            Y[vo, vp] = T.min(T.max(ACC[vo, vp] + BIAS[vo], T.float32(lo)),
                                              T.float32(hi))
                        else:
                            Y[vo, vp] = ACC[vo, vp] + BIAS[vo]
                    else:
                        if relu:
                            Y[vp, vo] = T.min(T.max(ACC[vo, vp] + BIAS[vo], T.float32(lo)),
                                              T.float32(hi))
                        else:
                            Y[vp, vo] = ACC[vo, vp] + BIAS[vo]

    del bias  # the bias buffer is always a parameter (zeros when the layer has none)
    # the caller names it (BlockBuilder.add_func, or a module key)
    return kernel.without_attr("global_symbol")


def kernel_flops(func: tirx.PrimFunc) -> float:
    """Floating-point operations of a sparse kernel: two per stored value and output column."""
    d, bias, y = func.params[1], func.params[4], func.params[-1]
    values = int(np.prod([int(x) for x in d.shape]))
    outputs = int(np.prod([int(x) for x in y.shape]))
    return 2.0 * values * outputs / max(int(bias.shape[0]), 1)


def _is_gemv(w: SparseWeight, p: int) -> bool:
    """A CSR matrix-vector product stored by :meth:`SparseWeight.for_product`."""
    lengths = np.diff(w.indptr)
    return p == 1 and w.block == (1, 1) and bool(np.all(lengths % GEMV_LANES == 0)) \
        and lengths.size > 0 and int(lengths.min()) >= GEMV_LANES


def _gemv_func(w: SparseWeight, *, b_layout: str, y_layout: str,
               act: Activation) -> tirx.PrimFunc:
    """``y = W x`` for CSR ``W`` whose rows hold whole :data:`GEMV_LANES`: each row is walked
    ``GEMV_LANES`` entries at a time into as many independent accumulators (one vector), so
    the gathers and multiply-adds of consecutive entries overlap instead of waiting on one
    accumulator; the lanes are summed at the end of the row."""
    n, k = w.shape
    nnzb, idt, lanes = w.nnzb, str(w.indices.dtype), GEMV_LANES
    i64 = functools.partial(tirx.IntImm, "int64")
    b_shape = (i64(k), i64(1)) if b_layout == "kp" else (i64(1), i64(k))
    y_shape = (i64(n), i64(1)) if y_layout == "np" else (i64(1), i64(n))
    col = b_layout == "kp"
    np_out = y_layout == "np"
    lo, hi = (0.0, 6.0) if act == "relu6" else (0.0, 3.4e38)
    relu = act != "none"

    @T.prim_func(s_tir=True)
    def kernel(b_h: T.handle, d_h: T.handle, i_h: T.handle, r_h: T.handle, bias_h: T.handle,
               y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "squeezer.kernel": KERNEL, "op_pattern": 4})
        B = T.match_buffer(b_h, b_shape, "float32")
        D = T.match_buffer(d_h, (nnzb, 1, 1), "float32")
        IND = T.match_buffer(i_h, (nnzb,), idt)
        PTR = T.match_buffer(r_h, (n + 1,), "int32")
        BIAS = T.match_buffer(bias_h, (i64(n),), "float32")
        Y = T.match_buffer(y_h, y_shape, "float32")
        PART = T.alloc_buffer((n, lanes), "float32")
        SUM = T.alloc_buffer((n,), "float32")
        for i in range(n):
            with T.sblock("row"):
                vi = T.axis.spatial(n, i)
                T.reads(PTR[vi:vi + 2], D[0:nnzb, 0, 0], IND[0:nnzb], B[0:b_shape[0], 0:b_shape[1]])
                T.writes(PART[vi, 0:lanes])
                T.sblock_attr({"squeezer.kernel": KERNEL, "squeezer.gemv": 1})
                for jj, lane in T.grid((PTR[vi + 1] - PTR[vi]) // lanes, lanes):
                    with T.sblock("update"):
                        vl = T.axis.spatial(lanes, lane)
                        vj = T.axis.reduce(nnzb, jj)
                        with T.init():
                            PART[vi, vl] = T.float32(0)
                        if col:
                            PART[vi, vl] = PART[vi, vl] + D[PTR[vi] + vj * lanes + vl, 0, 0] * B[
                                T.Cast("int32", IND[PTR[vi] + vj * lanes + vl]), 0]
                        else:
                            PART[vi, vl] = PART[vi, vl] + D[PTR[vi] + vj * lanes + vl, 0, 0] * B[
                                0, T.Cast("int32", IND[PTR[vi] + vj * lanes + vl])]
        for o, lane in T.grid(n, lanes):
            with T.sblock("lanes"):
                vo, vl = T.axis.remap("SR", [o, lane])
                with T.init():
                    SUM[vo] = T.float32(0)
                SUM[vo] = SUM[vo] + PART[vo, vl]
        for o in range(n):
            with T.sblock("epilogue"):
                vo = T.axis.spatial(n, o)
                if np_out:
                    if relu:
                        Y[vo, 0] = T.min(T.max(SUM[vo] + BIAS[vo], T.float32(lo)), T.float32(hi))
                    else:
                        Y[vo, 0] = SUM[vo] + BIAS[vo]
                else:
                    if relu:
                        Y[0, vo] = T.min(T.max(SUM[vo] + BIAS[vo], T.float32(lo)), T.float32(hi))
                    else:
                        Y[0, vo] = SUM[vo] + BIAS[vo]

    return kernel.without_attr("global_symbol")


def _schedule_gemv(sch: s_tir.Schedule, target: Target) -> None:
    """Rows in parallel groups; in a row, one vector of accumulators over its entries."""
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in reversed(blocks[:blocks.index("row")]):  # reshapes FuseOps put before
        sch.compute_inline(sch.get_sblock(name))
    for name in blocks[blocks.index("epilogue") + 1:]:  # bias add, activation fused after
        sch.reverse_compute_inline(sch.get_sblock(name))
    row, upd = sch.get_sblock("row"), sch.get_sblock("update")
    (i,) = sch.get_loops(row)
    n = int(sch.get(i).extent)
    io, _ = sch.split(i, [None, _largest_divisor(n, 32)])
    jj, lane = sch.get_loops(upd)[-2:]
    acc = sch.cache_write(upd, 0, "local")
    sch.vectorize(lane)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.decompose_reduction(upd, jj)
    sch.reverse_compute_at(sch.get_sblock("lanes"), io)
    sch.reverse_compute_at(sch.get_sblock("epilogue"), io)
    if worth_parallel(target, _macs(sch), macs=True):
        sch.parallel(io)


@dataclass(frozen=True)
class Knobs:
    """The schedule's choice: ``pt`` columns of ``Y`` per tile (a multiple of the vector width
    that divides ``p``, or all of ``p``)."""

    pt: int


def _shapes(sch: s_tir.Schedule) -> tuple[int, int, int, int]:
    """``(block rows, br, bc, panel)`` of the kernel being scheduled (``panel``: the columns
    of ``B`` one row block works on, all of ``p`` or a divisor)."""
    acc = sch.get(sch.get_sblock("update")).writes[0].source
    d = sch.mod["main"].params[1]  # a buffer parameter: it has the data's shape
    rows = int(acc.shape[0])
    br = int(d.shape[1])
    panel = int(sch.get(sch.get_loops(sch.get_sblock("update"))[-1]).extent)
    return rows // br, br, int(d.shape[2]), panel


def tile_widths(p: int, br: int, lanes: int) -> list[int]:
    """Tile widths along ``p`` that keep ``br x width`` accumulators in the 32 vector registers."""
    if p < lanes or p % lanes:
        return [p]
    widths = [lanes * v for v in (1, 2, 3, 4, 6, 8) if p % (lanes * v) == 0 and br * v <= 24]
    return widths or [lanes]


def default_knobs(sch: s_tir.Schedule, target: Target) -> Knobs:
    nb, br, _, p = _shapes(sch)
    widths = tile_widths(p, br, vector_lanes(target))
    # a longer tile amortizes the index loads, as long as the accumulators fit
    return Knobs(pt=max(widths))


def schedule(sch: s_tir.Schedule, pt, target: Target) -> None:
    """Tile, parallelize and vectorize the kernel in place.

    ``pt`` is an int (default schedule) or a sampled value (tuning space). Block rows run in
    parallel; inside a row, a ``br x pt`` accumulator tile stays in registers while the row's
    blocks stream past, and the epilogue (with whatever ``FuseOps`` fused after it) writes
    the row out while it is still in L1.
    """
    if int(sch.get(sch.get_sblock("row")).annotations.get("squeezer.gemv", 0)):
        _schedule_gemv(sch, target)
        return
    lanes = vector_lanes(target)
    _, br, _, p = _shapes(sch)
    along_p = p >= lanes and p % lanes == 0
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    first = blocks.index("pack") if "pack" in blocks else blocks.index("row")
    for name in reversed(blocks[:first]):  # reshapes FuseOps put before the kernel
        sch.compute_inline(sch.get_sblock(name))
    epilogue = [sch.get_sblock(name) for name in blocks[blocks.index("epilogue"):]]
    for block in epilogue[1:]:  # bias add, activation fused after the epilogue
        sch.reverse_compute_inline(block)
    row, upd = sch.get_sblock("row"), sch.get_sblock("update")
    po, i = sch.get_loops(row)
    nb = int(sch.get(i).extent)
    pn = _writes_transposed(sch, epilogue[0])
    # Rows per group: a "pn" output is written a vector of rows at a time.
    group = _largest_divisor(nb, max(1, lanes // br) if pn else 1)
    io, _ = sch.split(i, [None, group])
    tile = sch.fuse(po, io)
    jj, r, c, pp = sch.get_loops(upd)[-4:]
    pto, pti = sch.split(pp, [None, pt])
    sch.reorder(pto, jj, c, r, pti)
    acc = sch.cache_write(upd, 0, "local")
    sch.reverse_compute_at(acc, pto)
    if along_p:
        sch.vectorize(pti)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.unroll(r)
    elif br >= 4:
        sch.vectorize(r)
    sch.unroll(c)
    sch.decompose_reduction(upd, jj)
    if len(sch.get_loops(epilogue[0])) == 2:
        # matrix output: written per row group while the rows are in L1
        sch.reverse_compute_at(epilogue[0], tile)
        inner = sch.get_loops(epilogue[0])[1:]  # unit loops are gone (p == 1, one row)
        if len(inner) == 2:
            rows_loop, cols_loop = inner
            if pn:
                sch.reorder(cols_loop, rows_loop)
                if group * br % lanes == 0:
                    sch.vectorize(rows_loop)
            elif along_p:
                sch.vectorize(cols_loop)
    elif _image_is_dense(sch, upd, epilogue[0]):
        # an NCHW image whose pixels are exactly the accumulator's columns (a 1x1 convolution
        # with p a whole number of vectors): written per row group while the rows are in cache
        sch.reverse_compute_at(epilogue[0], tile)
    else:
        # an image on padded columns (a direct convolution's extended width, or p padded to
        # whole vectors): its own parallel pass. Per row group, lowering shrinks the
        # accumulator to the pixels read and the padded columns overrun it (wrong results).
        out_loops = sch.get_loops(epilogue[0])
        if worth_parallel(target, _buffer_size(sch.get(epilogue[0]).writes[0].source)):
            sch.parallel(out_loops[0])
    if worth_parallel(target, _macs(sch), macs=True):
        sch.parallel(tile)
    if "pack" in blocks:
        _schedule_pack(sch, sch.get_sblock("pack"), target)


def _image_is_dense(sch: s_tir.Schedule, update, epilogue) -> bool:
    """Whether the image epilogue reads every accumulator column (no padding columns)."""
    width = int(sch.get(update).writes[0].source.shape[1])
    loops = sch.get_loops(epilogue)
    pixels = 1
    for loop in loops[1:]:
        pixels *= int(sch.get(loop).extent)
    return len(loops) == 3 and pixels == width


def _buffer_size(buf) -> int:
    return int(np.prod([int(x) for x in buf.shape]))


def _macs(sch: s_tir.Schedule) -> int:
    """Multiply-adds of the kernel being scheduled: small products stay on one thread (waking
    the pool costs more than a digits-sized layer takes)."""
    return int(kernel_flops(sch.mod["main"]) // 2)


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _writes_transposed(sch: s_tir.Schedule, block) -> bool:
    """Whether the (last) epilogue block writes ``Y[p, n]`` rather than ``Y[n, p]``."""
    stmt = sch.get(block)
    index = stmt.writes[0].region
    return len(index) == 2 and index[0].min.same_as(stmt.iter_vars[1].var)


def _schedule_pack(sch: s_tir.Schedule, pack, target: Target) -> None:
    """``BK[k, p] = B[p, k]``: a transpose in 16 x 16 tiles (both sides stay in cache lines).
    A one-loop pack (the convolution's phase planes) is split into parallel chunks."""
    loops = sch.get_loops(pack)
    cores = num_cores(target)
    parallel = worth_parallel(target, _buffer_size(sch.get(pack).writes[0].source))
    if len(loops) == 1:
        if parallel:
            outer, _ = sch.split(loops[0], [cores * 4, None])
            sch.parallel(outer)
        return
    kk, pp = loops
    kext, pext = (int(sch.get(lp).extent) for lp in (kk, pp))
    tk, tp = _largest_divisor(kext, 16), _largest_divisor(pext, 16)
    ko, ki = sch.split(kk, [None, tk])
    po, pi = sch.split(pp, [None, tp])
    sch.reorder(ko, po, pi, ki)
    sch.unroll(ki)
    if parallel:
        sch.parallel(ko)


class SparseMatmul(AnalyzedRule):
    """Default schedule of the ``sparse_matmul`` kernel (recognized by its block annotation)."""

    def analyze(self, sch: s_tir.Schedule):
        try:
            block = sch.get(sch.get_sblock("row"))
        except Exception:  # noqa: BLE001 - no such block: another kernel
            return None
        return True if block.annotations.get("squeezer.kernel") == KERNEL else None

    def schedule(self, sch: s_tir.Schedule, found, target: Target) -> None:
        schedule(sch, default_knobs(sch, target).pt, target)


@register_space(KERNEL, target_postprocs=False)
def sparse_matmul_space(sch: s_tir.Schedule) -> None:
    """Tuning space: the tile width along ``p``."""
    target = Target.current()
    _, br, _, p = _shapes(sch)
    widths = tile_widths(p, br, vector_lanes(target))
    pt = sch.sample_categorical(widths, [1 / len(widths)] * len(widths))
    schedule(sch, pt, target)
