"""Bit-serial conv2d (NCHW in, NCHW out): XNOR-popcount over channels packed into words.

``Y[n, o] = sum_p alpha[o * P + p] * D_p``, where ``D_p`` is the exact dot product of weight
plane ``p`` (bipolar, +-1) with the encoded activation
(:class:`~squeezer.schedules.bitpack.ActBits`) over the receptive field. Every product is
``popcount(x ^ w)``; padded pixels are 0 in the activation's value domain, not -1:

- binary activations (bipolar x bipolar): ``D = valid_taps * C - 2 * mismatches``. Padded taps
  read zero words, so there the product counts ``popcount(w)`` instead of nothing; the epilogue
  adds twice those weight popcounts back for the taps of each output pixel that fall in the
  padding (per column of taps, a handful of selects; the weight popcounts depend on the output
  channel only and are hoisted out of the pixel loops).
- unipolar activation planes ``j`` (sign, uint2): ``sum (2 w - 1) x_j = popcount(w) -
  popcount(w ^ x_j)``, so ``D = sum_j beta_j * (popcount(w) - acc_j)`` over the whole window;
  a padded tap contributes ``popcount(w) - popcount(w) = 0``.

Layout inside the kernel: channels packed into words per pixel, stored as planes of
``(word, row, column)`` over the zero-padded image; a stride-2 input is first split into its
four phases (space-to-depth), so for every stride each tap reads a contiguous window. Output
pixel ``t = oh * w2 + ow`` lives on an *extended* row of ``w2`` columns (the padded width), of
which the first ``OW`` are real and the epilogue drops the rest. The product runs along ``t``
in vectors of words, one weight word broadcast per weight row (output channel and plane).
Blocks: ``xu`` (pack), ``xb`` (pad and phases), ``acc`` (the popcount reduction, annotated
``squeezer.kernel``), ``epilogue`` (counts to floats, scales, NCHW).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from tvm import s_tir, te, tirx
from tvm.target import Target

from ._common import MAX_ACC_REGS, vector_lanes, vectorize_innermost, worth_parallel
from .bitpack import ACC_DTYPES, WORD_DTYPES, ActBits, has_vector_popcount, words

KERNEL = "bitserial_conv2d"
T_ALIGN_WORDS = 4  # the extended output is padded to whole tiles of this many 512-bit vectors


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one bit-serial convolution (batch ``n``, ``c -> o`` channels)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: int
    ph: int
    pw: int
    word_bits: int

    @property
    def cw(self) -> int:
        return words(self.c, self.word_bits)

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.stride + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.stride + 1

    @property
    def h2(self) -> int:
        return -(-(self.h + 2 * self.ph) // self.stride)

    @property
    def w2(self) -> int:
        return -(-(self.w + 2 * self.pw) // self.stride)

    @property
    def lanes(self) -> int:
        return 512 // self.word_bits

    @property
    def t(self) -> int:
        """Extended output pixels (``w2`` columns per output row)."""
        return self.oh * self.w2

    @property
    def tw(self) -> int:
        """``t`` padded to whole tiles."""
        unit = self.lanes * T_ALIGN_WORDS
        return -(-self.t // unit) * unit

    @property
    def plane(self) -> int:
        """Words of one phase plane (all channel words)."""
        return self.cw * self.h2 * self.w2

    def offset(self, cw, kh: int, kw: int):
        """Where tap ``(kh, kw)`` of channel word ``cw`` starts in the packed input."""
        s = self.stride
        return ((kh % s) * s + kw % s) * self.plane + cw * (self.h2 * self.w2) \
            + (kh // s) * self.w2 + kw // s

    @property
    def length(self) -> int:
        """Words of the packed input: every phase plane plus the last window's overrun."""
        s = self.stride
        last = self.offset(self.cw - 1, self.kh - 1, self.kw - 1)
        return max(s * s * self.plane, last + self.tw)

    def valid_h(self, oh, kh: int):
        """Whether row ``kh`` of the taps of output row ``oh`` is in the image (None: always)."""
        if not self.ph:
            return None
        y = oh * self.stride + (kh - self.ph)
        return tirx.all(y >= 0, y < self.h)

    def valid_w(self, ow, kw: int):
        """Whether column ``kw`` of the taps of output column ``ow`` is in the image."""
        if not self.pw:
            return None
        x = ow * self.stride + (kw - self.pw)
        return tirx.all(x >= 0, x < self.w)


def _count(conds: list, one, zero):
    """How many of ``conds`` hold (None: always)."""
    return _sum([one if c is None else tirx.if_then_else(c, one, zero) for c in conds], zero)


def _sum(terms: list, zero):
    out = zero
    for t in terms:
        out = t if out is zero else out + t
    return out


