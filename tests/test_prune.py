"""Pruning: masks over the method lifecycle, exact sparsity, N:M and block patterns, schedules,
DNS splicing, stored sizes, and accuracy after fine-tuning on the digits."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezer import data
from squeezer.compression import compress, compress_file
from squeezer.errors import RecipeError
from squeezer.passes.compress import CompressContext, base, get_method
from squeezer.passes.compress.prune import PruningMethod, masks, schedule, sparsity_report
from squeezer.recipe import load_recipe

FAST = settings(max_examples=25, deadline=None)

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int = 0, hidden: int = 64) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    ).eval()


def cnn(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise: dense by default
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 16, 10),
    ).eval()


@pytest.fixture(scope="module")
def trained_mlp(digits: data.Digits) -> torch.nn.Module:
    return data.train(mlp(), 15, data=digits)


@pytest.fixture(scope="module")
def trained_cnn(digits: data.Digits) -> torch.nn.Module:
    return data.train(cnn(), 15, data=digits)


def prepare(
    model: torch.nn.Module, digits: data.Digits, method: str = "magnitude", **fields: Any
) -> tuple[PruningMethod[Any], list[str]]:
    """Prepare ``method`` on ``model`` in place, as a recipe entry with ``fields`` would."""
    lines: list[str] = []
    entry = load_recipe([{"method": method, "epochs": 0, **fields}]).entries[0]
    pruner = get_method(method)(entry.settings)
    assert isinstance(pruner, PruningMethod)
    ctx = CompressContext(copy.deepcopy(model), digits, 8, None, lines.append)
    pruner.check_tensors(model)
    pruner.prepare(model, ctx)
    return pruner, lines


def zeros(mask: torch.Tensor) -> int:
    return mask.numel() - int(mask.count_nonzero())


def random_model(seed: int, out: int, tie_levels: int | None) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, out, 3), torch.nn.Flatten(), torch.nn.Linear(out * 36, 10)
    )
    with torch.no_grad():
        for p in model.parameters():
            values = torch.randn(p.shape, generator=gen)
            if tie_levels is not None:  # few distinct magnitudes: many ties at the threshold
                values = torch.randint(-tie_levels, tie_levels + 1, p.shape, generator=gen) * 1.0
            p.copy_(values)
    return model


@FAST
@given(
    seed=st.integers(0, 2**16),
    out=st.integers(1, 6),
    sparsity=st.floats(0, 0.99),
    ties=st.one_of(st.none(), st.integers(1, 3)),
    scope=st.sampled_from(["layer", "global"]),
)
def test_achieved_sparsity_equals_the_request(
    seed: int, out: int, sparsity: float, ties: int | None, scope: str, digits: data.Digits
) -> None:
    model = random_model(seed, out, ties)
    pruner, _ = prepare(model, digits, sparsity=sparsity, scope=scope)
    sizes = {n: pruner.mask(n).numel() for n in pruner.layers}
    removed = {n: zeros(pruner.mask(n)) for n in pruner.layers}
    if scope == "layer":
        assert removed == {n: round(sparsity * k) for n, k in sizes.items()}
    else:
        assert sum(removed.values()) == round(sparsity * sum(sizes.values()))
    for n, layer in pruner.layers.items():  # the model computes with the masked weight
        torch.testing.assert_close(layer.weight, pruner.dense(n) * pruner.mask(n), rtol=0, atol=0)
    # Deterministic: the same model prunes to the same masks.
    again, _ = prepare(random_model(seed, out, ties), digits, sparsity=sparsity, scope=scope)
    assert all(torch.equal(again.mask(n), pruner.mask(n)) for n in pruner.layers)


def test_global_scope_removes_the_smallest_magnitudes_overall(digits: data.Digits) -> None:
    model = random_model(0, 4, None)
    with torch.no_grad():
        model[0].weight.uniform_(1, 2)
        model[2].weight.uniform_(-0.5, 0.5)  # all smaller than the conv's weights
    pruner, lines = prepare(model, digits, sparsity=0.5, scope="global")
    assert zeros(pruner.mask("0.weight")) == 0
    assert zeros(pruner.mask("2.weight")) == round(0.5 * (36 + 4 * 36 * 10))
    assert len(lines) == 1
    assert lines[0].startswith("pruned at start: sparsity 50.00% of 1,476 weights (0.weight 0.0%,")
    # A per-tensor override is pruned on its own, outside the global pool.
    pruner, _ = prepare(
        random_model(0, 4, None), digits, sparsity=0.5, scope="global",
        tensors={"0.weight": {"sparsity": 0.25}},
    )  # fmt: skip
    assert zeros(pruner.mask("0.weight")) == 9
    assert zeros(pruner.mask("2.weight")) == 720


def test_keep_mask_breaks_ties_by_position() -> None:
    keep = masks.keep_mask(torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]), 3)
    assert keep.tolist() == [False, False, True, False, True]
    with pytest.raises(ValueError, match="cannot remove 6 of 5"):
        masks.keep_mask(torch.zeros(5), 6)


@FAST
@given(
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)]),
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_nm_keeps_exactly_n_of_every_m(
    nm: tuple[int, int], rows: int, groups: int, seed: int, digits: data.Digits
) -> None:
    n, m = nm
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(m * groups, rows, 1), torch.nn.Flatten(), torch.nn.Linear(rows, 10)
    )
    pruner, lines = prepare(model, digits, "nm", n=n, m=m, layers=["0"])
    mask = masks.matrix_view(pruner.mask("0.weight")).reshape(rows, groups, m)
    assert (mask.sum(dim=2) == n).all()
    # Kept weights are the group's largest magnitudes.
    w = masks.matrix_view(pruner.dense("0.weight").abs()).reshape(rows, groups, m)
    kept_min = torch.where(mask.bool(), w, torch.inf).amin(dim=2)
    gone_max = torch.where(mask.bool(), -torch.inf, w).amax(dim=2)
    assert (kept_min >= gone_max).all()


def test_nm_settings_and_layers_it_cannot_prune(digits: data.Digits) -> None:
    model = cnn()  # first conv: 9 weights per row, not a multiple of 4
    pruner, lines = prepare(model, digits, "nm")
    assert list(pruner.layers) == ["4.weight", "7.weight"]
    assert lines[0] == "left '0' dense: its rows have 9 weights (in*kh*kw), not a multiple of m=4"
    with pytest.raises(RecipeError, match=r"layers: cannot prune '0': its rows have 9 weights"):
        prepare(cnn(), digits, "nm", layers=["0", "4"])
    with pytest.raises(RecipeError, match=r"sparsity 0.8 contradicts 2:4 \(sparsity 0.5\)"):
        load_recipe([{"method": "nm", "sparsity": 0.8}])
    with pytest.raises(RecipeError, match="n:m must satisfy 1 <= n < m, got 4:4"):
        load_recipe([{"method": "nm", "n": 4}])
    with pytest.raises(RecipeError, match="scope"):
        load_recipe([{"method": "nm", "scope": "global"}])
    # Per-tensor n:m overrides.
    pruner, _ = prepare(cnn(), digits, "nm", tensors={"7.weight": {"n": 1, "m": 8}})
    assert zeros(pruner.mask("7.weight")) == 10 * 512 * 7 // 8
    assert zeros(pruner.mask("4.weight")) == 32 * 144 // 2


@FAST
@given(
    block=st.tuples(st.integers(1, 5), st.integers(1, 7)),
    out=st.integers(1, 9),
    sparsity=st.floats(0, 0.95),
    norm=st.sampled_from(["l1", "l2"]),
    seed=st.integers(0, 2**16),
)
def test_block_masks_are_whole_blocks(
    block: tuple[int, int], out: int, sparsity: float, norm: str, seed: int, digits: data.Digits
) -> None:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, out, 3), torch.nn.Flatten(), torch.nn.Linear(out * 36, 10)
    )
    pruner, lines = prepare(model, digits, "block", block=list(block), sparsity=sparsity, norm=norm)
    r, c = block
    for name in pruner.layers:
        mask = masks.matrix_view(pruner.mask(name))
        rows, cols = -(-mask.shape[0] // r), -(-mask.shape[1] // c)
        padded = torch.nn.functional.pad(
            mask, (0, cols * c - mask.shape[1], 0, rows * r - mask.shape[0]), value=-1
        )
        tiles = padded.reshape(rows, r, cols, c).permute(0, 2, 1, 3).reshape(rows, cols, -1)
        real = tiles >= 0
        first = tiles[..., :1]
        assert ((tiles == first) | ~real).all()  # every block is all kept or all removed
        assert int((first[..., 0] == 0).sum()) == round(sparsity * rows * cols)
        partial = mask.shape[0] % r or mask.shape[1] % c
        assert any(line.startswith(f"{name}: the") for line in lines) == bool(partial)


def test_block_scores_use_the_real_weights_of_partial_blocks(digits: data.Digits) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 6))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].weight[4:, :] = 0.6  # the partial block row: RMS 0.6, or 0.42 if padding counted
        model[1].weight[:4, :8] = 0.5
    pruner, lines = prepare(model, digits, "block", block=[4, 8], sparsity=1 / 16)
    mask = pruner.mask("1.weight")
    assert zeros(mask) == 32 and mask[:4, :8].sum() == 0
    assert lines[0] == (
        "1.weight: the 6x64 matrix is not a multiple of 4x8 blocks; "
        "the partial last block row/column is padded, kept or removed as a whole"
    )


def test_block_stored_bytes_are_bsr_unless_dense_is_smaller(digits: data.Digits) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    pruner, _ = prepare(model, digits, "block", block=[2, 2], sparsity=0.75)
    pruner.squash(model)
    blocks = 4 * 32 // 4  # a quarter of the 128 blocks kept
    assert pruner.stored_bytes(model) == {"1.weight": blocks * (16 + 1) + 4 * 5}
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    pruner, _ = prepare(model, digits, "block", block=[2, 2], sparsity=0.02)
    pruner.squash(model)  # 125 blocks in BSR take 2,145 bytes: more than dense
    assert pruner.stored_bytes(model) == {"1.weight": 64 * 8 * 4}


def test_squash_finishes_a_schedule_that_had_no_epochs(digits: data.Digits) -> None:
    model = mlp()
    pruner, lines = prepare(model, digits, schedule="gradual", sparsity=0.6)
    assert lines == []
    pruner.squash(model)
    assert sparsity_report(model) == {"1.weight": round(0.6 * 4096) / 4096, "3.weight": 0.6}
    assert lines[0] == "the schedule had not ended: pruned to the final sparsity without training"
    assert lines[1].startswith("final sparsity 60.01% of 4,736 weights")


def test_csr_and_bsr_sizes_by_hand() -> None:
    w = torch.zeros(3, 300)
    w[0, 0], w[2, 299], w[2, 5] = 1.0, 2.0, 3.0
    assert masks.csr_bytes(w) == 3 * (4 + 2) + 4 * 4  # 300 columns need int16 indices
    assert masks.csr_bytes(w[:, :256]) == 2 * (4 + 1) + 4 * 4
    assert [masks.index_bytes(n) for n in (256, 257, 32768, 32769)] == [1, 2, 2, 4]
    # BSR 2x4: blocks (0, 0), (1, 1) and (1, 74); 2 block rows, 75 block columns.
    assert masks.bsr_bytes(w, (2, 4)) == 3 * (4 * 8 + 1) + 4 * 3
    conv = torch.zeros(4, 2, 3, 3)
    conv[1, 1, 2, 2] = 1.0  # column 1 * 9 + 2 * 3 + 2 = 17 of the (4, 18) matrix view
    assert masks.matrix_view(conv)[1, 17] == 1.0


def test_masks_survive_state_dict_save_and_load(tmp_path: Path, digits: data.Digits) -> None:
    model = mlp()
    pruner, _ = prepare(model, digits, sparsity=0.7)
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    assert "1.parametrizations.weight.0.mask" in model.state_dict()
    fresh = mlp(seed=1)
    other, _ = prepare(fresh, digits, sparsity=0.0)  # all-ones masks
    assert zeros(other.mask("1.weight")) == 0
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt"))
    assert all(torch.equal(other.mask(n), pruner.mask(n)) for n in pruner.layers)
    x = torch.from_numpy(digits.x_test[:16])
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    other.squash(fresh)
    assert type(fresh[1]) is torch.nn.Linear and "1.weight" in fresh.state_dict()
    assert sparsity_report(fresh)["1.weight"] == round(0.7 * 64 * 64) / (64 * 64)


def test_prepare_keeps_results_until_it_prunes(digits: data.Digits) -> None:
    model = mlp()
    x = torch.from_numpy(digits.x_test[:16])
    want = model(x)
    pruner, lines = prepare(model, digits, schedule="gradual", sparsity=0.8)
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    assert lines == [] and all(zeros(pruner.mask(n)) == 0 for n in pruner.layers)


def test_setting_and_layer_errors(digits: data.Digits) -> None:
    for bad in (1.0, -0.1):
        with pytest.raises(RecipeError, match=rf"sparsity: must be in \[0, 1\) .*got {bad}"):
            load_recipe([{"method": "magnitude", "sparsity": bad}])
    with pytest.raises(RecipeError, match=r"tensors\['1.weight'\].sparsity: .*must be in \[0, 1\)"):
        load_recipe([{"method": "magnitude", "tensors": {"1.weight": {"sparsity": 1.5}}}])
    with pytest.raises(RecipeError, match="patience would restore a less sparse epoch"):
        load_recipe([{"method": "magnitude", "schedule": "gradual", "patience": 2}])
    with pytest.raises(RecipeError, match="end_epoch 2 must be after start_epoch 2"):
        load_recipe([{"method": "magnitude", "start_epoch": 2, "end_epoch": 2}])
    model = torch.nn.Sequential()
    model.add_module("fc1", torch.nn.Linear(64, 8))
    model.add_module("fc2", torch.nn.Linear(8, 10))
    with pytest.raises(
        RecipeError, match=r"layers: 'fc' matches no Linear .*closest: 'fc2', 'fc1'"
    ):
        prepare(model, digits, layers=["fc"])
    with pytest.raises(RecipeError, match=r"exclude: 'fc3' matches no Linear .*closest: 'fc2'"):
        prepare(model, digits, exclude=["fc3"])
    with pytest.raises(RecipeError, match=r"tensors: 'fc1.wieght' .*closest: 'fc1.weight'"):
        prepare(model, digits, tensors={"fc1.wieght": {"sparsity": 0.1}})
    with pytest.raises(RecipeError, match="'1' matches '1', a BatchNorm2d, not a Linear or Conv2d"):
        prepare(cnn(), digits, layers=["1"])
    with pytest.raises(RecipeError, match="no prunable layer left after 'layers' and 'exclude'"):
        prepare(model, digits, exclude=["fc*"])
    pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d((1, 10)), torch.nn.Flatten())
    with pytest.raises(RecipeError, match=r"recipe\[0\] \(magnitude\): no prunable layer"):
        compress(pool, [{"method": "magnitude", "epochs": 0}], progress=False)


def test_depthwise_is_dense_by_default_and_prunable_by_name(digits: data.Digits) -> None:
    pruner, _ = prepare(cnn(), digits)
    assert list(pruner.layers) == ["0.weight", "4.weight", "7.weight"]
    pruner, _ = prepare(cnn(), digits, layers=["*"], exclude=["7"])
    assert list(pruner.layers) == ["0.weight", "3.weight", "4.weight"]


def test_schedule_formulas() -> None:
    gradual = [
        schedule.sparsity_at("gradual", 0.8, t, 6, start=1, end=4, initial=0.2) for t in range(7)
    ]
    want = [0.0] + [0.8 + (0.2 - 0.8) * (1 - (t - 1) / 3) ** 3 for t in (1, 2, 3)] + [0.8] * 3
    assert gradual == pytest.approx(want) and gradual[4] == 0.8
    iterative = [schedule.sparsity_at("iterative", 0.9, t, 6, steps=3) for t in range(7)]
    assert iterative == pytest.approx([0.3, 0.3, 0.6, 0.6, 0.9, 0.9, 0.9])  # end: ceil(2 * 6 / 3)
    assert schedule.sparsity_at("iterative", 0.9, 0, None, steps=3) == pytest.approx(0.3)
    assert [schedule.sparsity_at("one-shot", 0.5, t, 4, start=2) for t in range(4)] == [
        0, 0, 0.5, 0.5,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "pruned_lines"),
    [
        ({"schedule": "one-shot"}, 1),
        ({"schedule": "iterative", "steps": 3}, 3),
        ({"schedule": "gradual", "end_epoch": 3}, 3),
    ],
)
def test_schedules_reach_the_final_sparsity(
    fields: dict[str, Any], pruned_lines: int, trained_mlp: torch.nn.Module
) -> None:
    recipe = [{"method": "magnitude", "sparsity": 0.8, "epochs": 3, **fields}]
    out, report = compress(trained_mlp, recipe, progress=False)
    assert sparsity_report(out) == {"1.weight": round(0.8 * 4096) / 4096, "3.weight": 0.8}
    pruned = [line for line in report.log if "pruned" in line]
    assert len(pruned) == pruned_lines
    assert pruned[-1].endswith("sparsity 80.00% of 4,736 weights (1.weight 80.0%, 3.weight 80.0%)")


def test_schedule_runs_in_a_following_finetune(trained_mlp: torch.nn.Module) -> None:
    recipe = [
        {"method": "magnitude", "sparsity": 0.8, "epochs": 0, "schedule": "gradual"},
        {"method": "finetune", "epochs": 3},
    ]
    out, report = compress(trained_mlp, recipe, progress=False)
    assert sparsity_report(out)["3.weight"] == 0.8
    assert [line.split(":")[1] for line in report.log if "pruned" in line] == [
        " pruned after epoch 1", " pruned after epoch 2",
    ]  # fmt: skip
    # The pruning method stays active through the finetune phase: zeros stay zeros.
    assert report.log[-1].startswith("recipe[1] (finetune): 3 epochs")


def test_compress_end_to_end_accuracy_and_bytes(
    trained_mlp: torch.nn.Module, digits: data.Digits
) -> None:
    state = {k: v.clone() for k, v in trained_mlp.state_dict().items()}
    recipe = [{"method": "magnitude", "sparsity": 0.8, "epochs": 3}]
    out, report = compress(trained_mlp, recipe, progress=False)
    # The model passed in is untouched: same values, no masks attached.
    assert trained_mlp.state_dict().keys() == state.keys()
    assert all(torch.equal(v, trained_mlp.state_dict()[k]) for k, v in state.items())
    assert type(trained_mlp[1]) is torch.nn.Linear and type(out[1]) is torch.nn.Linear
    assert out.state_dict().keys() == state.keys()
    assert report.accuracy_before >= 0.95
    assert report.accuracy_after >= report.accuracy_before - 0.01
    csr = masks.csr_bytes(out[1].weight) + masks.csr_bytes(out[3].weight)
    dense_rest = 4 * (64 + 10)  # biases
    assert report.bytes_after == csr + dense_rest < report.bytes_before / 2


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "magnitude", "sparsity": 0.8, "scope": "global"},
        # Layer-wise, the 1-channel stem keeps too few weights per filter (Han et al. also find
        # the first layer the most sensitive): left dense.
        {"method": "magnitude", "sparsity": 0.8, "exclude": ["0"]},
        {"method": "block", "sparsity": 0.75, "block": [2, 2], "exclude": ["0"]},
        {"method": "nm", "n": 1, "m": 4},
        {"method": "dns", "sparsity": 0.8, "scope": "global"},
    ],
)
def test_cnn_pruned_and_finetuned_keeps_its_accuracy(
    entry: dict[str, Any], trained_cnn: torch.nn.Module
) -> None:
    out, report = compress(trained_cnn, [{**entry, "epochs": 6}], progress=False)
    assert report.accuracy_before >= 0.95
    assert report.accuracy_after >= report.accuracy_before - 0.01
    assert report.bytes_after < report.bytes_before
    report_zeros = sparsity_report(out)
    sizes = {n: out.get_parameter(n).numel() for n in ("0.weight", "4.weight", "7.weight")}
    pruned = sum(report_zeros[n] * k for n, k in sizes.items()) / sum(sizes.values())
    assert pruned >= 0.5 and report_zeros["3.weight"] == 0


def test_dns_splices_pruned_weights_back(digits: data.Digits) -> None:
    model = mlp()
    pruner, lines = prepare(model, digits, "dns", sparsity=0.5)
    a, b = pruner.thresholds["3.weight"]
    assert 0 < a < b and b == pytest.approx(a * 1.1 / 0.9)
    mask, dense = pruner.mask("3.weight"), pruner.dense("3.weight")
    assert zeros(mask) == 320
    gone = (mask == 0).nonzero()[0].tolist()
    kept = (mask == 1).nonzero()[0].tolist()
    x, y = torch.from_numpy(digits.x_train[:32]), torch.from_numpy(digits.y_train[:32])
    # Straight-through: the pruned dense weights get gradients too.
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert dense.grad is not None and dense.grad[mask == 0].abs().sum() > 0
    with torch.no_grad():
        dense[gone[0], gone[1]] = 2 * b  # grew past b: spliced back
        dense[kept[0], kept[1]] = a / 2  # fell below a: pruned
    model(x)  # the surgery runs before a training forward pass
    assert mask[gone[0], gone[1]] == 1 and mask[kept[0], kept[1]] == 0
    model.eval()
    with torch.no_grad():
        dense[gone[0], gone[1]] = a / 4
        model(x)  # no surgery outside training
    assert mask[gone[0], gone[1]] == 1
    pruner.squash(model)
    assert model[3].weight[gone[0], gone[1]] == a / 4 and model[3].weight[kept[0], kept[1]] == 0
    assert len(model._forward_pre_hooks) == 0 and type(model[3]) is torch.nn.Linear


def test_dns_paper_thresholds_from_mean_and_std(digits: data.Digits) -> None:
    model = mlp()
    w = model[3].weight.detach().abs()
    pruner, _ = prepare(model, digits, "dns", crate=0.5)
    theta = float(w.mean() + 0.5 * w.std())
    assert pruner.thresholds["3.weight"] == pytest.approx((0.9 * theta, 1.1 * theta))
    assert torch.equal(pruner.mask("3.weight").bool(), w >= 0.9 * theta)
    pruner, _ = prepare(mlp(), digits, "dns", sparsity=0.5, scope="global")
    assert pruner.thresholds["1.weight"] == pruner.thresholds["3.weight"]
    with pytest.raises(RecipeError, match="give either crate"):
        load_recipe([{"method": "dns", "crate": 0.5, "sparsity": 0.5}])


def test_pruning_a_torch_export_graph(tmp_path: Path, trained_cnn: torch.nn.Module) -> None:
    program = torch.export.export(
        trained_cnn, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "m.pt2")
    (tmp_path / "r.yaml").write_text("- {method: magnitude, sparsity: 0.6, epochs: 1}\n")
    report = compress_file(tmp_path / "m.pt2", tmp_path / "r.yaml", tmp_path / "out.pt2",
                           progress=False)  # fmt: skip
    out = base.load_exported(tmp_path / "out.pt2")
    state = out.state_dict()
    for name in ("0.weight", "4.weight", "7.weight"):
        assert zeros(state[name]) == round(0.6 * state[name].numel())
    assert zeros(state["3.weight"]) == 0  # depthwise stays dense
    assert sparsity_report(out)["4.weight"] == round(0.6 * 4608) / 4608
    assert report.accuracy_after >= report.accuracy_before - 0.03
