"""Default CPU schedules: one rule per operator family, tried in order, ending in a fallback."""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .bitserial import Bitserial
from .conv2d import Conv2dNCHW
from .elementwise import ParallelVectorize, SerialTiny
from .int4_matmul import Int4Matmul
from .int8_conv2d import Int8Conv2d
from .int8_depthwise import Int8Depthwise
from .int8_matmul import Int8Matmul
from .matmul import Matmul
from .sparse_matmul import SparseMatmul

__all__ = [
    "Bitserial",
    "Conv2dNCHW",
    "Int8Conv2d",
    "Int8Depthwise",
    "Int8Matmul",
    "Int4Matmul",
    "Matmul",
    "ParallelVectorize",
    "SerialTiny",
    "SparseMatmul",
    "default_rules",
    "default_schedule_pass",
]


def default_rules() -> list[ScheduleRule]:
    """The ordered CPU rule list; the last one applies to every PrimFunc."""
    return [
        Int8Matmul(),
        Int8Conv2d(),
        Int8Depthwise(),
        Bitserial(),
        SparseMatmul(),
        Int4Matmul(),
        Conv2dNCHW(),
        Matmul(),
        SerialTiny(),
        dlight.cpu.GEMV(),
        dlight.cpu.Reduction(),
        ParallelVectorize(),
    ]


def default_schedule_pass(target: Target) -> tvm.transform.Pass:
    """Schedule every not-yet-scheduled PrimFunc of a module for a CPU `target`.

    Parameters
    ----------
    target : Target
        An LLVM target; its ``mcpu`` sets the vector width and ``num-cores`` the parallelism.

    Returns
    -------
    tvm.transform.Pass
        A module pass; scheduled functions get ``tirx.is_scheduled`` so later passes
        (and a second application) leave them alone.
    """
    apply = dlight.ApplyDefaultSchedule(*default_rules())

    @tvm.transform.module_pass(opt_level=0, name="squeezer.DefaultCPUSchedule")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        # dlight updates the module it is given in place: work on a shallow copy so the caller's
        # module (a tuning task, a module kept for a report) stays unscheduled.
        copy = tvm.IRModule(dict(mod.functions), attrs=mod.attrs, global_infos=mod.global_infos)
        with target:
            return apply(copy)

    return _pass