def bitserial_conv2d_func(geo: ConvGeometry, planes: int, act: ActBits) -> tirx.PrimFunc:
    """The kernel for one convolution; parameters ``(X, WB, ALPHA, Y)``.

    ``X`` (N, C, H, W) float32 holds the activation *before* its encoding (``x``, not
    ``where(x >= 0, 1, -1)``); ``WB`` (O * P, KH, KW, CW) the packed weight planes
    (:func:`~squeezer.schedules.bitpack.conv_weight_words`); ``ALPHA`` (O * P,) their
    coefficients; ``Y`` (N, O, OH, OW) float32.
    """
    g = geo
    i64 = functools.partial(tirx.IntImm, "int64")
    word, acc_t = WORD_DTYPES[g.word_bits], ACC_DTYPES[g.word_bits]
    nb, J, P, rows = g.word_bits, act.planes, planes, g.o * planes
    x = te.placeholder((i64(g.n), i64(g.c), i64(g.h), i64(g.w)), "float32", name="X")
    wb = te.placeholder((rows, g.kh, g.kw, g.cw), word, name="WB")
    alpha = te.placeholder((rows,), "float32", name="ALPHA")

    b = te.reduce_axis((0, nb), "b")

    def pack(n, j, cw, y, xx):
        c = cw * nb + b
        v = x[n, tirx.min(c, g.c - 1), y, xx]
        bit = tirx.And(act.bit(v, j), c < g.c)
        return te.sum(tirx.shift_left(tirx.Cast(word, bit), tirx.Cast(word, b)), axis=b)

    xu = te.compute((g.n, J, g.cw, g.h, g.w), pack, name="xu")

    s = g.stride
    hw2 = g.h2 * g.w2

    def phases(n, j, v):
        ph_ = v // g.plane
        rem = v % g.plane
        cw, i, jj = rem // hw2, rem % hw2 // g.w2, rem % g.w2
        y = i * s + ph_ // s - g.ph
        xx = jj * s + ph_ % s - g.pw
        ok = tirx.all(v < s * s * g.plane, y >= 0, y < g.h, xx >= 0, xx < g.w)
        val = xu[n, j, tirx.min(cw, g.cw - 1), tirx.min(tirx.max(y, 0), g.h - 1),
                 tirx.min(tirx.max(xx, 0), g.w - 1)]
        return tirx.if_then_else(ok, val, tirx.const(0, word))

    xb = te.compute((g.n, J, g.length), phases, name="xb")

    rkh = te.reduce_axis((0, g.kh), "rkh")
    rkw = te.reduce_axis((0, g.kw), "rkw")
    rcw = te.reduce_axis((0, g.cw), "rcw")

    def product(n, j, r, t):
        both = tirx.bitwise_xor(xb[n, j, g.offset(rcw, rkh, rkw) + t], wb[r, rkh, rkw, rcw])
        return te.sum(tirx.Cast(acc_t, tirx.popcount(both)), axis=[rkh, rkw, rcw])

    acc = te.compute((g.n, J, rows, g.tw), product, name="acc",
                     attrs={"squeezer.kernel": KERNEL})
    zero = tirx.const(0, acc_t)

    def wpc(r, kh: int, kw: int):
        # a tap's weight popcount, written out over its words: it depends on the row only,
        # so LLVM hoists it out of the pixel loops (no buffer, nothing stored)
        return _sum([tirx.Cast(acc_t, tirx.popcount(wb[r, kh, kw, cw])) for cw in range(g.cw)],
                     zero)

    if act.bipolar:
        def plane_dot(n, r, oh, ow):
            # Padded taps read zero words and counted popcount(w): add 2 * popcount(w) back
            # for each of them, per column of taps: a column outside the image entirely, or
            # only the rows of it outside the image (uniform along an output row).
            one = tirx.const(1, acc_t)
            vh = [g.valid_h(oh, kh) for kh in range(g.kh)]
            vw = [g.valid_w(ow, kw) for kw in range(g.kw)]
            corr = zero
            for kw in range(g.kw):
                col_out = _sum([tirx.if_then_else(v, zero, wpc(r, kh, kw))
                                for kh, v in enumerate(vh) if v is not None], zero)
                if vw[kw] is not None:
                    col_all = _sum([wpc(r, kh, kw) for kh in range(g.kh)], zero)
                    col_out = tirx.if_then_else(vw[kw], col_out, col_all)
                corr = corr + col_out
            valid = g.c * _count(vh, one, zero) * _count(vw, one, zero)
            d = valid - 2 * acc[n, 0, r, oh * g.w2 + ow]
            return d + 2 * corr if (g.ph or g.pw) else d
    else:
        def plane_dot(n, r, oh, ow):
            # sum (2w - 1) x_j over the window = popcount(w) - popcount(w ^ x_j), padded
            # words (x_j = 0) contributing popcount(w) - popcount(w) = 0
            total = _sum([wpc(r, kh, kw) for kh in range(g.kh) for kw in range(g.kw)], zero)
            d = zero
            for j, beta in enumerate(act.betas):
                d = d + beta * (total - acc[n, j, r, oh * g.w2 + ow])
            return d

    def epilogue(n, o, oh, ow):
        y = tirx.const(0.0, "float32")
        for p in range(P):
            r = o * P + p
            y = y + alpha[r] * tirx.Cast("float32", plane_dot(n, r, oh, ow))
        return y

    out = te.compute((i64(g.n), i64(g.o), i64(g.oh), i64(g.ow)), epilogue, name="epilogue")
    func = te.create_prim_func([x, wb, alpha, out])
    # op_pattern 4 (kOutEWiseFusable): FuseOps fuses a following bias add or activation
    return func.with_attr({"squeezer.kernel": KERNEL, "op_pattern": 4})


