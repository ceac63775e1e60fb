"""Bit-serial conv2d (NCHW in, NCHW out): XNOR-popcount over channels packed into words.

``Y[n, o] = sum_p alpha[o * P + p] * D_p``, where ``D_p`` is the exact dot product of weight
plane ``p`` (bipolar, +-1) with the encoded activation
(:class:`~squeezer.schedules.bitpack.ActBits`) over the receptive field. Every product is
``popcount(x ^ w)``; padded pixels are 0 in the activation's value domain, not -1:

- binary activations (bipolar x bipolar): ``D = valid_taps * C - 2 * mismatches``. Padded taps
  read zero words, so there the product counts ``popcount(w)`` instead of nothing. Output
  pixels fall in a few classes by which taps lie in the padding (interior, edges, corners);
  per weight row and class, ``base = C * valid_taps + 2 * popcount(w over padded taps)`` is
  computed once per call (``wpc``, ``base``) and the epilogue takes ``D = base - 2 * acc``.
- unipolar activation planes ``j`` (sign, uint2): ``sum (2 w - 1) x_j = popcount(w) -
  popcount(w ^ x_j)``, so ``D = sum_j beta_j * (popcount(w) - acc_j)`` over the whole window
  (one class: a padded tap contributes ``popcount(w) - popcount(w) = 0``).

Layout inside the kernel: channels packed into words per pixel, stored as planes of
``(word, row, column)`` over the zero-padded image; a stride-2 input is first split into its
four phases (space-to-depth), so for every stride each tap reads a contiguous window. Output
pixel ``t = oh * w2 + ow`` lives on an *extended* row of ``w2`` columns (the padded width), of
which the first ``OW`` are real and the epilogue drops the rest. The product runs along ``t``
in vectors of words, one weight word broadcast per weight row (output channel and plane).
Blocks: ``wpc`` and ``base`` (per weight row), ``xu`` (pack), ``xb`` (pad and phases), ``acc``
(the popcount reduction, annotated ``squeezer.kernel``), ``epilogue`` (counts to floats,
scales, NCHW).
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
bit_or = te.comm_reducer(lambda a, b: tirx.bitwise_or(a, b), lambda t: tirx.const(0, t),
                         name="bit_or")
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
        """Words of the packed input: every phase plane plus the last window's overrun, in
        whole rows of ``w2`` (the pad stage then runs row by row)."""
        s = self.stride
        last = self.offset(self.cw - 1, self.kh - 1, self.kw - 1)
        return -(-max(s * s * self.plane, last + self.tw) // self.w2) * self.w2

    def tap_classes(self, axis: str) -> tuple[list[tuple[int, int]], list[int]]:
        """Along ``axis`` ("h" or "w"): the distinct ranges ``[lo, hi)`` of taps that fall in
        the image, and the index of each output position's range."""
        out, size, pad, k = (self.oh, self.h, self.ph, self.kh) if axis == "h" else \
            (self.ow, self.w, self.pw, self.kw)
        ranges: list[tuple[int, int]] = []
        classes = []
        for o in range(out):
            start = o * self.stride - pad
            rng = (max(0, -start), min(k, size - start))
            if rng not in ranges:
                ranges.append(rng)
            classes.append(ranges.index(rng))
        return ranges, classes


def _in_range(cls, ranges: list[tuple[int, int]], k: int):
    """Whether tap ``k`` is valid for class ``cls`` (an index into ``ranges``)."""
    hits = [cls == c for c, (lo, hi) in enumerate(ranges) if lo <= k < hi]
    return tirx.any(*hits) if len(hits) > 1 else (hits[0] if hits else tirx.const(False))


def _common(classes: list[int]) -> int:
    return max(set(classes), key=classes.count)


def _specials(classes: list[int]) -> list[tuple[int, int]]:
    """``(position, class)`` of the positions outside the most common class (the borders)."""
    common = _common(classes)
    return [(i, c) for i, c in enumerate(classes) if c != common]


