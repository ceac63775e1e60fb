"""The VTA layer compiler: layer spec -> TensorIR -> schedule (knobs) -> VTA program.

Stages, each a function that can be called (and dumped) on its own:

1. :func:`.spec.prepare` — checks the layer against the config; geometry in blocks, the ALU
   epilogue of the requantization, blocked weights, packed layouts;
2. :func:`.tir.layer_primfunc` — the PrimFunc in the packed layout;
3. :func:`.schedule.schedule_layer` — tiles, scratchpad scopes, tensorized GEMM (the knobs; by
   default :func:`.knobs.default_knobs`);
4. :func:`.walk.walk` + :func:`.codegen.generate` — the scheduled TIR to instructions, micro-ops
   and DRAM segments, with every scratchpad bound checked.
"""

from __future__ import annotations

from ..config import VtaConfig, load_config
from ..layer import ConvLayer, DenseLayer, Knobs, LayerProgram
from .codegen import CodegenInput, generate
from .knobs import Shape, default_knobs, estimate, footprint
from .schedule import apply_knobs, schedule_layer
from .spec import LayerSpec, padding_supported, prepare
from .tir import layer_primfunc
from .walk import walk

__all__ = ["LayerSpec", "Shape", "apply_knobs", "compile_layer", "default_knobs", "estimate",
           "footprint", "layer_primfunc", "padding_supported", "prepare", "schedule_layer",
           "shape_of"]


def shape_of(spec: LayerSpec) -> Shape:
    """The analytic model's view of a prepared layer."""
    nonzero = (spec.weight_blocks != 0).any(axis=(4, 5))
    rows = 0 if spec.par is None else spec.par.shape[0]
    return Shape(spec.geometry, float(nonzero.mean()) if nonzero.size else 1.0,
                 len(spec.stages), rows)


def compile_layer(layer: ConvLayer | DenseLayer, config: VtaConfig | str,
                  knobs: Knobs | None = None) -> LayerProgram:
    """Compile a layer for a config (default knobs from the analytic model when not given).

    Raises
    ------
    LayerError
        the layer does not fit the core (weight width, padding value, input dtype), a knob does
        not divide its loop, or the schedule overflows a scratchpad or an instruction field
        (the message names the layer, the buffer and the knobs).
    """
    cfg = load_config(config)
    spec = prepare(layer, cfg)
    knobs = knobs or default_knobs(cfg, shape_of(spec), spec.where)
    where = f"{spec.where} with {knobs}"
    func = layer_primfunc(cfg, spec.geometry, spec.stages, spec.pad_value)
    sch = schedule_layer(func, cfg, knobs, where)
    prog = generate(cfg, walk(sch.mod["main"]), CodegenInput(
        where, spec.weight_blocks, spec.par, spec.pad_min, spec.input_layout.nbytes,
        spec.output_layout.nbytes))
    prog.meta.update({"kind": "conv" if isinstance(layer, ConvLayer) else "dense",
                      "layer": layer.name, "knobs": knobs.__dict__})
    return LayerProgram(layer, cfg, knobs, prog, spec.input_layout, spec.output_layout)
