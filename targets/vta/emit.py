"""Emission of tiled programs with the dependency-token protocol (shared by the builders).

A tiled program is a sequence of *tiles* (one accumulator block each) made of *steps* (one
input/weight load pair and the GEMMs that consume it). With ``slots`` buffer halves (2: double
buffering, 1: serialized):

* step ``s`` loads into half ``s % slots``; its first load pops a compute->load token when
  ``s >= slots`` (the GEMM of step ``s - slots`` released that half), its last load pushes a
  load->compute token; its first GEMM pops that token, its last GEMM pushes compute->load;
* tile ``t`` accumulates into half ``t % slots``; its first compute instruction pops a
  store->compute token when ``t >= slots`` (the stores of tile ``t - slots`` are done), its last
  compute instruction pushes compute->store; its first store pops it, its last store pushes
  store->compute;
* FINISH (after no-op GEMMs as needed) pops the store->compute tokens nobody popped, so the
  program ends after its last store.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from . import isa
from .config import VtaConfig
from .errors import ProgramError
from .isa import Alu, AluOp, Finish, Gemm, Instruction, Load, Module, Store
from .pack import pack_elements
from .program import Program, Segment


class TileEmitter:
    """Collects instructions tile by tile and sets their token flags (see the module docstring)."""

    def __init__(self, slots: int, prologue: list[Instruction] | None = None) -> None:
        if slots not in (1, 2):
            raise ValueError(f"slots must be 1 or 2, got {slots}")
        self.slots = slots
        self.insns: list[Instruction] = list(prologue or [])
        self.tiles = 0
        self.steps = 0
        self._tile_compute: list[int] | None = None

    @property
    def step_slot(self) -> int:
        """Buffer half of the next step's input and weights."""
        return self.steps % self.slots

    @property
    def tile_slot(self) -> int:
        """Accumulator half of the current (or next) tile."""
        return self.tiles % self.slots

    def _compute(self, insns: list[Instruction]) -> None:
        assert self._tile_compute is not None, "compute outside a tile"
        for insn in insns:
            if insn.module != Module.COMPUTE:
                raise ValueError(f"{insn.opcode.name} is not a compute-module instruction")
            self._tile_compute.append(len(self.insns))
            self.insns.append(insn)

    def begin_tile(self, prefix: list[Instruction]) -> None:
        """Start a tile with its first compute instructions (accumulator reset, bias load)."""
        assert self._tile_compute is None, "begin_tile twice"
        self._tile_compute = []
        self._compute(prefix)

    def step(self, loads: list[Load], gemms: list[Instruction],
             prep: list[Instruction] | None = None) -> None:
        """One step: loads on the load module, then ``prep`` (e.g. LOAD UOP) and ``gemms`` on
        the compute module."""
        if not loads or not gemms:
            raise ValueError("a step needs at least one load and one GEMM")
        loads = list(loads)
        loads[0] = replace(loads[0], pop_next=self.steps >= self.slots)
        loads[-1] = replace(loads[-1], push_next=True)
        gemms = list(gemms)
        gemms[0] = replace(gemms[0], pop_prev=True)
        gemms[-1] = replace(gemms[-1], push_prev=True)
        self.insns.extend(loads)
        self._compute([*(prep or []), *gemms])
        self.steps += 1

    def end_tile(self, tail: list[Instruction], stores: list[Store]) -> None:
        """Finish a tile: ``tail`` compute instructions (the ALU epilogue), then the stores."""
        assert self._tile_compute is not None, "end_tile without begin_tile"
        self._compute(tail)
        if not self._tile_compute or not stores:
            raise ValueError("a tile needs compute instructions and at least one store")
        first, last = self._tile_compute[0], self._tile_compute[-1]
        if self.tiles >= self.slots:
            self.insns[first] = replace(self.insns[first], pop_next=True)
        self.insns[last] = replace(self.insns[last], push_next=True)
        stores = list(stores)
        stores[0] = replace(stores[0], pop_prev=True)
        stores[-1] = replace(stores[-1], push_prev=True)
        self.insns.extend(stores)
        self.tiles += 1
        self._tile_compute = None

    def finish(self) -> list[Instruction]:
        """Append the closing token pops and FINISH; returns the instruction list."""
        assert self._tile_compute is None, "finish inside a tile"
        pending = min(self.tiles, self.slots)
        for _ in range(pending - 1):
            self.insns.append(Gemm(uop_bgn=0, uop_end=0, iter_out=1, iter_in=1, pop_next=True))
        self.insns.append(Finish(pop_next=pending > 0))
        return self.insns


