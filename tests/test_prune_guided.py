"""Guided pruning (Park et al., 2017): only layers whose sparse kernel pays are pruned, to exactly
the allocated sparsity; the predicted time falls and the compiler agrees; accuracy on the digits;
and the inputs it refuses."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from squeezer import data
from squeezer.compression import compress
from squeezer.errors import RecipeError
from squeezer.passes.compress import CompressContext, base, get_method
from squeezer.passes.compress.prune import masks, sparsity_report
from squeezer.passes.compress.prune.guided import GuidedPruning, GuidedSettings
from squeezer.passes.graph.sparsify_weights import CONV_BLOCKS
from squeezer.recipe import load_recipe
from squeezer.schedules.sparse_cost import (
    BLOCKS,
    MARGIN,
    VECTOR,
    choose_format,
    estimate_seconds,
)

FAST = settings(max_examples=25, deadline=None)
MAX_SPARSITY = GuidedSettings.model_fields["max_sparsity"].default
CEILING = 0.6  # choose_format considers sparse formats below this density only

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(hidden: tuple[int, ...] = (512,), seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    widths = (64, *hidden, 10)
    mods: list[torch.nn.Module] = [torch.nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*mods[:-1]).eval()


def cnn(head: int = 10, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),  # 3x3: the direct sparse convolution at batch 1
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: no sparse kernel
        torch.nn.Conv2d(8, 64, 1, stride=2),  # 1x1 on a 4x4 output: p = 16
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 16, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, head),
    ).eval()


def prepare(
    model: torch.nn.Module, digits: data.Digits, **fields: Any
) -> tuple[GuidedPruning, list[str]]:
    """Prepare ``guided`` on ``model`` in place, as a recipe entry with ``fields`` would."""
    lines: list[str] = []
    entry = load_recipe([{"method": "guided", "epochs": 0, **fields}]).entries[0]
    pruner = get_method("guided")(entry.settings)
    assert isinstance(pruner, GuidedPruning)
    ctx = CompressContext(copy.deepcopy(model), digits, 8, None, lines.append)
    pruner.check_tensors(model)
    pruner.prepare(model, ctx)
    return pruner, lines


def zeros(t: torch.Tensor) -> int:
    return t.numel() - int(t.count_nonzero())


def target(cores: int = 2) -> Any:
    from tvm.target import Target

    return Target({"kind": "llvm", "num-cores": cores})


def offered(kernel: str | None) -> tuple[tuple[int, int], ...]:
    """The block shapes sparsify_weights offers choose_format for a layer's kernel."""
    return CONV_BLOCKS if kernel == "sparse_conv2d" else BLOCKS


