"""Ternary Weight Networks and Incremental Network Quantization: values per layer, the threshold
and rounding rules against brute force, INQ's growing frozen portion and gradient mask,
state_dict round trips, stored sizes, torch.export, bad input, and digits accuracy after QAT."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lowbit_util import prepare, weight_formats

from squeezer import data
from squeezer.compression import compress
from squeezer.errors import RecipeError
from squeezer.passes.compress.quantize.inq import PowerOfTwoWeight, exponent_range, pow2
from squeezer.recipe import load_recipe

FAST = settings(max_examples=25, deadline=None)

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cnn(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2), torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32 * 16, 10),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def trained(digits: data.Digits) -> torch.nn.Module:
    return data.train(cnn(), 10, data=digits)



def random_model(seed: int, out: int, scale: float) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, out, 3), torch.nn.Flatten(), torch.nn.Linear(out * 36, 10)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def latents(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()
            if p.dim() > 1}  # fmt: skip


@FAST
@given(seed=st.integers(0, 2**16), out=st.integers(1, 6), scale=st.floats(1e-3, 10),
       factor=st.sampled_from([0.7, 0.5, 1.2]))  # fmt: skip
def test_twn_values_are_minus_a_zero_a_with_the_paper_threshold(
    seed: int, out: int, scale: float, factor: float, digits: data.Digits
) -> None:
    model = random_model(seed, out, scale)
    before = latents(model)
    fields = {"tensors": {"2.weight": {"threshold": factor}}}
    q, _ = prepare(model, digits, "twn", **fields)
    for name, layer in q.layers.items():
        w, lat = layer.weight.detach().double().numpy(), np.abs(before[name])
        delta = (factor if name == "2.weight" else 0.7) * lat.mean()
        kept = lat > delta
        a = lat[kept].mean()
        assert set(np.unique(np.abs(w))) == {0.0, np.abs(w).max()}  # {-a, 0, a}
        np.testing.assert_allclose(np.abs(w).max(), a, rtol=1e-5)
        # The threshold: zero exactly below it (the float32 delta may differ in the last bit).
        near = np.isclose(lat, delta, rtol=1e-5)
        np.testing.assert_array_equal((w != 0)[~near], kept[~near])
        np.testing.assert_array_equal(np.sign(w)[kept & ~near], np.sign(before[name])[kept & ~near])


def test_twn_gradient_is_straight_through(digits: data.Digits) -> None:
    model = random_model(0, 3, 1.0)
    prepare(model, digits, "twn")
    g = torch.randn(10, 108)
    (model[2].weight * g).sum().backward()
    latent = model[2].parametrizations.weight.original
    assert latent.grad is not None
    torch.testing.assert_close(latent.grad, g, rtol=0, atol=0)


def nearest_level(w: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Brute force: the nearest of {0, +-2^n2..2^n1}, ties to the larger magnitude (eq. 4)."""
    levels = np.array([0.0] + [2.0**e for e in range(n2, n1 + 1)])
    dist = np.abs(np.abs(w)[..., None] - levels)
    index = len(levels) - 1 - np.argmin(dist[..., ::-1], axis=-1)  # last minimum: larger level
    return np.sign(w) * levels[index]


@FAST
@given(seed=st.integers(0, 2**16), bits=st.integers(2, 5), scale=st.floats(1e-4, 100))
def test_inq_rounds_to_powers_of_two_in_the_bit_range(seed: int, bits: int, scale: float) -> None:
    w = torch.randn(7, 13, generator=torch.Generator().manual_seed(seed)) * scale
    s = float(w.abs().max())
    n1, n2 = exponent_range(s, bits)
    assert n1 == math.floor(math.log2(4 * s / 3)) and n1 - n2 + 1 == 2 ** (bits - 2)
    q = pow2(w, n1, n2)
    qn = q.double().numpy()
    np.testing.assert_array_equal(qn, nearest_level(w.double().numpy(), n1, n2))
    nonzero = np.abs(qn[qn != 0])
    exps = np.log2(nonzero)
    assert np.array_equal(exps, np.round(exps)) and bool(((exps >= n2) & (exps <= n1)).all())
    assert len(np.unique(qn)) <= 2 ** (bits - 1) + 1
    # Boundaries (alpha + beta) / 2 go up, as eq. 4 writes them.
    edge = torch.tensor([2.0**n2 / 2, 0.75 * 2.0 ** (n2 + 1), 2.0**n2 / 2 * 0.999])
    assert pow2(edge, n1, n2).tolist()[:1] == [2.0**n2]
    assert pow2(edge, n1, n2).tolist()[2] == 0.0
    if n1 > n2:
        assert pow2(edge, n1, n2).tolist()[1] == 2.0 ** (n2 + 1)


