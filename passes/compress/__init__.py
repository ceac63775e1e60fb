"""Compression methods on torch modules (they need gradients), registered by name.

Each method is one published technique in its own module, registered with ``register_method``;
importing it here is what makes it available to recipes. See ``base`` for the lifecycle.
"""

from . import (
    distill,  # noqa: F401  (registers "distill")
    finetune,  # noqa: F401  (registers "finetune")
    prune,  # noqa: F401  (registers the pruning methods)
    quantize,  # noqa: F401  (registers the quantization methods)
)
from .base import (
    CompressContext,
    Method,
    MethodSettings,
    TensorwiseSettings,
    TrainSettings,
    get_method,
    load_exported,
    methods,
    register_method,
)

__all__ = [
    "CompressContext",
    "Method",
    "MethodSettings",
    "TensorwiseSettings",
    "TrainSettings",
    "get_method",
    "load_exported",
    "methods",
    "register_method",
]
