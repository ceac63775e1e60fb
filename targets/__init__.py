"""Where compiled code runs: ``cpu`` (LLVM) and ``vta`` (the simulated accelerator).

The CPU helpers are imported on first use, so ``squeezer.targets.vta`` (numpy only) does not load
TVM.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["HostInfo", "check_threads", "detect_host", "make_target", "set_runtime_threads"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".cpu", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
