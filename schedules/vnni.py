"""Integer dot-product tensor intrinsics for x86: AVX512-VNNI, and exact int16 paths without it.

Each intrinsic computes ``C[i] += sum_k A . B`` for ``lanes`` int32 outputs ``i`` and
``group`` reduction elements ``k`` per output: one instruction on one vector register. One
operand is a vector (``lanes x group`` bytes, contiguous), the other is ``group`` values
broadcast to every lane:

- ``"wvec"`` (GEMM, lanes along output columns): activations ``A[group]`` broadcast, weights
  ``B[lanes, group]`` a vector;
- ``"xvec"`` (convolution, lanes along output pixels): activations ``A[lanes, group]`` a
  vector, weights ``B[group]`` broadcast.

ISAs (:func:`select_isa` picks one from the target's features):

- ``vnni``: ``vpdpbusd``, unsigned 8-bit activations x signed 8-bit weights, 4 per lane.
  TVM's own ``dot_16x4_vnni`` passes ``<16 x i32>`` operands, which LLVM 22's
  ``llvm.x86.avx512.vpdpbusd.512`` (``<64 x i8>``) rejects; here the operands are
  reinterpreted as ``uint8x64`` / ``int8x64``. Signed activations are shifted to unsigned by
  the caller (``+128``) and ``128 * sum_k B`` subtracted afterwards (:attr:`DotIsa.shift`).
- ``avx512-i16`` / ``avx2-i16``: both operands sign- or zero-extended to int16 in registers,
  then ``vpmaddwd`` (2 per lane). Exact for every 8-bit input: each product is at most
  ``2^15`` in magnitude and the pair sum fits int32. ``pmaddubsw`` (TVM's
  ``dot_16x4_avx512``) would saturate int16 on full-range inputs, so it is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target import Target, codegen

Operand = Literal["wvec", "xvec"]


@dataclass(frozen=True)
class DotIsa:
    """One dot-product instruction family.

    Attributes
    ----------
    name : ``"vnni"``, ``"avx512-i16"`` or ``"avx2-i16"``.
    lanes : int32 outputs per instruction.
    group : reduction elements per output per instruction (the packing width along K).
    shift : signed activations are stored ``+128`` as uint8 (VNNI multiplies u8 x s8 only).
    """

    name: str
    lanes: int
    group: int
    shift: bool

    def act_dtype(self, x_dtype: str) -> str:
        """How activations of dtype ``x_dtype`` are stored in the kernel's packed buffer."""
        if x_dtype not in ("uint8", "int8"):
            raise ValueError(f"int8 kernels take uint8 or int8 activations, got {x_dtype}")
        return "uint8" if self.shift else x_dtype

    def intrin(self, x_dtype: str, operand: Operand) -> str:
        """The registered intrinsic name for activations of ``x_dtype`` (before any shift)."""
        return _name(self, self.act_dtype(x_dtype), operand)


VNNI = DotIsa("vnni", 16, 4, True)
AVX512_I16 = DotIsa("avx512-i16", 16, 2, False)
AVX2_I16 = DotIsa("avx2-i16", 8, 2, False)
ISAS = (VNNI, AVX512_I16, AVX2_I16)


def select_isa(target: Target | None = None) -> DotIsa:
    """The fastest exact ISA the target has (its ``mcpu``/``mattr``, not the running CPU).

    Raises
    ------
    ValueError
        When the target has not even AVX2.
    """
    target = target or Target.current()
    has = {f: bool(codegen.llvm_cpu_has_features(f, target))
           for f in ("avx512vnni", "avx512bw", "avx2")}
    if has["avx512vnni"] and has["avx512bw"]:
        return VNNI
    if has["avx512bw"]:
        return AVX512_I16
    if has["avx2"]:
        return AVX2_I16
    raise ValueError(f"int8 kernels need AVX2 at least; target {target} has none of "
                     "avx512vnni, avx512bw, avx2")


def _name(isa: DotIsa, act: str, operand: Operand) -> str:
    return f"squeezer_dot_{isa.name}_{act}_{operand}"


