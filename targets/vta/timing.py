"""Timing model: the load, compute and store modules as in-order queues synchronized by tokens.

Each module executes its instructions in program order. An instruction starts when its module is
free and every token it pops has been pushed; it pushes its tokens when it finishes. The four
token queues are load->compute (``l2c``), compute->load (``c2l``), compute->store (``c2s``) and
store->compute (``s2c``), each holding ``cfg.token_queue_depth`` tokens; a push into a full queue
is reported as an overflow (:class:`DeadlockError`), as is a pop that no push ever satisfies.

Cycles per instruction:

* LOAD / STORE: ``DMA_LATENCY_CYCLES + ceil(bytes / DMA_BYTES_PER_CYCLE)`` plus one cycle per
  padded scratchpad entry (zero fill); bytes are DRAM bytes moved (padding excluded).
* GEMM: one cycle per block operation (micro-op x loop iteration, resets included) plus
  ``GEMM_PIPELINE_DEPTH``.
* ALU: ``ceil(batch * block_out / ALU_LANES)`` cycles per micro-op x iteration plus
  ``ALU_PIPELINE_DEPTH``.
* FINISH: one cycle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .config import VtaConfig
from .errors import DeadlockError
from .isa import Alu, Finish, Gemm, Instruction, Load, Module, Opcode, Store

MODULE_NAMES = ("load", "compute", "store")
_POPS = {Module.LOAD: {"pop_next": "c2l"},
         Module.COMPUTE: {"pop_prev": "l2c", "pop_next": "s2c"},
         Module.STORE: {"pop_prev": "c2s"}}
_PUSHES = {Module.LOAD: {"push_next": "l2c"},
           Module.COMPUTE: {"push_prev": "c2l", "push_next": "c2s"},
           Module.STORE: {"push_prev": "s2c"}}
_QUEUE_TEXT = {"l2c": "load -> compute", "c2l": "compute -> load", "c2s": "compute -> store",
               "s2c": "store -> compute"}


@dataclass(frozen=True)
class Counters:
    """What one run of a program cost in the timing model.

    Attributes
    ----------
    cycles : total cycles (last instruction's end).
    busy : cycles each module (load, compute, store) spent executing.
    gemm_ops : GEMM block operations that multiply (resets excluded).
    alu_ops : ALU micro-op executions.
    gemm_utilization : ``gemm_ops / cycles``.
    dma_bytes : DRAM bytes moved per buffer (UOP, WGT, INP, ACC loaded; OUT stored).
    insn_counts : instructions per opcode name.
    clock_mhz : clock the time is computed at.
    """

    cycles: int
    busy: dict[str, int]
    gemm_ops: int
    alu_ops: int
    gemm_utilization: float
    dma_bytes: dict[str, int]
    insn_counts: dict[str, int]
    clock_mhz: float

    @property
    def time_s(self) -> float:
        """Seconds at the configured clock."""
        return self.cycles / (self.clock_mhz * 1e6)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "time_s": self.time_s}


@dataclass(frozen=True)
class Schedule:
    """Start and end cycle of every instruction, the counters, and for each instruction the
    instructions whose tokens it popped (``sources``, FIFO-matched)."""

    start: np.ndarray
    end: np.ndarray
    counters: Counters
    sources: tuple[tuple[int, ...], ...] = ()

    def order(self) -> np.ndarray:
        """Instruction indices by start cycle (ties by index): the functional execution order."""
        return np.lexsort((np.arange(self.start.size), self.start))


def dma_bytes(cfg: VtaConfig, insn: Load | Store) -> int:
    """DRAM bytes a LOAD reads or a STORE writes."""
    name = "OUT" if isinstance(insn, Store) else insn.buffer.name
    return insn.y_size * insn.x_size * cfg.block_bytes[name]


def insn_cycles(cfg: VtaConfig, insn: Instruction) -> int:
    """Cycles one instruction keeps its module busy (see the module docstring)."""
    if isinstance(insn, Load | Store):
        total = ((insn.y_pad0 + insn.y_size + insn.y_pad1)
                 * (insn.x_pad0 + insn.x_size + insn.x_pad1))
        pads = total - insn.y_size * insn.x_size
        return (cfg.dma_latency_cycles + math.ceil(dma_bytes(cfg, insn) / cfg.dma_bytes_per_cycle)
                + pads)
    if isinstance(insn, Gemm):
        return insn.ops + cfg.gemm_pipeline_depth
    if isinstance(insn, Alu):
        per_op = math.ceil(cfg.batch * cfg.block_out / cfg.alu_lanes)
        return insn.ops * per_op + cfg.alu_pipeline_depth
    assert isinstance(insn, Finish)
    return 1


def schedule(cfg: VtaConfig, insns: list[Instruction]) -> Schedule:
    """Event-driven schedule of a program; raises :class:`DeadlockError` with the index of the
    instruction that waits forever, or of the one whose push overflows a token queue."""
    n = len(insns)
    start = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    queues: dict[Module, list[int]] = {m: [] for m in Module}
    for i, insn in enumerate(insns):
        queues[insn.module].append(i)
    ptr = dict.fromkeys(Module, 0)
    free = dict.fromkeys(Module, 0)
    pushes: dict[str, list[int]] = {q: [] for q in _QUEUE_TEXT}
    pushers: dict[str, list[int]] = {q: [] for q in _QUEUE_TEXT}
    pops: dict[str, list[int]] = {q: [] for q in _QUEUE_TEXT}
    sources: list[list[int]] = [[] for _ in range(n)]
    progressed = True
    while progressed:
        progressed = False
        for m in Module:
            while ptr[m] < len(queues[m]):
                i = queues[m][ptr[m]]
                insn = insns[i]
                need = [q for flag, q in _POPS[m].items() if getattr(insn, flag)]
                if any(len(pushes[q]) <= len(pops[q]) for q in need):
                    break
                t = max([free[m], *(pushes[q][len(pops[q])] for q in need)])
                for q in need:
                    sources[i].append(pushers[q][len(pops[q])])
                    pops[q].append(t)
                start[i], end[i] = t, t + insn_cycles(cfg, insn)
                free[m] = int(end[i])
                for flag, q in _PUSHES[m].items():
                    if getattr(insn, flag):
                        pushes[q].append(int(end[i]))
                        pushers[q].append(i)
                ptr[m] += 1
                progressed = True
    for m in Module:
        if ptr[m] < len(queues[m]):
            i = queues[m][ptr[m]]
            q = next(q for flag, q in _POPS[m].items()
                     if getattr(insns[i], flag) and len(pushes[q]) <= len(pops[q]))
            raise DeadlockError(
                f"deadlock: instruction {i} ({insns[i].opcode.name}) on the {MODULE_NAMES[m]} "
                f"module waits for a {_QUEUE_TEXT[q]} token that is never pushed "
                f"({len(pushes[q])} pushed, all popped)")
    for q in _QUEUE_TEXT:
        popped = np.searchsorted(np.asarray(pops[q]), np.asarray(pushes[q]), side="right")
        held = np.arange(1, len(pushes[q]) + 1) - popped
        over = np.flatnonzero(held > cfg.token_queue_depth)
        if over.size:
            i = pushers[q][over[0]]
            raise DeadlockError(
                f"token queue overflow: instruction {i} ({insns[i].opcode.name}) pushes a "
                f"{_QUEUE_TEXT[q]} token into a full queue (depth {cfg.token_queue_depth})")
    return Schedule(start, end, _counters(cfg, insns, start, end),
                    tuple(tuple(s) for s in sources))


def _counters(cfg: VtaConfig, insns: list[Instruction], start: np.ndarray,
              end: np.ndarray) -> Counters:
    busy = dict.fromkeys(MODULE_NAMES, 0)
    dma = dict.fromkeys(("UOP", "WGT", "INP", "ACC", "OUT"), 0)
    counts = {op.name: 0 for op in Opcode}
    gemm_ops = alu_ops = 0
    for i, insn in enumerate(insns):
        busy[MODULE_NAMES[insn.module]] += int(end[i] - start[i])
        counts[insn.opcode.name] += 1
        if isinstance(insn, Load):
            dma[insn.buffer.name] += dma_bytes(cfg, insn)
        elif isinstance(insn, Store):
            dma["OUT"] += dma_bytes(cfg, insn)
        elif isinstance(insn, Gemm) and not insn.reset:
            gemm_ops += insn.ops
        elif isinstance(insn, Alu):
            alu_ops += insn.ops
    cycles = int(end.max()) if len(insns) else 0
    return Counters(cycles=cycles, busy=busy, gemm_ops=gemm_ops, alu_ops=alu_ops,
                    gemm_utilization=gemm_ops / cycles if cycles else 0.0, dma_bytes=dma,
                    insn_counts=counts, clock_mhz=cfg.clock_mhz)
