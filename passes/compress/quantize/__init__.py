"""Quantization methods: int8 down to binary, each registered by name for recipes.

The contract between these methods and the compiler (``squeezer.passes.graph``) is the
structure of the model after ``squash``, never a side channel (DESIGN.md, decision 2):

- **int8 (QDQ)**: a quantized layer's activations pass through quantize/dequantize ops
  (``torch.ops.quantized_decomposed`` per tensor; ONNX ``QuantizeLinear``/``DequantizeLinear``
  as ``onnxruntime.quantization.quantize_static`` writes them), its weight is an int8 tensor
  dequantized per output channel (axis 0). Relax sees ``relax.quantize``/``relax.dequantize``.
- **Values-only formats** (int4 per group, ternary, binary per filter, HORQ residual planes,
  powers of two): the squashed weight is a float tensor holding exactly the quantized values;
  the compiler recognizes the format from the values and stores it packed.
- **Binary activations** (BNN, XNOR-Net): ``torch.where(x >= 0, 1.0, -1.0)`` in the graph.
"""

from . import (
    binary,  # noqa: F401  (registers "bwn", "xnor", "bnn")
    dynamic8,  # noqa: F401  (registers "dynamic8")
    horq,  # noqa: F401  (registers "horq")
    inq,  # noqa: F401  (registers "inq")
    int4,  # noqa: F401  (registers "int4")
    int8,  # noqa: F401  (registers "int8")
    ternary,  # noqa: F401  (registers "twn")
)
