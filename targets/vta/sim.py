"""Device drivers: the :class:`Driver` interface and :class:`SimDriver`, the simulator.

The simulator first schedules the program with the timing model (:mod:`.timing`), then executes it
functionally in the order the instructions start, and finally checks that every pair of modules
touching the same scratchpad entries or DRAM bytes is ordered by tokens (:mod:`.hazards`): a
program with a missing token raises :class:`~.hazards.RaceError` instead of returning whatever the
race gave. Execution is vectorized per instruction: a GEMM's
loops x micro-ops are one gather, one batched product and one scatter-add.

Arithmetic (bit-exact, checked against numpy in the tests): accumulators are int32 and wrap; GEMM
multiplies int8 or int4 inputs/weights exactly, +-1 weights as signs, and binary inputs with binary
weights by XNOR-popcount (``block_in - 2 * popcount(inp ^ wgt)``); ALU SHR is an arithmetic shift
(a negative amount shifts left; amounts saturate at 31); STORE keeps the low 8 bits of each
accumulator (two's complement), so clip first with MIN/MAX.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import VtaConfig, load_config
from .errors import SimError
from .hazards import Access, check_races
from .isa import Alu, AluOp, Buffer, Finish, Gemm, Instruction, Load, Store
from .pack import unpack_bits, unpack_int4
from .program import DRAM_ALIGN, Program
from .timing import Counters, Schedule, schedule

_CHUNK = 1 << 14  # GEMM block operations per vectorized step (bounds the gathered bytes)


@dataclass(frozen=True)
class DramBuffer:
    """A region of device DRAM: byte address and size."""

    addr: int
    nbytes: int


@dataclass(frozen=True)
class RunResult:
    """Counters of a run plus the per-instruction schedule (start/end cycles)."""

    counters: Counters
    schedule: Schedule


@dataclass(frozen=True)
class ProgramRun:
    """A program's run: the bytes of each output segment and the run's result."""

    outputs: dict[str, np.ndarray]
    result: RunResult

    @property
    def counters(self) -> Counters:
        return self.result.counters


class Driver(ABC):
    """A VTA device: DRAM buffers and program execution. ``SimDriver`` is the simulator; a board
    driver implements the same methods."""

    config: VtaConfig

    @abstractmethod
    def alloc(self, nbytes: int) -> DramBuffer:
        """Allocate ``nbytes`` of DRAM aligned to :data:`~.program.DRAM_ALIGN` (zero-filled)."""

    @abstractmethod
    def free(self, buf: DramBuffer) -> None:
        """Release a buffer."""

    @abstractmethod
    def write(self, buf: DramBuffer, data: np.ndarray | bytes, offset: int = 0) -> None:
        """Copy bytes into a buffer at ``offset``."""

    @abstractmethod
    def read(self, buf: DramBuffer, nbytes: int | None = None, offset: int = 0) -> np.ndarray:
        """Copy bytes out of a buffer (uint8 array)."""

    @abstractmethod
    def run(self, insns: Sequence[Instruction]) -> RunResult:
        """Execute instructions whose ``dram_base`` fields are absolute DRAM addresses."""

    def run_program(self, program: Program,
                    inputs: dict[str, np.ndarray] | None = None) -> ProgramRun:
        """Place a program in DRAM, run it and read back its ``out`` segments.

        ``inputs`` replaces segment images by name (same byte count).
        """
        if program.config != self.config:
            raise SimError(f"program is for config {program.config.name}, the device runs "
                           f"{self.config.name}")
        inputs = inputs or {}
        unknown = sorted(set(inputs) - set(program.segments))
        if unknown:
            raise SimError(f"input {unknown[0]!r} is not a segment of the program "
                           f"({', '.join(program.segments)})")
        buf = self.alloc(program.dram_bytes)
        try:
            for name, seg in program.segments.items():
                data = inputs.get(name, seg.data)
                if data is None:
                    continue
                data = np.ascontiguousarray(data).view(np.uint8).ravel()
                if data.size != seg.nbytes:
                    raise SimError(f"segment {name}: expected {seg.nbytes} bytes, got {data.size}")
                self.write(buf, data, seg.offset)
            result = self.run(program.relocated(buf.addr))
            outputs = {name: self.read(buf, seg.nbytes, seg.offset)
                       for name, seg in program.segments.items() if seg.kind == "out"}
        finally:
            self.free(buf)
        return ProgramRun(outputs, result)


class SimDriver(Driver):
    """Bit-exact functional simulator with the timing model; ``functional=False`` only times."""

    def __init__(self, config: VtaConfig | str, functional: bool = True) -> None:
        self.config = load_config(config)
        self.functional = functional
        self.dram = np.zeros(DRAM_ALIGN, dtype=np.uint8)  # address 0..4095 stays unallocated
        self._bufs: list[tuple[int, int]] = []  # sorted (addr, end)
        cfg = self.config
        b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
        inp_shape = (b, bi // 8) if cfg.inp_bits == 1 else (b, bi)
        wgt_shape = (bo, bi // 8) if cfg.wgt_bits == 1 else (bo, bi)
        self.sram: dict[Buffer, np.ndarray] = {
            Buffer.UOP: np.zeros(cfg.uop_depth, dtype=np.uint32),
            Buffer.INP: np.zeros((cfg.inp_depth, *inp_shape),
                                 dtype=np.uint8 if cfg.inp_bits == 1 else np.int8),
            Buffer.WGT: np.zeros((cfg.wgt_depth, *wgt_shape),
                                 dtype=np.uint8 if cfg.wgt_bits == 1 else np.int8),
            Buffer.ACC: np.zeros((cfg.acc_depth, b, bo), dtype=np.int32),
        }
        from .isa import layout

        self.layout = layout(cfg)
        self._accesses: list[Access] = []

    # -- DRAM --
    def alloc(self, nbytes: int) -> DramBuffer:
        addr = self.dram.size
        size = max(DRAM_ALIGN, -(-nbytes // DRAM_ALIGN) * DRAM_ALIGN)
        if addr + size > 1 << 34:
            raise SimError(f"DRAM exhausted: {nbytes} bytes asked at address {addr}")
        self.dram = np.concatenate([self.dram, np.zeros(size, dtype=np.uint8)])
        self._bufs.append((addr, addr + nbytes))
        return DramBuffer(addr, nbytes)

    def free(self, buf: DramBuffer) -> None:
        self._bufs.remove((buf.addr, buf.addr + buf.nbytes))
        if buf.addr + max(DRAM_ALIGN, -(-buf.nbytes // DRAM_ALIGN) * DRAM_ALIGN) == self.dram.size:
            self.dram = self.dram[:buf.addr].copy()  # the last buffer: give its pages back

    def _span(self, buf: DramBuffer, nbytes: int, offset: int) -> slice:
        if (buf.addr, buf.addr + buf.nbytes) not in self._bufs:
            raise SimError(f"DRAM buffer at {buf.addr} is not allocated")
        if offset < 0 or offset + nbytes > buf.nbytes:
            raise SimError(f"DRAM access [{offset}, {offset + nbytes}) outside the buffer of "
                           f"{buf.nbytes} bytes at {buf.addr}")
        return slice(buf.addr + offset, buf.addr + offset + nbytes)

    def write(self, buf: DramBuffer, data: np.ndarray | bytes, offset: int = 0) -> None:
        arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else \
            np.ascontiguousarray(data).view(np.uint8).ravel()
        self.dram[self._span(buf, arr.size, offset)] = arr

    def read(self, buf: DramBuffer, nbytes: int | None = None, offset: int = 0) -> np.ndarray:
        n = buf.nbytes - offset if nbytes is None else nbytes
        return self.dram[self._span(buf, n, offset)].copy()

    # -- execution --
    def run(self, insns: Sequence[Instruction]) -> RunResult:
        """Schedule, then execute in start order and check that the tokens order every pair
        of modules touching the same memory (:class:`~.hazards.RaceError` otherwise). With
        ``functional=False`` only the schedule is computed (no data, no race check)."""
        insns = list(insns)
        sched = schedule(self.config, insns)
        if self.functional:
            self._accesses = []
            for i in sched.order():
                self._execute(int(i), insns[i])
            check_races(insns, sched, self._accesses)
        return RunResult(sched.counters, sched)

    def _note(self, i: int, memory: str, lo: int, hi: int, write: bool) -> None:
        self._accesses.append(Access(i, memory, lo, hi, write))

    def _note_idx(self, i: int, memory: str, idx: np.ndarray, write: bool) -> None:
        if idx.size:
            self._accesses.append(Access(i, memory, int(idx.min()), int(idx.max()) + 1, write))

    def _execute(self, i: int, insn: Instruction) -> None:
        if isinstance(insn, Load):
            self._load(i, insn)
        elif isinstance(insn, Store):
            self._store(i, insn)
        elif isinstance(insn, Gemm):
            self._gemm(i, insn)
        elif isinstance(insn, Alu):
            self._alu(i, insn)
        else:
            assert isinstance(insn, Finish)

    def _dram_index(self, i: int, insn: Load | Store, size: int) -> np.ndarray:
        """Element indices (in units of ``size`` bytes) of a 2-D access, bounds-checked."""
        idx = (insn.dram_base + insn.x_stride * np.arange(insn.y_size)[:, None]
               + np.arange(insn.x_size)[None, :])
        lo, hi = int(idx.min()) * size, (int(idx.max()) + 1) * size
        self._note(i, "DRAM", lo, hi, isinstance(insn, Store))
        k = bisect.bisect_right(self._bufs, (lo, float("inf"))) - 1
        if k < 0 or not self._bufs[k][0] <= lo or hi > self._bufs[k][1]:
            raise SimError(f"instruction {i} ({insn.opcode.name} {insn.buffer.name}): DRAM bytes "
                           f"[{lo}, {hi}) from dram_base={insn.dram_base} x_stride="
                           f"{insn.x_stride} y_size={insn.y_size} x_size={insn.x_size} are "
                           "outside every allocated buffer")
        return idx

    def _sram_rows(self, i: int, insn: Load | Store, depth: int, name: str) -> tuple[int, int]:
        ytot = insn.y_pad0 + insn.y_size + insn.y_pad1
        xtot = insn.x_pad0 + insn.x_size + insn.x_pad1
        if insn.sram_base + ytot * xtot > depth:
            raise SimError(f"instruction {i} ({insn.opcode.name} {insn.buffer.name}): scratchpad "
                           f"entries [{insn.sram_base}, {insn.sram_base + ytot * xtot}) exceed "
                           f"the {name} depth {depth} (field sram_base/y_size/x_size)")
        return ytot, xtot

    def _load(self, i: int, insn: Load) -> None:
        cfg = self.config
        sp = self.sram[insn.buffer]
        ytot, xtot = self._sram_rows(i, insn, sp.shape[0], insn.buffer.name)
        region = sp[insn.sram_base:insn.sram_base + ytot * xtot]
        region[...] = _pad_min(sp.dtype, cfg.wgt_bits if insn.buffer == Buffer.WGT else 8) \
            if insn.pad_min else 0
        self._note(i, insn.buffer.name, insn.sram_base, insn.sram_base + ytot * xtot, True)
        if insn.y_size == 0 or insn.x_size == 0:
            return
        size = cfg.block_bytes[insn.buffer.name]
        idx = self._dram_index(i, insn, size)
        blocks = self.dram.reshape(-1, size)[idx]  # (y, x, bytes)
        if insn.buffer == Buffer.UOP:
            vals = blocks.view("<u4")[..., 0]
        elif insn.buffer == Buffer.ACC:
            vals = blocks.view("<i4").reshape(*idx.shape, *sp.shape[1:])
        elif insn.buffer == Buffer.WGT and cfg.wgt_bits == 4:
            vals = unpack_int4(blocks).reshape(*idx.shape, *sp.shape[1:])
        else:  # int8 values, or 1-bit elements kept packed in the scratchpad
            vals = blocks.view(sp.dtype).reshape(*idx.shape, *sp.shape[1:])
        grid = region.reshape(ytot, xtot, *sp.shape[1:])
        grid[insn.y_pad0:insn.y_pad0 + insn.y_size, insn.x_pad0:insn.x_pad0 + insn.x_size] = vals

    def _store(self, i: int, insn: Store) -> None:
        if insn.y_pad0 or insn.y_pad1 or insn.x_pad0 or insn.x_pad1:
            raise SimError(f"instruction {i} (STORE): padding is not supported on stores")
        acc = self.sram[Buffer.ACC]
        self._sram_rows(i, insn, acc.shape[0], "ACC")
        if insn.y_size == 0 or insn.x_size == 0:
            return
        size = self.config.out_block_bytes
        idx = self._dram_index(i, insn, size)
        n = insn.y_size * insn.x_size
        self._note(i, "ACC", insn.sram_base, insn.sram_base + n, False)
        vals = acc[insn.sram_base:insn.sram_base + n].astype(np.int8)  # low 8 bits
        self.dram.reshape(-1, size)[idx.ravel()] = vals.reshape(n, -1).view(np.uint8)

    def _indices(self, i: int, insn: Gemm | Alu) -> dict[str, np.ndarray]:
        depth = self.config.uop_depth
        if not insn.uop_bgn <= insn.uop_end <= depth:
            raise SimError(f"instruction {i} ({insn.opcode.name}): micro-ops [{insn.uop_bgn}, "
                           f"{insn.uop_end}) outside the UOP scratchpad of depth {depth}")
        dst, src, wgt = self.layout.decode_uops(self.sram[Buffer.UOP][insn.uop_bgn:insn.uop_end])
        io = np.arange(insn.iter_out)[:, None, None]
        ii = np.arange(insn.iter_in)[None, :, None]
        out = {"dst": (dst + io * insn.dst_factor_out + ii * insn.dst_factor_in).ravel(),
               "src": (src + io * insn.src_factor_out + ii * insn.src_factor_in).ravel()}
        if isinstance(insn, Gemm):
            out["wgt"] = (wgt + io * insn.wgt_factor_out + ii * insn.wgt_factor_in).ravel()
        return out

    def _check(self, i: int, insn: Gemm | Alu, name: str, idx: np.ndarray, buf: Buffer) -> None:
        depth = self.sram[buf].shape[0]
        bad = np.flatnonzero(idx >= depth)
        if bad.size:
            nu = insn.uop_end - insn.uop_bgn
            k = int(bad[0])
            raise SimError(
                f"instruction {i} ({insn.opcode.name}): {name} index {idx[k]} out of the {buf.name}"
                f" scratchpad of depth {depth} (uop {insn.uop_bgn + k % nu}, iteration "
                f"out={k // nu // insn.iter_in} in={k // nu % insn.iter_in}; fields "
                f"{name}_factor_out/{name}_factor_in)")

    def _gemm(self, i: int, insn: Gemm) -> None:
        ix = self._indices(i, insn)
        acc = self.sram[Buffer.ACC]
        self._check(i, insn, "dst", ix["dst"], Buffer.ACC)
        self._note_idx(i, "ACC", ix["dst"], True)
        if insn.reset:
            acc[ix["dst"]] = 0
            return
        self._check(i, insn, "src", ix["src"], Buffer.INP)
        self._check(i, insn, "wgt", ix["wgt"], Buffer.WGT)
        self._note_idx(i, "INP", ix["src"], False)
        self._note_idx(i, "WGT", ix["wgt"], False)
        for c in range(0, ix["dst"].size, _CHUNK):
            sl = slice(c, c + _CHUNK)
            prod = self._block_products(self.sram[Buffer.INP][ix["src"][sl]],
                                        self.sram[Buffer.WGT][ix["wgt"][sl]])
            np.add.at(acc, ix["dst"][sl], prod)

    def _block_products(self, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        """(n, batch, block_out) int32 products of n input and weight blocks."""
        cfg = self.config
        if cfg.binary_gemm:
            pop = np.bitwise_count(a[:, :, None, :] ^ w[:, None, :, :]).sum(-1, dtype=np.int32)
            return cfg.block_in - 2 * pop
        if cfg.wgt_bits == 1:
            w = unpack_bits(w)
        # |a*w| <= 2^14 and block_in <= 64: every partial sum is exact in float32
        prod = np.matmul(a.astype(np.float32), w.astype(np.float32).transpose(0, 2, 1))
        return prod.astype(np.int32)

    def _alu(self, i: int, insn: Alu) -> None:
        ix = self._indices(i, insn)
        dst, src = ix["dst"], ix["src"]
        self._check(i, insn, "dst", dst, Buffer.ACC)
        self._note_idx(i, "ACC", dst, True)
        if not insn.use_imm:
            self._check(i, insn, "src", src, Buffer.ACC)
            self._note_idx(i, "ACC", src, False)
        acc = self.sram[Buffer.ACC]
        hazard = np.unique(dst).size != dst.size or (
            not insn.use_imm and bool(np.any((src != dst) & np.isin(src, dst))))
        if not hazard:
            y = np.int32(insn.imm) if insn.use_imm else acc[src]
            acc[dst] = _alu_op(insn.alu_op, acc[dst], y)
            return
        for d, s in zip(dst, src, strict=True):  # an op reads what an earlier op wrote
            y = np.int32(insn.imm) if insn.use_imm else acc[s]
            acc[d] = _alu_op(insn.alu_op, acc[d], y)


def _pad_min(dtype: np.dtype, bits: int) -> int:
    """Fill value of a ``pad_min`` LOAD: the element type's minimum (packed bits: 0 = -1)."""
    if dtype == np.uint8 or dtype == np.uint32:
        return 0
    return -(1 << (bits - 1)) if dtype == np.int8 else int(np.iinfo(dtype).min)


def _alu_op(op: AluOp, x: np.ndarray, y: np.ndarray | np.int32) -> np.ndarray:
    with np.errstate(over="ignore"):
        if op == AluOp.MIN:
            return np.minimum(x, y)
        if op == AluOp.MAX:
            return np.maximum(x, y)
        if op == AluOp.ADD:
            return x + y
        if op == AluOp.MUL:
            return x * y
        shift = np.broadcast_to(np.clip(y, -31, 31), x.shape).astype(np.int32)
        return np.where(shift >= 0, x >> np.maximum(shift, 0), x << np.maximum(-shift, 0))
