"""Program builder for a tiled GEMM ``out = narrow8(clip((a @ w.T + bias) >> shift))``.

``a`` is ``[M, K]`` (int8, or +-1 on a binary core), ``w`` is ``[N, K]`` (int8, int4 values or
+-1 by the core's weight width), ``bias`` int32 ``[N]``. The output is int8 ``[M, N]``: the low 8
bits of the accumulator after the epilogue, as STORE writes it (give ``clip`` to saturate).

Layouts in DRAM (blocked, element = one scratchpad entry):

* input ``[mb, kb, batch, block_in]`` (zero padded; binary: packed bits padded with -1),
* weights group-major: for each (n-tile, k-step), its nonzero ``[block_out, block_in]`` blocks in
  (n, k) order, packed to the weight width (all-zero blocks are left out with
  ``skip_zero_blocks``: block-sparse GEMM),
* bias ``[nb, batch, block_out]`` int32, output ``[mb, nb, batch, block_out]`` int8.

The program tiles M, N, K (:class:`Tiling`, in blocks), loads input and weight tiles on the load
module, accumulates on the compute module (one GEMM per k-step, micro-ops = the nonzero blocks of
the weight tile, outer loop over the tile's rows), runs the epilogue on the ALU (bias ADD, the
binary padding correction, SHR, MAX/MIN) and stores on the store module. With ``double_buffer``
the input/weight and accumulator scratchpads are split in two halves so loads, compute and stores
of consecutive steps overlap; the dependency tokens order every reuse of a half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np

from . import isa
from .config import VtaConfig, load_config
from .errors import ProgramError
from .isa import Alu, AluOp, Buffer, Finish, Gemm, Instruction, Load, Store
from .pack import pack_elements
from .program import Program
from .sim import Driver
from .timing import Counters


@dataclass(frozen=True)
class Tiling:
    """Tile sizes in blocks: ``tm`` input blocks (of ``batch`` rows), ``tn`` output blocks (of
    ``block_out`` columns), ``tk`` reduction blocks (of ``block_in``) per step."""

    tm: int
    tn: int
    tk: int


@dataclass
class GemmProgram:
    """A built GEMM program and what is needed to feed and read it."""

    program: Program
    shape: tuple[int, int, int]  # M, K, N
    tiling: Tiling
    nonzero_blocks: int
    total_blocks: int
    meta: dict[str, int] = field(default_factory=dict)

    def pack_input(self, a: np.ndarray) -> np.ndarray:
        """DRAM image of an input ``[M, K]`` for this program's ``inp`` segment."""
        return _pack_input(self.program.config, a, *self.shape[:2])

    def unpack_output(self, raw: np.ndarray) -> np.ndarray:
        """int8 ``[M, N]`` from the ``out`` segment's bytes."""
        cfg = self.program.config
        m, _, n = self.shape
        mb, nb = -(-m // cfg.batch), -(-n // cfg.block_out)
        blocks = raw.view(np.int8).reshape(mb, nb, cfg.batch, cfg.block_out)
        return blocks.transpose(0, 2, 1, 3).reshape(mb * cfg.batch, nb * cfg.block_out)[:m, :n]

    def run(self, driver: Driver, a: np.ndarray | None = None) -> tuple[np.ndarray, Counters]:
        """Run on a driver (with a new input if given); returns the int8 output and counters."""
        inputs = {} if a is None else {"inp": self.pack_input(a)}
        res = driver.run_program(self.program, inputs)
        return self.unpack_output(res.outputs["out"]), res.counters


def gemm_reference(a: np.ndarray, w: np.ndarray, *, bias: np.ndarray | None = None,
                   shift: int = 0, clip: tuple[int, int] | None = None) -> np.ndarray:
    """numpy reference of the program's result (int32 wraparound, arithmetic shift, low 8 bits)."""
    acc = a.astype(np.int64) @ w.astype(np.int64).T
    if bias is not None:
        acc = acc + bias.astype(np.int64)[None, :]
    acc = acc.astype(np.int32) >> shift
    if clip is not None:
        acc = np.clip(acc, clip[0], clip[1])
    return acc.astype(np.int8)


def _pack_input(cfg: VtaConfig, a: np.ndarray, m: int, k: int) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (m, k):
        raise ProgramError(f"input: expected shape {(m, k)}, got {a.shape}")
    b, bi = cfg.batch, cfg.block_in
    mb, kb = -(-m // b), -(-k // bi)
    pad = -1 if cfg.inp_bits == 1 else 0
    full = np.full((mb * b, kb * bi), pad, dtype=np.int8)
    full[:m, :k] = a
    blocks = full.reshape(mb, b, kb, bi).transpose(0, 2, 1, 3)
    try:
        return pack_elements(blocks, cfg.inp_bits).ravel()
    except ValueError as err:
        raise ProgramError(f"input: {err}") from None


def _ops_estimate(cfg: VtaConfig, mb: int, kb: int, nb: int, t: Tiling) -> float:
    mt, nt, ks = -(-mb // t.tm), -(-nb // t.tn), -(-kb // t.tk)
    load = (mb * kb * nt * cfg.inp_block_bytes + nb * kb * mt * cfg.wgt_block_bytes) \
        / cfg.dma_bytes_per_cycle + 2 * mt * nt * ks * cfg.dma_latency_cycles
    compute = mb * kb * nb + mt * nt * (ks + 1) * cfg.gemm_pipeline_depth
    return max(load, compute) + (t.tm * t.tk * cfg.inp_block_bytes
                                 + t.tn * t.tk * cfg.wgt_block_bytes) / cfg.dma_bytes_per_cycle


def _fits(cfg: VtaConfig, t: Tiling, slots: int, bias: bool) -> str | None:
    need = {"INP": t.tm * t.tk, "WGT": t.tn * t.tk, "ACC": t.tm * t.tn + (t.tn if bias else 0)}
    for name, entries in need.items():
        if entries * slots > cfg.depths[name]:
            return (f"{name} scratchpad: the tiling {t} needs {entries} entries x {slots} "
                    f"buffer(s), the {cfg.name} core has {cfg.depths[name]}")
    if t.tn * t.tk + 4 > cfg.uop_depth:
        return f"UOP scratchpad: {t.tn * t.tk} micro-ops per step exceed {cfg.uop_depth - 4}"
    if max(t.tm, t.tn) >= 1 << isa.LOOP_ITER_BITS:
        return f"loop trip count {max(t.tm, t.tn)} exceeds {(1 << isa.LOOP_ITER_BITS) - 1}"
    return None


def choose_tiling(cfg: VtaConfig, m: int, k: int, n: int, double_buffer: bool = True,
                  bias: bool = False) -> Tiling:
    """Default tiling: the feasible one with the fewest estimated cycles (DMA vs GEMM bound)."""
    mb, kb, nb = -(-m // cfg.batch), -(-k // cfg.block_in), -(-n // cfg.block_out)

    def cands(total: int) -> list[int]:
        return sorted({total, *(1 << e for e in range(total.bit_length()) if 1 << e < total)})

    slots = 2 if double_buffer else 1
    best = None
    for tm, tn, tk in product(cands(mb), cands(nb), cands(kb)):
        t = Tiling(tm, tn, tk)
        if _fits(cfg, t, slots, bias) is None:
            key = (_ops_estimate(cfg, mb, kb, nb, t), -tm * tn * tk, tm, tn, tk)
            best = min(best, key) if best else key
    if best is None:
        raise ProgramError(f"no tiling of a {m}x{k}x{n} GEMM fits the {cfg.name} scratchpads")
    return Tiling(*best[2:])


def build_gemm(config: VtaConfig | str, a: np.ndarray, w: np.ndarray, *,
               bias: np.ndarray | None = None, shift: int = 0,
               clip: tuple[int, int] | None = None, tiling: Tiling | None = None,
               double_buffer: bool = True, skip_zero_blocks: bool = True) -> GemmProgram:
    """Build the tiled program for ``a [M, K]`` times ``w [N, K]`` (see the module docstring).

    Raises
    ------
    ProgramError
        values outside the core's widths, or a tiling that overflows a scratchpad.
    """
    cfg = load_config(config)
    a, w = np.asarray(a), np.asarray(w)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[1]:
        raise ProgramError(f"expected a [M, K] and w [N, K], got {a.shape} and {w.shape}")
    m, k = a.shape
    n = w.shape[0]
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    mb, kb, nb = -(-m // b), -(-k // bi), -(-n // bo)
    slots = 2 if double_buffer else 1
    if not 0 <= shift <= 31:
        raise ProgramError(f"shift: expected 0..31, got {shift}")
    tiling = tiling or choose_tiling(cfg, m, k, n, double_buffer, bias is not None)
    problem = _fits(cfg, tiling, slots, bias is not None)
    if problem:
        raise ProgramError(problem)
    tm, tn, tk = tiling.tm, tiling.tn, tiling.tk
    lay = isa.layout(cfg)
    prog = Program(cfg, meta={"kind": "gemm", "M": m, "K": k, "N": n})

    # weights: blocks [nb, kb, bo, bi], padded with 0 (binary: -1)
    wpad = -1 if cfg.wgt_bits == 1 else 0
    wfull = np.full((nb * bo, kb * bi), wpad, dtype=np.int8)
    lo, hi = {8: (-128, 127), 4: (-8, 7), 1: (-1, 1)}[cfg.wgt_bits]
    if w.size and (w.min() < lo or w.max() > hi):
        raise ProgramError(f"weights: a {cfg.wgt_bits}-bit core takes values in [{lo}, {hi}], "
                           f"got [{w.min()}, {w.max()}]")
    wfull[:n, :k] = w
    wblocks = wfull.reshape(nb, bo, kb, bi).transpose(0, 2, 1, 3)
    nonzero = (wblocks != 0).any(axis=(2, 3)) if skip_zero_blocks else np.ones((nb, kb), bool)
    groups: dict[tuple[int, int], tuple[int, list[tuple[int, int]]]] = {}
    images, offset = [], 0
    for jt, kt in product(range(-(-nb // tn)), range(-(-kb // tk))):
        j0, k0 = jt * tn, kt * tk
        pairs = [(j, kk) for j in range(min(tn, nb - j0)) for kk in range(min(tk, kb - k0))
                 if nonzero[j0 + j, k0 + kk]]
        if pairs:
            groups[jt, kt] = (offset, pairs)
            images.append(np.stack([wblocks[j0 + j, k0 + kk] for j, kk in pairs]))
            offset += len(pairs)
    try:
        wimg = pack_elements(np.concatenate(images) if images else np.zeros((0, bo, bi)),
                             cfg.wgt_bits)
    except ValueError as err:
        raise ProgramError(f"weights: {err}") from None

    inp = prog.add_segment("inp", "inp", _pack_input(cfg, a, m, k))
    wseg = prog.add_segment("wgt", "wgt", wimg)
    bseg = None
    if bias is not None:
        bias = np.asarray(bias)
        if bias.shape != (n,):
            raise ProgramError(f"bias: expected shape {(n,)}, got {bias.shape}")
        bfull = np.zeros(nb * bo, dtype=np.int32)
        bfull[:n] = bias
        bseg = prog.add_segment("bias", "acc", np.ascontiguousarray(
            np.broadcast_to(bfull.reshape(nb, 1, bo), (nb, b, bo))).astype("<i4"))

    # scratchpad bases per slot, and the micro-ops
    ibase = [s * tm * tk for s in range(slots)]
    wbase = [s * tn * tk for s in range(slots)]
    abase = [s * (tm * tn + (tn if bias is not None else 0)) for s in range(slots)]
    bbase = [abase[s] + tm * tn for s in range(slots)]
    uops: list[tuple[int, int, int]] = []
    for s in range(slots):
        uops += [(abase[s], 0, 0), (abase[s], bbase[s] if bias is not None else 0, 0)]
    special = len(uops)
    variants: dict[tuple[int, int, int, int], tuple[int, int]] = {}

    def variant(jt: int, kt: int, sl: int, asl: int) -> tuple[int, int]:
        key = (jt, kt, sl, asl)
        if key not in variants:
            _, pairs = groups[jt, kt]
            variants[key] = (len(uops), len(pairs))
            uops.extend((abase[asl] + j, ibase[sl] + kk, wbase[sl] + p)
                        for p, (j, kk) in enumerate(pairs))
        return variants[key]

    # the schedule of tiles and steps (only k-steps whose weight group is non-empty)
    tiles = list(product(range(-(-mb // tm)), range(-(-nb // tn))))
    steps = [(t, kt) for t, (_, jt) in enumerate(tiles) for kt in range(-(-kb // tk))
             if (jt, kt) in groups]
    for i, (t, kt) in enumerate(steps):
        variant(tiles[t][1], kt, i % slots, t % slots)
    resident = len(uops) <= cfg.uop_depth  # else each GEMM loads its micro-ops first
    uarr = np.array(uops, dtype=np.int64).reshape(-1, 3)
    useg = prog.add_segment("uop", "uop", lay.encode_uops(uarr[:, 0], uarr[:, 1], uarr[:, 2]))
    oseg = prog.add_segment("out", "out", mb * nb * cfg.out_block_bytes)

    u0 = useg.elem(cfg, Buffer.UOP)
    insns: list[Instruction] = [Load(buffer=Buffer.UOP, sram_base=0, dram_base=u0, y_size=1,
                                     x_size=len(uops) if resident else special, x_stride=0)]
    i0e, w0e = inp.elem(cfg, Buffer.INP), wseg.elem(cfg, Buffer.WGT)
    o0e = oseg.elem(cfg, Buffer.OUT)
    n_steps = 0
    for t, (it, jt) in enumerate(tiles):
        a_s = t % slots
        tme, tne = min(tm, mb - it * tm), min(tn, nb - jt * tn)
        first = {"pop_next": t >= slots}
        if bseg is not None:
            insns.append(Load(buffer=Buffer.ACC, sram_base=bbase[a_s],
                              dram_base=bseg.elem(cfg, Buffer.ACC) + jt * tn, y_size=1,
                              x_size=tne, x_stride=0, **first))
            first = {}
        tile_loop = {"iter_out": tme, "iter_in": tne, "dst_factor_out": tne, "dst_factor_in": 1}
        insns.append(Gemm(reset=True, uop_bgn=2 * a_s, uop_end=2 * a_s + 1, **tile_loop, **first))
        for kt in range(-(-kb // tk)):
            if (jt, kt) not in groups:
                continue
            s = n_steps % slots
            tke = min(tk, kb - kt * tk)
            woff, pairs = groups[jt, kt]
            insns.append(Load(buffer=Buffer.INP, sram_base=ibase[s],
                              dram_base=i0e + it * tm * kb + kt * tk, y_size=tme, x_size=tke,
                              x_stride=kb, pop_next=n_steps >= slots))
            insns.append(Load(buffer=Buffer.WGT, sram_base=wbase[s], dram_base=w0e + woff,
                              y_size=1, x_size=len(pairs), x_stride=0, push_next=True))
            bgn, cnt = variant(jt, kt, s, a_s)
            if not resident:
                insns.append(Load(buffer=Buffer.UOP, sram_base=special, dram_base=u0 + bgn,
                                  y_size=1, x_size=cnt, x_stride=0))
                bgn = special
            insns.append(Gemm(uop_bgn=bgn, uop_end=bgn + cnt, iter_out=tme, iter_in=1,
                              dst_factor_out=tne, src_factor_out=tke, pop_prev=True,
                              push_prev=True))
            n_steps += 1
        epilogue: list[tuple[AluOp, int | None]] = []
        if bseg is not None:
            epilogue.append((AluOp.ADD, None))
        if cfg.binary_gemm and kb * bi != k:
            epilogue.append((AluOp.ADD, -(kb * bi - k)))
        if shift:
            epilogue.append((AluOp.SHR, shift))
        if clip is not None:
            epilogue += [(AluOp.MAX, int(clip[0])), (AluOp.MIN, int(clip[1]))]
        for op, imm in epilogue:
            if imm is None:
                insns.append(Alu(alu_op=op, uop_bgn=2 * a_s + 1, uop_end=2 * a_s + 2,
                                 src_factor_in=1, **tile_loop))
            else:
                insns.append(Alu(alu_op=op, use_imm=True, imm=imm, uop_bgn=2 * a_s,
                                 uop_end=2 * a_s + 1, **tile_loop))
        insns[-1] = replace(insns[-1], push_next=True)
        insns.append(Store(buffer=Buffer.OUT, sram_base=abase[a_s],
                           dram_base=o0e + it * tm * nb + jt * tn, y_size=tme, x_size=tne,
                           x_stride=nb, pop_prev=True, push_prev=True))
    for _ in range(min(len(tiles), slots) - 1):  # wait for every store before FINISH
        insns.append(Gemm(uop_bgn=0, uop_end=0, iter_out=1, iter_in=1, pop_next=True))
    insns.append(Finish(pop_next=True))
    prog.instructions = insns
    prog.meta.update({"tm": tm, "tn": tn, "tk": tk, "double_buffer": int(double_buffer)})
    return GemmProgram(prog, (m, k, n), tiling, int(nonzero.sum()), nb * kb,
                       {"uops": len(uops), "uops_resident": int(resident), "steps": n_steps,
                        "padded_k": kb * bi - k})


def gemm_block_ops(gp: GemmProgram) -> int:
    """GEMM block operations the program executes: rows blocks x nonzero weight blocks."""
    cfg = gp.program.config
    return math.ceil(gp.shape[0] / cfg.batch) * gp.nonzero_blocks
