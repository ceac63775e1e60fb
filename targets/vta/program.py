"""A VTA program: instructions, the DRAM images they read (micro-ops, inputs, weights) and the
regions they write, saved as one ``.npz`` file; and its disassembly.

DRAM addresses inside a program are relative to the program's base: segment offsets are bytes from
it (aligned to :data:`DRAM_ALIGN`), and a LOAD's or STORE's ``dram_base`` counts elements of its
buffer's block size from it. A driver places the program at an aligned address and relocates the
instructions (:meth:`Program.relocated`).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import isa
from .config import VtaConfig, from_json
from .errors import ProgramError, VtaError
from .isa import Buffer, Instruction, Load, Store

DRAM_ALIGN = 4096
SEGMENT_KINDS = ("uop", "inp", "wgt", "acc", "out")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """A DRAM region of a program: ``data`` is its initial image (``None``: zero-filled output)."""

    name: str
    kind: str
    offset: int
    nbytes: int
    data: np.ndarray | None = None

    def elem(self, cfg: VtaConfig, buffer: Buffer) -> int:
        """``dram_base`` of this segment's first element for ``buffer``."""
        size = cfg.block_bytes[buffer.name]
        if self.offset % size:
            raise ProgramError(f"segment {self.name}: offset {self.offset} is not a multiple of "
                               f"the {buffer.name} element size {size}")
        return self.offset // size


