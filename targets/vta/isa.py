"""Instruction set of the VTA-style accelerator: 128-bit instructions and 32-bit micro-ops.

Every instruction starts with a 3-bit opcode and four dependency-token flags (``pop_prev``,
``pop_next``, ``push_prev``, ``push_next``) that synchronize the three modules: *load* (LOAD of
INP/WGT), *compute* (LOAD of UOP/ACC, GEMM, ALU, FINISH) and *store* (STORE). "prev" and "next" are
the neighbouring modules in the order load -> compute -> store, so the load module has no "prev"
and the store module no "next".

Field widths follow VTA: memory instructions have fixed widths (sram base 16, dram base 32, sizes
and stride 16, paddings 4 bits; LOAD adds the 1-bit ``pad_min``); GEMM and ALU widths come from
the config's buffer depths (micro-op range, loop factors), loops have 14-bit trip counts.
:func:`layout` gives the widths of a config and rejects a config whose fields do not fit 128 bits
(or a micro-op 32 bits).
Fields are packed from the least significant bit, the 16 bytes little-endian.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

import numpy as np

from .config import VtaConfig
from .errors import IsaError, VtaConfigError

INSN_BYTES = 16
LOOP_ITER_BITS = 14
ALU_IMM_BITS = 16
MEM_WIDTHS = {"buffer": 3, "sram_base": 16, "dram_base": 32, "y_size": 16, "x_size": 16,
              "x_stride": 16, "y_pad0": 4, "y_pad1": 4, "x_pad0": 4, "x_pad1": 4}


class Opcode(IntEnum):
    LOAD = 0
    STORE = 1
    GEMM = 2
    FINISH = 3
    ALU = 4


class Buffer(IntEnum):
    UOP = 0
    WGT = 1
    INP = 2
    ACC = 3
    OUT = 4


class AluOp(IntEnum):
    MIN = 0
    MAX = 1
    ADD = 2
    SHR = 3
    MUL = 4


class Module(IntEnum):
    LOAD = 0
    COMPUTE = 1
    STORE = 2


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Base of all instructions: the dependency-token flags."""

    pop_prev: bool = False
    pop_next: bool = False
    push_prev: bool = False
    push_next: bool = False
    opcode: ClassVar[Opcode]

    @property
    def module(self) -> Module:
        return Module.COMPUTE

    def __post_init__(self) -> None:
        if self.module == Module.LOAD and (self.pop_prev or self.push_prev):
            raise IsaError(f"{self.opcode.name} of {self._what()} runs on the load module, which "
                           "has no previous module: pop_prev and push_prev must be 0")
        if self.module == Module.STORE and (self.pop_next or self.push_next):
            raise IsaError("STORE runs on the store module, which has no next module: "
                           "pop_next and push_next must be 0")

    def _what(self) -> str:
        return ""

    def encode(self, lay: Layout) -> bytes:
        """The 16 bytes of this instruction under a config's layout."""
        return lay.encode(self)


@dataclass(frozen=True, kw_only=True)
class _Mem(Instruction):
    buffer: Buffer
    sram_base: int
    dram_base: int
    y_size: int
    x_size: int
    x_stride: int
    y_pad0: int = 0
    y_pad1: int = 0
    x_pad0: int = 0
    x_pad1: int = 0

    def _what(self) -> str:
        return Buffer(self.buffer).name


@dataclass(frozen=True, kw_only=True)
class Load(_Mem):
    """2-D strided DMA from DRAM into a scratchpad; padded entries are filled with zero bytes,
    or with the minimum of the entry's element type when ``pad_min`` is set (int8 -128, int4 -8,
    int32 -2^31; +-1 bits and micro-ops: zero bits). A uint8 tensor stored shifted by -128 is
    padded with its zero point 0 this way.

    Element units: ``dram_base`` and ``x_stride`` count DRAM elements of the buffer's block size
    (``cfg.block_bytes``), ``sram_base`` counts scratchpad entries. The scratchpad receives
    ``(y_pad0 + y_size + y_pad1)`` rows of ``(x_pad0 + x_size + x_pad1)`` entries.
    """

    opcode: ClassVar[Opcode] = Opcode.LOAD
    pad_min: bool = False

    @property
    def module(self) -> Module:
        return Module.LOAD if self.buffer in (Buffer.INP, Buffer.WGT) else Module.COMPUTE

    def __post_init__(self) -> None:
        if Buffer(self.buffer) == Buffer.OUT:
            raise IsaError("LOAD: field buffer: expected UOP, WGT, INP or ACC, got OUT")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class Store(_Mem):
    """2-D strided DMA of accumulator entries, narrowed to int8, from the ACC scratchpad to DRAM."""

    opcode: ClassVar[Opcode] = Opcode.STORE

    @property
    def module(self) -> Module:
        return Module.STORE

    def __post_init__(self) -> None:
        if Buffer(self.buffer) != Buffer.OUT:
            raise IsaError(f"STORE: field buffer: expected OUT, got {Buffer(self.buffer).name}")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class _Loop(Instruction):
    uop_bgn: int
    uop_end: int
    iter_out: int
    iter_in: int
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0

    @property
    def ops(self) -> int:
        """Micro-op executions: iter_out * iter_in * (uop_end - uop_bgn)."""
        return self.iter_out * self.iter_in * max(0, self.uop_end - self.uop_bgn)


