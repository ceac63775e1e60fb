"""torch ``nn.Module`` (through ``torch.export``) and saved ``.pt2`` ExportedPrograms to Relax."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import numpy as np

from squeezer.errors import ModelLoadError, SqueezerError, UnsupportedOperatorError

from .common import Imported, TensorSpec, output_specs_from_relax


def _to_tensors(example_inputs):
    import torch

    if example_inputs is None:
        raise SqueezerError("compiling a torch nn.Module needs example_inputs=(x, ...)")
    if isinstance(example_inputs, np.ndarray | torch.Tensor):
        example_inputs = (example_inputs,)
    return tuple(
        t if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t))
        for t in example_inputs
    )


def import_torch(module, example_inputs) -> Imported:
    """Export ``module`` in eval mode with ``example_inputs`` and import it."""
    import torch

    if isinstance(module, torch.export.ExportedProgram):
        return _import_exported(module, {"format": "torch"}, module.module())
    if not isinstance(module, torch.nn.Module):
        raise SqueezerError(
            f"cannot compile a {type(module).__name__}: expected a torch.nn.Module, "
            "an ExportedProgram or a path to a .onnx or .pt2 file"
        )
    tensors = _to_tensors(example_inputs)
    module = module.eval()
    try:
        ep = torch.export.export(module, tensors)
    except Exception as err:
        raise ModelLoadError(
            f"torch.export failed for {type(module).__name__}: {type(err).__name__}: {err}"
        ) from err
    imported = _import_exported(ep, {"format": "torch", "class": type(module).__name__}, module)
    imported.example_inputs = [t.detach().numpy() for t in tensors]
    return imported


def import_pt2(path: Path) -> Imported:
    """Import a file written by ``torch.export.save``."""
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers the QDQ ops a quantized
    # model's graph calls: loading fails without them

    try:
        ep = torch.export.load(str(path))
    except (zipfile.BadZipFile, RuntimeError, ValueError, KeyError, EOFError, OSError) as err:
        raise ModelLoadError(
            f"{path}: not a valid torch.export .pt2 file (truncated or corrupt?): {err}"
        ) from None
    return _import_exported(ep, {"format": "pt2", "path": str(path)}, ep.module())


def _unsupported_nodes(ep) -> list[str]:
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    from .torch_qdq import qdq_convert_map

    known = set(ExportedProgramImporter().create_convert_map()) | set(qdq_convert_map())
    bad = []
    for node in ep.run_decompositions().graph.nodes:
        if node.op == "call_function":
            op = getattr(node.target, "__name__", str(node.target))
            if op not in known:
                bad.append(f"{node.name} ({op})")
    return bad


def _import_exported(ep, source: dict, eager) -> Imported:
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    from .torch_qdq import qdq_convert_map

    bad = _unsupported_nodes(ep)
    where = source.get("path") or source.get("class", "torch module")
    if bad:
        raise UnsupportedOperatorError(
            f"{where}: {len(bad)} node(s) use operators squeezer cannot import: " + ", ".join(bad)
        )
    try:
        mod = from_exported_program(ep, keep_params_as_input=False,
                                    custom_convert_map=qdq_convert_map())
    except Exception as err:
        raise ModelLoadError(f"{where}: import failed: {type(err).__name__}: {err}") from err

    sig = ep.graph_signature
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = []
    for name in sig.user_inputs:
        meta = placeholders[name].meta.get("val")
        if meta is None or not isinstance(meta, torch.Tensor):
            raise SqueezerError(f"{where}: input {name!r} is not a tensor")
        dtype = str(meta.dtype).removeprefix("torch.")
        inputs.append(TensorSpec(name, tuple(int(d) for d in meta.shape), dtype))
    n_out = len(sig.user_outputs)
    out_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    outputs = output_specs_from_relax(mod, out_names)

    def reference(arrays):
        with torch.no_grad():
            res = eager(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        res = res if isinstance(res, tuple | list) else (res,)
        return [r.detach().numpy() for r in res]

    def reference64(arrays):
        model = copy.deepcopy(eager).double()
        prior = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # literals such as where(x >= 0, 1.0, -1.0)
        try:
            with torch.no_grad():
                res = model(*[torch.from_numpy(np.ascontiguousarray(
                    a.astype(np.float64) if a.dtype.kind == "f" else a)) for a in arrays])
        finally:
            torch.set_default_dtype(prior)
        res = res if isinstance(res, tuple | list) else (res,)
        return [r.detach().numpy().astype(np.float32) if r.is_floating_point()
                else r.detach().numpy() for r in res]

    return Imported(mod=mod, inputs=inputs, outputs=outputs, reference=reference, source=source,
                    reference64=reference64)
