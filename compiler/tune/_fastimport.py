"""Import ``tvm.s_tir.tensor_intrin`` in seconds instead of minutes.

Each of its ~500 ``@T.prim_func`` definitions calls ``inspect.stack()``, which looks up the
source file of every frame; frames of the import machinery (``<frozen importlib...>``) have no
file, so ``inspect.getmodule`` scans all of ``sys.modules`` each time. Measured here: 23 s in a
bare process, over 90 s in one that has torch loaded (MetaSchedule triggers the import when the
first ``TuneContext`` is made, and every build worker triggers it again). The parser only needs
the frames themselves (their locals, globals and code context); during this one import the stack
is built without the source lookups. The registered intrinsics are identical (checked).
"""

from __future__ import annotations

import contextlib
import inspect
import sys


def _frames(frame) -> list[inspect.FrameInfo]:
    out = []
    while frame is not None:
        out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno,
                                     frame.f_code.co_name, None, None))
        frame = frame.f_back
    return out


@contextlib.contextmanager
def fast_stack():
    """Inside the block, ``inspect.stack`` skips the source lookups (for ``@T.prim_func``
    definitions made in bulk: squeezer's own tensor intrinsics are registered this way too)."""
    stack, outer = inspect.stack, inspect.getouterframes
    inspect.stack = lambda context=1: _frames(sys._getframe(1))  # type: ignore[assignment]
    inspect.getouterframes = lambda frame, context=1: _frames(frame)  # type: ignore[assignment]
    try:
        yield
    finally:
        inspect.stack, inspect.getouterframes = stack, outer


def import_tensor_intrinsics() -> None:
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with fast_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401