def _class_of(pos, classes: list[int]):
    """The class of output position ``pos``: a chain of selects over the border positions."""
    pos = tirx.Cast("int32", pos)  # the index types of the class table
    out = tirx.const(_common(classes), "int32")
    for i, c in _specials(classes):
        out = tirx.Select(pos == i, tirx.const(c, "int32"), out)
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
        one = tirx.shift_left(tirx.const(1, word), tirx.Cast(word, b))
        # a select, not a shifted 0/1: a masked OR of one constant per channel
        return bit_or(tirx.Select(bit, one, tirx.const(0, word)), axis=b)

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

    xb = te.compute((g.n, J, g.length), phases, name="xb", attrs={"squeezer.row": g.w2})

    rkh = te.reduce_axis((0, g.kh), "rkh")
    rkw = te.reduce_axis((0, g.kw), "rkw")
    rcw = te.reduce_axis((0, g.cw), "rcw")

    def product(n, j, r, t):
        both = tirx.bitwise_xor(xb[n, j, g.offset(rcw, rkh, rkw) + t], wb[r, rkh, rkw, rcw])
        return te.sum(tirx.Cast(acc_t, tirx.popcount(both)), axis=[rkh, rkw, rcw])

    acc = te.compute((g.n, J, rows, g.tw), product, name="acc",
                     attrs={"squeezer.kernel": KERNEL})
    wcw = te.reduce_axis((0, g.cw), "wcw")
    wpc = te.compute((rows, g.kh, g.kw), lambda r, i, k: te.sum(
        tirx.Cast(acc_t, tirx.popcount(wb[r, i, k, wcw])), axis=wcw), name="wpc")
    h_ranges, h_class = g.tap_classes("h")
    w_ranges, w_class = g.tap_classes("w")
    if not act.bipolar:  # no correction depends on the pixel
        h_ranges, h_class, w_ranges, w_class = [(0, g.kh)], [0] * g.oh, [(0, g.kw)], [0] * g.ow

    def base(r, ch, cw):
        # The count a row starts from at a pixel of class (ch, cw): binary inputs
        # C * valid taps + 2 * popcount(w) of the padded taps (they read zero words and
        # counted popcount(w) mismatches instead of nothing); unipolar planes sum_j beta_j *
        # popcount(w) over the window (a padded tap adds popcount(w) - popcount(w ^ 0) = 0).
        total = tirx.const(0, acc_t)
        for kh in range(g.kh):
            for kw in range(g.kw):
                if not act.bipolar:
                    total = total + sum(act.betas) * wpc[r, kh, kw]
                    continue
                ok = tirx.And(_in_range(ch, h_ranges, kh), _in_range(cw, w_ranges, kw))
                total = total + tirx.Select(ok, tirx.const(g.c, acc_t), 2 * wpc[r, kh, kw])
        return total

    bases = te.compute((rows, len(h_ranges), len(w_ranges)), base, name="base")
    gammas = (2,) if act.bipolar else act.betas

    def plane_dot(n, r, oh, ow):
        start = bases[r, _class_of(oh, h_class), _common(w_class)]
        for pos, c in _specials(w_class):
            start = tirx.Select(ow == tirx.const(pos, ow.ty.dtype),
                                bases[r, _class_of(oh, h_class), c], start)
        d = start
        for j, gamma in enumerate(gammas):
            d = d - gamma * acc[n, j, r, oh * g.w2 + ow]
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
    # the caller names it (BlockBuilder.add_func, or a module key)
    func = func.with_attr({"squeezer.kernel": KERNEL, "op_pattern": 4})
    return func.without_attr("global_symbol")


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
    own = {"wpc", "base", "xu", "xb", "acc"}
    for name in reversed(blocks[:blocks.index("acc")]):  # injective producers fused before
        if name not in own:
            sch.compute_inline(sch.get_sblock(name))
    _schedule_pack(sch, threads)
    n, j, r, t, kh, kw, cw = sch.get_loops(acc)
    ro, ri = sch.split(r, [None, rows])
    to, tv, tl = sch.split(t, [None, vecs, lanes])
    sch.reorder(n, ro, j, to, kh, kw, cw, ri, tv, tl)
    tile = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(tile, to, preserve_unit_loops=True)
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
    # pad and phases: row by row (the index arithmetic then stays per row), rows in parallel
    xb = sch.get_sblock("xb")
    n, j, v = sch.get_loops(xb)
    rows, _ = sch.split(v, [None, _row_width(sch)])
    outer = sch.fuse(n, j, rows)
    if threads:
        sch.parallel(outer)
    # wpc and base (per weight row, a few thousand operations) stay serial: a parallel
    # region would cost more than they take


def _row_width(sch: s_tir.Schedule) -> int:
    """``w2``: the extended row width, recorded on the pack block by the kernel builder."""
    return int(sch.get(sch.get_sblock("xb")).annotations["squeezer.row"])


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - no such block
        return False
    return True
