"""Codegen: a scheduled layer PrimFunc (see :mod:`.schedule`) -> a VTA :class:`Program`.

The blocks of the schedule (:func:`.walk.walk`) are classified by what they write: the input and
weight copies (``local.inp_buffer`` / ``local.wgt_buffer``: LOADs on the load module), the vector
copy and the ALU blocks (``local.acc_buffer``: LOAD ACC and ALU on the compute module), the
tensorized reset and GEMM (extern calls), and the output copy (STOREs). The loops around a block
are split at the tile loop that carries ``vta.virtual_threads`` (tile loops, then the reduction
step loop); the tile and step loops are enumerated here with concrete values, the loops inside
a block become instruction loops (the two largest, after fusing contiguous ones) and micro-ops
(the rest). Copies become 2-D DMAs; an input copy that reads outside ``data`` pads (zero fill, or
the minimum with ``pad_min``).

Tokens (``V`` virtual threads: scratchpad halves): step ``s`` loads into half ``s % V`` (its first
load pops compute->load once ``s >= V``, its last pushes load->compute; the GEMM pops and pushes
back); tile ``t`` accumulates in half ``t % V`` (its first compute instruction pops store->compute
once ``t >= V``, its last pushes compute->store; its first store pops, its last pushes back).

Block sparsity: a weight block that is all zero gets no micro-op and is not in the weight image
(each step's weights are one contiguous group of nonzero blocks); a step without nonzero blocks
is skipped. A weight group already in its half is not loaded again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import product

import numpy as np

from .. import isa
from ..config import VtaConfig
from ..errors import IsaError, ProgramError
from ..isa import Alu, Buffer, Finish, Gemm, Instruction, Load, Store
from ..layer import LayerError
from ..pack import pack_elements
from ..program import Program
from .affine import ITER_MAX, EntryMap, LoopNest, entry_map, tile_of
from .intrin import ACC_SCOPE, GEMM_CALL, INP_SCOPE, RESET_CALL, WGT_SCOPE
from .patterns import alu_plan, dma_patterns, find_access, loop_fields, uop_rows
from .schedule import VTHREAD_ATTR
from .walk import Block


@dataclass
class CodegenInput:
    """What the codegen needs besides the schedule: constants and names for errors."""

    where: str                # "conv 'name' (knobs ...)" for error messages
    weight_blocks: np.ndarray  # (Ob, Cb, KH, KW, bo, bi) int values
    par: np.ndarray | None     # (P, Ob, b, bo) int32
    pad_min: bool
    input_nbytes: int
    output_nbytes: int


def _classify(blocks: list[Block]) -> dict[str, list[Block]]:
    kinds: dict[str, list[Block]] = {k: [] for k in ("reset", "gemm", "inp", "wgt", "par",
                                                     "alu", "store")}
    for b in blocks:
        scope = b.writes[0].scope
        if b.extern == RESET_CALL:
            kinds["reset"].append(b)
        elif b.extern == GEMM_CALL:
            kinds["gemm"].append(b)
        elif scope == INP_SCOPE:
            kinds["inp"].append(b)
        elif scope == WGT_SCOPE:
            kinds["wgt"].append(b)
        elif scope == ACC_SCOPE and any(r.scope == "global" for r in b.reads):
            kinds["par"].append(b)
        elif scope == ACC_SCOPE:
            kinds["alu"].append(b)
        elif scope == "global":
            kinds["store"].append(b)
        else:
            raise ProgramError(f"block {b.name}: writes scope {scope!r}, not a VTA scratchpad")
    for k in ("reset", "gemm", "inp", "wgt", "store"):
        if len(kinds[k]) != 1:
            raise ProgramError(f"expected one {k} block in the schedule, got "
                               f"{[b.name for b in kinds[k]]}")
    return kinds


class _Emitter:
    """Instruction list with the token protocol and the micro-op variants."""

    def __init__(self, cfg: VtaConfig, where: str) -> None:
        self.cfg, self.where = cfg, where
        self.insns: list[Instruction] = []
        self.uops: list[np.ndarray] = []  # (n, 3) per variant
        self.variants: dict[tuple, tuple[int, int]] = {}
        self.uop_total = 0
        self.uop_refs: list[tuple[int, int]] = []  # (insn index, variant offset)

    def variant(self, key: tuple, make) -> tuple[int, int]:
        if key not in self.variants:
            rows = make()
            self.variants[key] = (self.uop_total, len(rows))
            self.uops.append(rows)
            self.uop_total += len(rows)
        return self.variants[key]

    def add(self, insn: Instruction) -> int:
        self.insns.append(insn)
        return len(self.insns) - 1

    def flag(self, idx: int, **flags: bool) -> None:
        self.insns[idx] = replace(self.insns[idx], **flags)


def _check_fit(cfg: VtaConfig, where: str, need: dict[str, int]) -> None:
    for buf, entries in need.items():
        if entries > cfg.depths[buf]:
            raise LayerError(f"{where}: the {buf} scratchpad overflows: the schedule needs "
                             f"{entries} entries, the {cfg.name} core has {cfg.depths[buf]}")


def generate(cfg: VtaConfig, blocks: list[Block], inp: CodegenInput) -> Program:
    """Emit the program of a scheduled layer (see the module docstring); the virtual threads
    are the value of the tile loop's ``vta.virtual_threads`` annotation."""
    k = _classify(blocks)
    reset, gemm, ild, wld, store = (k[n][0] for n in ("reset", "gemm", "inp", "wgt", "store"))
    pld = k["par"][0] if k["par"] else None
    tdepth = 1 + next((i for i, lp in enumerate(reset.loops) if VTHREAD_ATTR in lp.annotations),
                      -1)
    if tdepth == 0:
        raise ProgramError(f"no tile loop carries {VTHREAD_ATTR}")
    sdepth = tdepth + 1
    slots = int(getattr(reset.loops[tdepth - 1].annotations[VTHREAD_ATTR], "value",
                        reset.loops[tdepth - 1].annotations[VTHREAD_ATTR]))
    if slots not in (1, 2):
        raise LayerError(f"{inp.where}: {VTHREAD_ATTR} must be 1 or 2, got {slots}")
    tile_loops, step_loop = reset.loops[:tdepth], gemm.loops[tdepth]
    acc_t = tile_of(reset.writes[0], reset.loops, tdepth)
    inp_t = tile_of(ild.writes[0], ild.loops, sdepth)
    wgt_t = tile_of(wld.writes[0], wld.loops, sdepth)
    par_t = tile_of(pld.writes[0], pld.loops, tdepth) if pld else None
    acc_n, par_n = acc_t.entries, par_t.entries if par_t else 0
    _check_fit(cfg, inp.where, {"INP": slots * inp_t.entries, "WGT": slots * wgt_t.entries,
                                "ACC": slots * (acc_n + par_n)})
    ibase = [s * inp_t.entries for s in range(slots)]
    wbase = [s * wgt_t.entries for s in range(slots)]
    abase = [s * (acc_n + par_n) for s in range(slots)]
    pbase = [abase[s] + acc_n for s in range(slots)]

    # GEMM operands and loops
    g_dst = entry_map(find_access(gemm.writes, ACC_SCOPE), acc_t, sdepth)
    g_src = entry_map(find_access(gemm.reads, INP_SCOPE), inp_t, sdepth)
    g_wgt = entry_map(find_access(gemm.reads, WGT_SCOPE), wgt_t, sdepth)
    g_nest = LoopNest.of([lp.extent for lp in gemm.loops[sdepth:]],
                         [g_dst.coef, g_src.coef, g_wgt.coef]).fuse()
    g_inst, g_uop = g_nest.split(allowed=g_nest.coefs[2] == 0)
    g_rows = uop_rows(g_nest, g_uop, [g_dst.base, g_src.base, g_wgt.base])
    r_dst = entry_map(reset.writes[0], acc_t, tdepth)
    r_nest = LoopNest.of([lp.extent for lp in reset.loops[tdepth:]], [r_dst.coef]).fuse()
    r_inst, r_uop = r_nest.split()
    r_rows = uop_rows(r_nest, r_uop, [r_dst.base])

    # weight groups (one per tile x step), in program order
    wshape = wgt_t.extents[:4]
    wb = inp.weight_blocks
    nonzero = (wb != 0).any(axis=(4, 5))
    tiles = [np.array(v, np.int64) for v in product(*[range(lp.extent) for lp in tile_loops])]
    groups: dict[tuple[int, ...], tuple[int, np.ndarray]] = {}
    images, woff = [], 0
    for tv in tiles:
        for sv in range(step_loop.extent):
            origin = tuple(int(v) for v in wgt_t.origin(np.append(tv, sv))[:4])
            if origin in groups:
                continue
            sl = tuple(slice(o, o + e) for o, e in zip(origin, wshape, strict=True))
            mask = nonzero[sl].ravel()
            index = np.full(mask.size, -1, np.int64)
            index[mask] = np.arange(int(mask.sum()))
            groups[origin] = (woff, index)
            if mask.any():
                images.append(wb[sl].reshape(-1, *wb.shape[4:])[mask])
                woff += int(mask.sum())
    try:
        wimg = pack_elements(np.concatenate(images) if images else
                             np.zeros((0, *wb.shape[4:]), np.int8), cfg.wgt_bits)
    except ValueError as err:
        raise LayerError(f"{inp.where}: weights: {err}") from None

    prog = Program(cfg)
    seg_in = prog.add_segment("inp", "inp", np.zeros(inp.input_nbytes, np.uint8))
    seg_w = prog.add_segment("wgt", "wgt", wimg) if wimg.size else None
    seg_p = prog.add_segment("par", "acc", inp.par.astype("<i4")) if inp.par is not None \
        else None
    seg_o = prog.add_segment("out", "out", inp.output_nbytes)
    u0 = prog.dram_bytes // cfg.uop_bytes  # the uop segment is added last, here
    em = _Emitter(cfg, inp.where)
    wslot: list[tuple | None] = [None] * slots
    pslot: list[tuple | None] = [None] * slots
    step = 0
    alus = [alu_plan(b, acc_t, par_t, tdepth, inp.where) for b in k["alu"]]

    def compute(insn: Gemm | Alu, key: tuple, make) -> int:
        off, cnt = em.variant(key, make)
        i = em.add(replace(insn, uop_bgn=0, uop_end=cnt))
        em.uop_refs.append((i, off))
        return i

    for t, tv in enumerate(tiles):
        a = t % slots
        first = len(em.insns)
        if pld is not None and par_t is not None and seg_p is not None:
            porigin = tuple(par_t.origin(tv))
            if pslot[a] != porigin:
                smap = entry_map(pld.writes[0], par_t, tdepth)
                smap = EntryMap(smap.base + pbase[a], smap.coef)
                for d in dma_patterns(pld, tdepth, smap, pld.reads[0], tv, inp.where):
                    em.add(Load(buffer=Buffer.ACC, sram_base=d["sram"],
                                dram_base=seg_p.elem(cfg, Buffer.ACC) + d["dram"],
                                y_size=d["y_size"], x_size=d["x_size"],
                                x_stride=d["x_stride"]))
                pslot[a] = porigin
        compute(Gemm(reset=True, uop_bgn=0, uop_end=0, **loop_fields(r_nest, r_inst)),
                ("reset", a), lambda a=a: r_rows + [abase[a], 0, 0])
        for sv in range(step_loop.extent):
            outer = np.append(tv, sv)
            origin = tuple(int(v) for v in wgt_t.origin(outer)[:4])
            gw, index = groups[origin]
            if not (index >= 0).any():
                continue
            s = step % slots
            loads = []
            imap = entry_map(ild.writes[0], inp_t, sdepth)
            imap = EntryMap(imap.base + ibase[s], imap.coef)
            src = find_access(ild.reads, "global")
            for d in dma_patterns(ild, sdepth, imap, src, outer, inp.where):
                loads.append(Load(buffer=Buffer.INP, sram_base=d["sram"],
                                  dram_base=seg_in.elem(cfg, Buffer.INP) + d["dram"],
                                  y_size=d["y_size"], x_size=d["x_size"],
                                  x_stride=d["x_stride"], y_pad0=d["y_pad0"],
                                  y_pad1=d["y_pad1"], x_pad0=d["x_pad0"], x_pad1=d["x_pad1"],
                                  pad_min=inp.pad_min))
            if wslot[s] != origin:
                assert seg_w is not None
                nnz = int((index >= 0).sum())
                loads.append(Load(buffer=Buffer.WGT, sram_base=wbase[s],
                                  dram_base=seg_w.elem(cfg, Buffer.WGT) + gw, y_size=1,
                                  x_size=nnz, x_stride=0))
                wslot[s] = origin
            loads[0] = replace(loads[0], pop_next=step >= slots)
            loads[-1] = replace(loads[-1], push_next=True)
            for ld in loads:
                em.add(ld)

            def make(a=a, s=s, index=index):
                rows = g_rows.copy()
                rows[:, 2] = index[rows[:, 2]]
                rows = rows[rows[:, 2] >= 0]
                return rows + [abase[a], ibase[s], wbase[s]]

            compute(Gemm(uop_bgn=0, uop_end=0, pop_prev=True, push_prev=True,
                         **loop_fields(g_nest, g_inst)), ("gemm", a, s, origin), make)
            step += 1
        for n, (op, imm, nest, inst, rows) in enumerate(alus):
            compute(Alu(alu_op=op, use_imm=imm is not None, imm=imm or 0, uop_bgn=0, uop_end=0,
                        **loop_fields(nest, inst)), ("alu", n, a),
                    lambda a=a, rows=rows: rows + [abase[a], pbase[a], 0])
        em.flag(first, pop_next=t >= slots)
        em.flag(len(em.insns) - 1, push_next=True)
        o_read = find_access(store.reads, ACC_SCOPE)
        smap = entry_map(o_read, acc_t, tdepth)
        smap = EntryMap(smap.base + abase[a], smap.coef)
        sts = [Store(buffer=Buffer.OUT, sram_base=d["sram"],
                     dram_base=seg_o.elem(cfg, Buffer.OUT) + d["dram"], y_size=d["y_size"],
                     x_size=d["x_size"], x_stride=d["x_stride"])
               for d in dma_patterns(store, tdepth, smap, store.writes[0], tv, inp.where)]
        sts[0] = replace(sts[0], pop_prev=True)
        sts[-1] = replace(sts[-1], push_prev=True)
        for st in sts:
            em.add(st)
    for _ in range(min(len(tiles), slots) - 1):
        em.add(Gemm(uop_bgn=0, uop_end=0, iter_out=1, iter_in=1, pop_next=True))
    em.add(Finish(pop_next=True))
    _place_uops(prog, em, u0, inp.where)
    try:
        isa.encode_program(prog.instructions, isa.layout(cfg))
    except IsaError as err:
        raise LayerError(f"{inp.where}: {err}") from None
    prog.meta.update({"uops": em.uop_total, "weight_blocks": int(woff),
                      "dense_weight_blocks": int(np.prod(nonzero.shape)), "tiles": len(tiles),
                      "steps": step})
    return prog


