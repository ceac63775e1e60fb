"""squeezer: a compiler for compressed neural networks on Apache TVM.

>>> import squeezer
>>> mod = squeezer.compile(torch_module, example_inputs=(x,), target="cpu")  # verified
>>> y = mod(x_numpy)
>>> mod.save("model.sqz"); mod = squeezer.load("model.sqz")

Importing squeezer loads neither torch nor onnx: a deployed artifact needs only TVM and numpy.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["CompiledModule", "SqueezerError", "compile", "compress", "load", "__version__"]


def __getattr__(name: str):
    # Lazy: `import squeezer` stays light (the CLI starts fast, artifacts load without torch).
    if name in ("compile", "load"):
        from squeezer import api

        return getattr(api, name)
    if name == "CompiledModule":
        from squeezer.module import CompiledModule

        return CompiledModule
    if name == "SqueezerError":
        from squeezer.errors import SqueezerError

        return SqueezerError
    if name == "compress":
        from squeezer.compression import compress

        return compress
    raise AttributeError(f"module 'squeezer' has no attribute {name!r}")
