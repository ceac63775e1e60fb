"""Frontends: a torch module, a saved ``.pt2`` ExportedProgram or an ONNX file to Relax.

Each returns an :class:`Imported`: the Relax IRModule with weights as constants, the signature,
and a reference runner (torch eager or onnxruntime) that verification compares against.
"""

from __future__ import annotations

import os
from pathlib import Path

from squeezer.errors import ModelLoadError

from .common import Imported, TensorSpec, parse_input_shapes

__all__ = ["Imported", "TensorSpec", "import_model", "parse_input_shapes"]


def import_model(model, example_inputs=None, input_shapes=None) -> Imported:
    """Import ``model`` (an ``nn.Module``, an ``ExportedProgram``, or a path to .onnx / .pt2).

    Parameters
    ----------
    model : torch.nn.Module | torch.export.ExportedProgram | str | os.PathLike
        What to import. Paths are dispatched on their suffix.
    example_inputs : tuple of arrays or tensors, optional
        Required for an ``nn.Module`` (passed to ``torch.export``).
    input_shapes : dict[str, tuple[int, ...]], optional
        Fixes dynamic ONNX input dimensions (``--input-shape``).
    """
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.exists():
            raise ModelLoadError(f"{path}: model file not found")
        if not path.is_file():
            raise ModelLoadError(f"{path}: not a file")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            from .onnx_import import import_onnx

            return import_onnx(path, input_shapes)
        if suffix in (".pt2", ".ep"):
            from .torch_import import import_pt2

            return import_pt2(path)
        raise ModelLoadError(
            f"{path}: unknown model format {suffix!r} (expected .onnx or .pt2)"
        )
    from .torch_import import import_torch

    return import_torch(model, example_inputs)
