"""The cases of ``squeezer bench vta``: zoo conv layers as VTA layer specs, per weight format.

Shapes come from the zoo models (forward hooks, one per distinct shape, as ``squeezer bench
lowbit``): ResNet-18 3x3 convolutions (stride 1 and 2) and 1x1 downsamples, MobileNetV2 pointwise
(1x1) convolutions, batch 1, 'same' padding. Each layer is built in four weight formats:

``int8``        random int8 weights, uint8 input (zero point 0), on the int8 core (``--config``);
``int8-sp80``   the same with 80% of the (block_out x block_in) weight blocks zeroed at random
                (whole blocks over every kernel position), on the int8 core;
``int4w``       random int4 weights on the ``1x16x16-int4w`` preset;
``binary``      +-1 weights and +-1 inputs (padding -1) on the ``1x16x16-binary`` preset.

Everything is seeded by the case and format, so the tuner (``bench_vta_tune``) and the bench
build the same layers: the same workloads, so the records apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from squeezer.bench_lowbit_cases import ConvCase, conv_cases
from squeezer.targets.vta.layer import ConvLayer, Requant32

FORMATS = ("int8", "int8-sp80", "int4w", "binary")
SPARSITY = 0.8


@dataclass(frozen=True)
class VtaSuite:
    convs: tuple[ConvCase, ...]
    formats: tuple[str, ...] = FORMATS


def full_suite() -> VtaSuite:
    """Every ResNet-18 3x3 and 1x1 conv shape (full size) and six MobileNetV2 pointwise ones."""
    return VtaSuite(tuple(conv_cases("resnet18", "full", 3, 99)
                          + conv_cases("resnet18", "full", 1, 99)
                          + conv_cases("mobilenetv2", "full", 1, 6)))


def quick_suite(tiny: bool = False) -> VtaSuite:
    """One ResNet-18 3x3 stride-1 and one MobileNetV2 pointwise layer of the full suite (the
    middle one of each; shipped records cover them); ``tiny``: the small zoo models' first."""
    if tiny:
        r18 = [c for c in conv_cases("resnet18", "small", 3, 99, stride1=True) if c.cin > 1]
        return VtaSuite((r18[0], *conv_cases("mobilenetv2", "small", 1, 1)))
    full = full_suite().convs
    r18 = [c for c in full if c.model == "resnet18" and c.kernel == 3 and c.stride == 1]
    mbv2 = [c for c in full if c.model == "mobilenetv2"]
    return VtaSuite((r18[len(r18) // 2], mbv2[len(mbv2) // 2]))


def config_for(fmt: str, int8_config: str = "1x16x16") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return {"int4w": "1x16x16-int4w", "binary": "1x16x16-binary"}.get(fmt, int8_config)


def _rng(c: ConvCase, fmt: str) -> np.random.Generator:
    key = [c.cin, c.cout, c.kernel, c.stride, *c.size, FORMATS.index(fmt)]
    return np.random.default_rng(key)


def _requant(rng: np.random.Generator, channels: int, out: str) -> Requant32:
    lo, hi = (0, 255) if out == "uint8" else (-128, 127)
    return Requant32(offset=rng.integers(-3000, 3000, channels), pre=rng.integers(0, 3, channels),
                     mult=rng.integers(1, 1 << 12, channels),
                     rounding=rng.integers(0, 1 << 14, channels),
                     post=rng.integers(12, 16, channels), lo=lo, hi=hi, out_dtype=out)


def block_sparse(rng: np.random.Generator, w: np.ndarray, sparsity: float, bo: int,
                 bi: int) -> np.ndarray:
    """``w`` (O, I, KH, KW) with ``round(sparsity * blocks)`` of its (bo x bi) blocks zeroed
    (the (output block, input block) pairs, over every kernel position)."""
    o, i = w.shape[:2]
    nbo, nbi = -(-o // bo), -(-i // bi)
    zero = np.zeros(nbo * nbi, bool)
    zero[rng.permutation(nbo * nbi)[:round(sparsity * nbo * nbi)]] = True
    mask = np.repeat(np.repeat(zero.reshape(nbo, nbi), bo, 0), bi, 1)[:o, :i]
    return np.where(mask[:, :, None, None], 0, w)


def layer_for(c: ConvCase, fmt: str, block: tuple[int, int] = (16, 16)) -> ConvLayer:
    """The case's conv as a VTA layer spec in weight format ``fmt`` (see the module docstring);
    ``block`` is the int8 core's (block_out, block_in), the unit of the zeroed blocks."""
    rng = _rng(c, fmt)
    h, w = c.size
    k = c.kernel
    shape = (c.cout, c.cin, k, k)
    pad = (k // 2,) * 4
    name = f"{c.layer} {fmt}"
    if fmt == "binary":
        return ConvLayer(name, (1, c.cin, h, w), "int8", -1, rng.choice([-1, 1], shape),
                         (c.stride, c.stride), pad, _requant(rng, c.cout, "int8"))
    if fmt == "int4w":
        weight = rng.integers(-8, 8, shape)
    else:
        weight = rng.integers(-128, 128, shape)
        if fmt == "int8-sp80":
            weight = block_sparse(rng, weight, SPARSITY, *block)
    return ConvLayer(name, (1, c.cin, h, w), "uint8", 0, weight, (c.stride, c.stride), pad,
                     _requant(rng, c.cout, "uint8"))


def suite_layers(suite: VtaSuite, int8_config: str = "1x16x16"
                 ) -> dict[str, list[tuple[ConvCase, str, ConvLayer]]]:
    """Every (case, format, layer) of the suite grouped by the config it runs on."""
    from squeezer.targets.vta.config import load_config

    cfg = load_config(int8_config)
    out: dict[str, list[tuple[ConvCase, str, ConvLayer]]] = {}
    for c in suite.convs:
        for fmt in suite.formats:
            name = config_for(fmt, int8_config)
            out.setdefault(name, []).append(
                (c, fmt, layer_for(c, fmt, (cfg.block_out, cfg.block_in))))
    return out
