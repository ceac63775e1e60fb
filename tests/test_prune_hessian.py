"""Second-order pruning: Optimal Brain Damage (``obd``) and layer-wise Optimal Brain Surgeon
(``obs``) against closed forms in numpy, exact sparsity, and accuracy on the digits."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from squeezer import data
from squeezer.compression import compress
from squeezer.passes.compress import CompressContext, get_method, load_exported
from squeezer.passes.compress.prune import PruningMethod, obs
from squeezer.passes.compress.prune.masks import keep_mask
from squeezer.passes.compress.prune.obd import hessian_diagonal
from squeezer.recipe import load_recipe

# fixtures one_torch_thread and digits: tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    ).eval()


@pytest.fixture(scope="module")
def trained(digits: data.Digits) -> torch.nn.Module:
    return data.train(mlp(), 20, data=digits)


def prepare(
    model: torch.nn.Module, x: np.ndarray, method: str, **fields: Any
) -> PruningMethod[Any]:
    """Prepare ``method`` on ``model`` in place with ``x`` as the training inputs."""
    entry = load_recipe([{"method": method, "epochs": 0, **fields}]).entries[0]
    pruner = get_method(method)(entry.settings)
    assert isinstance(pruner, PruningMethod)
    y = np.zeros(len(x), dtype=np.int64)
    ctx = CompressContext(copy.deepcopy(model), data.Digits(x, y, x, y), 8, None, lambda _: None)
    pruner.check_tensors(model)
    pruner.prepare(model, ctx)
    return pruner


def correlated_inputs(rows: int, d: int, seed: int = 0) -> np.ndarray:
    """Inputs with correlated features, where compensating updates matter."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * rng.uniform(0.1, 2.0, d)
    return (rng.standard_normal((rows, d)) @ mix).astype(np.float32)


def test_hessian_diagonal_is_the_gauss_newton_diagonal() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    model = model.double()
    x = torch.randn(7, 5, dtype=torch.float64)
    names = ["0.weight", "2.weight"]
    params = dict(model.named_parameters())
    got = hessian_diagonal(model, {n: params[n] for n in names}, x)
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def logits(v: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(F.linear(xi, v[:20].reshape(4, 5), params["0.bias"].detach()))
        return F.linear(hidden, v[20:].reshape(3, 4), params["2.bias"].detach())

    want = torch.zeros_like(flat)
    for xi in x:  # G = J^T (diag p - p p^T) J, the Hessian of cross-entropy through the logits
        jac = torch.autograd.functional.jacobian(lambda v, xi=xi: logits(v, xi), flat)
        p = logits(flat, xi).softmax(0)
        want += (jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac).diagonal() / len(x)
    torch.testing.assert_close(torch.cat([got[n].reshape(-1) for n in names]), want,
                               rtol=1e-10, atol=1e-14)  # fmt: skip
    # Through the method: saliency h w^2 / 2 of the dense weights, on the training inputs.
    single = copy.deepcopy(model).float()
    weights = {n: p.detach().clone() for n, p in single.named_parameters() if n in names}
    h = hessian_diagonal(single, {n: p for n, p in single.named_parameters() if n in names},
                         x.float())  # fmt: skip
    pruner = prepare(single, x.float().numpy(), "obd", sparsity=0.0)
    assert pruner.ctx is not None
    scores = pruner.scores(single, pruner.ctx, names)
    for n in names:
        torch.testing.assert_close(scores[n], 0.5 * h[n] * weights[n].square())


def test_obs_removes_one_weight_with_the_closed_form_update() -> None:
    x = correlated_inputs(50, 6)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3))
    w = model[0].weight.detach().double().numpy().copy()
    pruner = prepare(model, x, "obs", sparsity=1 / 18, solver="exact", damp=0.01)
    xd = x.astype(np.float64)
    h = 2 * xd.T @ xd / len(xd)
    h += 0.01 * np.mean(np.diag(h)) * np.eye(6)
    hinv = np.linalg.inv(h)
    row, q = np.unravel_index(np.argmin(w**2 / np.diag(hinv)), w.shape)  # OBS saliency
    want = w.copy()
    want[row] -= w[row, q] / hinv[q, q] * hinv[:, q]
    assert abs(want[row, q]) < 1e-12
    want[row, q] = 0.0
    got = model[0].weight.detach().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(got == 0) == 1 and got[row, q] == 0
    assert pruner.mask("0.weight")[row, q] == 0