def _place_uops(prog: Program, em: _Emitter, u0: int, where: str) -> None:
    cfg = prog.config
    rows = np.concatenate(em.uops) if em.uops else np.zeros((0, 3), np.int64)
    lay = isa.layout(cfg)
    try:
        words = lay.encode_uops(rows[:, 0], rows[:, 1], rows[:, 2])
    except IsaError as err:
        raise LayerError(f"{where}: micro-op {err}") from None
    prog.add_segment("uop", "uop", words if words.size else np.zeros(1, np.uint32))
    resident = em.uop_total <= cfg.uop_depth
    biggest = max((len(r) for r in em.uops), default=0)
    if biggest > cfg.uop_depth:
        raise LayerError(f"{where}: the UOP scratchpad overflows: one instruction needs "
                         f"{biggest} micro-ops, the {cfg.name} core holds {cfg.uop_depth}")
    out: list[Instruction] = []
    refs = dict(em.uop_refs)
    if resident and em.uop_total:
        out.append(Load(buffer=Buffer.UOP, sram_base=0, dram_base=u0, y_size=1,
                        x_size=em.uop_total, x_stride=0))
    for i, insn in enumerate(em.insns):
        if i in refs:
            assert isinstance(insn, Gemm | Alu)
            off = refs[i]
            n = insn.uop_end
            if resident:
                insn = replace(insn, uop_bgn=off, uop_end=off + n)
            else:
                out.append(Load(buffer=Buffer.UOP, sram_base=0, dram_base=u0 + off, y_size=1,
                                x_size=n, x_stride=0))
        out.append(insn)
    prog.instructions = out
    if any(i.iter_out > ITER_MAX or i.iter_in > ITER_MAX for i in out if isinstance(i, Gemm | Alu)):
        raise LayerError(f"{where}: a loop exceeds {ITER_MAX} iterations")