def test_inq_rounds_freeze_the_largest_weights_and_mask_their_gradient(
    digits: data.Digits,
) -> None:
    model = random_model(1, 4, 0.5)
    q, lines = prepare(model, digits, "inq", epochs=6)
    assert lines[:2] == [f"{n}: 5 bits, exponents {p.exponents[1]}..{p.exponents[0]}"
                         for n, p in q.quantizers.items()]  # fmt: skip
    assert lines[2] == "round 1 at start: 50.00% of every layer quantized"
    sizes = {n: layer.weight.numel() for n, layer in q.layers.items()}
    fractions = [q.frozen_fraction()]
    frozen_values = {}
    for epoch in range(6):
        for name, p in q.quantizers.items():
            assert isinstance(p, PowerOfTwoWeight)
            frozen_values[name] = q.layers[name].weight.detach()[p.frozen].clone()
        model.train()
        loss = model(torch.from_numpy(digits.x_train[:32])).square().mean()
        loss.backward()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.step()
        for name, p in q.quantizers.items():
            latent = q.layers[name].owner.parametrizations.weight.original
            assert latent.grad is not None
            assert bool((latent.grad[p.frozen] == 0).all())  # the gradient mask
            assert torch.equal(q.layers[name].weight.detach()[p.frozen], frozen_values[name])
        opt.zero_grad()
        q.step(model, epoch, 6)
        fractions.append(q.frozen_fraction())
    want = [0.5, 0.5, 0.75, 0.75, 0.875, 0.875, 1.0]  # rounds after epochs 2, 4 and 6
    for f, portion in zip(fractions, want, strict=True):
        assert f == {n: round(portion * k) / k for n, k in sizes.items()}
    q.squash(model)
    for layer in q.layers.values():
        w = layer.weight.detach().numpy()
        exps = np.log2(np.abs(w[w != 0]))
        assert np.array_equal(exps, np.round(exps))


def test_inq_freezes_by_magnitude(digits: data.Digits) -> None:
    model = random_model(2, 2, 1.0)
    before = latents(model)
    q, _ = prepare(model, digits, "inq", portions=[0.25, 1.0])
    for name, p in q.quantizers.items():
        assert isinstance(p, PowerOfTwoWeight)
        mag = np.abs(before[name]).reshape(-1)
        k = round(0.25 * mag.size)
        assert set(np.flatnonzero(p.frozen.numpy().reshape(-1))) == set(np.argsort(-mag)[:k])


def test_state_survives_state_dict_save_and_load(tmp_path: Path, digits: data.Digits) -> None:
    for method in ("twn", "inq"):
        model = cnn(1)
        prepare(model, digits, method)
        data.train(model, 1, data=digits)
        state = model.state_dict()
        if method == "inq":
            keys = {f"3.parametrizations.weight.0.{b}" for b in ("frozen", "values", "n1")}
            assert keys < set(state)
        torch.save(state, tmp_path / f"{method}.pt")
        fresh = cnn(2)
        prepare(fresh, digits, method)
        fresh.load_state_dict(torch.load(tmp_path / f"{method}.pt"))
        x = torch.from_numpy(digits.x_test[:32])
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_stored_bytes_are_the_compilers_formats(digits: data.Digits) -> None:
    model = random_model(0, 3, 1.0)  # conv 3x1x3x3, linear 10x108: 1 and 2 words per row
    twn, _ = prepare(copy.deepcopy(model), digits, "twn")
    assert twn.stored_bytes(model) == {"0.weight": 3 * (2 * 8 + 8), "2.weight": 10 * (32 + 8)}
    inq, _ = prepare(copy.deepcopy(model), digits, "inq")
    assert inq.stored_bytes(model) == {"0.weight": 3 * 5 * 8, "2.weight": 10 * 5 * 16}
    for method, fields, kind in [("twn", {}, "ternary"), ("inq", {}, "pow2"),
                                 ("inq", {"bits": 2}, "ternary"), ("inq", {"bits": 3}, "residual"),
                                 ("inq", {"bits": 4}, "pow2")]:
        squashed = copy.deepcopy(model)
        q, _ = prepare(squashed, digits, method, **fields)
        q.squash(squashed)
        for name, layer in q.layers.items():
            w = layer.weight.detach().numpy()
            found = weight_formats.detect(w)
            assert found is not None, (method, fields, name)
            np.testing.assert_array_equal(found.reconstruct(), w)
        # The 9-weight rows of the conv may fit a smaller format; the linear's rows do not.
        found = weight_formats.detect(squashed[2].weight.detach().numpy())
        assert found is not None and found.kind == kind
        assert q.stored_bytes(squashed)["2.weight"] == found.nbytes