@pytest.mark.parametrize("solver", ["exact", "blocked"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_obs_reconstructs_the_layer_better_than_magnitude(solver: str, sparsity: float) -> None:
    x = correlated_inputs(300, 32, seed=1)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16, bias=False))
    w = model[0].weight.detach().clone()
    xt = torch.from_numpy(x)
    pruner = prepare(model, x, "obs", sparsity=sparsity, solver=solver, block_size=8)
    pruned = model[0].weight.detach()
    assert int((pruned == 0).sum()) == round(sparsity * w.numel())  # exactly the request
    assert torch.equal(pruned == 0, pruner.mask("0.weight") == 0)
    magnitude = w * keep_mask(w.abs(), round(sparsity * w.numel()))

    def error(v: torch.Tensor) -> float:
        return float((xt @ (v - w).T).norm())

    assert error(pruned) < 0.8 * error(magnitude)
    # Dropping the same weights without the compensating update is worse.
    assert error(pruned) < error(w * pruner.mask("0.weight"))


def test_obs_exact_update_is_the_least_squares_optimum_of_its_mask() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(12, 80, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    h = 2 * x @ x.T / 80 + 1e-3 * torch.eye(12, dtype=torch.float64)
    prune = torch.rand(5, 12, generator=gen) < 0.6
    got, _, _ = obs.eliminate(w, torch.linalg.inv(h), prune)
    for r in range(5):  # min (w' - w)^T H (w' - w) subject to w'[prune] = 0
        keep = ~prune[r]
        want = torch.linalg.solve(h[keep][:, keep], h[keep] @ w[r])
        torch.testing.assert_close(got[r, keep], want, rtol=1e-9, atol=1e-9)
        assert torch.all(got[r, prune[r]] == 0)


def test_conv_inputs_are_unfolded_in_weight_order() -> None:
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    x = torch.randn(2, 4, 7, 9)
    rows = obs._module_unfold(conv).rows(x)  # (groups, n, in/groups * kh * kw)
    w = conv.weight.detach().reshape(2, 3, -1)
    y = torch.cat([rows[g] @ w[g].T for g in range(2)], 1) + conv.bias.detach()
    want = conv(x).detach().permute(0, 2, 3, 1).reshape(-1, 6)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_obs_and_obd_on_a_torch_export_graph_match_the_module(
    tmp_path: Path, trained: torch.nn.Module
) -> None:
    program = torch.export.export(trained, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    torch.export.save(program, tmp_path / "m.pt2")
    for method in ("obs", "obd"):
        recipe = [{"method": method, "sparsity": 0.6, "epochs": 0, "samples": 128}]
        ref, _ = compress(trained, recipe, progress=False)
        out, _ = compress(load_exported(tmp_path / "m.pt2"), recipe, progress=False)
        got = dict(out.named_parameters())
        for n, p in ref.named_parameters():
            torch.testing.assert_close(got[n], p, rtol=1e-5, atol=1e-6)


def test_obs_and_obd_prune_the_digits_mlp_and_recover(trained: torch.nn.Module) -> None:
    base = data.evaluate(trained)
    results = {}
    for method, fields in (
        ("obs", {}),
        ("obd", {}),  # scope global (the paper's)
        ("obd", {"scope": "layer", "schedule": "iterative", "steps": 4, "epochs": 8}),
    ):
        recipe = [{"method": method, "sparsity": 0.8, "epochs": 0, **fields},
                  {"method": "finetune", "epochs": 3}]  # fmt: skip
        out, report = compress(trained, recipe, progress=False)
        weights = [out[i].weight for i in (1, 3, 5)]
        removed = [int((w == 0).sum()) for w in weights]
        if fields.get("scope", "layer" if method == "obs" else "global") == "layer":
            assert removed == [round(0.8 * w.numel()) for w in weights]
        else:
            assert sum(removed) == round(0.8 * sum(w.numel() for w in weights))
        results[method, fields.get("schedule", "one-shot")] = report.accuracy_after
        assert report.accuracy_after >= base - 0.01, (method, fields, report.log)
    assert len(results) == 3
