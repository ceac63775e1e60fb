"""Per-layer sparsity from a performance model: break-even, water-filling, budget searches.

A ``Curve`` is one layer's predicted time as a function of the blocks removed: dense until its
break-even (the fewest blocks removed for the sparse kernel to pay, ``breakeven``), the sparse
kernel's estimate from there on. ``for_budget`` shares a number of weights removed among the
layers that pay, ``for_speedup`` finds the fewest weights removed for a predicted speedup; the
rules are in the docstring of ``guided``, their user.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from squeezer.errors import RecipeError

from .products import Site

__all__ = ["GRID", "Curve", "breakeven", "for_budget", "for_speedup", "joined", "waterfill"]

GRID = 200  # budgets tried, evenly spaced, before the speedup search bisects


@dataclass(frozen=True)
class Curve:
    """A layer's predicted time as a function of the blocks removed."""

    tensor: str
    site: Site
    block: tuple[int, int] | None  # None: no sparse kernel
    units: int  # blocks
    floor: int | None  # blocks removed at break-even; None: never pays up to ``cap``
    cap: int
    dense: float
    cores: int

    @property
    def weights(self) -> int:
        return self.site.n * self.site.k

    @property
    def per_unit(self) -> float:
        return self.weights / self.units

    def sparse(self, removed: int) -> float:
        assert self.block is not None
        return self.site.seconds(self.block, self.units - removed, self.cores)

    def time(self, removed: int) -> float:
        """Predicted time with ``removed`` blocks gone: sparse once at break-even, else dense."""
        if self.floor is None or removed < self.floor:
            return self.dense
        return self.sparse(removed)

    def rate(self) -> float:
        """Time saved per weight removed when pruned to break-even (the join order)."""
        assert self.floor is not None
        return (self.dense - self.time(self.floor)) / max(self.floor * self.per_unit, 1e-30)


