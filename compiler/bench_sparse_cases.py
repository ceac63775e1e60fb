"""The cases of ``squeezer bench sparse`` and the pruning that makes their weights sparse.

Kernel cases are BERT-base linear layers; conv cases are read from the zoo models themselves
(forward hooks record every convolution's real shape and input size), so they follow the zoo if
it changes. ``quick_suite()`` keeps the cases the goals are stated on; ``quick_suite(tiny=True)``
is the same structure on tiny shapes and the digits-size zoo models, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BERT_LINEAR = ((768, 768), (3072, 768), (768, 3072))  # (out, in) of BERT-base's linear layers
BATCHES = (1, 128)
SPARSITIES = (0.7, 0.8, 0.9, 0.95)
PATTERNS = ((1, 1), (16, 1))  # unstructured; 16 consecutive output rows share a column pattern
CONV_SPARSITIES = (0.8, 0.9)


@dataclass(frozen=True)
class KernelCase:
    """``Y (batch x n) = X (batch x k) @ W.T`` with ``W`` pruned to ``sparsity`` in ``block``s."""

    n: int
    k: int
    batch: int
    sparsity: float
    block: tuple[int, int]

    @property
    def group(self) -> str:
        """The dense peers' case: they do not depend on the zeros, so they are timed once."""
        return f"linear {self.n}x{self.k} b{self.batch}"

    @property
    def name(self) -> str:
        return f"{self.group} {self.sparsity:.0%} {self.block[0]}x{self.block[1]}"


@dataclass(frozen=True)
class ConvCase:
    """One convolution of a zoo model (no bias, 'same' padding), pruned to ``sparsity``."""

    model: str
    layer: str
    cin: int
    cout: int
    kernel: int
    stride: int
    size: tuple[int, int]  # input height, width
    sparsity: float

    @property
    def group(self) -> str:
        h, w = self.size
        return (f"{self.model} {self.cin}->{self.cout} {self.kernel}x{self.kernel}"
                f" s{self.stride} @{h}x{w}")

    @property
    def name(self) -> str:
        return f"{self.group} {self.sparsity:.0%}"


@dataclass(frozen=True)
class EndToEndCase:
    """A zoo model whose 1x1 convolutions and linear layers are magnitude-pruned."""

    model: str
    size: str
    sparsity: float

    @property
    def name(self) -> str:
        return f"{self.model}-{self.size} {self.sparsity:.0%} 1x1+linear"


@dataclass(frozen=True)
class Suite:
    kernels: tuple[KernelCase, ...]
    convs: tuple[ConvCase, ...]
    e2e: tuple[EndToEndCase, ...]


