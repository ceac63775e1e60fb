"""The VTA target of ``squeezer.compile``: target strings, the accelerator partition, the
manifest's ``vta`` and ``cpu_fallback`` sections, the bit-exact check against the CPU reference,
and the compile report's tables.

``target="vta"`` (the 1x16x16 preset), ``"vta:1x32x32"`` (a preset) or ``"vta:cfg.json"`` (a
config file). A VTA compile runs ``fold_qdq(requant="vta32")`` and ``vta_partition``; the int8
conv2d/dense layers run on the accelerator (a simulator by default) and everything else on the
CPU. The CPU compile with ``requant="vta32"`` computes exactly the same integers, so a VTA compile
is verified against it bit for bit (and against torch/onnxruntime as every compile is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from squeezer.errors import SqueezerError, VerificationError

DEFAULT_CONFIG = "1x16x16"


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target string: ``kind`` "cpu" or "vta", and the VTA config of a VTA target."""

    kind: str
    vta_config: Any = None  # VtaConfig of a VTA target

    @property
    def requant(self) -> str:
        return "vta32" if self.kind == "vta" else "int64"


def parse_target(target: str) -> TargetSpec:
    """``"cpu"``, ``"vta"``, ``"vta:PRESET"`` or ``"vta:path/to/config.json"``."""
    if target == "cpu":
        return TargetSpec("cpu")
    if target == "vta" or target.startswith("vta:"):
        from squeezer.targets.vta.config import load_config

        spec = target.partition(":")[2] or DEFAULT_CONFIG
        return TargetSpec("vta", load_config(spec))
    raise SqueezerError(f"unknown target {target!r}; available: cpu, vta, vta:PRESET, "
                        "vta:CONFIG.json")


def model_layers(model, target: str, example_inputs=None, input_shapes=None) -> tuple[Any, list]:
    """``(config, layers)``: the accelerator layers (``ConvLayer``/``DenseLayer``, graph order)
    of ``model`` compiled for the VTA ``target``, as ``squeezer tune --target vta`` tunes them."""
    import tvm

    from squeezer.frontend import import_model
    from squeezer.passes.graph import fold_qdq
    from squeezer.passes.graph.vta_partition import PartitionResult, vta_partition

    spec = parse_target(target)
    if spec.kind != "vta":
        raise SqueezerError(f"model_layers: {target!r} is not a VTA target")
    imported = import_model(model, example_inputs, input_shapes)
    result = PartitionResult()
    tvm.transform.Sequential([fold_qdq(requant="vta32"),
                              vta_partition(spec.vta_config, result)])(imported.mod)
    return spec.vta_config, [lp.layer for lp in result.layers]


def check_requant(spec: TargetSpec, requant: str | None) -> str:
    """The requantization of a compile: the target's unless given; VTA needs vta32."""
    from squeezer.passes.graph.qdq_emit import REQUANT_MODES

    if requant is None:
        return spec.requant
    if requant not in REQUANT_MODES:
        raise SqueezerError(f"requant must be one of {', '.join(REQUANT_MODES)}, got {requant!r}")
    if spec.kind == "vta" and requant != "vta32":
        raise SqueezerError("the VTA target computes the vta32 requantization; requant="
                            f"{requant!r} is for CPU compiles")
    return requant


def manifest_sections(spec: TargetSpec, result, runtime) -> dict:
    """``vta`` (config, driver, layers with program members, knobs) and ``cpu_fallback``."""
    vta = runtime.manifest() if runtime is not None else {
        "config": spec.vta_config.to_json(), "driver": None, "layers": []}
    for row, prog in zip(vta["layers"], result.layers, strict=True):
        layer = prog.layer
        row.update({"kind": type(layer).__name__.removesuffix("Layer").lower(),
                    "shape": f"{list(layer.in_shape)} -> {list(layer.out_shape())}",
                    "knobs": {k: int(v) for k, v in prog.knobs.__dict__.items()},
                    "knobs_from": "records" if row["name"] in result.tuned else "default",
                    "instructions": len(prog.program.instructions)})
    return {"vta": vta, "cpu_fallback": list(result.cpu)}


def verify_bit_exact(module, reference, inputs: list[np.ndarray]) -> dict:
    """Run the VTA module and the CPU vta32 module on ``inputs``; any differing element is a
    :class:`VerificationError` naming the output and how many elements differ."""
    got, want = module(*inputs), reference(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for spec, g, w in zip(module.outputs, got, want, strict=True):
        if g.shape != w.shape or not np.array_equal(g, w):
            bad = int((g != w).sum()) if g.shape == w.shape else "all"
            raise VerificationError(f"output {spec.name!r}: the VTA module differs from the CPU "
                                    f"vta32 reference in {bad} element(s) (expected bit-exact)")
    return {"reference": "cpu-vta32", "bit_exact": True, "outputs": len(got)}


def cpu_fallback_table(entries: list[dict]):
    """A rich ``Table`` of the operators that stayed on the CPU, or None when there are none."""
    if not entries:
        return None
    from rich.table import Table

    t = Table(title=f"{len(entries)} operator(s) stayed on the CPU (not on the VTA accelerator)")
    for col in ("#", "operator", "where", "reason"):
        t.add_column(col, justify="right" if col == "#" else "left")
    for i, e in enumerate(entries):
        t.add_row(str(i), e.get("op", "?"), e.get("where", "?"), e.get("reason", "?"))
    return t


def vta_layers_table(vta: dict):
    """A rich ``Table`` of the accelerator's layers (manifest ``vta`` section), or None."""
    layers = vta.get("layers") or []
    if not layers:
        return None
    from rich.table import Table

    cfg = vta.get("config", {}).get("NAME", "?")
    t = Table(title=f"{len(layers)} layer(s) on the VTA accelerator (config {cfg}, "
                    f"driver {vta.get('driver')})")
    for col in ("#", "layer", "kind", "shape", "knobs", "instructions"):
        t.add_column(col, justify="right" if col in ("#", "instructions") else "left")
    for i, r in enumerate(layers):
        t.add_row(str(i), r.get("name", "?"), r.get("kind", "?"), r.get("shape", "?"),
                  r.get("knobs_from", "?"), str(r.get("instructions", "?")))
    return t


def layer_rows(layers: list[dict], result) -> list[dict]:
    """The per-layer table with each accelerator call (``call_dps_packed``, in graph order) as
    the layer it runs: ``vta.conv2d``/``vta.dense`` with its weights and FLOPs."""
    progs = iter(result.layers if result is not None else [])
    rows = []
    for row in layers:
        prog = next(progs, None) if row["op"] == "call_dps_packed" else None
        if prog is None:
            rows.append(row)
            continue
        layer = prog.layer
        out = list(layer.out_shape())
        k = int(np.prod(layer.weight.shape[1:]))
        rows.append({"op": f"vta.{'conv2d' if len(out) == 4 else 'dense'}",
                     "inputs": [list(layer.in_shape)], "output": out,
                     "params": int(layer.weight.size), "bytes": int(layer.weight.nbytes),
                     "flops": 2 * int(np.prod(out)) * k})
    return rows
