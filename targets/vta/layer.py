"""Layer specs: the contract between the graph side (``vta_partition``) and the layer compiler.

A layer is an int8 convolution (:class:`ConvLayer`, NCHW, groups 1, dilation 1) or dense product
(:class:`DenseLayer`) whose int32 accumulator ``acc = sum w * x`` (raw input codes, padding filled
with the input zero point) is requantized by :class:`Requant32`, the 32-bit arithmetic of the
accelerator's ALU. ``reference`` gives the exact expected output of each.

:func:`compile_layer` (implemented in :mod:`squeezer.targets.vta.lower`) turns a layer into a
:class:`LayerProgram`: a VTA :class:`~.program.Program` plus the packed DRAM layouts of its input
and output (:class:`PackedLayout`) and the :class:`Knobs` of its schedule.

Packed layout (NCHWnc): ``(N/b, C/bc, H, W, b, bc)`` with channels padded to the block ``bc``
(``block_in`` for inputs, ``block_out`` for outputs) and the batch to ``b``; a dense tensor
``(M, K)`` is the 1x1 image ``(M/b, K/bc, 1, 1, b, bc)``. Elements are int8 bytes holding
``value + value_offset``: a uint8 tensor is stored shifted by -128 (so an int8 GEMM multiplies
it exactly; the compiler adds ``128 * sum(w)`` to the requant offset), an int8 tensor as is. On a
binary-input core the input holds +-1 as bits (:mod:`.pack`). ``PackedLayout.pack`` fills the
padded channels and batch rows with zero bytes (``-1`` on binary cores); in a layer's *output*
they hold unspecified values, which a consuming int8/int4 layer multiplies by its zero-padded
weights, so a packed output feeds the next layer as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import VtaError

if TYPE_CHECKING:
    from .config import VtaConfig
    from .program import Program
    from .sim import Driver
    from .timing import Counters

DTYPE_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


class LayerError(VtaError):
    """A layer spec that is inconsistent, or one the accelerator cannot run as given."""


@dataclass(frozen=True, eq=False)
class Requant32:
    """``y = clip((((acc + offset) >> pre) * mult + rounding) >> post, lo, hi)`` per channel.

    All arithmetic is int32 with wraparound, as the accelerator's ALU computes it (the graph side
    picks constants that never overflow); ``>>`` is arithmetic. ``offset, pre, mult, rounding,
    post`` are int32 arrays of shape ``(C_out,)`` (shifts in 0..31); ``lo, hi`` lie in the range of
    ``out_dtype`` ("int8" or "uint8").
    """

    offset: np.ndarray
    pre: np.ndarray
    mult: np.ndarray
    rounding: np.ndarray
    post: np.ndarray
    lo: int
    hi: int
    out_dtype: str

    ARRAYS = ("offset", "pre", "mult", "rounding", "post")

    def __post_init__(self) -> None:
        if self.out_dtype not in DTYPE_RANGE:
            raise LayerError(f"Requant32: out_dtype: expected int8 or uint8, got "
                             f"{self.out_dtype!r}")
        shape = None
        for name in self.ARRAYS:
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1:
                raise LayerError(f"Requant32: {name}: expected a 1-D array, got shape {arr.shape}")
            if shape is not None and arr.shape != shape:
                raise LayerError(f"Requant32: {name}: shape {arr.shape}, offset has {shape}")
            shape = arr.shape
            if arr.size and (arr.min() < -(1 << 31) or arr.max() >= 1 << 31):
                raise LayerError(f"Requant32: {name}: values outside int32")
            object.__setattr__(self, name, arr.astype(np.int32))
        for name in ("pre", "post"):
            arr = getattr(self, name)
            if arr.size and (arr.min() < 0 or arr.max() > 31):
                raise LayerError(f"Requant32: {name}: shifts must lie in 0..31, got "
                                 f"[{arr.min()}, {arr.max()}]")
        lo, hi = DTYPE_RANGE[self.out_dtype]
        if not lo <= self.lo <= self.hi <= hi:
            raise LayerError(f"Requant32: lo={self.lo}, hi={self.hi}: expected "
                             f"{lo} <= lo <= hi <= {hi} for {self.out_dtype}")

    @property
    def channels(self) -> int:
        return int(self.offset.shape[0])

    def apply(self, acc: np.ndarray, axis: int = 1) -> np.ndarray:
        """Requantize int32 accumulators (channels on ``axis``: 1 for NCHW, -1 for dense)."""
        acc = np.asarray(acc)
        if acc.dtype != np.int32:
            raise LayerError(f"Requant32.apply: expected int32 accumulators, got {acc.dtype}")
        if acc.shape[axis] != self.channels:
            raise LayerError(f"Requant32.apply: axis {axis} has {acc.shape[axis]} channels, "
                             f"the requant {self.channels}")
        shape = [1] * acc.ndim
        shape[axis] = self.channels

        def ch(name: str) -> np.ndarray:
            return getattr(self, name).reshape(shape)

        with np.errstate(over="ignore"):
            y = ((acc + ch("offset")) >> ch("pre")) * ch("mult")
            y = (y + ch("rounding")) >> ch("post")
        return np.clip(y, self.lo, self.hi).astype(self.out_dtype)


def _check_common(kind: str, name: str, in_dtype: str, in_zero: int, weight: np.ndarray,
                  requant: Requant32, out_channels: int) -> None:
    where = f"{kind} {name!r}"
    if in_dtype not in DTYPE_RANGE:
        raise LayerError(f"{where}: in_dtype: expected int8 or uint8, got {in_dtype!r}")
    lo, hi = DTYPE_RANGE[in_dtype]
    if not lo - 1 <= in_zero <= hi:  # -1: the padding value of a +-1 input
        raise LayerError(f"{where}: in_zero {in_zero} outside {in_dtype}")
    if weight.size and (weight.min() < -128 or weight.max() > 127):
        raise LayerError(f"{where}: weight values outside int8")
    if requant.channels != out_channels:
        raise LayerError(f"{where}: requant has {requant.channels} channels, the weight "
                         f"{out_channels} output channels")


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """int8 conv2d (groups 1, dilation 1) with its requantization; shapes NCHW / OIHW."""

    name: str
    in_shape: tuple[int, int, int, int]
    in_dtype: str
    in_zero: int
    weight: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    requant: Requant32

    def __post_init__(self) -> None:
        w = np.asarray(self.weight)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "in_shape", tuple(int(v) for v in self.in_shape))
        object.__setattr__(self, "stride", tuple(int(v) for v in self.stride))
        object.__setattr__(self, "padding", tuple(int(v) for v in self.padding))
        where = f"conv {self.name!r}"
        if len(self.in_shape) != 4 or min(self.in_shape) < 1:
            raise LayerError(f"{where}: in_shape: expected (N, C, H, W), got {self.in_shape}")
        if w.ndim != 4 or w.shape[1] != self.in_shape[1]:
            raise LayerError(f"{where}: weight: expected (O, {self.in_shape[1]}, KH, KW), got "
                             f"{w.shape}")
        if len(self.stride) != 2 or min(self.stride) < 1:
            raise LayerError(f"{where}: stride: expected two positive ints, got {self.stride}")
        if len(self.padding) != 4 or min(self.padding) < 0:
            raise LayerError(f"{where}: padding: expected (top, left, bottom, right) >= 0, got "
                             f"{self.padding}")
        _check_common("conv", self.name, self.in_dtype, self.in_zero, w, self.requant, w.shape[0])
        if min(self.out_shape()[2:]) < 1:
            raise LayerError(f"{where}: the kernel {w.shape[2:]} does not fit the padded input")

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    def out_shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.in_shape
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        sh, sw = self.stride
        return (n, int(self.weight.shape[0]), (h + pt + pb - kh) // sh + 1,
                (w + pl + pr - kw) // sw + 1)

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        """int64 accumulators ``conv(pad(x, in_zero), weight)`` (NCHW)."""
        x = np.asarray(x)
        if x.shape != self.in_shape:
            raise LayerError(f"conv {self.name!r}: input shape {x.shape}, expected "
                             f"{self.in_shape}")
        pt, pl, pb, pr = self.padding
        xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)),
                    constant_values=self.in_zero)
        kh, kw = self.kernel
        sh, sw = self.stride
        win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        return np.einsum("nchwyx,ocyx->nohw", win, self.weight.astype(np.int64), optimize=True)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The exact output: int64 convolution with zero-point padding, then the requant."""
        return self.requant.apply(self.accumulate(x).astype(np.int32), axis=1)


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """int8 dense product ``x (M, K) @ weight (N, K).T`` with its requantization."""

    name: str
    in_shape: tuple[int, int]
    in_dtype: str
    in_zero: int
    weight: np.ndarray
    requant: Requant32

    def __post_init__(self) -> None:
        w = np.asarray(self.weight)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "in_shape", tuple(int(v) for v in self.in_shape))
        if len(self.in_shape) != 2 or min(self.in_shape) < 1:
            raise LayerError(f"dense {self.name!r}: in_shape: expected (M, K), got "
                             f"{self.in_shape}")
        if w.ndim != 2 or w.shape[1] != self.in_shape[1]:
            raise LayerError(f"dense {self.name!r}: weight: expected (N, {self.in_shape[1]}), "
                             f"got {w.shape}")
        _check_common("dense", self.name, self.in_dtype, self.in_zero, w, self.requant,
                      w.shape[0])

    def out_shape(self) -> tuple[int, int]:
        return (self.in_shape[0], int(self.weight.shape[0]))

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        """int64 accumulators ``x @ weight.T``."""
        x = np.asarray(x)
        if x.shape != self.in_shape:
            raise LayerError(f"dense {self.name!r}: input shape {x.shape}, expected "
                             f"{self.in_shape}")
        return x.astype(np.int64) @ self.weight.astype(np.int64).T

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The exact output: int64 product, then the requant (channels on the last axis)."""
        return self.requant.apply(self.accumulate(x).astype(np.int32), axis=-1)


Layer = ConvLayer | DenseLayer


@dataclass(frozen=True)
class Knobs:
    """Schedule of a layer: tile sizes and virtual threads.

    ``tile_b`` batch blocks, ``tile_h`` / ``tile_w`` output rows / columns, ``tile_co`` output
    channel blocks, ``tile_ci`` input channel blocks per reduction step; ``virtual_threads`` 1 or 2
    (2: the INP/WGT and ACC scratchpads hold two tiles, so loads, compute and stores overlap).
    A dense layer is a 1x1 image per row: ``tile_b`` tiles its rows, ``tile_h = tile_w = 1``.
    """

    tile_b: int = 1
    tile_h: int = 1
    tile_w: int = 1
    tile_co: int = 1
    tile_ci: int = 1
    virtual_threads: int = 2

    def __post_init__(self) -> None:
        for name in ("tile_b", "tile_h", "tile_w", "tile_co", "tile_ci"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 1:
                raise LayerError(f"Knobs: {name}: expected a positive int, got {v!r}")
        if self.virtual_threads not in (1, 2):
            raise LayerError(f"Knobs: virtual_threads: expected 1 or 2, got "
                             f"{self.virtual_threads!r}")


@dataclass(frozen=True)
class PackedLayout:
    """How a tensor lies in device DRAM (see the module docstring).

    ``shape`` is the logical shape (NCHW, or (M, K) / (M, N) for dense), ``blocked`` the
    ``(N/b, C/bc, H, W, b, bc)`` shape of the packed array, ``dtype`` the logical dtype,
    ``value_offset`` what is added to a value before it is stored as an int8 byte,
    ``bits`` 8, or 1 for +-1 bits.
    """

    shape: tuple[int, ...]
    blocked: tuple[int, int, int, int, int, int]
    dtype: str
    value_offset: int
    bits: int = 8

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.blocked)) * self.bits // 8

    def _nchw(self, x: np.ndarray) -> np.ndarray:
        return x[:, :, None, None] if len(self.shape) == 2 else x

    def pack(self, x: np.ndarray) -> np.ndarray:
        """Logical tensor -> uint8 DRAM image."""
        from .pack import pack_bits

        x = np.asarray(x)
        if x.shape != self.shape:
            raise LayerError(f"pack: expected shape {self.shape}, got {x.shape}")
        nb, cb, h, w, b, bc = self.blocked
        n, c = self.shape[:2]
        if self.bits == 1:
            if x.size and not np.isin(x, (-1, 1)).all():
                raise LayerError("pack: a binary-input core takes +-1 values only")
            full = np.full((nb * b, cb * bc, h, w), -1, np.int8)
            full[:n, :c] = self._nchw(x)
        else:
            lo, hi = DTYPE_RANGE[self.dtype]
            if x.size and (x.min() < lo or x.max() > hi):
                raise LayerError(f"pack: values outside {self.dtype}")
            full = np.zeros((nb * b, cb * bc, h, w), np.int8)
            full[:n, :c] = (self._nchw(x).astype(np.int16) + self.value_offset).astype(np.int8)
        blocks = full.reshape(nb, b, cb, bc, h, w).transpose(0, 2, 4, 5, 1, 3)
        if self.bits == 1:
            return pack_bits(blocks).ravel()
        return np.ascontiguousarray(blocks).view(np.uint8).ravel()

    def unpack(self, raw: np.ndarray) -> np.ndarray:
        """uint8 DRAM image (8-bit elements) -> logical tensor."""
        if self.bits != 8:
            raise LayerError("unpack: only 8-bit tensors are read back")
        raw = np.asarray(raw, dtype=np.uint8)
        if raw.size != self.nbytes:
            raise LayerError(f"unpack: expected {self.nbytes} bytes, got {raw.size}")
        nb, cb, h, w, b, bc = self.blocked
        full = raw.view(np.int8).reshape(self.blocked).transpose(0, 4, 1, 5, 2, 3)
        full = full.reshape(nb * b, cb * bc, h, w)[:self.shape[0], :self.shape[1]]
        out = (full.astype(np.int16) - self.value_offset).astype(self.dtype)
        return out[:, :, 0, 0] if len(self.shape) == 2 else out


@dataclass
class LayerProgram:
    """A compiled layer: its program, knobs and the packed layouts of its input and output.

    The program's segments: ``inp`` (the packed input, replaced per run), ``wgt``, ``uop``,
    ``par`` (requant vectors, when not immediates) and ``out`` (the packed output).
    """

    layer: Layer
    config: VtaConfig
    knobs: Knobs
    program: Program
    input_layout: PackedLayout
    output_layout: PackedLayout

    def pack_input(self, x: np.ndarray) -> np.ndarray:
        return self.input_layout.pack(x)

    def unpack_output(self, raw: np.ndarray) -> np.ndarray:
        return self.output_layout.unpack(raw)

    def run(self, driver: Driver, x: np.ndarray) -> tuple[np.ndarray, Counters]:
        """Run on a driver: logical input (NCHW or (M, K)) in, logical output out, counters."""
        res = driver.run_program(self.program, {"inp": self.pack_input(x)})
        return self.unpack_output(res.outputs["out"]), res.counters


def compile_layer(layer: Layer, config: VtaConfig | str, knobs: Knobs | None = None
                  ) -> LayerProgram:
    """Compile a layer to a VTA program (see :func:`squeezer.targets.vta.lower.compile_layer`).

    Imported lazily: the compiler needs TVM, this module does not.
    """
    from .lower import compile_layer as _compile

    return _compile(layer, config, knobs)