def _desc(lanes: int, group: int, act: str, operand: Operand):
    a_shape = (group,) if operand == "wvec" else (lanes, group)
    b_shape = (lanes, group) if operand == "wvec" else (group,)

    if operand == "wvec":
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, act, offset_factor=1)
            B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                for i, k in T.grid(lanes, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])
    else:
        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, act, offset_factor=1)
            B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:lanes, 0:group], B[0:group])
                T.writes(C[0:lanes])
                for i, k in T.grid(lanes, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.Cast("int32", A[vi, vk]) * T.Cast("int32", B[vk])
    return desc


def _vnni_impl(operand: Operand):
    a_shape = (4,) if operand == "wvec" else (16, 4)
    b_shape = (16, 4) if operand == "wvec" else (4,)
    vpdpbusd = "llvm.x86.avx512.vpdpbusd.512"
    if operand == "wvec":
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, "uint8", offset_factor=1)
            B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
            C = T.match_buffer(c, (16,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:16], A[0:4], B[0:16, 0:4])
                T.writes(C[0:16])
                a_i32 = T.reinterpret("int32", A.vload([0], "uint8x4"))
                C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                    "int32x16", T.llvm_lookup_intrinsic_id(vpdpbusd),
                    C.vload([0], "int32x16"),
                    T.reinterpret("uint8x64", T.broadcast(a_i32, 16)),
                    B.vload([0, 0], "int8x64"))
    else:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, "uint8", offset_factor=1)
            B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
            C = T.match_buffer(c, (16,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:16], A[0:16, 0:4], B[0:4])
                T.writes(C[0:16])
                b_i32 = T.reinterpret("int32", B.vload([0], "int8x4"))
                C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                    "int32x16", T.llvm_lookup_intrinsic_id(vpdpbusd),
                    C.vload([0], "int32x16"),
                    A.vload([0, 0], "uint8x64"),
                    T.reinterpret("int8x64", T.broadcast(b_i32, 16)))
    return impl


def _i16_impl(lanes: int, act: str, operand: Operand):
    """``vpmaddwd`` on operands widened to int16 (sign- or zero-extension by ``T.Cast``)."""
    a_shape = (2,) if operand == "wvec" else (lanes, 2)
    b_shape = (lanes, 2) if operand == "wvec" else (2,)
    pmadd = "llvm.x86.avx512.pmaddw.d.512" if lanes == 16 else "llvm.x86.avx2.pmadd.wd"
    v16, v32 = f"int16x{2 * lanes}", f"int32x{lanes}"
    a_vec, b_vec = f"{act}x{2 * lanes}", f"int8x{2 * lanes}"
    a_pair, b_pair = f"{act}x2", "int8x2"
    if operand == "wvec":
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, act, offset_factor=1)
            B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
                T.writes(C[0:lanes])
                a_i32 = T.reinterpret("int32", T.Cast("int16x2", A.vload([0], a_pair)))
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], v32) + T.call_llvm_pure_intrin(
                    v32, T.llvm_lookup_intrinsic_id(pmadd),
                    T.Cast(v16, B.vload([0, 0], b_vec)),
                    T.reinterpret(v16, T.broadcast(a_i32, lanes)))
    else:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, a_shape, act, offset_factor=1)
            B = T.match_buffer(b, b_shape, "int8", offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:lanes, 0:2], B[0:2])
                T.writes(C[0:lanes])
                b_i32 = T.reinterpret("int32", T.Cast("int16x2", B.vload([0], b_pair)))
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], v32) + T.call_llvm_pure_intrin(
                    v32, T.llvm_lookup_intrinsic_id(pmadd),
                    T.Cast(v16, A.vload([0, 0], a_vec)),
                    T.reinterpret(v16, T.broadcast(b_i32, lanes)))
    return impl


def _register() -> None:
    from squeezer.tune._fastimport import fast_stack

    with fast_stack():  # inspect.stack() per prim_func costs seconds with torch loaded
        _register_all()


def _register_all() -> None:
    for operand in ("wvec", "xvec"):
        TensorIntrin.register(_name(VNNI, "uint8", operand), _desc(16, 4, "uint8", operand),
                              _vnni_impl(operand), override=True)
        for isa in (AVX512_I16, AVX2_I16):
            for act in ("uint8", "int8"):
                TensorIntrin.register(_name(isa, act, operand),
                                      _desc(isa.lanes, 2, act, operand),
                                      _i16_impl(isa.lanes, act, operand), override=True)


_register()
