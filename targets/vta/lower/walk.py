"""Reading a scheduled layer PrimFunc: its loop nest and blocks with affine buffer accesses.

The codegen needs, for every block of the schedule, the loops around it and each buffer access
as an affine function of those loops. :func:`walk` visits the TIR (the IR node fields directly:
``For``, ``SeqStmt``, ``SBlockRealize``) and composes each access index (affine in the block's
iterator variables, ``tvm.sym.detect_linear_equation``) with the iterator bindings (affine in the
loop variables) into integer coefficients per loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm.sym as sym
from tvm import tirx

from ..errors import ProgramError
from .intrin import GEMM_CALL, RESET_CALL


@dataclass(frozen=True)
class Loop:
    name: str
    var: tirx.Var
    extent: int
    annotations: dict


@dataclass
class Access:
    """``buffer[base + coef @ loop_values]`` over the enclosing loops (coef: (ndim, nloops))."""

    buffer: str
    scope: str
    shape: tuple[int, ...]
    base: np.ndarray
    coef: np.ndarray
    extent: tuple[int, ...]

    def at(self, values: np.ndarray) -> np.ndarray:
        return self.base + self.coef @ values


@dataclass
class Block:
    """A block of the schedule: its loops (outermost first), accesses and body."""

    name: str
    loops: list[Loop]
    reads: list[Access]
    writes: list[Access]
    body: Any
    extern: str | None = None  # vta.gemm / vta.gemm_reset for tensorized blocks
    extern_args: list = field(default_factory=list)


def _const(e) -> int:
    if isinstance(e, int):
        return e
    if isinstance(e, tirx.IntImm):
        return int(e.value)
    raise ProgramError(f"expected a constant, got {e}")


def _linear(expr, vars_: list[tirx.Var], what: str) -> tuple[np.ndarray, int]:
    if not vars_:
        return np.zeros(0, np.int64), _const(sym.Analyzer().simplify(expr))
    coeffs = sym.detect_linear_equation(expr, vars_)
    if len(coeffs) != len(vars_) + 1:
        raise ProgramError(f"{what}: index {expr} is not affine in {[v.name for v in vars_]}")
    return np.array([_const(c) for c in coeffs[:-1]], np.int64), _const(coeffs[-1])


def _scope(buf) -> str:
    scope = buf.scope
    return scope() if callable(scope) else str(scope)


def _accesses(regions, block, loops: list[Loop], values, where: str) -> list[Access]:
    """Accesses of a block's read/write regions as affine functions of the loop variables."""
    bvars = [iv.var for iv in block.iter_vars]
    lvars = [lp.var for lp in loops]
    bind = [_linear(v, lvars, f"{where}: binding of {iv.var.name}")
            for iv, v in zip(block.iter_vars, values, strict=True)]
    bcoef = np.array([c for c, _ in bind], np.int64).reshape(len(bvars), len(lvars))
    bbase = np.array([b for _, b in bind], np.int64)
    bcoef[:, [lp.extent == 1 for lp in loops]] = 0  # a unit loop's variable is always 0
    out = []
    for reg in regions:
        buf = reg.source
        rows, bases, extents = [], [], []
        for rng in reg.region:
            c, b = _linear(rng.min, bvars, f"{where}: {buf.name}")
            rows.append(c @ bcoef if bvars else np.zeros(len(lvars), np.int64))
            bases.append(b + (int(c @ bbase) if bvars else 0))
            extents.append(_const(rng.extent))
        out.append(Access(buf.name, _scope(buf), tuple(_const(s) for s in buf.shape),
                          np.array(bases, np.int64),
                          np.array(rows, np.int64).reshape(len(rows), len(lvars)),
                          tuple(extents)))
    return out


def _extern(stmt) -> tuple[str | None, list]:
    if type(stmt).__name__ == "Evaluate":
        call = stmt.value
        if type(call).__name__ == "Call" and getattr(call.op, "name", "") == "tirx.call_extern":
            name = call.args[0].value
            if name in (GEMM_CALL, RESET_CALL):
                return name, list(call.args[1:])
    return None, []


def walk(func: tirx.PrimFunc) -> list[Block]:
    """The blocks of a scheduled PrimFunc in program order (the root block excluded)."""
    blocks: list[Block] = []

    def visit(stmt, loops: list[Loop]) -> None:
        kind = type(stmt).__name__
        if kind == "For":
            loop = Loop(stmt.loop_var.name, stmt.loop_var, _const(stmt.extent),
                        dict(stmt.annotations))
            visit(stmt.body, [*loops, loop])
        elif kind == "SeqStmt":
            for s in stmt.seq:
                visit(s, loops)
        elif kind == "SBlockRealize":
            blk = stmt.block
            if not blk.iter_vars and blk.name_hint == "root":
                visit(blk.body, loops)
                return
            where = f"block {blk.name_hint}"
            ext, args = _extern(blk.body)
            blocks.append(Block(blk.name_hint, loops,
                                _accesses(blk.reads, blk, loops, stmt.iter_values, where),
                                _accesses(blk.writes, blk, loops, stmt.iter_values, where),
                                blk.body, ext, args))
        elif hasattr(stmt, "body"):
            visit(stmt.body, loops)
        else:
            raise ProgramError(f"unexpected {kind} in the scheduled layer")

    visit(func.body, [])
    return blocks