@dataclass(frozen=True, kw_only=True)
class Gemm(_Loop):
    """``acc[dst] += inp[src] @ wgt[wgt].T`` per micro-op and loop iteration (or ``acc[dst]=0``).

    Indices: ``dst = uop.dst + i*dst_factor_out + j*dst_factor_in`` for outer i, inner j (same
    for src and wgt).
    """

    opcode: ClassVar[Opcode] = Opcode.GEMM
    reset: bool = False
    wgt_factor_out: int = 0
    wgt_factor_in: int = 0


@dataclass(frozen=True, kw_only=True)
class Alu(_Loop):
    """``acc[dst] = op(acc[dst], imm if use_imm else acc[src])`` per micro-op and iteration."""

    opcode: ClassVar[Opcode] = Opcode.ALU
    alu_op: AluOp
    use_imm: bool = False
    imm: int = 0


@dataclass(frozen=True, kw_only=True)
class Finish(Instruction):
    """End of the program (runs on the compute module)."""

    opcode: ClassVar[Opcode] = Opcode.FINISH


_CLASSES: dict[Opcode, type[Instruction]] = {Opcode.LOAD: Load, Opcode.STORE: Store,
                                             Opcode.GEMM: Gemm, Opcode.ALU: Alu,
                                             Opcode.FINISH: Finish}
_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")