def predicted_breakeven(p: int, block: tuple[int, int] = (1, 1)) -> float:
    """The fraction of the blocks to remove for the sparse kernel's estimate at ``p`` columns to
    beat ``MARGIN`` times dense, by ``estimate_seconds`` alone (both times are linear in the
    stored values, so any shape that divides into blocks gives it)."""
    n, k = 64, 64
    dense = estimate_seconds(n, k, p, None, 0, 2)
    full = estimate_seconds(n, k, p, block, n * k // (block[0] * block[1]), 2)
    return 1 - MARGIN * dense / full


def unstructured_breakeven(p: int) -> float:
    """Where CSR pays at ``p`` columns: the estimate's break-even or choose_format's ceiling."""
    return max(predicted_breakeven(p), 1 - CEILING)


def past_every_breakeven(model: torch.nn.Module, digits: data.Digits, **fields: Any) -> float:
    """An overall sparsity at which every layer that pays joins: halfway from the highest
    break-even the plan finds to max_sparsity (for a model whose paying layers hold nearly all
    the eligible weights)."""
    probe, _ = prepare(copy.deepcopy(model), digits, sparsity=0.0, **fields)
    assert probe.plan is not None
    highest = max(lp.breakeven for lp in probe.plan.layers.values() if lp.breakeven is not None)
    return (highest + MAX_SPARSITY) / 2


def floors(model: torch.nn.Module, digits: data.Digits, **fields: Any) -> dict[str, int]:
    """Blocks removed at each paying layer's break-even, from a plan of ``sparsity: 0``."""
    probe, _ = prepare(copy.deepcopy(model), digits, sparsity=0.0, **fields)
    assert probe.plan is not None
    return {
        n: round(lp.breakeven * lp.units)
        for n, lp in probe.plan.layers.items()
        if lp.breakeven is not None
    }


def test_layers_where_the_kernel_cannot_win_stay_dense(digits: data.Digits) -> None:
    # A 4-input, 1-output head: at p = 1 CSR pays only below density 1 - break-even, which
    # for 4 weights leaves none kept, beyond max_sparsity.
    assert 4 * (1 - unstructured_breakeven(1)) <= 1
    model = torch.nn.Sequential(cnn(head=4), torch.nn.ReLU(), torch.nn.Linear(4, 1)).eval()
    pruner, lines = prepare(model, digits, sparsity=past_every_breakeven(model, digits))
    plan = pruner.plan
    assert plan is not None
    assert list(plan.layers) == [
        "0.0.weight", "0.2.weight", "0.3.weight", "0.6.weight", "0.8.weight", "2.weight"
    ]  # fmt: skip
    eligible = [n for n, lp in plan.layers.items() if lp.eligible]
    assert eligible == list(pruner.layers)
    assert eligible == ["0.0.weight", "0.3.weight", "0.6.weight", "0.8.weight", "2.weight"]
    assert plan.layers["0.2.weight"].note == "a grouped convolution has no sparse kernel"
    assert zeros(pruner.mask("0.3.weight")) > 0  # the 1x1 conv: sparse_matmul on its 4x4 output
    conv = plan.layers["0.0.weight"]  # the 3x3 conv: direct sparse convolution, im2col-priced
    assert (conv.kernel, conv.runs, conv.shape) == ("sparse_conv2d", {64: 1}, (8, 9))
    assert conv.breakeven == pytest.approx(unstructured_breakeven(64), abs=1 / conv.units)
    assert conv.sparsity >= conv.breakeven
    tiny = plan.layers["2.weight"]
    assert tiny.breakeven is None and tiny.removed == 0 and zeros(pruner.mask("2.weight")) == 0
    assert tiny.pruned_s == tiny.dense_s and tiny.at_request is not None and tiny.at_request < 1
    # the request rounds to all 4 weights: its speedup is taken at max_sparsity (1 kept)
    kept = 4 - math.floor(MAX_SPARSITY * 4)
    assert tiny.at_request == pytest.approx(
        tiny.dense_s / estimate_seconds(1, 4, 1, (1, 1), kept, 2)
    )
    big = plan.layers["0.6.weight"]  # 128 x 1024 at p = 1: matrix-vector rates
    assert big.breakeven == pytest.approx(unstructured_breakeven(1), abs=1 / big.units)
    assert big.sparsity >= big.breakeven and big.pruned_s < MARGIN * big.dense_s
    assert plan.layers["0.8.weight"].removed > 0  # every layer that pays joins
    assert plan.layers["0.3.weight"].runs == {16: 1}  # the stride-2 1x1 conv's 4x4 output
    assert zeros(pruner.mask("0.6.weight")) == big.removed > 0
    assert any(
        line.startswith("2.weight 1x4 at p=1: sparse_matmul 1x1 blocks, never pays")
        for line in lines
    )
    assert (
        "0.2.weight 8x9 at p=64: a grouped convolution has no sparse kernel; predicted"
        in "".join(lines)
    )
    assert any(
        line.startswith("predicted time of the products at batch 1 on 2 cores:") for line in lines
    )


def test_convolutions_stay_dense_above_batch_1(digits: data.Digits) -> None:
    batch = VECTOR  # the batched rates (from 2 to VECTOR - 1 CSR needs over 95% now)
    sparsity = past_every_breakeven(cnn(), digits, batch=batch)
    pruner, lines = prepare(cnn(), digits, sparsity=sparsity, batch=batch)
    plan = pruner.plan
    assert plan is not None and list(pruner.layers) == ["6.weight", "8.weight"]
    assert "left '0' dense: sparsify_weights rewrites convolutions of batch-1 inputs only" in lines
    assert (
        plan.layers["3.weight"].note
        == "sparsify_weights rewrites convolutions of batch-1 inputs only"
    )

    def dense(n: int, k: int, p: int) -> float:
        return estimate_seconds(n, k, p, None, 0, 2)

    # Convolutions run once per input at p = H * W (im2col k), linear layers at p = batch.
    by_hand = (
        batch * (dense(8, 9, 64) + dense(8, 9, 64) + dense(64, 8, 16))
        + dense(128, 1024, batch)
        + dense(10, 128, batch)
    )
    assert plan.dense_s == pytest.approx(by_hand, rel=1e-12)
    assert plan.pruned_s < plan.dense_s
    with pytest.raises(RecipeError, match="cannot prune '3': sparsify_weights rewrites"):
        prepare(cnn(), digits, batch=batch, layers=["3", "6"])


def test_predicted_times_follow_the_model_and_the_compiler_agrees(digits: data.Digits) -> None:
    model = cnn()
    pruner, _ = prepare(model, digits, sparsity=past_every_breakeven(model, digits))
    plan = pruner.plan
    assert plan is not None and plan.pruned_s < plan.dense_s
    assert all(lp.removed > 0 for lp in plan.layers.values() if lp.eligible)
    assert [n for n, lp in plan.layers.items() if lp.eligible] == [
        "0.weight", "3.weight", "6.weight", "8.weight"
    ]  # fmt: skip
    pruner.squash(model)
    # What sparsify_weights will do with the pruned weights: every pruned layer compiles
    # sparse, every other one dense, and the time is at most the plan's.
    compiled = 0.0
    for name, lp in plan.layers.items():
        if not lp.eligible:
            compiled += lp.dense_s
            continue
        w = masks.matrix_view(model.get_parameter(name)).detach().numpy()
        log: list[dict] = []
        block = None
        for p, calls in lp.runs.items():
            block = choose_format(w, p, target(), log=log, blocks=offered(lp.kernel))
            assert (block is None) == (lp.removed == 0), name
            compiled += calls * (log[-1]["dense_s"] if block is None else log[-1]["sparse_s"])
        if lp.removed:
            assert lp.pruned_s == pytest.approx(
                sum(
                    calls
                    * estimate_seconds(
                        *lp.shape, p, (1, 1), lp.shape[0] * lp.shape[1] - lp.removed, 2
                    )
                    for p, calls in lp.runs.items()
                )
            )
    assert compiled <= plan.pruned_s * (1 + 1e-9)


@pytest.mark.parametrize(
    ("batch", "block"), [(1, (1, 1)), (128, (1, 1)), (128, (16, 1))], ids=["1", "128", "128-16x1"]
)
def test_breakeven_is_where_the_compiler_switches_to_sparse(
    batch: int, block: tuple[int, int], digits: data.Digits
) -> None:
    # At batch 1 the products run at the matrix-vector rates, at 128 at the batched ones: the
    # time estimate binds. With 16x1 blocks at 128 the estimate pays earlier than the
    # compiler's density ceiling allows: the ceiling binds.
    ceiling_binds = predicted_breakeven(batch, block) < 1 - CEILING
    assert ceiling_binds or block == (1, 1)  # the case the 16x1 parameter is here for
    model = cnn()
    pruner, _ = prepare(model, digits, sparsity=0.0, batch=batch, blocks=[list(block)])
    assert pruner.plan is not None
    at_ceiling = 0
    for name, lp in pruner.plan.layers.items():
        if not lp.eligible:
            continue
        assert lp.breakeven is not None and lp.block == block
        w = masks.matrix_view(pruner.layers[name].weight).detach().numpy()
        (n, k), (br, bc) = w.shape, block
        if ceiling_binds and n % br == 0:  # (10 rows in 16x1 blocks: the padding costs time)
            assert lp.breakeven == pytest.approx(1 - CEILING, abs=1 / lp.units)
            at_ceiling += 1
        floor = round(lp.breakeven * lp.units)
        # whole blocks by RMS, the smallest first (1x1: by magnitude)
        rows, cols = -(-n // br), -(-k // bc)
        padded = np.zeros((rows * br, cols * bc), np.float32)
        padded[:n, :k] = w
        tiles = padded.reshape(rows, br, cols, bc).swapaxes(1, 2).reshape(rows * cols, br, bc)
        order = np.argsort(np.square(tiles).sum(axis=(1, 2)), kind="stable")
        for removed, sparse in ((floor, True), (floor - 1, False)):
            kept = tiles.copy()
            kept[order[:removed]] = 0
            whole = kept.reshape(rows, cols, br, bc).swapaxes(1, 2).reshape(rows * br, -1)
            pruned = np.ascontiguousarray(whole[:n, :k])
            for p in lp.runs:
                got = choose_format(pruned, p, target(), blocks=offered(lp.kernel))
                assert (got is not None) == sparse, (name, removed, p)
    assert (at_ceiling > 0) == ceiling_binds


# From half the batch's CSR break-even (only smaller layers pay) to max_sparsity. From 2 to
# VECTOR - 1 columns CSR now pays only beyond max_sparsity: no batch there.
BATCH_AND_SPARSITY = st.sampled_from([1, VECTOR, 128]).flatmap(
    lambda b: st.tuples(st.just(b), st.floats(unstructured_breakeven(b) / 2, MAX_SPARSITY))
)


@FAST
@given(
    hidden=st.lists(st.integers(8, 192), min_size=1, max_size=3),
    batch_sparsity=BATCH_AND_SPARSITY,
    seed=st.integers(0, 2**16),
)
def test_achieved_sparsity_equals_the_allocation(
    hidden: list[int], batch_sparsity: tuple[int, float], seed: int, digits: data.Digits
) -> None:
    batch, sparsity = batch_sparsity
    model = mlp(tuple(hidden), seed)
    try:
        pruner, _ = prepare(model, digits, sparsity=sparsity, batch=batch)
    except RecipeError as err:  # a budget below every break-even, or above what pays
        assert "fewer than any layer needs" in str(err) or "hold only" in str(err)
        assume(False)
    plan = pruner.plan
    assert plan is not None
    weights = {n: pruner.mask(n).numel() for n in pruner.layers}
    removed = {n: zeros(pruner.mask(n)) for n in pruner.layers}
    assert removed == {n: lp.removed for n, lp in plan.layers.items()}
    assert sum(removed.values()) == round(sparsity * sum(weights.values()))
    for n, lp in plan.layers.items():
        if lp.removed:  # pruned: at least to break-even, at most max_sparsity
            assert lp.breakeven is not None and lp.breakeven <= lp.sparsity <= 0.95
        torch.testing.assert_close(
            pruner.layers[n].weight, pruner.dense(n) * pruner.mask(n), rtol=0, atol=0
        )
    pruner.squash(model)
    report = sparsity_report(model)
    assert report == pytest.approx({n: removed[n] / weights[n] for n in weights}, rel=0, abs=1e-12)


def test_masks_are_by_magnitude_within_a_layer(digits: data.Digits) -> None:
    model = mlp()
    w = model[1].weight.detach().abs().clone()
    pruner, _ = prepare(model, digits, sparsity=0.8, batch=128)
    mask = pruner.mask("1.weight").bool()
    assert zeros(mask) == pruner.plan.layers["1.weight"].removed > 0  # type: ignore[union-attr]
    assert w[~mask].max() <= w[mask].min()


def test_speedup_target_takes_the_fewest_weights(digits: data.Digits) -> None:
    model = cnn()
    batch = VECTOR  # linear layers only, at the batched rates
    pruner, lines = prepare(model, digits, speedup=1.5, batch=batch)
    plan = pruner.plan
    assert plan is not None and plan.speedup >= 1.5
    eligible = sum(lp.units for lp in plan.layers.values() if lp.eligible)
    gone = sum(lp.removed for lp in plan.layers.values())
    less, _ = prepare(cnn(), digits, sparsity=(gone - 1) / eligible, batch=batch)
    assert less.plan is not None and less.plan.speedup < 1.5
    assert any(line.startswith("predicted") and f"({plan.speedup:.2f}x)" in line for line in lines)


def test_blocks_prune_whole_blocks_of_the_chosen_shape(digits: data.Digits) -> None:
    model = mlp()
    pruner, lines = prepare(model, digits, sparsity=0.8, batch=128, blocks=[[1, 1], [4, 1]])
    plan = pruner.plan
    assert plan is not None
    for name, lp in plan.layers.items():
        assert lp.block == (4, 1)  # the faster kernel breaks even earlier
        mask = masks.matrix_view(pruner.mask(name))
        rows = -(-mask.shape[0] // 4)  # 3.weight has 10 rows: a partial last block row
        tiles = F.pad(mask, (0, 0, 0, 4 * rows - mask.shape[0]), value=-1).reshape(rows, 4, -1)
        first = tiles[:, :1]
        assert bool(((tiles == first) | (tiles < 0)).all())  # 4x1 blocks kept or removed whole
        assert zeros(first) == lp.removed > 0
    pruner.squash(model)
    w = model[1].weight
    assert pruner.stored_bytes(model)["1.weight"] == min(masks.bsr_bytes(w, (4, 1)), w.numel() * 4)
    assert any("sparse_matmul 4x1 blocks" in line for line in lines)
    # The direct convolution stores blocks of output rows only: with 1x4 blocks alone the 3x3
    # conv has no sparse format and stays dense; the 1x1 conv and the linear layers take 1x4.
    sparsity = past_every_breakeven(cnn(), digits, blocks=[[1, 4]])
    pruner, lines = prepare(cnn(), digits, sparsity=sparsity, blocks=[[1, 4]])
    assert pruner.plan is not None and "0.weight" not in pruner.layers
    assert (
        "left '0' dense: sparse_conv2d takes blocks 1x1, 4x1, 8x1, 16x1, none of 'blocks'" in lines
    )
    conv = pruner.plan.layers["0.weight"]
    assert not conv.eligible and conv.note.startswith("sparse_conv2d takes blocks 1x1, 4x1")
    assert {pruner.plan.layers[n].block for n in pruner.layers} == {(1, 4)}


def test_the_largest_layers_join_first_when_the_best_rates_cannot_hold_the_budget(
    digits: data.Digits,
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 1),  # 8 weights at p = 64 (batched rates): the best rate, tiny
        torch.nn.Conv2d(8, 8, 1),  # 64 weights at p = 64: a better rate than 3.weight
        torch.nn.Flatten(),
        torch.nn.Linear(512, 64),  # at p = 1 (matrix-vector rates): pays late, saves little
    ).eval()
    probe_only, _ = prepare(model, digits, sparsity=0.0)
    assert probe_only.plan is not None
    layers = probe_only.plan.layers
    floor = floors(model, digits)

    def rate(name: str) -> float:  # time saved per weight removed at break-even
        lp, f = layers[name], floor[name]
        sparse = sum(
            calls * estimate_seconds(*lp.shape, p, (1, 1), lp.units - f, 2)
            for p, calls in lp.runs.items()
        )
        return (lp.dense_s - sparse) / f

    assert rate("0.weight") > rate("1.weight") > 2 * rate("3.weight")
    # Between the big layer's break-even and that plus the middle conv's, the rate order takes
    # the convs (which hold 67 at max_sparsity) and skips the big layer; by size it fits.
    budget = floor["3.weight"] + floor["1.weight"] // 2
    assert floor["0.weight"] <= floor["1.weight"] // 2  # the tiny conv fits beside it
    weights = 8 + 64 + 512 * 64
    pruner, _ = prepare(model, digits, sparsity=budget / weights)
    plan = pruner.plan
    assert plan is not None
    assert plan.layers["3.weight"].removed >= floor["3.weight"]
    assert plan.layers["1.weight"].removed == 0
    assert plan.layers["0.weight"].removed >= floor["0.weight"]
    assert sum(lp.removed for lp in plan.layers.values()) == budget


def test_sparsity_zero_prunes_nothing(digits: data.Digits) -> None:
    pruner, _ = prepare(mlp(), digits, sparsity=0.0)
    assert pruner.plan is not None and pruner.plan.pruned_s == pruner.plan.dense_s
    assert all(zeros(pruner.mask(n)) == 0 for n in pruner.layers)


def test_bad_inputs_are_refused_with_the_numbers(digits: data.Digits) -> None:
    tiny = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d((1, 4)), torch.nn.Flatten(), torch.nn.Linear(4, 1)
    )
    with pytest.raises(
        RecipeError,
        match=r"no layer pays for a sparse kernel at batch 1 up to "
        r"max_sparsity 95%: 2.weight \(1x4\)",
    ):
        prepare(tiny, digits)
    convs = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, dilation=2), torch.nn.Flatten())
    with pytest.raises(RecipeError, match="no layer left to prune: left '0' dense: a dilated"):
        prepare(convs, digits)
    with pytest.raises(RecipeError, match="layers: cannot prune '2': a grouped convolution"):
        prepare(cnn(), digits, layers=["2", "6"])
    strided = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=3), torch.nn.Flatten())
    with pytest.raises(RecipeError, match="a 3x3 convolution of stride 3x3 has no sparse kernel"):
        prepare(strided, digits)
    least = min(floors(mlp(), digits, batch=128).values())  # the head's break-even
    with pytest.raises(
        RecipeError, match=rf"fewer than any layer needs .* \(the least is {least:,}: "
    ):
        prepare(mlp(), digits, sparsity=least / 2 / (512 * 64 + 10 * 512), batch=128)
    with pytest.raises(RecipeError, match="but the layers that pay .* hold only 35,993 "):
        prepare(mlp(), digits, sparsity=0.97)
    with pytest.raises(RecipeError, match=r"speedup 50 is beyond reach: .* is \d+\.\d+x"):
        prepare(cnn(), digits, speedup=50)
    with pytest.raises(RecipeError, match="blocks: the sparse kernels have no 3x3 blocks"):
        prepare(mlp(), digits, blocks=[[3, 3]])
    with pytest.raises(RecipeError, match="does not run on a 1x1x16x16 sample"):
        prepare(mlp(), digits, resolution=16)
    for fields, message in (
        ({"sparsity": 0.5, "speedup": 2}, "give either sparsity or speedup"),
        ({"scope": "global"}, "scope must be 'layer'"),
        ({"tensors": {"1.weight": {"sparsity": 0.2}}}, "unknown per-tensor field 'sparsity'"),
        ({"speedup": 1.0}, "speedup"),
    ):
        with pytest.raises(RecipeError, match=message):
            load_recipe([{"method": "guided", **fields}])


