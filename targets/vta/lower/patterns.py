"""Instruction patterns of one block of a scheduled layer: 2-D DMAs (with padding), the loop
fields of a GEMM or ALU instruction, micro-op rows, and the ALU op of an epilogue block."""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np

from .. import isa
from ..errors import ProgramError
from ..isa import AluOp
from ..layer import LayerError
from .affine import EntryMap, LoopNest, Tile, dram_strides, entry_map
from .intrin import ACC_SCOPE
from .walk import Access, Block

_ALU_OPS = {"Add": AluOp.ADD, "Mul": AluOp.MUL, "Max": AluOp.MAX, "Min": AluOp.MIN,
            "RShift": AluOp.SHR}
PAD_MAX = 15


def find_access(accs: list[Access], scope: str, exclude: str | None = None) -> Access:
    hits = [a for a in accs if a.scope == scope and a.buffer != exclude]
    if len(hits) != 1:
        raise ProgramError(f"expected one {scope} access, got {[a.buffer for a in hits]}")
    return hits[0]


def loop_fields(nest: LoopNest, inst: list[int]) -> dict[str, Any]:
    """iter_out / iter_in and the factor fields of up to two instruction loops (outer first)."""
    out: dict[str, Any] = {"iter_out": 1, "iter_in": 1}
    for level, li in zip(("out", "in"), inst, strict=False):
        out[f"iter_{level}"] = nest.extents[li]
        for name, col in zip(("dst", "src", "wgt"), nest.coefs, strict=False):
            out[f"{name}_factor_{level}"] = int(col[li])
    return out


def uop_rows(nest: LoopNest, uop_loops: list[int], bases: list[int]) -> np.ndarray:
    combos = nest.enumerate(uop_loops)
    cols = [b + combos @ c[uop_loops] for b, c in zip(bases, nest.coefs, strict=False)]
    while len(cols) < 3:
        cols.append(np.zeros(len(combos), np.int64))
    return np.stack(cols, axis=1)


def dma_patterns(block: Block, depth: int, sram: EntryMap, dram: Access, outer: np.ndarray,
         where: str) -> list[dict]:
    """2-D DMA patterns of a copy block at concrete outer loop values (padding where the DRAM
    index leaves the tensor)."""
    ext = [lp.extent for lp in block.loops[depth:]]
    dcoef = dram.coef[:, depth:]
    flat = dram_strides(dram) @ dram.coef
    keep = [i for i in range(len(ext)) if ext[i] > 1 and (sram.coef[i] or flat[i + depth])]
    # x: the innermost loop if contiguous on both sides; y: the next one if its rows follow
    # each other in the scratchpad; every other loop gives one DMA per value
    x = keep[-1] if keep and sram.coef[keep[-1]] == 1 and flat[keep[-1] + depth] == 1 else None
    cand = [i for i in keep if i != x]
    y = cand[-1] if cand and sram.coef[cand[-1]] == (ext[x] if x is not None else 1) else None
    rest = [i for i in keep if i not in (x, y)]
    start0 = dram.base + dram.coef[:, :depth] @ outer[:depth]
    shape = np.array(dram.shape)
    dst = dram_strides(dram)
    out = []
    for combo in product(*[range(ext[i]) for i in rest]):
        inner = np.zeros(len(ext), np.int64)
        inner[rest] = combo
        start = start0 + dcoef @ inner
        pads, sizes, exts, covered = {}, {}, {}, []
        for axis, li in (("x", x), ("y", y)):
            n = exts[axis] = ext[li] if li is not None else 1
            pads[axis], sizes[axis] = (0, 0), n
            if li is None:
                continue
            dims = np.flatnonzero(dcoef[:, li])
            if len(dims) == 1 and dcoef[dims[0], li] == 1:
                d = dims[0]
                covered.append(d)
                p0 = min(max(0, -int(start[d])), n)
                p1 = min(max(0, int(start[d]) + n - int(shape[d])), n - p0)
                start[d] += p0
                pads[axis], sizes[axis] = (p0, p1), n - p0 - p1
        rest_dims = [d for d in range(len(shape)) if d not in covered]
        outside = any(not 0 <= start[d] < shape[d] for d in rest_dims)
        if outside or sizes["x"] == 0 or sizes["y"] == 0:  # the whole copy is padding
            axis = "x" if exts["x"] <= 2 * PAD_MAX else "y"
            other = "y" if axis == "x" else "x"
            n = exts[axis]
            pads[axis], sizes[axis] = (min(n, PAD_MAX), n - min(n, PAD_MAX)), 0
            pads[other], sizes[other] = (0, 0), exts[other]
            start[:] = 0
        for axis in ("x", "y"):
            if max(pads[axis]) > PAD_MAX:
                raise LayerError(f"{where}: padding {max(pads[axis])} of a {axis} edge exceeds "
                                 f"the {PAD_MAX} entries a LOAD can fill")
        if sizes["x"] and sizes["y"] and ((start < 0).any() or (start >= shape).any()):
            raise ProgramError(f"{where}: block {block.name}: a copy leaves {dram.buffer}")
        out.append({
            "sram": int(sram.base + inner @ sram.coef), "dram": int(dst @ start),
            "y_size": sizes["y"], "x_size": sizes["x"],
            "x_stride": int(dst @ dcoef[:, y]) if y is not None else 0,
            "y_pad0": pads["y"][0], "y_pad1": pads["y"][1],
            "x_pad0": pads["x"][0], "x_pad1": pads["x"][1]})
    return out


def alu_plan(block: Block, acc_t: Tile, par_t: Tile | None, depth: int, where: str):
    value = block.body.value
    negate = type(value).__name__ == "Sub"  # x + (-c) is simplified to x - c
    op = AluOp.ADD if negate else _ALU_OPS.get(type(value).__name__)
    if op is None:
        raise ProgramError(f"{where}: block {block.name}: {value} is not an ALU operation")
    dst = entry_map(block.writes[0], acc_t, depth)
    acc_reads = [r for r in block.reads if r.scope == ACC_SCOPE and
                 (par_t is None or r.buffer != par_t.buffer)]
    same = len(acc_reads) == 1 and (lambda m: m.base == dst.base and
                                    np.array_equal(m.coef, dst.coef))(
        entry_map(acc_reads[0], acc_t, depth))
    if not same:
        raise ProgramError(f"{where}: block {block.name}: not in place on the accumulator tile")
    other = value.b
    if negate and type(other).__name__ != "IntImm":
        raise ProgramError(f"{where}: block {block.name}: the ALU cannot subtract a vector")
    if type(other).__name__ == "IntImm":
        imm = -int(other.value) if negate else int(other.value)
        lo, hi = -(1 << (isa.ALU_IMM_BITS - 1)), (1 << (isa.ALU_IMM_BITS - 1)) - 1
        if not lo <= imm <= hi:
            raise LayerError(f"{where}: ALU immediate {imm} outside {lo}..{hi}")
        nest = LoopNest.of([lp.extent for lp in block.loops[depth:]], [dst.coef]).fuse()
        inst, uop = nest.split()
        return op, imm, nest, inst, uop_rows(nest, uop, [dst.base])
    if par_t is None:
        raise ProgramError(f"{where}: block {block.name}: a vector operand without its copy")
    src = entry_map(find_access(block.reads, ACC_SCOPE, exclude=acc_reads[0].buffer), par_t, depth)
    nest = LoopNest.of([lp.extent for lp in block.loops[depth:]], [dst.coef, src.coef]).fuse()
    inst, uop = nest.split()
    return op, None, nest, inst, uop_rows(nest, uop, [dst.base, src.base])