def synthetic(n: int, k: int, block: tuple[int, int], kept: int) -> np.ndarray:
    """An ``n x k`` weight with ``kept`` blocks of ones, evenly spread (a pruned weight's look)."""
    br, bc = block
    rows, cols = -(-n // br), -(-k // bc)
    grid = np.zeros(rows * cols, dtype=np.float32)
    if kept:
        grid[np.arange(kept, dtype=np.int64) * (rows * cols) // kept] = 1.0
    full = np.kron(grid.reshape(rows, cols), np.ones(block, dtype=np.float32))
    return np.ascontiguousarray(full[:n, :k])


def breakeven(
    site: Site,
    block: tuple[int, int],
    units: int,
    margin: float,
    cores: int,
    cm: ModuleType,
    target: Any,
    blocks: tuple[tuple[int, int], ...],
) -> int | None:
    """Blocks to remove for the sparse kernel to pay (``None``: not even with all removed):
    its estimate beats ``margin`` times dense, and ``choose_format`` (offered ``blocks``, as
    the compiler offers them for this kernel) picks a sparse format."""
    dense = site.seconds(None, 0, cores)

    def fast(kept: int) -> bool:
        return site.seconds(block, kept, cores) < margin * dense

    def compiled_sparse(kept: int) -> bool:
        w = synthetic(site.n, site.k, block, kept)
        return all(cm.choose_format(w, p, target, blocks=blocks) is not None for p in site.runs)

    kept = _largest(fast, units)
    if kept is not None and not compiled_sparse(kept):
        kept = _largest(compiled_sparse, kept - 1) if kept > 0 else None
    return None if kept is None else units - kept


def _largest(ok: Callable[[int], bool], hi: int) -> int | None:
    """The largest ``x`` in ``[0, hi]`` with ``ok(x)``, for ``ok`` true below a threshold."""
    if hi < 0 or not ok(0):
        return None
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def waterfill(curves: list[Curve], budget: int) -> dict[str, int]:
    """Blocks removed per layer: ``clip(L * units, floor, cap)`` at the level ``L`` that
    removes ``budget`` weights, rounded by largest remainders."""

    def removed(level: float) -> list[float]:
        return [min(max(level * c.units, c.floor or 0), c.cap) for c in curves]

    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        total = sum(x * c.per_unit for x, c in zip(removed(mid), curves, strict=True))
        lo, hi = (mid, hi) if total < budget else (lo, mid)
    exact = removed(hi)
    out = {c.tensor: min(math.floor(x + 1e-9), c.cap) for x, c in zip(exact, curves, strict=True)}
    left = budget - sum(out[c.tensor] * c.per_unit for c in curves)
    order = sorted(zip(exact, curves, strict=True), key=lambda xc: out[xc[1].tensor] - xc[0])
    for _, c in order:  # largest remainders first
        if left >= c.per_unit / 2 and out[c.tensor] < c.cap:
            out[c.tensor] += 1
            left -= c.per_unit
    return out


def joined(order: list[Curve], budget: int) -> list[Curve]:
    """The layers of ``order`` that join: each whose break-even still fits in ``budget``."""
    joined, need = [], 0.0
    for c in order:
        assert c.floor is not None
        if need + c.floor * c.per_unit <= budget + 1e-9:
            joined.append(c)
            need += c.floor * c.per_unit
    return joined


def for_budget(
    paying: list[Curve], budget: int, weights: int, max_sparsity: float
) -> dict[str, int]:
    """Blocks removed per layer for ``budget`` weights removed out of the eligible ``weights``:
    the layers of ``paying`` (in join order) that join, water-filled.

    Raises
    ------
    RecipeError
        No layer's break-even fits in the budget, or those that fit cannot hold it.
    """
    if budget == 0:
        return {}
    least = min(c.floor * c.per_unit for c in paying if c.floor is not None)
    if least > budget:
        raise RecipeError(
            f"sparsity {budget / weights:.3g} removes {budget:,} of {weights:,} weights, fewer "
            f"than any layer needs to pay for its sparse kernel (the least is {least:,.0f}: "
            f"sparsity {least / weights:.3f}); raise sparsity or prune with another method"
        )
    room, taken = 0.0, list[Curve]()
    for order in (paying, sorted(paying, key=lambda c: -c.weights)):
        taken = joined(order, budget)
        room = sum(c.cap * c.per_unit for c in taken)
        if room >= budget:
            return waterfill(taken, budget)
    left_out = [c for c in paying if c not in taken]
    hint = ""
    if left_out:
        big = max(left_out, key=lambda c: c.weights)
        assert big.floor is not None
        need = big.floor * big.per_unit
        hint = (
            f"; {big.tensor} pays from sparsity {big.floor / big.units:.1%} of its weights "
            f"({need:,.0f}, overall {need / weights:.3f})"
        )
    raise RecipeError(
        f"sparsity {budget / weights:.3g} removes {budget:,} weights, but the layers that pay "
        f"and whose break-evens fit in that hold only {room:,.0f} at max_sparsity "
        f"{max_sparsity:g} (sparsity {room / weights:.3f}){hint}; change sparsity or "
        "raise max_sparsity"
    )


def for_speedup(
    paying: list[Curve],
    weights: int,
    total: Callable[[dict[str, int]], float],
    speedup: float,
    max_sparsity: float,
) -> dict[str, int]:
    """The allocation of ``for_budget`` with the fewest weights removed whose predicted time
    ``total(removed)`` is at most ``total({}) / speedup``.

    Raises
    ------
    RecipeError
        Every paying layer at ``max_sparsity`` still misses the goal.
    """
    goal = total({}) / speedup
    most = round(sum(c.cap * c.per_unit for c in paying))
    if total({c.tensor: c.cap for c in paying}) > goal:
        raise RecipeError(
            f"speedup {speedup:g} is beyond reach: with every layer that pays at "
            f"max_sparsity {max_sparsity:g} the predicted speedup is "
            f"{total({}) / total({c.tensor: c.cap for c in paying}):.2f}x"
        )

    def meets(budget: int) -> bool:
        try:
            return total(for_budget(paying, budget, weights, max_sparsity)) <= goal
        except RecipeError:  # no allocation removes exactly this many
            return False

    # A layer joining at its break-even takes budget from the others, so the time is not
    # monotone in the budget: the first grid point that meets the goal, then bisection below it.
    lo, hi = 0, most
    for step in range(1, GRID + 1):
        hi = round(most * step / GRID)
        if meets(hi):
            break
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return for_budget(paying, hi, weights, max_sparsity)