@dataclass
class Program:
    """Instructions plus DRAM segments for one config; ``meta`` holds JSON-able notes."""

    config: VtaConfig
    instructions: list[Instruction] = field(default_factory=list)
    segments: dict[str, Segment] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dram_bytes(self) -> int:
        """Bytes from the program base to the end of its last segment, aligned."""
        end = max((s.offset + s.nbytes for s in self.segments.values()), default=0)
        return -(-end // DRAM_ALIGN) * DRAM_ALIGN

    def add_segment(self, name: str, kind: str, data: np.ndarray | int) -> Segment:
        """Append a segment after the others (aligned); ``data`` is an array or a byte count."""
        if kind not in SEGMENT_KINDS:
            raise ProgramError(f"segment {name}: kind must be one of {SEGMENT_KINDS}, got {kind!r}")
        if name in self.segments:
            raise ProgramError(f"segment {name}: defined twice")
        img = None
        if isinstance(data, int):
            nbytes = data
        else:
            img = np.ascontiguousarray(data).view(np.uint8).ravel()
            nbytes = img.size
        seg = Segment(name, kind, self.dram_bytes, nbytes, img)
        self.segments[name] = seg
        return seg

    def relocated(self, base: int) -> list[Instruction]:
        """Instructions with every ``dram_base`` moved to a program placed at byte ``base``."""
        if base % DRAM_ALIGN:
            raise ProgramError(f"program base {base} is not aligned to {DRAM_ALIGN} bytes")
        sizes = self.config.block_bytes
        return [replace(i, dram_base=i.dram_base + base // sizes[i.buffer.name])
                if isinstance(i, Load | Store) else i for i in self.instructions]

    def save(self, path: str | Path) -> None:
        """Write the program as one ``.npz`` (atomically: a temporary file, then a rename)."""
        path = Path(path)
        lay = isa.layout(self.config)
        table = [{"name": s.name, "kind": s.kind, "offset": s.offset, "nbytes": s.nbytes,
                  "has_data": s.data is not None} for s in self.segments.values()]
        header = {"version": FORMAT_VERSION, "config": self.config.to_json(),
                  "segments": table, "meta": self.meta}
        arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                  "insns": isa.encode_program(self.instructions, lay)}
        for i, s in enumerate(self.segments.values()):
            if s.data is not None:
                arrays[f"seg{i}"] = s.data
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Program:
        """Read a program written by :meth:`save`; a bad file raises :class:`ProgramError`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                if header.get("version") != FORMAT_VERSION:
                    raise ProgramError(f"{path}: program format version {header.get('version')}"
                                       f", expected {FORMAT_VERSION}")
                cfg = from_json(header["config"], source=f"{path}: config")
                insns = isa.decode_program(z["insns"], isa.layout(cfg))
                segs = {}
                for i, s in enumerate(header["segments"]):
                    data = z[f"seg{i}"] if s["has_data"] else None
                    if data is not None and data.size != s["nbytes"]:
                        raise ProgramError(f"{path}: segment {s['name']}: {data.size} bytes, "
                                           f"table says {s['nbytes']}")
                    segs[s["name"]] = Segment(s["name"], s["kind"], s["offset"], s["nbytes"],
                                              data)
        except OSError as err:
            raise ProgramError(f"{path}: cannot read the program: {err.strerror or err}") from err
        except (zipfile.BadZipFile, KeyError, ValueError) as err:
            if isinstance(err, VtaError):
                raise ProgramError(f"{path}: {err}") from err
            raise ProgramError(f"{path}: not a VTA program: {err}") from err
        return cls(cfg, insns, segs, header.get("meta", {}))


def _deps(insn: Instruction) -> str:
    pops = [n for n in ("prev", "next") if getattr(insn, f"pop_{n}")]
    pushes = [n for n in ("prev", "next") if getattr(insn, f"push_{n}")]
    parts = ([f"pop:{','.join(pops)}"] if pops else []) + \
        ([f"push:{','.join(pushes)}"] if pushes else [])
    return "  ; " + " ".join(parts) if parts else ""


def format_insn(insn: Instruction) -> str:
    """One readable line for an instruction (no index)."""
    if isinstance(insn, Load | Store):
        pad = ""
        if insn.y_pad0 or insn.y_pad1 or insn.x_pad0 or insn.x_pad1:
            pad = f" pad=y({insn.y_pad0},{insn.y_pad1}) x({insn.x_pad0},{insn.x_pad1})"
            if isinstance(insn, Load) and insn.pad_min:
                pad += " min"
        text = (f"{insn.opcode.name:<6} {insn.buffer.name:<3} sram={insn.sram_base} "
                f"dram={insn.dram_base} y={insn.y_size} x={insn.x_size} "
                f"stride={insn.x_stride}{pad}")
    elif isinstance(insn, isa.Gemm | isa.Alu):
        loops = (f"uop=[{insn.uop_bgn},{insn.uop_end}) out={insn.iter_out}"
                 f"(dst {insn.dst_factor_out}, src {insn.src_factor_out}")
        inner = f" in={insn.iter_in}(dst {insn.dst_factor_in}, src {insn.src_factor_in}"
        if isinstance(insn, isa.Gemm):
            loops += f", wgt {insn.wgt_factor_out})"
            inner += f", wgt {insn.wgt_factor_in})"
            text = f"GEMM{' reset' if insn.reset else ''}  {loops}{inner}"
        else:
            operand = f"imm={insn.imm}" if insn.use_imm else "acc"
            text = f"ALU    {insn.alu_op.name} {operand} {loops}){inner})"
    else:
        text = insn.opcode.name
    return text + _deps(insn)


def _uop_lines(prog: Program, insn: Load, lay: isa.Layout) -> list[str]:
    words_at = np.arange(insn.x_size)[None, :] + insn.x_stride * np.arange(insn.y_size)[:, None]
    addrs = 4 * (insn.dram_base + words_at.ravel())
    for s in prog.segments.values():
        end = s.offset + s.nbytes
        if s.data is not None and s.offset <= addrs.min() and addrs.max() + 4 <= end:
            words = s.data.view(np.uint32)[(addrs - s.offset) // 4]
            break
    else:
        return ["        (micro-ops outside the program's initialized segments)"]
    dst, src, wgt = lay.decode_uops(words)
    xtotal = insn.x_pad0 + insn.x_size + insn.x_pad1
    rows = np.arange(insn.y_size)[:, None] + insn.y_pad0
    sram = (insn.sram_base + rows * xtotal + insn.x_pad0 + np.arange(insn.x_size)[None, :]).ravel()
    return [f"        uop {k}: dst={d} src={s} wgt={w}"
            for k, d, s, w in zip(sram, dst, src, wgt, strict=True)]


def disasm(prog: Program, uops: bool = False) -> str:
    """The program as text: a header, segments, then one line per instruction (index first);
    with ``uops`` each LOAD UOP is followed by the micro-ops it loads."""
    cfg = prog.config
    lay = isa.layout(cfg)
    lines = [f"; VTA program for config {cfg.name}: {len(prog.instructions)} instructions, "
             f"{prog.dram_bytes} bytes of DRAM"]
    for s in prog.segments.values():
        lines.append(f"; segment {s.name:<12} {s.kind:<3} offset={s.offset} bytes={s.nbytes}"
                     f"{'' if s.data is not None else ' (written by the program)'}")
    width = len(str(max(len(prog.instructions) - 1, 0)))
    for i, insn in enumerate(prog.instructions):
        lines.append(f"{i:>{width}}  {format_insn(insn)}")
        if uops and isinstance(insn, Load) and insn.buffer == Buffer.UOP:
            lines.extend(_uop_lines(prog, insn, lay))
    return "\n".join(lines) + "\n"
