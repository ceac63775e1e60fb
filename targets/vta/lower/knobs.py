"""Default knobs: the feasible schedule with the fewest cycles by a small analytic model.

Candidates: every divisor of each tiled loop (as ``sample_perfect_tile`` would draw) and 1 or 2
virtual threads. A candidate must fit the scratchpads (INP, WGT, ACC and the micro-ops of one
GEMM). Its cost: load, compute and store cycles of the three modules from the timing model's
figures (DMA latency and bandwidth, one cycle per GEMM block, ALU lanes); with two virtual threads
the modules overlap (the maximum of the three plus one step's fill), with one they add up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

from ..config import VtaConfig
from ..layer import Knobs, LayerError
from .tir import ConvGeometry


@dataclass(frozen=True)
class Shape:
    """What the model needs of a layer: its geometry, weight density, epilogue ops and vectors."""

    geo: ConvGeometry
    density: float
    alu_ops: int
    par_rows: int


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def footprint(cfg: VtaConfig, s: Shape, k: Knobs) -> dict[str, int]:
    """Scratchpad entries a schedule needs (both halves with two virtual threads)."""
    g = s.geo
    thi = (k.tile_h - 1) * g.stride[0] + g.kh
    twi = (k.tile_w - 1) * g.stride[1] + g.kw
    v = k.virtual_threads
    return {"INP": v * k.tile_b * k.tile_ci * thi * twi,
            "WGT": v * k.tile_co * k.tile_ci * g.kh * g.kw,
            "ACC": v * (k.tile_b * k.tile_co * k.tile_h * k.tile_w + s.par_rows * k.tile_co),
            "UOP": k.tile_co * k.tile_ci * g.kh * g.kw * min(k.tile_b, k.tile_h, k.tile_w)}


def estimate(cfg: VtaConfig, s: Shape, k: Knobs) -> float:
    """Estimated cycles of a schedule (see the module docstring)."""
    g = s.geo
    oh, ow = g.out_hw
    bw, lat = cfg.dma_bytes_per_cycle, cfg.dma_latency_cycles
    thi = (k.tile_h - 1) * g.stride[0] + g.kh
    twi = (k.tile_w - 1) * g.stride[1] + g.kw
    spatial = (oh // k.tile_h) * (ow // k.tile_w) * (g.nb // k.tile_b)
    tiles = spatial * (g.ob // k.tile_co)
    ksteps = g.cb // k.tile_ci
    steps = tiles * ksteps
    acc = k.tile_b * k.tile_co * k.tile_h * k.tile_w
    inp = k.tile_b * k.tile_ci * (lat + thi * twi * cfg.inp_block_bytes / bw)
    wgt_blocks = k.tile_co * k.tile_ci * g.kh * g.kw * s.density
    wgt = lat + wgt_blocks * cfg.wgt_block_bytes / bw
    wgt_loads = steps if ksteps > 1 or spatial < 2 * k.virtual_threads else \
        (g.ob // k.tile_co) * k.virtual_threads
    gemm = acc * k.tile_ci * g.kh * g.kw * s.density + cfg.gemm_pipeline_depth
    alu_per = math.ceil(cfg.batch * cfg.block_out / cfg.alu_lanes)
    tile_c: float = acc + cfg.gemm_pipeline_depth
    tile_c += s.alu_ops * (acc * alu_per + cfg.alu_pipeline_depth)
    if s.par_rows:
        tile_c += lat + s.par_rows * k.tile_co * cfg.acc_block_bytes / bw
    store = k.tile_b * k.tile_co * (lat + k.tile_h * k.tile_w * cfg.out_block_bytes / bw)
    load_total = steps * inp + wgt_loads * wgt
    compute_total = steps * gemm + tiles * tile_c
    store_total = tiles * store
    if k.virtual_threads == 2:
        return max(load_total, compute_total, store_total) + inp + wgt + store
    return load_total + compute_total + store_total


def default_knobs(cfg: VtaConfig, s: Shape, where: str = "layer") -> Knobs:
    """The candidate with the fewest estimated cycles (ties: fewer, larger tiles)."""
    g = s.geo
    oh, ow = g.out_hw
    best: tuple | None = None
    for tb, tco, th, tw, tci, v in product(_divisors(g.nb), _divisors(g.ob), _divisors(oh),
                                           _divisors(ow), _divisors(g.cb), (2, 1)):
        k = Knobs(tb, th, tw, tco, tci, v)
        need = footprint(cfg, s, k)
        if any(need[b] > cfg.depths[b] for b in need):
            continue
        key = (estimate(cfg, s, k), -(tb * tco * th * tw * tci), -v)
        if best is None or key < best[0]:
            best = (key, k)
    if best is None:
        raise LayerError(f"{where}: no schedule fits the {cfg.name} scratchpads "
                         f"(even one block per tile)")
    return best[1]