def test_an_exported_graph_gets_the_same_plan(tmp_path: Path, digits: data.Digits) -> None:
    model = cnn()
    program = torch.export.export(model, (torch.zeros(1, 1, 8, 8),))
    torch.export.save(program, tmp_path / "m.pt2")
    graph = base.load_exported(tmp_path / "m.pt2")
    sparsity = past_every_breakeven(cnn(), digits)
    ours, _ = prepare(graph, digits, sparsity=sparsity)
    want, _ = prepare(cnn(), digits, sparsity=sparsity)
    assert ours.plan is not None and want.plan is not None
    assert ours.plan.layers == want.plan.layers
    assert want.plan.layers["0.weight"].kernel == "sparse_conv2d"
    assert all(lp.removed > 0 for lp in want.plan.layers.values() if lp.eligible)
    ours.squash(graph)
    state = graph.state_dict()
    for name, lp in want.plan.layers.items():
        assert zeros(state[name]) == lp.removed


@pytest.mark.parametrize("batch", [1, 128])
def test_digits_accuracy_after_fine_tuning(batch: int, digits: data.Digits) -> None:
    trained = data.train(mlp(), 15, data=digits)
    total = 512 * 64 + 10 * 512
    floor = floors(trained, digits, batch=batch)
    if batch == 1:  # both layers pay from the same break-even: past it they share evenly
        sparsity = past_every_breakeven(trained, digits, batch=batch)
    else:  # the budget covers the big layer's break-even, not the head's as well
        sparsity = (floor["1.weight"] + floor["3.weight"] // 2) / total
    recipe = [{"method": "guided", "sparsity": sparsity, "batch": batch, "epochs": 16}]
    out, report = compress(trained, recipe, progress=False)
    assert report.accuracy_before >= 0.95
    assert report.accuracy_after >= report.accuracy_before - 0.01
    zeros_now = sparsity_report(out)
    assert sum(out.get_parameter(n).numel() for n in zeros_now) == total
    gone = sum(zeros_now[n] * out.get_parameter(n).numel() for n in zeros_now)
    assert round(gone) == round(sparsity * total)
    if batch == 128:  # the whole budget goes to the big layer
        assert zeros_now["3.weight"] == 0
        assert zeros_now["1.weight"] * 512 * 64 >= floor["1.weight"]
    else:
        assert zeros_now["1.weight"] == pytest.approx(sparsity, abs=1e-4)
        assert zeros_now["3.weight"] == pytest.approx(sparsity, abs=1e-3)
    # the logged speedup is the cost model's for the weights the fine-tuned model holds
    shapes = {"1.weight": (512, 64), "3.weight": (10, 512)}
    dense = sum(estimate_seconds(n, k, batch, None, 0, 2) for n, k in shapes.values())
    pruned = sum(
        estimate_seconds(n, k, batch, (1, 1), round((1 - zeros_now[t]) * n * k), 2)
        if zeros_now[t]
        else estimate_seconds(n, k, batch, None, 0, 2)
        for t, (n, k) in shapes.items()
    )
    predicted = [line for line in report.log if "predicted time of the products" in line]
    assert len(predicted) == 1
    share = re.escape(f"{round(sparsity * total) / total:.2%} of the {total:,} weights")
    speedup = re.search(rf"\((\d+\.\d+)x\); {share}", predicted[0])
    assert speedup is not None
    assert float(speedup.group(1)) == pytest.approx(dense / pruned, abs=0.006)
    assert dense / pruned > 1
