"""dynbook.neural_ode: solvers, models, the measurements Chapter 3 relies on."""

import math

import pytest
import torch

from dynbook import neural_ode as node
from dynbook.energy import EnergyMeter
from dynbook.kernels.rk4 import rk4_mlp_reference


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and stalls badly on a
    loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def field(d=3, h=7, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    f = node.MLPField(d, h).to(dtype)
    with torch.no_grad():
        f.b1.normal_(0, 0.3)
        f.b2.normal_(0, 0.3)
    return f


def test_rk4_mlp_solver_is_the_kernel_reference():
    f = field()
    z0 = torch.randn(5, 3, dtype=torch.float64)
    out = node.integrate(f, z0, solver="rk4_mlp", n_steps=6, t1=0.9, impl="torch")
    assert torch.equal(out, rk4_mlp_reference(z0, *f.weights(), n_steps=6, t1=0.9))
    assert f.nfe == 24


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_grid_takes_exactly_n_steps(method, per_step):
    """t1/n is not representable for n = 3: the explicit grid still gives exactly 3 steps."""
    f = field()
    z0 = torch.randn(4, 3, dtype=torch.float64)
    node.integrate(f, z0, solver=method, n_steps=3, t1=1.0)
    assert f.nfe == 3 * per_step


def test_resnet_with_shared_blocks_is_forward_euler():
    """Eq. (node-resnet): L residual blocks with one parameter set = L Euler steps of size 1/L."""
    d, h, L = 3, 7, 5
    res = node.ResNet(d, h, depth=L).double()
    for block in res.blocks[1:]:
        block.load_state_dict(res.blocks[0].state_dict())
    x = torch.randn(6, 2, dtype=torch.float64)
    z = node.integrate(res.blocks[0], node.augment(x, d), solver="euler", n_steps=L)
    assert torch.allclose(res(x), res.readout(z).squeeze(-1), atol=1e-12)


def test_parameter_counts():
    d, h, L = 4, 8, 4
    per_field = 2 * d * h + h + d
    assert node.count_parameters(node.ODENet(d, h)) == per_field + d + 1
    assert node.count_parameters(node.ResNet(d, h, depth=L)) == L * per_field + d + 1


def test_adjoint_gradient_equals_backprop_and_saves_less():
    torch.manual_seed(0)
    x, y = node.two_spirals(32, generator=torch.Generator().manual_seed(0))
    model = node.ODENet(3, 6)
    out = node.memory_vs_steps(model, x, y, [2, 8, 32], device="cpu")
    assert out["backprop_bytes"][0] < out["backprop_bytes"][1] < out["backprop_bytes"][2]
    assert len(set(out["adjoint_bytes"])) == 1  # flat
    assert out["adjoint_bytes"][-1] < out["backprop_bytes"][0]
    assert out["grad_rel_err"][-1] < 1e-4
    assert model.solve["solver"] == "rk4_mlp"  # restored afterwards


def test_adaptive_solver_meets_its_tolerance():
    f = field()
    z0 = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        truth = rk4_mlp_reference(z0, *f.weights(), n_steps=2000)
    errs = []
    for tol in (1e-4, 1e-8):
        f.nfe = 0
        with torch.no_grad():
            z = node.integrate(f, z0, solver="dopri5", rtol=tol, atol=tol)
        errs.append((float((z - truth).abs().max()), f.nfe))
    assert errs[1][0] < errs[0][0] < 1e-3 and errs[1][1] > errs[0][1]


def test_solver_sweep_orders():
    f = field()
    z0 = torch.randn(8, 3, dtype=torch.float64)
    ref = rk4_mlp_reference(z0, *f.weights(), n_steps=4000)
    rows = node.solver_sweep(f, z0, t1=1.0, fixed_steps=[16, 32, 64], tolerances=[1e-3, 1e-6],
                             reference=ref, adaptive=("bosh3",))
    for m, p in node.ORDER.items():
        e = [r["error"] for r in rows if r["method"] == m]
        assert abs(math.log2(e[-2] / e[-1]) - p) < 0.3 * p, (m, e)
    assert [r["nfe"] for r in rows if r["method"] == "rk4"] == [64, 128, 256]
    assert {r["kind"] for r in rows if r["method"] == "bosh3"} == {"adaptive"}


def test_two_spirals():
    g = torch.Generator().manual_seed(3)
    x, y = node.two_spirals(400, generator=g)
    x2, y2 = node.two_spirals(400, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (400, 2) and set(y.unique().tolist()) == {0.0, 1.0}
    assert x.abs().max() < 1.5 and 0.3 < y.mean() < 0.7


def test_training_learns_and_counts_nfe():
    g = torch.Generator().manual_seed(0)
    x, y = node.two_spirals(128, turns=0.5, generator=g)
    torch.manual_seed(0)
    model = node.ODENet(3, 8, n_steps=2)
    hist = node.train(model, x, y, iterations=60, lr=3e-2)
    assert hist.loss[-1] < 0.6 * hist.loss[0]
    assert hist.nfe == [8] * 60
    assert node.accuracy(model, x, y) > 0.8


def test_per_sample_cost_without_counter(tmp_path):
    meter = EnergyMeter("cpu", powercap_root=tmp_path)  # an empty folder: no RAPL
    model = node.ResNet(3, 4, depth=2)
    c = node.per_sample_cost(model, torch.randn(16, 2), device="cpu", meter=meter)
    assert c["seconds_per_sample"] > 0 and c["joules_per_sample"] is None
    assert "RAPL" in c["energy"]


def test_rk4_runners_on_cpu_agree():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(9, 2, generator=g, dtype=torch.float64),
            torch.randn(2, 16, generator=g, dtype=torch.float64) / 2, torch.zeros(16, dtype=torch.float64),
            torch.randn(16, 2, generator=g, dtype=torch.float64) / 4, torch.zeros(2, dtype=torch.float64)]
    with torch.no_grad():
        runs = node.rk4_runners(*args, n_steps=20)
        assert set(runs) == {"torchdiffeq", "torch_loop"}
        assert (runs["torchdiffeq"]() - runs["torch_loop"]()).abs().max() < 1e-7


def test_errors_name_the_parameter():
    f = field()
    z0 = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="solver='rk5'"):
        node.integrate(f, z0, solver="rk5", n_steps=2)
    with pytest.raises(ValueError, match="n_steps=None"):
        node.integrate(f, z0, solver="euler")
    with pytest.raises(ValueError, match="adjoint"):
        node.integrate(f, z0, solver="rk4_mlp", n_steps=2, adjoint=True)
    with pytest.raises(ValueError, match="d=1"):
        node.augment(torch.zeros(2, 2), 1)
