"""Hardware configuration of the VTA-style accelerator.

A configuration is a JSON object with VTA-style log2 fields plus the figures of the timing model.
``load_config`` validates it and returns a frozen :class:`VtaConfig` whose properties give the
derived sizes (block shapes, bytes per element-block, buffer depths in entries).

JSON fields (all required unless marked optional):

=========================  =========================================================================
``NAME``                   optional; the config's name (default: the file's stem)
``LOG_INP_WIDTH``          log2 bits of an input element: 3 (int8) or 0 (binary, +-1)
``LOG_WGT_WIDTH``          log2 bits of a weight: 3 (int8), 2 (int4) or 0 (binary, +-1)
``LOG_ACC_WIDTH``          log2 bits of an accumulator: 5 (int32)
``LOG_BATCH``              log2 rows of an input block (0..4)
``LOG_BLOCK``              log2 of the GEMM block (in = out); or ``LOG_BLOCK_IN`` and
                           ``LOG_BLOCK_OUT`` separately (2..6)
``LOG_*_BUFF_SIZE``        log2 bytes of the UOP, INP, WGT and ACC scratchpads (8..24)
``CLOCK_MHZ``              clock of the core (for the time reported by the timing model)
``DMA_BYTES_PER_CYCLE``    DRAM bandwidth of one LOAD or STORE
``DMA_LATENCY_CYCLES``     fixed cycles added to every LOAD and STORE
``ALU_LANES``              accumulator elements the ALU processes per cycle
``GEMM_PIPELINE_DEPTH``    cycles added to every GEMM instruction (fill and drain)
``ALU_PIPELINE_DEPTH``     cycles added to every ALU instruction
``TOKEN_QUEUE_DEPTH``      tokens each of the four dependency queues holds
=========================  =========================================================================

Binary inputs need binary weights (the GEMM is then XNOR-popcount). Outputs are int8 (a STORE
narrows the int32 accumulators).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import VtaConfigError

CONFIG_DIR = Path(__file__).parent / "configs"

# JSON field -> (dataclass field, type, allowed values or (lo, hi) inclusive range)
_INT_FIELDS: dict[str, tuple[str, frozenset[int] | tuple[int, int]]] = {
    "LOG_INP_WIDTH": ("log_inp_width", frozenset({0, 3})),
    "LOG_WGT_WIDTH": ("log_wgt_width", frozenset({0, 2, 3})),
    "LOG_ACC_WIDTH": ("log_acc_width", frozenset({5})),
    "LOG_BATCH": ("log_batch", (0, 4)),
    "LOG_UOP_BUFF_SIZE": ("log_uop_buff_size", (8, 24)),
    "LOG_INP_BUFF_SIZE": ("log_inp_buff_size", (8, 24)),
    "LOG_WGT_BUFF_SIZE": ("log_wgt_buff_size", (8, 24)),
    "LOG_ACC_BUFF_SIZE": ("log_acc_buff_size", (8, 24)),
    "DMA_BYTES_PER_CYCLE": ("dma_bytes_per_cycle", (1, 1024)),
    "DMA_LATENCY_CYCLES": ("dma_latency_cycles", (0, 100_000)),
    "ALU_LANES": ("alu_lanes", (1, 4096)),
    "GEMM_PIPELINE_DEPTH": ("gemm_pipeline_depth", (0, 1000)),
    "ALU_PIPELINE_DEPTH": ("alu_pipeline_depth", (0, 1000)),
    "TOKEN_QUEUE_DEPTH": ("token_queue_depth", (1, 1 << 16)),
}
_BLOCK_RANGE = (2, 6)


@dataclass(frozen=True)
class VtaConfig:
    """One accelerator configuration (log2 fields as in VTA; sizes derived as properties)."""

    name: str
    log_inp_width: int
    log_wgt_width: int
    log_acc_width: int
    log_batch: int
    log_block_in: int
    log_block_out: int
    log_uop_buff_size: int
    log_inp_buff_size: int
    log_wgt_buff_size: int
    log_acc_buff_size: int
    clock_mhz: float
    dma_bytes_per_cycle: int
    dma_latency_cycles: int
    alu_lanes: int
    gemm_pipeline_depth: int
    alu_pipeline_depth: int
    token_queue_depth: int

    # -- element widths (bits) --
    @property
    def inp_bits(self) -> int:
        return 1 << self.log_inp_width

    @property
    def wgt_bits(self) -> int:
        return 1 << self.log_wgt_width

    @property
    def acc_bits(self) -> int:
        return 1 << self.log_acc_width

    @property
    def out_bits(self) -> int:
        """Bits of an output element written by STORE (always int8)."""
        return 8

    @property
    def binary_gemm(self) -> bool:
        """True when inputs and weights are both +-1 bits: the GEMM is XNOR-popcount."""
        return self.inp_bits == 1 and self.wgt_bits == 1

    # -- block shapes --
    @property
    def batch(self) -> int:
        return 1 << self.log_batch

    @property
    def block_in(self) -> int:
        return 1 << self.log_block_in

    @property
    def block_out(self) -> int:
        return 1 << self.log_block_out

    @property
    def inp_block(self) -> tuple[int, int]:
        """Shape of one input scratchpad entry: (batch, block_in)."""
        return (self.batch, self.block_in)

    @property
    def wgt_block(self) -> tuple[int, int]:
        """Shape of one weight scratchpad entry: (block_out, block_in)."""
        return (self.block_out, self.block_in)

    @property
    def acc_block(self) -> tuple[int, int]:
        """Shape of one accumulator (and output) entry: (batch, block_out)."""
        return (self.batch, self.block_out)

    # -- bytes per entry (element-block) --
    @property
    def inp_block_bytes(self) -> int:
        return self.batch * self.block_in * self.inp_bits // 8

    @property
    def wgt_block_bytes(self) -> int:
        return self.block_out * self.block_in * self.wgt_bits // 8

    @property
    def acc_block_bytes(self) -> int:
        return self.batch * self.block_out * self.acc_bits // 8

    @property
    def out_block_bytes(self) -> int:
        return self.batch * self.block_out * self.out_bits // 8

    @property
    def uop_bytes(self) -> int:
        return 4

    # -- buffer depths (entries) --
    @property
    def uop_depth(self) -> int:
        return (1 << self.log_uop_buff_size) // self.uop_bytes

    @property
    def inp_depth(self) -> int:
        return (1 << self.log_inp_buff_size) // self.inp_block_bytes

    @property
    def wgt_depth(self) -> int:
        return (1 << self.log_wgt_buff_size) // self.wgt_block_bytes

    @property
    def acc_depth(self) -> int:
        return (1 << self.log_acc_buff_size) // self.acc_block_bytes

    @property
    def block_bytes(self) -> dict[str, int]:
        """Bytes of one DRAM element per buffer name (UOP, WGT, INP, ACC, OUT)."""
        return {"UOP": self.uop_bytes, "WGT": self.wgt_block_bytes, "INP": self.inp_block_bytes,
                "ACC": self.acc_block_bytes, "OUT": self.out_block_bytes}

    @property
    def depths(self) -> dict[str, int]:
        """Entries per scratchpad (UOP, WGT, INP, ACC)."""
        return {"UOP": self.uop_depth, "WGT": self.wgt_depth, "INP": self.inp_depth,
                "ACC": self.acc_depth}

    def to_json(self) -> dict[str, Any]:
        """The JSON object this config loads from (``from_json(cfg.to_json()) == cfg``)."""
        d = asdict(self)
        out: dict[str, Any] = {"NAME": d.pop("name"), "CLOCK_MHZ": d.pop("clock_mhz")}
        out["LOG_BLOCK_IN"] = d.pop("log_block_in")
        out["LOG_BLOCK_OUT"] = d.pop("log_block_out")
        for key, (attr, _) in _INT_FIELDS.items():
            out[key] = d.pop(attr)
        return out


def _check_int(source: str, key: str, value: Any, allowed: frozenset[int] | tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise VtaConfigError(f"{source}: field {key}: expected an integer, got {value!r}")
    if isinstance(allowed, frozenset):
        if value not in allowed:
            raise VtaConfigError(f"{source}: field {key}: expected one of "
                                 f"{sorted(allowed)}, got {value}")
    elif not allowed[0] <= value <= allowed[1]:
        raise VtaConfigError(f"{source}: field {key}: expected {allowed[0]}..{allowed[1]}, "
                             f"got {value}")
    return value


def from_json(obj: Any, source: str = "<config>", default_name: str = "custom") -> VtaConfig:
    """Validate a JSON object (dict) and build the config; errors name ``source`` and the field."""
    if not isinstance(obj, dict):
        raise VtaConfigError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    obj = dict(obj)
    known = set(_INT_FIELDS) | {"NAME", "CLOCK_MHZ", "LOG_BLOCK", "LOG_BLOCK_IN", "LOG_BLOCK_OUT"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise VtaConfigError(f"{source}: unknown field {unknown[0]} "
                             f"(known: {', '.join(sorted(known))})")
    missing = [k for k in (*_INT_FIELDS, "CLOCK_MHZ") if k not in obj]
    if missing:
        raise VtaConfigError(f"{source}: missing field {missing[0]}")
    kw: dict[str, Any] = {}
    for key, (attr, allowed) in _INT_FIELDS.items():
        kw[attr] = _check_int(source, key, obj[key], allowed)
    clock = obj["CLOCK_MHZ"]
    if isinstance(clock, bool) or not isinstance(clock, int | float) or not clock > 0:
        raise VtaConfigError(f"{source}: field CLOCK_MHZ: expected a positive number, "
                             f"got {clock!r}")
    kw["clock_mhz"] = float(clock)
    name = obj.get("NAME", default_name)
    if not isinstance(name, str) or not name:
        raise VtaConfigError(f"{source}: field NAME: expected a non-empty string, got {name!r}")
    kw["name"] = name
    if "LOG_BLOCK" in obj:
        if "LOG_BLOCK_IN" in obj or "LOG_BLOCK_OUT" in obj:
            raise VtaConfigError(f"{source}: field LOG_BLOCK: give either LOG_BLOCK or "
                                 "LOG_BLOCK_IN and LOG_BLOCK_OUT, not both")
        blk = _check_int(source, "LOG_BLOCK", obj["LOG_BLOCK"], _BLOCK_RANGE)
        kw["log_block_in"] = kw["log_block_out"] = blk
    else:
        for key in ("LOG_BLOCK_IN", "LOG_BLOCK_OUT"):
            if key not in obj:
                raise VtaConfigError(f"{source}: missing field {key} (or LOG_BLOCK)")
            kw[key.lower()] = _check_int(source, key, obj[key], _BLOCK_RANGE)
    cfg = VtaConfig(**kw)
    _check_consistent(cfg, source)
    return cfg


def _check_consistent(cfg: VtaConfig, source: str) -> None:
    if cfg.inp_bits == 1 and cfg.wgt_bits != 1:
        raise VtaConfigError(f"{source}: field LOG_WGT_WIDTH: binary inputs (LOG_INP_WIDTH 0) "
                             f"need binary weights (expected 0, got {cfg.log_wgt_width})")
    if (cfg.inp_bits == 1 or cfg.wgt_bits == 1) and cfg.block_in % 8:
        raise VtaConfigError(f"{source}: field LOG_BLOCK_IN: 1-bit elements are packed in bytes "
                             f"along the block (expected block_in >= 8, got {cfg.block_in})")
    for key, entry in (("LOG_UOP_BUFF_SIZE", cfg.uop_bytes),
                       ("LOG_INP_BUFF_SIZE", cfg.inp_block_bytes),
                       ("LOG_WGT_BUFF_SIZE", cfg.wgt_block_bytes),
                       ("LOG_ACC_BUFF_SIZE", cfg.acc_block_bytes)):
        size = 1 << getattr(cfg, key.lower())
        if size < entry:
            raise VtaConfigError(
                f"{source}: field {key}: the buffer cannot hold one block (expected at least "
                f"{int(math.log2(entry))} ({entry} bytes per block), got "
                f"{getattr(cfg, key.lower())} ({size} bytes))")
    from .isa import check_layout  # local: isa imports this module

    check_layout(cfg, source)


def preset_names() -> list[str]:
    """Names of the shipped presets (JSON files in ``targets/vta/configs``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(spec: str | Path | VtaConfig) -> VtaConfig:
    """Load a config from a preset name (``"1x16x16"``) or a JSON file path.

    Raises
    ------
    VtaConfigError
        unknown preset, unreadable file, bad JSON, or a field that fails validation.
    """
    if isinstance(spec, VtaConfig):
        return spec
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{spec}.json"
        if not path.exists():
            raise VtaConfigError(f"unknown VTA config {str(spec)!r} (presets: "
                                 f"{', '.join(preset_names())}; or give a .json file)")
    try:
        obj = json.loads(path.read_text())
    except OSError as err:
        raise VtaConfigError(f"{path}: cannot read the config: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise VtaConfigError(f"{path}: not JSON: {err}") from err
    return from_json(obj, source=str(path), default_name=path.stem)
