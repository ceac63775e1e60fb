"""Race detection: accesses of two modules to the same memory must be ordered by tokens.

The load, compute and store modules run concurrently; the only ordering between them is the
dependency tokens (a pop waits for the matching push, which happens when the pusher finishes).
Two instructions on different modules that touch overlapping scratchpad entries or DRAM bytes,
at least one of them writing, race unless one *happens before* the other. Happens-before is
computed with vector clocks over program order within a module and the FIFO-matched token edges
(:attr:`Schedule.sources`). Footprints are conservative ``[lo, hi)`` ranges per memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SimError
from .isa import Instruction
from .timing import MODULE_NAMES, Schedule


class RaceError(SimError):
    """Two modules access the same memory without a token ordering them."""


@dataclass(frozen=True)
class Access:
    """One memory range an instruction reads or writes (``memory``: INP, WGT, ACC, UOP, DRAM)."""

    insn: int
    memory: str
    lo: int
    hi: int
    write: bool


def check_races(insns: list[Instruction], sched: Schedule, accesses: list[Access]) -> None:
    """Raise :class:`RaceError` naming both instructions of the first unordered conflict."""
    n = len(insns)
    if not accesses:
        return
    module = np.array([int(i.module) for i in insns], dtype=np.int64)
    pos = np.zeros(n, dtype=np.int64)
    counts = [0, 0, 0]
    for i, m in enumerate(module):
        pos[i] = counts[m]
        counts[m] += 1
    # clock[i, m]: highest position on module m finished before i starts (-1: none)
    clock = np.full((n, 3), -1, dtype=np.int64)
    done = np.full((n, 3), -1, dtype=np.int64)
    last = [-1, -1, -1]
    for i in (int(k) for k in sched.order()):
        m = module[i]
        preds = [last[m]] if last[m] >= 0 else []
        preds += list(sched.sources[i]) if sched.sources else []
        if preds:
            clock[i] = done[preds].max(axis=0)
        done[i] = clock[i]
        done[i, m] = pos[i]
        last[m] = i

    by_memory: dict[str, list[Access]] = {}
    for acc in accesses:
        if acc.hi > acc.lo:
            by_memory.setdefault(acc.memory, []).append(acc)
    found: list[tuple[int, int, Access, Access]] = []
    for accs in by_memory.values():
        idx = np.array([a.insn for a in accs])
        lo = np.array([a.lo for a in accs])
        hi = np.array([a.hi for a in accs])
        wr = np.array([a.write for a in accs])
        mods = module[idx]
        if np.unique(mods).size < 2:
            continue
        for k in np.flatnonzero(wr):
            i = idx[k]
            hit = (lo < hi[k]) & (hi > lo[k]) & (mods != module[i])
            if not hit.any():
                continue
            j = idx[hit]
            ordered = (clock[j, module[i]] >= pos[i]) | (clock[i, module[j]] >= pos[j])
            if not ordered.all():
                first = int(np.flatnonzero(~ordered)[0])
                other = accs[int(np.flatnonzero(hit)[first])]
                found.append((min(i, other.insn), max(i, other.insn), accs[k], other))
    if found:
        _, _, w, o = min(found, key=lambda f: (f[0], f[1]))
        unit = "bytes" if w.memory == "DRAM" else "entries"

        def name(a: Access) -> str:
            insn = insns[a.insn]
            buf = getattr(insn, "buffer", None)
            what = f"{insn.opcode.name}{' ' + buf.name if buf is not None else ''}"
            return f"instruction {a.insn} ({what}, {MODULE_NAMES[module[a.insn]]} module)"

        raise RaceError(
            f"race: {name(w)} writes {w.memory} {unit} [{w.lo}, {w.hi}) and {name(o)} "
            f"{'writes' if o.write else 'reads'} [{o.lo}, {o.hi}) with no dependency token "
            "ordering them")