def test_bad_settings_and_weights(digits: data.Digits) -> None:
    for fields, words in [
        ({"method": "inq", "bits": 6}, ["bits: INQ supports 2 to 5 bits", "got 6"]),
        ({"method": "inq", "bits": 1}, ["bits: INQ supports 2 to 5 bits", "got 1"]),
        ({"method": "inq", "tensors": {"0.weight": {"bits": 16}}}, ["tensors['0.weight'].bits"]),
        ({"method": "inq", "portions": [0.5, 0.9]}, ["portions: must end with 1.0"]),
        ({"method": "inq", "portions": [0.5, 0.5, 1.0]}, ["portions: must increase strictly"]),
        ({"method": "twn", "threshold": 0}, ["threshold", "greater than 0"]),
        ({"method": "twn", "tensors": {"0.weight": {"bits": 2}}}, ["unknown per-tensor field"]),
    ]:
        with pytest.raises(RecipeError) as err:
            load_recipe([fields])
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(RecipeError, match=r"tensors: '9.weight' matches no quantized weight"):
        prepare(cnn(0), digits, "twn", tensors={"9.weight": {"threshold": 0.5}})
    for method in ("twn", "inq"):
        model = cnn(0)
        with torch.no_grad():
            model[7].weight[3, 5] = float("nan")
        with pytest.raises(RecipeError, match=rf"{method}: weight '7.weight' has 1 NaN"):
            compress(model, [{"method": method, "epochs": 0}], progress=False,
                     train_data=digits, eval_data=digits)  # fmt: skip


ACCURACY = {  # method settings, epochs, floor; measured on the fp32 model's 0.982 in comments
    "twn": ({"method": "twn"}, 4, 0.95),  # 0.987
    "inq5": ({"method": "inq", "bits": 5}, 6, 0.95),  # 0.982
    "inq3": ({"method": "inq", "bits": 3}, 6, 0.93),  # 0.971
}


@pytest.mark.parametrize("key", list(ACCURACY))
def test_accuracy_after_quantization_aware_training(
    key: str, trained: torch.nn.Module, digits: data.Digits
) -> None:
    entry, epochs, floor = ACCURACY[key]
    model, report = compress(trained, [{**entry, "epochs": epochs}], progress=False,
                             train_data=digits, eval_data=digits)  # fmt: skip
    print(f"{key}: fp32 {report.accuracy_before:.4f} quantized {report.accuracy_after:.4f} "
          f"bytes {report.bytes_before} -> {report.bytes_after}")  # fmt: skip
    assert report.accuracy_after >= floor
    assert report.bytes_after < report.bytes_before / 4
    for p in model.parameters():
        if p.dim() > 1 and key == "twn":
            assert len(p.unique()) == 3 and set(p.abs().unique().tolist()) - {0.0}
        elif p.dim() > 1:
            w = p.detach().numpy()
            exps = np.log2(np.abs(w[w != 0]))
            assert np.array_equal(exps, np.round(exps)) and len(np.unique(exps)) <= 2 ** (
                entry["bits"] - 2
            )
    x = torch.from_numpy(digits.x_test[:16])
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)
    assert not program.graph_signature.buffers_to_mutate
