"""dynamic8 (Dettmers' dynamic tree 8-bit type): the codebook against the paper's bit layout,
nearest-code quantization (property test), the squashed values, stored sizes, accuracy on the
digits, the .pt2 path and bad input."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezer import data
from squeezer.compression import compress, compress_file
from squeezer.errors import InputError, RecipeError
from squeezer.passes.compress import CompressContext, get_method
from squeezer.passes.compress.quantize.dynamic8 import (
    DynamicTreeWeight,
    code_values,
    decode,
    dynamic_tree_codebook,
    nearest,
)
from squeezer.recipe import load_recipe

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).eval()


def cnn(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 16, 10),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def trained(digits: data.Digits) -> dict[str, torch.nn.Module]:
    return {"mlp": data.train(mlp(), 15, data=digits), "cnn": data.train(cnn(), 8, data=digits)}


def test_codebook_follows_the_bit_layout() -> None:
    # sign | E zero bits (exponent 10^-E) | indicator 1 | 6 - E fraction bits (bisection of
    # [0.1, 1], the value is the centre of the chosen sub-interval).
    assert decode(0b0_1_000000) == pytest.approx(0.1 + 0.5 * 0.9 / 64)
    assert decode(0b0_1_111111) == pytest.approx(0.1 + 63.5 * 0.9 / 64)  # largest, 0.99297
    assert decode(0b1_01_10110) == pytest.approx(-0.1 * (0.1 + 22.5 * 0.9 / 32))
    assert decode(0b0_000001_1) == pytest.approx(1e-5 * (0.1 + 1.5 * 0.9 / 2))
    assert decode(0b0_000000_1) == pytest.approx(1e-6 * 0.55)  # no fraction bit: the centre
    assert decode(0) == decode(0x80) == 0.0  # no indicator bit: zero
    with pytest.raises(ValueError, match="one byte"):
        decode(256)
    book = dynamic_tree_codebook()
    assert book.shape == (256,) and book.dtype == torch.float32
    assert torch.equal(book[128:], -book[:128])  # the sign bit mirrors every code
    for e in range(7):  # 2^(6-E) codes per exponent, all in [0.1, 1] * 10^-E
        mags = book[:128][(book[:128] >= 0.1 * 10.0**-e) & (book[:128] <= 10.0**-e)]
        assert len(mags) == 2 ** (6 - e)
    values, codes = code_values()
    assert len(values) == 255  # 256 codes; +0 and -0 are one value
    assert bool((values[1:] > values[:-1]).all())
    assert torch.equal(values, -values.flip(0))
    assert torch.equal(book[codes.long()], values)


@settings(max_examples=60, deadline=None)
@given(x=st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=50))
def test_quantization_picks_the_nearest_code(x: list[float]) -> None:
    t = torch.tensor(x, dtype=torch.float32)
    values, _ = code_values()
    picked = values[nearest(t)]
    best = (t[:, None] - values[None, :]).abs().amin(dim=1)
    torch.testing.assert_close((picked - t).abs(), best, rtol=0, atol=1e-7)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_weights_become_code_times_absmax(granularity: str) -> None:
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    w[2] = 0
    wq = DynamicTreeWeight(granularity)  # type: ignore[arg-type]
    codes, scale = wq.encode(w)
    values = wq.values(w)
    s = scale.reshape(-1, 1, 1, 1)
    assert codes.dtype == torch.uint8 and codes.shape == w.shape
    assert torch.equal(values, dynamic_tree_codebook()[codes.long()] * s)
    rows = w.reshape(6, -1).abs().amax(1)
    rows[2] = 1.0  # an all-zero row gets scale 1 (its codes are all zero)
    torch.testing.assert_close(scale, rows if granularity == "row" else rows.amax().reshape(1))
    for row in values.reshape(6, -1):
        assert row.unique().numel() <= 255
    assert not values[2].any()
    # Nearest code: no other code is closer to any weight.
    norm = (w / s).reshape(-1)
    book = code_values()[0]
    best = (norm[:, None] - book[None, :]).abs().amin(dim=1)
    chosen = (norm - (values / s).reshape(-1)).abs()
    assert float((chosen - best).max()) <= 1e-6
    assert wq.stored_bytes(w) == w.numel() + 4 * (6 if granularity == "row" else 1)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_dynamic8_on_the_digits(
    name: str, trained: dict[str, torch.nn.Module], digits: data.Digits
) -> None:
    model = trained[name]
    recipe = [{"method": "dynamic8", "tensors": {"*": {"granularity": "row"}}}]
    out, report = compress(model, recipe, train_data=digits, eval_data=digits, progress=False)
    assert report.accuracy_before >= 0.95
    assert report.accuracy_after >= report.accuracy_before - 0.005
    assert out.state_dict().keys() == model.state_dict().keys()
    for n, w0 in model.state_dict().items():
        w = out.state_dict()[n]
        if n.endswith("weight"):
            # Exactly the codes times the row absmax of the original weight.
            assert torch.equal(w, DynamicTreeWeight("row").values(w0))
            assert max(r.unique().numel() for r in w.reshape(w.shape[0], -1)) <= 255
        else:
            assert torch.equal(w, w0)  # biases stay
    weights = [w for n, w in model.state_dict().items() if n.endswith("weight")]
    biases = [w for n, w in model.state_dict().items() if n.endswith("bias")]
    assert report.bytes_after == sum(w.numel() + 4 * w.shape[0] for w in weights) + sum(
        4 * b.numel() for b in biases
    )
    _, qat = compress(model, [{"method": "dynamic8", "epochs": 2}], train_data=digits,
                      eval_data=digits, progress=False)  # fmt: skip
    assert qat.accuracy_after >= report.accuracy_before - 0.005


def test_dynamic8_through_a_pt2_file(
    trained: dict[str, torch.nn.Module], digits: data.Digits, tmp_path: Any
) -> None:
    model = trained["cnn"]
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    (tmp_path / "r.yaml").write_text("- method: dynamic8\n  exclude: ['0']\n")
    report = compress_file(tmp_path / "m.pt2", tmp_path / "r.yaml", tmp_path / "q.pt2",
                           progress=False)
    state = torch.export.load(str(tmp_path / "q.pt2")).state_dict
    assert torch.equal(state["0.weight"], model[0].weight)
    for n in ("2.weight", "5.weight"):
        assert torch.equal(state[n], DynamicTreeWeight().values(model.get_parameter(n).detach()))
    assert report.bytes_after < report.bytes_before / 3


def test_bad_input(digits: data.Digits) -> None:
    with pytest.raises(RecipeError, match=r"bits: dynamic8 supports bits 8, got 4"):
        load_recipe([{"method": "dynamic8", "bits": 4}])
    with pytest.raises(RecipeError, match="granularity"):
        load_recipe([{"method": "dynamic8", "granularity": "column"}])
    model = mlp()
    with torch.no_grad():
        model[1].weight[0, 3] = float("-inf")
    method = get_method("dynamic8")(load_recipe([{"method": "dynamic8"}]).entries[0].settings)
    ctx = CompressContext(copy.deepcopy(model), digits, 8, None, lambda line: None)
    with pytest.raises(InputError, match=r"weight '1.weight' has -inf at index \(0, 3\)"):
        method.prepare(model, ctx)