class UopTable:
    """Micro-ops of a program: per accumulator half a *reset* uop (``dst`` = the half's base,
    also used by immediate ALU ops) and a *bias* uop (``src`` = the half's bias entries), then
    the GEMM variants, added once per distinct key."""

    def __init__(self, acc_bases: list[int], bias_bases: list[int]) -> None:
        self.rows: list[tuple[int, int, int]] = []
        for a, b in zip(acc_bases, bias_bases, strict=True):
            self.rows += [(a, 0, 0), (a, b, 0)]
        self.special = len(self.rows)
        self._variants: dict[object, tuple[int, int]] = {}

    def reset(self, slot: int) -> tuple[int, int]:
        return 2 * slot, 2 * slot + 1

    def bias(self, slot: int) -> tuple[int, int]:
        return 2 * slot + 1, 2 * slot + 2

    def variant(self, key: object, rows: list[tuple[int, int, int]]) -> tuple[int, int]:
        """(begin, count) of a GEMM uop list, appended the first time ``key`` is seen."""
        if key not in self._variants:
            self._variants[key] = (len(self.rows), len(rows))
            self.rows.extend(rows)
        return self._variants[key]

    def __len__(self) -> int:
        return len(self.rows)


def epilogue(cfg_binary_pad: int, bias: bool, shift: int,
             clip: tuple[int, int] | None) -> list[tuple[AluOp, int | None]]:
    """ALU ops after the accumulation: (op, immediate or None for the bias ADD from ``src``).

    ``cfg_binary_pad`` is the XNOR-popcount correction: padded positions of a binary core add +1
    each (both operands decode to -1), so it is subtracted.
    """
    ops: list[tuple[AluOp, int | None]] = []
    if bias:
        ops.append((AluOp.ADD, None))
    if cfg_binary_pad:
        ops.append((AluOp.ADD, -cfg_binary_pad))
    if shift:
        ops.append((AluOp.SHR, shift))
    if clip is not None:
        ops += [(AluOp.MAX, int(clip[0])), (AluOp.MIN, int(clip[1]))]
    return ops


def alu_tail(ops: list[tuple[AluOp, int | None]], uops: UopTable, slot: int,
             loops: list[dict[str, Any]], bias_loops: list[dict[str, Any]]) -> list[Instruction]:
    """ALU instructions for ``ops`` over an accumulator tile; ``loops`` are the loop fields of
    each instruction covering the tile (immediate ops), ``bias_loops`` those of the bias ADD."""
    out: list[Instruction] = []
    for op, imm in ops:
        if imm is None:
            bgn, end = uops.bias(slot)
            out += [Alu(alu_op=op, uop_bgn=bgn, uop_end=end, **lp) for lp in bias_loops]
        else:
            bgn, end = uops.reset(slot)
            out += [Alu(alu_op=op, use_imm=True, imm=imm, uop_bgn=bgn, uop_end=end, **lp)
                    for lp in loops]
    return out


def check_weights(cfg: VtaConfig, w: np.ndarray) -> None:
    """Weights must lie in the core's weight width (int8, int4, or +-1)."""
    lo, hi = {8: (-128, 127), 4: (-8, 7), 1: (-1, 1)}[cfg.wgt_bits]
    if w.size and (w.min() < lo or w.max() > hi):
        raise ProgramError(f"weights: a {cfg.wgt_bits}-bit core takes values in [{lo}, {hi}], "
                           f"got [{w.min()}, {w.max()}]")
    if cfg.wgt_bits == 1 and w.size and (w == 0).any():
        raise ProgramError("weights: a binary core takes -1 or +1, got 0")


def pack_blocks(cfg: VtaConfig, blocks: list[np.ndarray]) -> np.ndarray:
    """Weight blocks ``[block_out, block_in]`` packed to the weight width, back to back."""
    stack = np.stack(blocks) if blocks else np.zeros((0, cfg.block_out, cfg.block_in), np.int8)
    try:
        return pack_elements(stack, cfg.wgt_bits).ravel()
    except ValueError as err:
        raise ProgramError(f"weights: {err}") from None


def add_bias_segment(prog: Program, bias: np.ndarray, n: int) -> Segment:
    """Segment ``bias`` of accumulator entries ``[nb, batch, block_out]`` (int32, padded)."""
    cfg = prog.config
    bias = np.asarray(bias)
    if bias.shape != (n,):
        raise ProgramError(f"bias: expected shape {(n,)}, got {bias.shape}")
    nb = -(-n // cfg.block_out)
    full = np.zeros(nb * cfg.block_out, dtype=np.int64)
    full[:n] = bias
    if full.min() < -(1 << 31) or full.max() >= 1 << 31:
        raise ProgramError("bias: values must fit int32")
    img = np.broadcast_to(full.reshape(nb, 1, cfg.block_out), (nb, cfg.batch, cfg.block_out))
    return prog.add_segment("bias", "acc", np.ascontiguousarray(img).astype("<i4"))


def add_uop_segment(prog: Program, uops: UopTable) -> Segment:
    """Segment ``uop`` holding every micro-op of the table, encoded."""
    lay = isa.layout(prog.config)
    arr = np.array(uops.rows, dtype=np.int64).reshape(-1, 3)
    return prog.add_segment("uop", "uop", lay.encode_uops(arr[:, 0], arr[:, 1], arr[:, 2]))
