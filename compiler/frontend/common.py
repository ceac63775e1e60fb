"""Types shared by the frontends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm

from squeezer.errors import SqueezerError


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_dict(d: dict) -> TensorSpec:
        return TensorSpec(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]))


Reference = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass
class Imported:
    """A model imported into Relax, with what verification and the artifact need."""

    mod: tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    reference: Reference
    source: dict = field(default_factory=dict)  # {"format": "onnx"|"torch"|"pt2", "path": ...}
    example_inputs: list[np.ndarray] | None = None
    # The same model evaluated in float64, where the frontend can (torch without QDQ ops): a
    # binarized model's float32 reference can put +-1e-7 where the exact sum is 0 and flip
    # the next sign; verification falls back to it when the float32 comparison fails.
    reference64: Reference | None = None


def parse_input_shapes(specs: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``--input-shape name:1x3x224x224`` values into a dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 1 for d in shape):
                raise ValueError
        except ValueError:
            raise SqueezerError(
                f"--input-shape {spec!r}: expected NAME:DxDx..., e.g. input:1x3x224x224"
            ) from None
        shapes[name] = shape
    return shapes


def output_specs_from_relax(mod: tvm.IRModule, names: Sequence[str]) -> list[TensorSpec]:
    """Output specs read from ``main``'s return type; ``names`` are the source's output names."""
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for i, ty in enumerate(fields):
        name = names[i] if i < len(names) else f"output{i}"
        shape = tuple(int(s) for s in ty.shape.values)
        specs.append(TensorSpec(name, shape, str(ty.dtype)))
    return specs
