"""Tensor intrinsics of the ``int4_matmul`` kernel: one 16 x 8 tile of packed nibbles times 8
activations, accumulated into 16 lanes.

The description is the scalar arithmetic the kernel's ``dot`` block states (so that TVM's
analyses, MetaSchedule's flop estimate included, see plain integer or float operations); the
implementation is what the schedule puts in its place:

- ``VNNI`` (``int8`` activations): one 64-byte load, ``& 0x0F`` and ``>> 4`` give the two
  16 x 4 unsigned operands, each multiplied with 4 activations broadcast as one int32 by
  ``vpdpbusd`` (unsigned x signed bytes, 4 products per int32 lane, exact). Its operands are
  ``<64 x i8>`` in LLVM 22 (TVM's own ``dot_16x4_vnni`` passes ``<16 x i32>`` and fails).
- ``FLOAT`` (float activations, any vector ISA): the 64 bytes as 16 int32 lanes, one output
  each; ``>> (8 * j + 4 * h) & 15`` takes out value ``4 * h + j``, converted to float and
  multiplied with the activation broadcast.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .int4_pack import LANES, STEP

VNNI = "squeezer_int4_dot_vnni"
FLOAT = "squeezer_int4_dot_float"
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def nibble(byte, j):
    """Value ``j`` (0..7) of an output's tile row from its packed byte ``j % 4``, unsigned."""
    return (byte >> T.Cast("uint8", j // 4 * 4)) & T.uint8(15)


def _desc(act: str, acc: str):
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (STEP,), act, offset_factor=1)
        B = T.match_buffer(b, (LANES, 4), "uint8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), acc, offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], B[0:LANES, 0:4], A[0:STEP])
            T.writes(C[0:LANES])
            for i, j in T.grid(LANES, STEP):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    C[vi] = C[vi] + T.Cast(acc, nibble(B[vi, vj % 4], vj)) * T.Cast(acc, A[vj])

    return desc


@T.prim_func(s_tir=True)
def _vnni_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (STEP,), "int8", offset_factor=1)
    B = T.match_buffer(b, (LANES, 4), "uint8", offset_factor=1)
    C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:LANES], B[0:LANES, 0:4], A[0:STEP])
        T.writes(C[0:LANES])
        raw = B.vload([0, 0], "uint8x64")
        a_lo = T.reinterpret("int32", A.vload([0], "int8x4"))
        a_hi = T.reinterpret("int32", A.vload([4], "int8x4"))
        C[T.ramp(0, 1, LANES)] = T.call_llvm_pure_intrin(
            "int32x16", T.llvm_lookup_intrinsic_id(_VPDPBUSD),
            T.call_llvm_pure_intrin(
                "int32x16", T.llvm_lookup_intrinsic_id(_VPDPBUSD), C.vload([0], "int32x16"),
                raw & T.broadcast(T.uint8(15), 64),
                T.reinterpret("int8x64", T.broadcast(a_lo, 16))),
            raw >> T.broadcast(T.uint8(4), 64),
            T.reinterpret("int8x64", T.broadcast(a_hi, 16)))


def _float_sum(acc, raw, a):
    for h in range(2):
        for j in range(4):
            u = (raw >> T.broadcast(8 * j + 4 * h, LANES)) & T.broadcast(15, LANES)
            acc = acc + T.Cast("float32x16", u) * T.broadcast(a[4 * h + j], LANES)
    return acc


@T.prim_func(s_tir=True)
def _float_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (STEP,), "float32", offset_factor=1)
    B = T.match_buffer(b, (LANES, 4), "uint8", offset_factor=1)
    C = T.match_buffer(c, (LANES,), "float32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:LANES], B[0:LANES, 0:4], A[0:STEP])
        T.writes(C[0:LANES])
        C[T.ramp(0, 1, LANES)] = _float_sum(
            C.vload([0], "float32x16"), T.reinterpret("int32x16", B.vload([0, 0], "uint8x64")),
            A)


TensorIntrin.register(VNNI, _desc("int8", "int32"), _vnni_impl, override=True)
TensorIntrin.register(FLOAT, _desc("float32", "float32"), _float_impl, override=True)
