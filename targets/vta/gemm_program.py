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
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from . import isa
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
from .isa import Buffer, Gemm, Instruction, Load, Store
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
    prog = Program(cfg, meta={"kind": "gemm", "M": m, "K": k, "N": n})

    # weights: blocks [nb, kb, bo, bi], padded with 0 (binary: -1), grouped per (n-tile, k-step)
    check_weights(cfg, w)
    wfull = np.full((nb * bo, kb * bi), -1 if cfg.wgt_bits == 1 else 0, dtype=np.int8)
    wfull[:n, :k] = w
    wblocks = wfull.reshape(nb, bo, kb, bi).transpose(0, 2, 1, 3)
    nonzero = (wblocks != 0).any(axis=(2, 3)) if skip_zero_blocks else np.ones((nb, kb), bool)
    groups: dict[tuple[int, int], tuple[int, list[tuple[int, int]]]] = {}
    blocks: list[np.ndarray] = []
    for jt, kt in product(range(-(-nb // tn)), range(-(-kb // tk))):
        j0, k0 = jt * tn, kt * tk
        pairs = [(j, kk) for j in range(min(tn, nb - j0)) for kk in range(min(tk, kb - k0))
                 if nonzero[j0 + j, k0 + kk]]
        if pairs:
            groups[jt, kt] = (len(blocks), pairs)
            blocks += [wblocks[j0 + j, k0 + kk] for j, kk in pairs]
    inp = prog.add_segment("inp", "inp", _pack_input(cfg, a, m, k))
    wseg = prog.add_segment("wgt", "wgt", pack_blocks(cfg, blocks))
    bseg = add_bias_segment(prog, bias, n) if bias is not None else None

    # scratchpad halves and micro-ops (every variant first: the prologue loads them)
    nbias = tn if bias is not None else 0
    ibase = [s * tm * tk for s in range(slots)]
    wbase = [s * tn * tk for s in range(slots)]
    abase = [s * (tm * tn + nbias) for s in range(slots)]
    uops = UopTable(abase, [a + tm * tn if nbias else 0 for a in abase])
    tiles = list(product(range(-(-mb // tm)), range(-(-nb // tn))))

    def variant(jt: int, kt: int, sl: int, asl: int) -> tuple[int, int]:
        return uops.variant((jt, kt, sl, asl), [
            (abase[asl] + j, ibase[sl] + kk, wbase[sl] + p)
            for p, (j, kk) in enumerate(groups[jt, kt][1])])

    steps = [(t, jt, kt) for t, (_, jt) in enumerate(tiles) for kt in range(-(-kb // tk))
             if (jt, kt) in groups]
    for i, (t, jt, kt) in enumerate(steps):
        variant(jt, kt, i % slots, t % slots)
    resident = len(uops) <= cfg.uop_depth  # else each GEMM loads its micro-ops first
    useg = add_uop_segment(prog, uops)
    oseg = prog.add_segment("out", "out", mb * nb * cfg.out_block_bytes)
    u0, i0 = useg.elem(cfg, Buffer.UOP), inp.elem(cfg, Buffer.INP)
    w0, o0 = wseg.elem(cfg, Buffer.WGT), oseg.elem(cfg, Buffer.OUT)

    em = TileEmitter(slots, [Load(buffer=Buffer.UOP, sram_base=0, dram_base=u0, y_size=1,
                                  x_size=len(uops) if resident else uops.special, x_stride=0)])
    ops = epilogue(kb * bi - k if cfg.binary_gemm else 0, bias is not None, shift, clip)
    for it, jt in tiles:
        a_s = em.tile_slot
        tme, tne = min(tm, mb - it * tm), min(tn, nb - jt * tn)
        loop = {"iter_out": tme, "iter_in": tne, "dst_factor_out": tne, "dst_factor_in": 1}
        prefix: list[Instruction] = []
        if bseg is not None:
            prefix.append(Load(buffer=Buffer.ACC, sram_base=abase[a_s] + tm * tn,
                               dram_base=bseg.elem(cfg, Buffer.ACC) + jt * tn, y_size=1,
                               x_size=tne, x_stride=0))
        bgn, end = uops.reset(a_s)
        em.begin_tile([*prefix, Gemm(reset=True, uop_bgn=bgn, uop_end=end, **loop)])
        for kt in range(-(-kb // tk)):
            if (jt, kt) not in groups:
                continue
            s = em.step_slot
            tke = min(tk, kb - kt * tk)
            woff, pairs = groups[jt, kt]
            loads = [Load(buffer=Buffer.INP, sram_base=ibase[s], dram_base=i0 + it * tm * kb
                          + kt * tk, y_size=tme, x_size=tke, x_stride=kb),
                     Load(buffer=Buffer.WGT, sram_base=wbase[s], dram_base=w0 + woff, y_size=1,
                          x_size=len(pairs), x_stride=0)]
            bgn, cnt = variant(jt, kt, s, a_s)
            prep: list[Instruction] = []
            if not resident:
                prep.append(Load(buffer=Buffer.UOP, sram_base=uops.special, dram_base=u0 + bgn,
                                 y_size=1, x_size=cnt, x_stride=0))
                bgn = uops.special
            em.step(loads, [Gemm(uop_bgn=bgn, uop_end=bgn + cnt, iter_out=tme, iter_in=1,
                                 dst_factor_out=tne, src_factor_out=tke)], prep)
        tail = alu_tail(ops, uops, a_s, [loop], [{**loop, "src_factor_in": 1}])
        em.end_tile(tail, [Store(buffer=Buffer.OUT, sram_base=abase[a_s],
                                 dram_base=o0 + it * tm * nb + jt * tn, y_size=tme, x_size=tne,
                                 x_stride=nb)])
    prog.instructions = em.finish()
    prog.meta.update({"tm": tm, "tn": tn, "tk": tk, "double_buffer": int(double_buffer)})
    return GemmProgram(prog, (m, k, n), tiling, int(nonzero.sum()), nb * kb,
                       {"uops": len(uops), "uops_resident": int(resident), "steps": em.steps,
                        "padded_k": kb * bi - k})


def gemm_block_ops(gp: GemmProgram) -> int:
    """GEMM block operations the program executes: rows blocks x nonzero weight blocks."""
    cfg = gp.program.config
    return math.ceil(gp.shape[0] / cfg.batch) * gp.nonzero_blocks
