"""ONNX file to Relax, with every unsupported node listed at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from squeezer.errors import ModelLoadError, SqueezerError, UnsupportedOperatorError

from .common import Imported, TensorSpec, output_specs_from_relax


def _load_proto(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model (truncated or corrupt file?): {err}"
        ) from None
    # Protobuf parses many byte strings "successfully" into near-empty messages.
    if not model.graph.node or not model.graph.output or model.ir_version < 3:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph, nodes or outputs)")
    return model


def _unsupported_nodes(model) -> list[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"If", "Constant"}
    bad = []
    for i, node in enumerate(model.graph.node):
        domain = node.domain or "ai.onnx"
        if node.op_type not in known or domain not in ("ai.onnx", "ai.onnx.ml"):
            name = node.name or f"#{i}"
            bad.append(f"{name} ({node.op_type}{'' if domain == 'ai.onnx' else ', ' + domain})")
    return bad


def _input_specs(model, path: Path, overrides: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
    import onnx

    init_names = {t.name for t in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        ttype = inp.type.tensor_type
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)))
        if inp.name in overrides:
            shape = overrides[inp.name]
            if len(shape) != len(ttype.shape.dim):
                raise SqueezerError(
                    f"{path}: --input-shape for {inp.name!r} has rank {len(shape)}, "
                    f"the model's input has rank {len(ttype.shape.dim)}"
                )
        else:
            dims = []
            for axis, dim in enumerate(ttype.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(dim.dim_value)
                else:
                    label = dim.dim_param or "?"
                    raise SqueezerError(
                        f"{path}: input {inp.name!r} has dynamic dimension {axis} ({label}); "
                        f"fix it with --input-shape {inp.name}:"
                        + "x".join(str(d.dim_value or 1) for d in ttype.shape.dim)
                    )
            shape = tuple(dims)
        specs.append(TensorSpec(inp.name, tuple(shape), dtype))
    unknown = set(overrides) - {s.name for s in specs}
    if unknown:
        raise SqueezerError(
            f"{path}: --input-shape names unknown input(s) {sorted(unknown)}; "
            f"the model's inputs are {[s.name for s in specs]}"
        )
    return specs


def import_onnx(path: Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Imported:
    """Import an ONNX file; dynamic dimensions must be fixed through ``input_shapes``."""
    from tvm.relax.frontend.onnx import from_onnx

    model = _load_proto(path)
    bad = _unsupported_nodes(model)
    if bad:
        raise UnsupportedOperatorError(
            f"{path}: {len(bad)} node(s) use operators squeezer cannot import: " + ", ".join(bad)
        )
    inputs = _input_specs(model, path, dict(input_shapes or {}))
    reference = _ort_reference(model, inputs)
    model = _fold_static_shapes(model, inputs, path)
    try:
        mod = from_onnx(
            model,
            shape_dict={s.name: list(s.shape) for s in inputs},
            dtype_dict={s.name: s.dtype for s in inputs},
            keep_params_in_input=False,
        )
    except Exception as err:  # the importer raises bare asserts and TVMErrors alike
        raise ModelLoadError(f"{path}: ONNX import failed: {type(err).__name__}: {err}") from err
    outputs = output_specs_from_relax(mod, [o.name for o in model.graph.output])
    return Imported(
        mod=mod,
        inputs=inputs,
        outputs=outputs,
        reference=reference,
        source={"format": "onnx", "path": str(path)},
    )


def _fold_static_shapes(model, inputs: list[TensorSpec], path: Path):
    """Fix the input shapes and constant-fold the graph (onnxruntime's basic level, standard ONNX
    operators only). Exporters compute split points and reshape targets at run time
    (Shape -> Gather -> Div -> Slice); folded, they import into Relax with static shapes."""
    import tempfile

    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    by_name = {s.name: s for s in inputs}
    for inp in model.graph.input:
        if inp.name in by_name:
            dims = inp.type.tensor_type.shape.dim
            for dim, size in zip(dims, by_name[inp.name].shape, strict=True):
                dim.Clear()
                dim.dim_value = size
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="squeezer-onnx-") as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ModelLoadError(f"{path}: onnxruntime rejects the model: {err}") from None
        return onnx.load(opts.optimized_model_filepath)


def _ort_reference(model, inputs: list[TensorSpec]):
    blob = model.SerializeToString()

    def run(arrays):
        import onnxruntime as ort

        sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        feed = {s.name: np.asarray(a) for s, a in zip(inputs, arrays, strict=True)}
        return [np.asarray(o) for o in sess.run(None, feed)]

    return run