def _log2(n: int) -> int:
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Layout:
    """Bit widths of every field for one config; encodes and decodes instructions and uops."""

    widths: dict[Opcode, tuple[tuple[str, int], ...]]
    uop_widths: tuple[int, int, int]  # dst, src, wgt

    def field_range(self, opcode: Opcode, name: str) -> tuple[int, int]:
        """Inclusive (lo, hi) of a field's values."""
        width = dict(self.widths[opcode])[name]
        if name == "imm":
            return -(1 << (width - 1)), (1 << (width - 1)) - 1
        return 0, (1 << width) - 1

    def encode(self, insn: Instruction) -> bytes:
        word = int(insn.opcode)
        pos = 3
        for flag in _FLAGS:
            word |= int(getattr(insn, flag)) << pos
            pos += 1
        for name, width in self.widths[insn.opcode]:
            value = int(getattr(insn, name))
            lo, hi = self.field_range(insn.opcode, name)
            if not lo <= value <= hi:
                raise IsaError(f"{insn.opcode.name}: field {name}: expected {lo}..{hi} "
                               f"({width} bits), got {value}")
            word |= (value & ((1 << width) - 1)) << pos
            pos += width
        return word.to_bytes(INSN_BYTES, "little")

    def decode(self, data: bytes) -> Instruction:
        if len(data) != INSN_BYTES:
            raise IsaError(f"an instruction is {INSN_BYTES} bytes, got {len(data)}")
        word = int.from_bytes(data, "little")
        try:
            opcode = Opcode(word & 7)
        except ValueError:
            raise IsaError(f"unknown opcode {word & 7} in {data.hex()}") from None
        kw: dict[str, Any] = {}
        pos = 3
        for flag in _FLAGS:
            kw[flag] = bool((word >> pos) & 1)
            pos += 1
        for name, width in self.widths[opcode]:
            value = (word >> pos) & ((1 << width) - 1)
            if name == "imm" and value >= 1 << (width - 1):
                value -= 1 << width
            kw[name] = value
            pos += width
        if word >> pos:
            raise IsaError(f"{opcode.name}: unused bits {pos}..127 are not zero in {data.hex()}")
        try:
            if "buffer" in kw:
                kw["buffer"] = Buffer(kw["buffer"])
            if "alu_op" in kw:
                kw["alu_op"] = AluOp(kw["alu_op"])
            for name in ("reset", "use_imm", "pad_min"):
                if name in kw:
                    kw[name] = bool(kw[name])
        except ValueError as err:
            raise IsaError(f"{opcode.name}: {err} in {data.hex()}") from None
        return _CLASSES[opcode](**kw)  # type: ignore[arg-type]

    def encode_uops(self, dst: np.ndarray, src: np.ndarray, wgt: np.ndarray) -> np.ndarray:
        """Pack micro-op index arrays into uint32 words (dst in the low bits, then src, wgt)."""
        cols = [np.asarray(a, dtype=np.int64).ravel() for a in (dst, src, wgt)]
        word = np.zeros(cols[0].shape, dtype=np.uint64)
        pos = 0
        for name, col, width in zip(("dst", "src", "wgt"), cols, self.uop_widths, strict=True):
            bad = np.flatnonzero((col < 0) | (col >= 1 << width))
            if bad.size:
                raise IsaError(f"uop {bad[0]}: field {name}: expected 0..{(1 << width) - 1} "
                               f"({width} bits), got {col[bad[0]]}")
            word |= col.astype(np.uint64) << np.uint64(pos)
            pos += width
        return word.astype(np.uint32)

    def decode_uops(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unpack uint32 micro-op words into (dst, src, wgt) int64 arrays."""
        w = np.asarray(words, dtype=np.uint32).astype(np.int64)
        out = []
        pos = 0
        for width in self.uop_widths:
            out.append((w >> pos) & ((1 << width) - 1))
            pos += width
        return out[0], out[1], out[2]


def layout(cfg: VtaConfig) -> Layout:
    """Field widths of the config's ISA (validated: see :func:`check_layout`)."""
    check_layout(cfg)
    return _layout(cfg)


def _layout(cfg: VtaConfig) -> Layout:
    lu, la, li, lw = (_log2(cfg.uop_depth), _log2(cfg.acc_depth), _log2(cfg.inp_depth),
                      _log2(cfg.wgt_depth))
    loop = (("uop_bgn", lu), ("uop_end", lu + 1), ("iter_out", LOOP_ITER_BITS),
            ("iter_in", LOOP_ITER_BITS), ("dst_factor_out", la), ("dst_factor_in", la))
    mem = tuple(MEM_WIDTHS.items())
    widths = {
        Opcode.LOAD: (*mem, ("pad_min", 1)), Opcode.STORE: mem, Opcode.FINISH: (),
        Opcode.GEMM: (("reset", 1), *loop, ("src_factor_out", li), ("src_factor_in", li),
                      ("wgt_factor_out", lw), ("wgt_factor_in", lw)),
        Opcode.ALU: (*loop, ("src_factor_out", la), ("src_factor_in", la), ("alu_op", 3),
                     ("use_imm", 1), ("imm", ALU_IMM_BITS)),
    }
    return Layout(widths=widths, uop_widths=(la, max(la, li), lw))


def check_layout(cfg: VtaConfig, source: str = "<config>") -> None:
    """Reject a config whose buffer depths do not fit the instruction and micro-op fields."""
    sram_max = 1 << MEM_WIDTHS["sram_base"]
    for key, depth in cfg.depths.items():
        if depth > sram_max:
            raise VtaConfigError(f"{source}: field LOG_{key}_BUFF_SIZE: {depth} entries exceed "
                                 f"the {sram_max} a LOAD's sram_base addresses")
    lay = _layout(cfg)
    for opcode in (Opcode.GEMM, Opcode.ALU):
        bits = 7 + sum(w for _, w in lay.widths[opcode])
        if bits > 8 * INSN_BYTES:
            raise VtaConfigError(
                f"{source}: fields LOG_*_BUFF_SIZE: the {opcode.name} instruction needs {bits} "
                f"bits for these buffer depths (UOP {cfg.uop_depth}, INP {cfg.inp_depth}, WGT "
                f"{cfg.wgt_depth}, ACC {cfg.acc_depth}), expected at most 128")
    if sum(lay.uop_widths) > 32:
        raise VtaConfigError(f"{source}: fields LOG_*_BUFF_SIZE: a micro-op needs "
                             f"{sum(lay.uop_widths)} bits for these buffer depths (INP "
                             f"{cfg.inp_depth}, WGT {cfg.wgt_depth}, ACC {cfg.acc_depth}), "
                             "expected at most 32")


def field_names(cls: type[Instruction]) -> list[str]:
    """Dataclass field names of an instruction class (flags first)."""
    return [f.name for f in fields(cls)]


def encode_program(insns: list[Instruction], lay: Layout) -> np.ndarray:
    """Instructions as a uint8 array of shape (n, 16); errors name the instruction index."""
    out = np.zeros((len(insns), INSN_BYTES), dtype=np.uint8)
    for i, insn in enumerate(insns):
        try:
            out[i] = np.frombuffer(lay.encode(insn), dtype=np.uint8)
        except IsaError as err:
            raise IsaError(f"instruction {i}: {err}") from None
    return out


def decode_program(data: np.ndarray, lay: Layout) -> list[Instruction]:
    """Inverse of :func:`encode_program`."""
    arr = np.asarray(data, dtype=np.uint8).reshape(-1, INSN_BYTES)
    out = []
    for i, row in enumerate(arr):
        try:
            out.append(lay.decode(row.tobytes()))
        except IsaError as err:
            raise IsaError(f"instruction {i}: {err}") from None
    return out
