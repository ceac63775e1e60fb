"""The GEMM tensor intrinsics of a VTA config: one (batch x block_out x block_in) block product
accumulated into the accumulator scratchpad, and its reset.

The descriptions are the scalar arithmetic of the conv block's inner loops (operands in the
``local.inp_buffer`` / ``local.wgt_buffer`` / ``local.acc_buffer`` scopes); the implementations
are opaque extern calls (``vta.gemm``, ``vta.gemm_reset``) that the codegen turns into micro-ops.
Registered once per block shape, named ``vta_gemm_<config>`` and ``vta_gemm_reset_<config>``.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from ..config import VtaConfig

INP_SCOPE = "local.inp_buffer"
WGT_SCOPE = "local.wgt_buffer"
ACC_SCOPE = "local.acc_buffer"
GEMM_CALL = "vta.gemm"
RESET_CALL = "vta.gemm_reset"
_registered: dict[str, tuple[int, int, int]] = {}


def _gemm(b: int, bi: int, bo: int):
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (b, bi), "int8", offset_factor=1, scope=INP_SCOPE)
        W = T.match_buffer(w, (bo, bi), "int8", offset_factor=1, scope=WGT_SCOPE)
        C = T.match_buffer(c, (b, bo), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:b, 0:bo], A[0:b, 0:bi], W[0:bo, 0:bi])
            T.writes(C[0:b, 0:bo])
            if b == 1:  # a unit loop is folded out of the block tensorize matches
                for _i, o, k in T.grid(1, bo, bi):
                    with T.sblock("update"):
                        vo, vk = T.axis.remap("SR", [o, k])
                        C[0, vo] = C[0, vo] + T.Cast("int32", A[0, vk]) * T.Cast("int32",
                                                                                 W[vo, vk])
            else:
                for i, o, k in T.grid(b, bo, bi):
                    with T.sblock("update"):
                        vi, vo, vk = T.axis.remap("SSR", [i, o, k])
                        C[vi, vo] = C[vi, vo] + T.Cast("int32", A[vi, vk]) * T.Cast("int32",
                                                                                    W[vo, vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, w: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (b, bi), "int8", offset_factor=1, scope=INP_SCOPE)
        W = T.match_buffer(w, (bo, bi), "int8", offset_factor=1, scope=WGT_SCOPE)
        C = T.match_buffer(c, (b, bo), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:b, 0:bo], A[0:b, 0:bi], W[0:bo, 0:bi])
            T.writes(C[0:b, 0:bo])
            T.evaluate(T.call_extern("int32", GEMM_CALL, C.elem_offset, A.elem_offset,
                                     W.elem_offset))

    return desc, impl


def _reset(b: int, bo: int):
    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C = T.match_buffer(c, (b, bo), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:b, 0:bo])
            if b == 1:
                for _i, o in T.grid(1, bo):
                    with T.sblock("init"):
                        vo = T.axis.remap("S", [o])
                        C[0, vo] = 0
            else:
                for i, o in T.grid(b, bo):
                    with T.sblock("init"):
                        vi, vo = T.axis.remap("SS", [i, o])
                        C[vi, vo] = 0

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, (b, bo), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:b, 0:bo])
            T.evaluate(T.call_extern("int32", RESET_CALL, C.elem_offset))

    return desc, impl


def gemm_intrin(cfg: VtaConfig) -> tuple[str, str]:
    """Register (once) and return the names of the GEMM and reset intrinsics of a config."""
    gemm, reset = f"vta_gemm_{cfg.name}", f"vta_gemm_reset_{cfg.name}"
    shape = (cfg.batch, cfg.block_in, cfg.block_out)
    if _registered.get(gemm) != shape:
        from squeezer.tune._fastimport import fast_stack

        with fast_stack():  # inspect.stack() per prim_func is slow with torch loaded
            TensorIntrin.register(gemm, *_gemm(cfg.batch, cfg.block_in, cfg.block_out),
                                  override=True)
            TensorIntrin.register(reset, *_reset(cfg.batch, cfg.block_out), override=True)
        _registered[gemm] = shape
    return gemm, reset