# -- pruning -------------------------------------------------------------------------------------
def prune(w: np.ndarray, sparsity: float, block: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Magnitude pruning: zero the ``sparsity`` share of ``w``'s blocks with the smallest L1 norm.

    ``w`` is viewed as ``(out, -1)``; a ``br x bc`` block spans ``br`` consecutive output rows and
    ``bc`` consecutive inputs, and must tile the matrix.
    """
    mat = w.reshape(w.shape[0], -1)
    (n, k), (br, bc) = mat.shape, block
    if n % br or k % bc:
        raise ValueError(f"block {block} does not tile a {n}x{k} weight")
    scores = np.abs(mat).reshape(n // br, br, k // bc, bc).sum(axis=(1, 3))
    drop = int(round(sparsity * scores.size))
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores, axis=None, kind="stable")[:drop]] = False
    mask = np.repeat(np.repeat(keep.reshape(scores.shape), br, 0), bc, 1)
    return (mat * mask).reshape(w.shape).astype(w.dtype)


def prune_model_(model, sparsity: float) -> int:
    """Prune every 1x1 (groups 1) convolution and linear layer of ``model`` in place.

    Returns the number of layers pruned.
    """
    import torch

    count = 0
    for m in model.modules():
        pointwise = (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
                     and m.groups == 1)
        if pointwise or isinstance(m, torch.nn.Linear):
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(prune(m.weight.numpy(), sparsity)))
            count += 1
    return count


# -- the arrays of a case: one function, so the bench and the record tuning agree -----------------
def kernel_arrays(c: KernelCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dense W, X, pruned W)``: one weight and input per shape, pruned per case. Shipped
    tuning records match a sparse kernel by its shapes, which depend on the exact zeros."""
    rng = np.random.default_rng([c.n, c.k, c.batch])
    dense = rng.standard_normal((c.n, c.k)).astype(np.float32)
    x = rng.standard_normal((c.batch, c.k)).astype(np.float32)
    return dense, x, prune(dense, c.sparsity, c.block)


def conv_arrays(c: ConvCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dense weight, input image, pruned weight)`` of a convolution case (He init)."""
    rng = np.random.default_rng([c.cin, c.cout, c.kernel, *c.size])
    shape = (c.cout, c.cin, c.kernel, c.kernel)
    dense = (rng.standard_normal(shape) * np.sqrt(2 / (c.cin * c.kernel**2))).astype(np.float32)
    x = rng.standard_normal((1, c.cin, *c.size)).astype(np.float32)
    return dense, x, prune(dense, c.sparsity)


# -- conv shapes from the zoo ----------------------------------------------------------------
def zoo_convs(name: str, size: str, kernel: int,
              depthwise: bool = False) -> list[tuple[str, int, int, int, tuple]]:
    """``(layer, cin, cout, stride, (h, w))`` of every ``kernel x kernel`` groups-1 convolution
    (``depthwise``: every depthwise one instead) of a zoo model, in execution order, one per
    distinct shape."""
    import torch

    from squeezer import zoo

    model = zoo.create(name, size)
    seen: dict[tuple, tuple] = {}
    hooks = []
    for layer, m in model.named_modules():
        if not (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (kernel, kernel)):
            continue
        if (m.groups == m.in_channels == m.out_channels > 1) if depthwise else m.groups == 1:
            def hook(mod, args, out, layer=layer):
                key = (mod.in_channels, mod.out_channels, mod.stride[0], tuple(args[0].shape[2:]))
                seen.setdefault(key, (layer, *key))

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(zoo.spec(name, size).input_shape))
    for h in hooks:
        h.remove()
    return list(seen.values())


def spread(items: list, count: int) -> list:
    """``count`` items evenly spaced from first to last (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def conv_cases(model: str, size: str, kernel: int, count: int, sparsities, stride1=False):
    layers = zoo_convs(model, size, kernel)
    if stride1:
        layers = [x for x in layers if x[3] == 1]
    return [ConvCase(model, layer, cin, cout, kernel, stride, hw, s)
            for layer, cin, cout, stride, hw in spread(layers, count) for s in sparsities]


# -- suites --------------------------------------------------------------------------------------
def full_suite() -> Suite:
    """Every case of the brief: 48 kernel cases, 18 conv cases, MobileNetV2 end to end."""
    kernels = tuple(KernelCase(n, k, b, s, blk) for (n, k) in BERT_LINEAR for b in BATCHES
                    for s in SPARSITIES for blk in PATTERNS)
    convs = (conv_cases("mobilenetv2", "full", 1, 3, CONV_SPARSITIES)
             + conv_cases("resnet18", "full", 1, 3, CONV_SPARSITIES)
             + conv_cases("resnet18", "full", 3, 3, CONV_SPARSITIES, stride1=True))
    return Suite(kernels, tuple(convs), (EndToEndCase("mobilenetv2", "full", 0.9),))


def quick_suite(tiny: bool = False) -> Suite:
    """The cases the goals are stated on (768x3072 at 90%, both patterns, batch 1 and 128),
    one layer of each conv family, and MobileNetV2 end to end.

    ``tiny`` keeps that structure on tiny shapes and the digits-size zoo models (for tests).
    """
    n, k, batches, size = (32, 48, (1, 16), "small") if tiny else (768, 3072, BATCHES, "full")
    kernels = tuple(KernelCase(n, k, b, 0.9, blk) for b in batches for blk in PATTERNS)
    convs = (conv_cases("mobilenetv2", size, 1, 1, (0.9,))
             + conv_cases("resnet18", size, 3, 1, (0.9,), stride1=True))
    return Suite(kernels, tuple(convs), (EndToEndCase("mobilenetv2", size, 0.9),))
