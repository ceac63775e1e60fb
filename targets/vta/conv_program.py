"""Program builder for a direct 2-D convolution ``narrow8(clip((conv(x, w) + bias) >> shift))``.

``x`` is NCHW (int8, or +-1 on a binary core), ``w`` is OIHW (the core's weight width), ``bias``
int32 ``[O]``. Layouts in DRAM (element = one scratchpad entry):

* input ``[N/batch, C/block_in, H, W]`` entries of ``[batch, block_in]`` (channels padded),
* weights group-major: per (output-channel tile, input-channel step) the nonzero
  ``[block_out, block_in]`` blocks in (o, c, kh, kw) order, packed (zero blocks skipped with
  ``skip_zero_blocks``),
* output ``[N/batch, O/block_out, OH, OW]`` entries of ``[batch, block_out]`` int8.

A tile is ``th x tw`` output pixels of ``tn`` output-channel blocks (``th`` and ``tw`` divide the
output size); a step loads the input window of ``tc`` channel blocks (one 2-D strided LOAD per
block, the image border filled by the LOAD's padding, as VTA does) and their weights, then one
GEMM whose loops run over the tile's rows and columns (source factors ``stride * window width``
and ``stride``) and whose micro-ops enumerate (o, c, kh, kw). The epilogue and the tokens are
those of :mod:`.emit`. Spatial padding is zero bytes: 0 for int8 inputs, -1 for binary inputs
(:func:`conv_reference` takes the same ``pad_value``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from .config import VtaConfig, load_config
from .emit import (
    TileEmitter,
    UopTable,
    add_bias_segment,
    add_uop_segment,
    alu_tail,
    check_weights,
    epilogue,
    pack_blocks,
)
from .errors import ProgramError
from .isa import LOOP_ITER_BITS, Buffer, Gemm, Instruction, Load, Store
from .pack import pack_elements
from .program import Program
from .sim import Driver
from .timing import Counters

MAX_PAD = 15  # a LOAD's padding fields are 4 bits


@dataclass(frozen=True)
class ConvTiling:
    """Output rows ``th`` and columns ``tw`` per tile (divisors of the output size), output
    channel blocks ``tn`` per tile, input channel blocks ``tc`` per step."""

    th: int
    tw: int
    tn: int
    tc: int


@dataclass(frozen=True)
class ConvShape:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: int
    pad: int

    @property
    def out_hw(self) -> tuple[int, int]:
        return ((self.h + 2 * self.pad - self.kh) // self.stride + 1,
                (self.w + 2 * self.pad - self.kw) // self.stride + 1)


@dataclass
class ConvProgram:
    """A built convolution program and what is needed to feed and read it."""

    program: Program
    shape: ConvShape
    tiling: ConvTiling
    nonzero_blocks: int
    total_blocks: int
    meta: dict[str, int] = field(default_factory=dict)

    def pack_input(self, x: np.ndarray) -> np.ndarray:
        """DRAM image of an NCHW input for the ``inp`` segment."""
        return _pack_input(self.program.config, x, self.shape)

    def unpack_output(self, raw: np.ndarray) -> np.ndarray:
        """int8 NCHW output from the ``out`` segment's bytes."""
        cfg, s = self.program.config, self.shape
        oh, ow = s.out_hw
        nbb, ob = -(-s.n // cfg.batch), -(-s.o // cfg.block_out)
        e = raw.view(np.int8).reshape(nbb, ob, oh, ow, cfg.batch, cfg.block_out)
        return e.transpose(0, 4, 1, 5, 2, 3).reshape(nbb * cfg.batch, ob * cfg.block_out,
                                                      oh, ow)[:s.n, :s.o]

    def run(self, driver: Driver, x: np.ndarray | None = None) -> tuple[np.ndarray, Counters]:
        """Run on a driver (with a new input if given); returns the int8 output and counters."""
        res = driver.run_program(self.program, {} if x is None else {"inp": self.pack_input(x)})
        return self.unpack_output(res.outputs["out"]), res.counters


def conv_reference(x: np.ndarray, w: np.ndarray, *, stride: int = 1, padding: int = 0,
                   bias: np.ndarray | None = None, shift: int = 0,
                   clip: tuple[int, int] | None = None, pad_value: int = 0) -> np.ndarray:
    """numpy reference (int32 wraparound, arithmetic shift, low 8 bits), NCHW int8."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2),
                constant_values=pad_value)
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # n, c, oh, ow, kh, kw
    # float64 is exact here: |products| <= 2^14 and far fewer than 2^39 terms
    acc = np.einsum("ncyxij,ocij->noyx", win.astype(np.float64), w.astype(np.float64))
    acc = acc.astype(np.int64)
    if bias is not None:
        acc = acc + bias.astype(np.int64)[None, :, None, None]
    out = acc.astype(np.int32) >> shift
    if clip is not None:
        out = np.clip(out, clip[0], clip[1])
    return out.astype(np.int8)


def _pack_input(cfg: VtaConfig, x: np.ndarray, s: ConvShape) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != (s.n, s.c, s.h, s.w):
        raise ProgramError(f"input: expected shape {(s.n, s.c, s.h, s.w)}, got {x.shape}")
    b, bi = cfg.batch, cfg.block_in
    nbb, cb = -(-s.n // b), -(-s.c // bi)
    full = np.full((nbb * b, cb * bi, s.h, s.w), -1 if cfg.inp_bits == 1 else 0, np.int8)
    full[:s.n, :s.c] = x
    e = full.reshape(nbb, b, cb, bi, s.h, s.w).transpose(0, 2, 4, 5, 1, 3)
    try:
        return pack_elements(e, cfg.inp_bits).ravel()
    except ValueError as err:
        raise ProgramError(f"input: {err}") from None


def _window(s: ConvShape, t: ConvTiling) -> tuple[int, int]:
    return (t.th - 1) * s.stride + s.kh, (t.tw - 1) * s.stride + s.kw


def _fits(cfg: VtaConfig, s: ConvShape, t: ConvTiling, slots: int, bias: bool) -> str | None:
    ih, iw = _window(s, t)
    kk = s.kh * s.kw
    need = {"INP": t.tc * ih * iw, "WGT": t.tn * t.tc * kk,
            "ACC": t.tn * t.th * t.tw + (t.tn if bias else 0)}
    for name, entries in need.items():
        if entries * slots > cfg.depths[name]:
            return (f"{name} scratchpad: the tiling {t} needs {entries} entries x {slots} "
                    f"buffer(s), the {cfg.name} core has {cfg.depths[name]}")
    if t.tn * t.tc * kk + 4 > cfg.uop_depth:
        return f"UOP scratchpad: {t.tn * t.tc * kk} micro-ops per step exceed {cfg.uop_depth - 4}"
    if t.tn * t.th * t.tw >= 1 << LOOP_ITER_BITS:
        return f"loop trip count {t.tn * t.th * t.tw} exceeds {(1 << LOOP_ITER_BITS) - 1}"
    if s.stride * iw >= cfg.inp_depth:
        return f"source factor {s.stride * iw} exceeds the INP depth {cfg.inp_depth}"
    return None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _pow2s(n: int) -> list[int]:
    return sorted({n, *(1 << e for e in range(n.bit_length()) if 1 << e < n)})


def choose_conv_tiling(cfg: VtaConfig, s: ConvShape, double_buffer: bool = True,
                       bias: bool = False) -> ConvTiling:
    """Default tiling: the feasible one with the fewest estimated cycles."""
    oh, ow = s.out_hw
    nbb, cb, ob = -(-s.n // cfg.batch), -(-s.c // cfg.block_in), -(-s.o // cfg.block_out)
    kk = s.kh * s.kw
    slots = 2 if double_buffer else 1
    best = None
    for th, tw, tn, tc in product(_divisors(oh), _divisors(ow), _pow2s(ob), _pow2s(cb)):
        t = ConvTiling(th, tw, tn, tc)
        if _fits(cfg, s, t, slots, bias):
            continue
        ih, iw = _window(s, t)
        tiles = nbb * (oh // th) * (ow // tw) * -(-ob // tn)
        nsteps = tiles * -(-cb // tc)
        moved = (tiles * cb * ih * iw * cfg.inp_block_bytes
                 + nbb * (oh // th) * (ow // tw) * ob * cb * kk * cfg.wgt_block_bytes)
        load = moved / cfg.dma_bytes_per_cycle + nsteps * (tc + 1) * cfg.dma_latency_cycles
        compute = nbb * oh * ow * ob * cb * kk + nsteps * cfg.gemm_pipeline_depth
        key = (max(load, compute), -th * tw * tn * tc, th, tw, tn, tc)
        best = min(best, key) if best else key
    if best is None:
        raise ProgramError(f"no tiling of the convolution {s} fits the {cfg.name} scratchpads")
    return ConvTiling(*best[2:])


def build_conv2d(config: VtaConfig | str, x: np.ndarray, w: np.ndarray, *, stride: int = 1,
                 padding: int = 0, bias: np.ndarray | None = None, shift: int = 0,
                 clip: tuple[int, int] | None = None, tiling: ConvTiling | None = None,
                 double_buffer: bool = True, skip_zero_blocks: bool = True) -> ConvProgram:
    """Build the tiled direct-convolution program (see the module docstring).

    Raises
    ------
    ProgramError
        bad shapes or values, padding above 15, or a tiling that overflows a scratchpad.
    """
    cfg = load_config(config)
    x, w = np.asarray(x), np.asarray(w)
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise ProgramError(f"expected x NCHW and w OIHW with equal C, got {x.shape}, {w.shape}")
    n, c, h, wd = x.shape
    s = ConvShape(n, c, h, wd, w.shape[0], w.shape[2], w.shape[3], stride, padding)
    oh, ow = s.out_hw
    if stride < 1 or not 0 <= padding <= MAX_PAD or oh < 1 or ow < 1:
        raise ProgramError(f"stride {stride}, padding {padding}: expected stride >= 1, padding "
                           f"0..{MAX_PAD} and a non-empty output, got {oh}x{ow}")
    if not 0 <= shift <= 31:
        raise ProgramError(f"shift: expected 0..31, got {shift}")
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    nbb, cb, ob = -(-s.n // b), -(-s.c // bi), -(-s.o // bo)
    kk = s.kh * s.kw
    slots = 2 if double_buffer else 1
    t = tiling or choose_conv_tiling(cfg, s, double_buffer, bias is not None)
    problem = _fits(cfg, s, t, slots, bias is not None) or (
        None if oh % t.th == 0 and ow % t.tw == 0 else
        f"tiling {t}: th and tw must divide the output size {oh}x{ow}")
    if problem:
        raise ProgramError(problem)
    ih, iw = _window(s, t)
    prog = Program(cfg, meta={"kind": "conv2d", "N": s.n, "C": s.c, "H": s.h, "W": s.w,
                              "O": s.o, "KH": s.kh, "KW": s.kw, "stride": stride, "pad": padding})

    check_weights(cfg, w)
    wfull = np.full((ob * bo, cb * bi, s.kh, s.kw), -1 if cfg.wgt_bits == 1 else 0, np.int8)
    wfull[:s.o, :s.c] = w
    wblocks = wfull.reshape(ob, bo, cb, bi, s.kh, s.kw).transpose(0, 2, 4, 5, 1, 3)
    nonzero = ((wblocks != 0).any(axis=(4, 5)) if skip_zero_blocks
               else np.ones((ob, cb, s.kh, s.kw), bool))
    groups: dict[tuple[int, int], tuple[int, list[tuple[int, int, int, int]]]] = {}
    blocks: list[np.ndarray] = []
    for jt, ct in product(range(-(-ob // t.tn)), range(-(-cb // t.tc))):
        j0, c0 = jt * t.tn, ct * t.tc
        quads = [q for q in product(range(min(t.tn, ob - j0)), range(min(t.tc, cb - c0)),
                                    range(s.kh), range(s.kw))
                 if nonzero[j0 + q[0], c0 + q[1], q[2], q[3]]]
        if quads:
            groups[jt, ct] = (len(blocks), quads)
            blocks += [wblocks[j0 + o, c0 + c, i, j] for o, c, i, j in quads]
    inp = prog.add_segment("inp", "inp", _pack_input(cfg, x, s))
    wseg = prog.add_segment("wgt", "wgt", pack_blocks(cfg, blocks))
    bseg = add_bias_segment(prog, bias, s.o) if bias is not None else None

    tile_acc = t.tn * t.th * t.tw
    ibase = [k * t.tc * ih * iw for k in range(slots)]
    wbase = [k * t.tn * t.tc * kk for k in range(slots)]
    abase = [k * (tile_acc + (t.tn if bias is not None else 0)) for k in range(slots)]
    uops = UopTable(abase, [a + tile_acc if bias is not None else 0 for a in abase])

    def variant(jt: int, ct: int, sl: int, asl: int) -> tuple[int, int]:
        return uops.variant((jt, ct, sl, asl), [
            (abase[asl] + o * t.th * t.tw, ibase[sl] + c * ih * iw + i * iw + j, wbase[sl] + p)
            for p, (o, c, i, j) in enumerate(groups[jt, ct][1])])

    tiles = list(product(range(nbb), range(0, oh, t.th), range(0, ow, t.tw),
                         range(-(-ob // t.tn))))
    steps = [(k, jt, ct) for k, (*_, jt) in enumerate(tiles) for ct in range(-(-cb // t.tc))
             if (jt, ct) in groups]
    for i, (k, jt, ct) in enumerate(steps):
        variant(jt, ct, i % slots, k % slots)
    resident = len(uops) <= cfg.uop_depth
    useg = add_uop_segment(prog, uops)
    oseg = prog.add_segment("out", "out", nbb * ob * oh * ow * cfg.out_block_bytes)
    u0, i0 = useg.elem(cfg, Buffer.UOP), inp.elem(cfg, Buffer.INP)
    w0, o0 = wseg.elem(cfg, Buffer.WGT), oseg.elem(cfg, Buffer.OUT)

    em = TileEmitter(slots, [Load(buffer=Buffer.UOP, sram_base=0, dram_base=u0, y_size=1,
                                  x_size=len(uops) if resident else uops.special, x_stride=0)])
    ops = epilogue((cb * bi - s.c) * kk if cfg.binary_gemm else 0, bias is not None, shift, clip)
    for nb_, y0, x0, jt in tiles:
        a_s = em.tile_slot
        tne = min(t.tn, ob - jt * t.tn)
        prefix: list[Instruction] = []
        if bseg is not None:
            prefix.append(Load(buffer=Buffer.ACC, sram_base=abase[a_s] + tile_acc,
                               dram_base=bseg.elem(cfg, Buffer.ACC) + jt * t.tn, y_size=1,
                               x_size=tne, x_stride=0))
        flat: dict[str, Any] = {"iter_out": tne * t.th * t.tw, "iter_in": 1, "dst_factor_out": 1}
        bgn, end = uops.reset(a_s)
        em.begin_tile([*prefix, Gemm(reset=True, uop_bgn=bgn, uop_end=end, **flat)])
        iy0, ix0 = y0 * stride - padding, x0 * stride - padding
        ry0, ry1 = max(iy0, 0), min(iy0 + ih, s.h)
        rx0, rx1 = max(ix0, 0), min(ix0 + iw, s.w)
        rows, cols = max(ry1 - ry0, 0), max(rx1 - rx0, 0)
        pads: dict[str, Any] = {
            "y_pad0": ry0 - iy0 if rows else ih, "y_pad1": iy0 + ih - ry1 if rows else 0,
            "x_pad0": rx0 - ix0 if cols else iw, "x_pad1": ix0 + iw - rx1 if cols else 0}
        if max(pads.values()) > MAX_PAD:
            raise ProgramError(f"tile at output ({y0}, {x0}): border padding {pads} exceeds "
                               f"{MAX_PAD}; use smaller tiles")
        for ct in range(-(-cb // t.tc)):
            if (jt, ct) not in groups:
                continue
            sl = em.step_slot
            woff, quads = groups[jt, ct]
            loads = [Load(buffer=Buffer.INP, sram_base=ibase[sl] + c * ih * iw,
                          dram_base=i0 + ((nb_ * cb + ct * t.tc + c) * s.h + ry0) * s.w + rx0,
                          y_size=rows, x_size=cols, x_stride=s.w, **pads)
                     for c in range(min(t.tc, cb - ct * t.tc))]
            loads.append(Load(buffer=Buffer.WGT, sram_base=wbase[sl], dram_base=w0 + woff,
                              y_size=1, x_size=len(quads), x_stride=0))
            bgn, cnt = variant(jt, ct, sl, a_s)
            prep: list[Instruction] = []
            if not resident:
                prep.append(Load(buffer=Buffer.UOP, sram_base=uops.special, dram_base=u0 + bgn,
                                 y_size=1, x_size=cnt, x_stride=0))
                bgn = uops.special
            em.step(loads, [Gemm(uop_bgn=bgn, uop_end=bgn + cnt, iter_out=t.th, iter_in=t.tw,
                                 dst_factor_out=t.tw, dst_factor_in=1,
                                 src_factor_out=stride * iw, src_factor_in=stride)], prep)
        bias_loop: dict[str, Any] = {"iter_out": tne, "iter_in": t.th * t.tw, "dst_factor_in": 1,
                                     "dst_factor_out": t.th * t.tw, "src_factor_out": 1}
        stores = [Store(buffer=Buffer.OUT, sram_base=abase[a_s] + o * t.th * t.tw,
                        dram_base=o0 + ((nb_ * ob + jt * t.tn + o) * oh + y0) * ow + x0,
                        y_size=t.th, x_size=t.tw, x_stride=ow) for o in range(tne)]
        em.end_tile(alu_tail(ops, uops, a_s, [flat], [bias_loop]), stores)
    prog.instructions = em.finish()
    prog.meta.update({"th": t.th, "tw": t.tw, "tn": t.tn, "tc": t.tc,
                      "double_buffer": int(double_buffer)})
    return ConvProgram(prog, s, t, int(nonzero.sum()), int(nonzero.size),
                       {"uops": len(uops), "uops_resident": int(resident), "steps": em.steps})