@dataclass(frozen=True)
class ConvKnobs:
    """The schedule's choices: ``rows`` weight rows (output channels x planes) and ``vecs``
    vectors of output pixels per register tile (``rows * vecs`` accumulators)."""

    rows: int
    vecs: int


def conv_shapes(sch: s_tir.Schedule) -> tuple[int, int, int, int]:
    """``(weight rows, extended pixels, word bits, planes)`` of the kernel being scheduled."""
    func = sch.mod["main"]
    acc = sch.get(sch.get_sblock("acc")).writes[0].source
    wb = func.params[1]
    out = func.params[-1]
    rows, tw = int(acc.shape[2]), int(acc.shape[3])
    return rows, tw, int(wb.dtype.bits), rows // int(out.shape[1])


def conv_row_choices(rows: int, planes: int) -> list[int]:
    """Weight rows per tile: whole output channels (all their planes) dividing the rows."""
    return [r for r in range(planes, min(rows, 16 * planes) + 1, planes) if rows % r == 0]


def conv_vec_choices(tw: int, lanes: int) -> list[int]:
    """Pixel vectors per tile dividing the extended output."""
    return [v for v in (1, 2, 3, 4, 6) if (tw // lanes) % v == 0]


def default_conv_knobs(sch: s_tir.Schedule, target: Target) -> ConvKnobs:
    rows, tw, bits, planes = conv_shapes(sch)
    pairs = [ConvKnobs(r, v) for r in conv_row_choices(rows, planes)
             for v in conv_vec_choices(tw, vector_lanes(target, bits))]
    fit = [k for k in pairs if k.rows * k.vecs <= MAX_ACC_REGS] or pairs
    # the largest tile shares the most loads; among equals, more rows (fewer vector loads)
    return max(fit, key=lambda k: (k.rows * k.vecs, k.rows))


def schedule_conv(sch: s_tir.Schedule, rows, vecs, target: Target) -> None:
    """Register-tile the popcount product and vectorize every stage, in place.

    ``rows`` and ``vecs`` are ints (default schedule) or sampled values (tuning space). Each
    parallel task owns ``rows`` weight rows and all pixels: it accumulates ``rows x vecs``
    vectors of pixels in registers while the taps and channel words stream past, then writes
    its output channels (NCHW, vectors along ``ow``) while the counts are still in cache.
    """
    nrows, tw, bits, _ = conv_shapes(sch)
    lanes = vector_lanes(target, bits)
    acc = sch.get_sblock("acc")
    work = nrows * tw * math.prod(int(sch.get(lp).extent) for lp in sch.get_loops(acc)[-3:])
    threads = worth_parallel(target, work)
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in blocks[blocks.index("epilogue") + 1:]:  # bias add, activation fused after
        sch.reverse_compute_inline(sch.get_sblock(name))
    for name in reversed(blocks[:blocks.index("xu")]):  # injective producers fused before
        sch.compute_inline(sch.get_sblock(name))
    _schedule_pack(sch, threads)
    n, j, r, t, kh, kw, cw = sch.get_loops(acc)
    ro, ri = sch.split(r, [None, rows])
    to, tv, tl = sch.split(t, [None, vecs, lanes])
    sch.reorder(n, ro, j, to, kh, kw, cw, ri, tv, tl)
    tile = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(tile, to)
    task = sch.fuse(n, ro)
    epi = sch.get_sblock("epilogue")
    n_, o_ = sch.get_loops(epi)[:2]
    if threads:
        sch.parallel(sch.fuse(n_, o_))
    vectorize_innermost(sch, epi, vector_lanes(target))
    sch.vectorize(sch.get_loops(tile)[-1])
    sch.unroll(ri)
    sch.unroll(tv)
    if has_vector_popcount(target):
        sch.vectorize(tl)
    else:
        sch.unroll(tl)
    if threads:
        sch.parallel(task)
    sch.decompose_reduction(acc, kh)


def _schedule_pack(sch: s_tir.Schedule, threads: bool) -> None:
    """Words of one channel group along a row of pixels: one vector compare per channel."""
    xu = sch.get_sblock("xu")
    n, j, cw, y, x, b = sch.get_loops(xu)
    sch.reorder(n, j, cw, y, b, x)
    sch.vectorize(x)
    outer = sch.fuse(n, j, cw, y)
    if threads:
        sch.parallel(outer)
    sch.decompose_reduction(xu, b)


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - no such block
        return False
    return True
