"""The schedule of a layer's PrimFunc: a pure function of the knobs.

``conv`` loops ``n, co, y, x | ci`` are split by the knobs' tile sizes and ordered
``n0 co0 y0 x0 ci0 | n1 co1 ci1 ky kx y1 x1 | i o k``: the outer four are the tiles (the
accumulator tile lives in ``local.acc_buffer``), ``ci0`` the reduction steps (input and weight
tiles are read into ``local.inp_buffer`` / ``local.wgt_buffer`` at each step, the padding stage
inlined into the input copy), ``n1 co1 ci1 ky kx`` become micro-ops, ``y1 x1`` the two loops of a
GEMM instruction, and the (b, bo, bi) block is tensorized onto ``vta_gemm_<config>`` (its init onto
``vta_gemm_reset_<config>``). The epilogue (``alu*``) runs in the accumulator scope at each tile,
its vectors read into ``local.acc_buffer``; ``out`` (the narrowing copy to DRAM) is the store.
The tile loop ``x0`` carries the annotation ``vta.virtual_threads``.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule

from ..config import VtaConfig
from ..layer import Knobs, LayerError
from .intrin import ACC_SCOPE, INP_SCOPE, WGT_SCOPE, gemm_intrin

VTHREAD_ATTR = "vta.virtual_threads"


def check_knobs(knobs: Knobs, extents: dict[str, int], where: str) -> None:
    """Every tile knob must divide its loop (the same rule as ``sample_perfect_tile``)."""
    for knob, loop in (("tile_b", "n"), ("tile_co", "co"), ("tile_h", "y"), ("tile_w", "x"),
                       ("tile_ci", "ci")):
        v, ext = getattr(knobs, knob), extents[loop]
        if ext % v:
            raise LayerError(f"{where}: knob {knob}={v} does not divide the {loop} loop of "
                             f"{ext} (knobs {knobs})")


def conv_extents(func: tirx.PrimFunc) -> dict[str, int]:
    """Extents of the ``conv`` block's loops by name (n, co, y, x, i, o, ci, ky, kx, k)."""
    sch = Schedule(func)
    loops = sch.get_loops(sch.get_sblock("conv"))
    names = ("n", "co", "y", "x", "i", "o", "ci", "ky", "kx", "k")
    return {nm: int(sch.get(lp).extent) for nm, lp in zip(names, loops, strict=True)}


def schedule_layer(func: tirx.PrimFunc, cfg: VtaConfig, knobs: Knobs,
                   where: str = "layer") -> Schedule:
    """Apply the knobs to the layer's PrimFunc (see the module docstring)."""
    check_knobs(knobs, conv_extents(func), where)
    gemm, reset = gemm_intrin(cfg)
    sch = Schedule(func)
    conv = sch.get_sblock("conv")
    n, co, y, x, i, o, ci, ky, kx, k = sch.get_loops(conv)
    n0, n1 = sch.split(n, [None, knobs.tile_b])
    co0, co1 = sch.split(co, [None, knobs.tile_co])
    y0, y1 = sch.split(y, [None, knobs.tile_h])
    x0, x1 = sch.split(x, [None, knobs.tile_w])
    ci0, ci1 = sch.split(ci, [None, knobs.tile_ci])
    sch.reorder(n0, co0, y0, x0, ci0, n1, co1, ci1, ky, kx, y1, x1, i, o, k)
    sch.set_scope(conv, 0, ACC_SCOPE)
    alus = []
    idx = 0
    while True:
        try:
            alus.append(sch.get_sblock(f"alu{idx}"))
        except Exception:  # noqa: BLE001 - no more epilogue blocks
            break
        idx += 1
    for blk in alus:
        sch.set_scope(blk, 0, ACC_SCOPE)
        sch.reverse_compute_at(blk, x0)
    sch.reverse_compute_at(sch.get_sblock("out"), x0)
    vec_readers = [blk for blk in alus if len(sch.get(blk).reads) > 1]
    if vec_readers:
        par_index = next(j for j, r in enumerate(sch.get(vec_readers[0]).reads)
                         if r.source.name == "par")
        par = sch.cache_read(vec_readers[0], par_index, ACC_SCOPE, consumer_blocks=vec_readers)
        sch.compute_at(par, x0)
    inp = sch.cache_read(conv, 0, INP_SCOPE)
    sch.compute_at(inp, ci0)
    try:
        pad = sch.get_sblock("data_pad")
    except Exception:  # noqa: BLE001 - unpadded layer
        pad = None
    if pad is not None:
        sch.compute_inline(pad)
    wgt = sch.cache_read(conv, 1, WGT_SCOPE)
    sch.compute_at(wgt, ci0)
    init = sch.decompose_reduction(conv, ci0)
    sch.tensorize(sch.get_loops(init)[-2], reset)
    sch.tensorize(i, gemm)
    sch.annotate(x0, VTHREAD_ATTR, knobs.virtual_threads)
    return sch
