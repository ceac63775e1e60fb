"""Test helpers of the low-bit methods: the compiler's weight-format detector without importing
TVM, and a method prepared as a recipe entry would be.

``squeezer/passes/graph/weight_formats.py`` needs only numpy, but importing it through its
package loads TVM and every schedule (10+ s of CPU); the low-bit method tests load the file alone.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

import squeezer.passes
from squeezer import data
from squeezer.passes.compress import CompressContext, get_method
from squeezer.passes.compress.quantize.lowbit_method import LowbitMethod
from squeezer.recipe import load_recipe

_PATH = Path(squeezer.passes.__file__).parent / "graph" / "weight_formats.py"
_NAME = "squeezer_weight_formats_standalone"

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module  # dataclasses resolve their module by name
    _spec.loader.exec_module(_module)

weight_formats = sys.modules[_NAME]


def prepare(
    model: torch.nn.Module, digits: data.Digits, method: str, **fields: Any
) -> tuple[LowbitMethod[Any], list[str]]:
    """Prepare ``method`` on ``model`` in place, as a recipe entry with ``fields`` would; the
    method and the lines it logged."""
    lines: list[str] = []
    entry = load_recipe([{"method": method, "epochs": 0, **fields}]).entries[0]
    quantizer = get_method(method)(entry.settings)
    assert isinstance(quantizer, LowbitMethod)
    quantizer.check_tensors(model)
    quantizer.prepare(model, CompressContext(copy.deepcopy(model), digits, 8, None, lines.append))
    return quantizer, lines
