"""Test helper: the compiler's weight-format detector without importing TVM.

``squeezer/passes/graph/weight_formats.py`` needs only numpy, but importing it through its
package loads TVM and every schedule (10+ s of CPU); the low-bit method tests load the file alone.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import squeezer.passes

_PATH = Path(squeezer.passes.__file__).parent / "graph" / "weight_formats.py"
_NAME = "squeezer_weight_formats_standalone"

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module  # dataclasses resolve their module by name
    _spec.loader.exec_module(_module)

weight_formats = sys.modules[_NAME]
