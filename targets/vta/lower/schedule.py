"""The schedule of a layer's PrimFunc: a pure function of the knobs.

``conv`` loops ``n, co, y, x | ci`` are split by the knobs' tile sizes and ordered
``n0 co0 y0 x0 ci0 | n1 co1 ci1 ky kx y1 x1 | i o k``: the outer four are the tiles (the
accumulator tile lives in ``local.acc_buffer``), ``ci0`` the reduction steps (input and weight
tiles are read into ``local.inp_buffer`` / ``local.wgt_buffer`` at each step, the padding stage
inlined into the input copy), and the (b, bo, bi) block is tensorized onto ``vta_gemm_<config>``
(its init onto ``vta_gemm_reset_<config>``); the codegen makes the two largest loops that do not
move the weights (``y1 x1``; ``n1`` for a dense layer) the GEMM instruction's loops and the others
(``n1 co1 ci1 ky kx``) micro-ops. The epilogue (``alu*``) runs in the accumulator scope at each
tile, its vectors read into ``local.acc_buffer``; ``out`` (the narrowing copy to DRAM) is the
store.
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
    sch = Schedule(func)
    apply_knobs(sch, cfg, knobs)
    return sch


def apply_knobs(sch: Schedule, cfg: VtaConfig, knobs: Knobs | None = None) -> Knobs:
    """Schedule a layer PrimFunc in place and return the knobs it got.

    With ``knobs=None`` the tile factors are drawn by ``sample_perfect_tile`` (one per split)
    and the virtual threads by ``sample_categorical`` over 1 and 2: the design space a tuner
    searches (every draw divides its loop; one that overflows a scratchpad fails in the codegen).
    """
    gemm, reset = gemm_intrin(cfg)
    conv = sch.get_sblock("conv")
    n, co, y, x, i, o, ci, ky, kx, k = sch.get_loops(conv)

    def split(loop, factor: int | None):
        if factor is None:
            outer, inner = sch.sample_perfect_tile(loop, n=2)
            return sch.split(loop, [outer, inner]), int(sch.get(inner))
        return sch.split(loop, [None, factor]), factor

    def knob(name: str) -> int | None:
        return None if knobs is None else int(getattr(knobs, name))

    (n0, n1), tb = split(n, knob("tile_b"))
    (co0, co1), tco = split(co, knob("tile_co"))
    (y0, y1), th = split(y, knob("tile_h"))
    (x0, x1), tw = split(x, knob("tile_w"))
    (ci0, ci1), tci = split(ci, knob("tile_ci"))
    sch.reorder(n0, co0, y0, x0, ci0, n1, co1, ci1, ky, kx, y1, x1, i, o, k)
    sch.set_scope(conv, 0, ACC_SCOPE)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    alus = [sch.get_sblock(nm) for nm in names if nm.startswith("alu")]
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
    if "data_pad" in names:
        sch.compute_inline(sch.get_sblock("data_pad"))
    wgt = sch.cache_read(conv, 1, WGT_SCOPE)
    sch.compute_at(wgt, ci0)
    init = sch.decompose_reduction(conv, ci0)
    sch.tensorize(sch.get_loops(init)[-2], reset)
    sch.tensorize(i, gemm)
    if knobs is None:
        vt = sch.sample_categorical([1, 2], [0.5, 0.5])
        sch.annotate(x0, VTHREAD_ATTR, vt)
        threads = int(sch.get(vt))
    else:
        threads = knobs.virtual_threads
        sch.annotate(x0, VTHREAD_ATTR, threads)
    return Knobs(tb, th, tw, tco, tci, threads)
