"""dynbook.models.neural_ode: solvers, models, the measurements Chapter 3 relies on."""

import math

import pytest
import torch

from dynbook.models import neural_ode as node
from dynbook.measure.energy import EnergyMeter
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


def test_tied_resnet_is_forward_euler():
    d, h, L = 3, 7, 5
    res = node.ResNet(d, h, depth=L, tied=True).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    z = node.integrate(res.blocks[0], node.augment(x, d), solver="euler", n_steps=L)
    assert torch.allclose(res(x), res.readout(z).squeeze(-1), atol=1e-12)


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
    assert node.field_parameters(d, h) == per_field
    assert node.count_parameters(node.ODENet(d, h)) == per_field + d + 1
    assert node.count_parameters(node.ResNet(d, h, depth=L)) == L * per_field + d + 1
    assert node.count_parameters(node.ResNet(d, h, depth=L, tied=True)) == per_field + d + 1


def test_matched_resnet_width_overlaps_the_ode_net():
    """The untied ResNet at the matched width is the closest in parameters of all widths."""
    for d, h, L in [(4, 8, 4), (4, 16, 4), (3, 8, 4), (4, 12, 3), (2, 3, 5)]:
        w = node.matched_resnet_width(d, h, depth=L)
        gap = abs(L * node.field_parameters(d, w) - node.field_parameters(d, h))
        assert all(gap <= abs(L * node.field_parameters(d, v) - node.field_parameters(d, h))
                   for v in range(1, 4 * h))
    assert node.matched_resnet_width(4, 8, depth=4) == 2  # 88 vs 76 field parameters


def test_make_model_families_and_evaluations():
    assert node.function_evaluations(node.make_model("ode", 4, 8, n_steps=3)) == 12
    assert node.function_evaluations(node.make_model("resnet", 4, 2, n_steps=3)) == 3
    tied = node.make_model("tied_resnet", 4, 8, n_steps=12)
    assert node.function_evaluations(tied) == 12 and len(tied.blocks) == 1
    with pytest.raises(ValueError, match="family='mlp'"):
        node.make_model("mlp", 4, 8, n_steps=3)
    with pytest.raises(ValueError, match="adaptive"):
        node.function_evaluations(node.ODENet(4, 8, solver="dopri5", n_steps=None))
    with pytest.raises(ValueError, match="depth=0"):
        node.ResNet(4, 8, depth=0)


def test_training_memory_is_the_peak_over_forward_and_backward():
    """Backprop's peak grows linearly with the steps; the adjoint's is flat but is not the
    near-nothing its forward pass saves: its backward solve builds a one-step graph."""
    from dynbook.measure.timing import SavedTensorBytes

    torch.manual_seed(0)
    x, y = node.two_spirals(32, generator=torch.Generator().manual_seed(0))
    model = node.ODENet(3, 6)
    out = node.memory_vs_steps(model, x, y, [1, 2, 8, 32], device="cpu")
    bp, adj = out["backprop_bytes"], out["adjoint_bytes"]
    assert (bp[3] - bp[2]) / (bp[2] - bp[1]) == pytest.approx((32 - 8) / (8 - 2), rel=0.1)  # linear
    assert max(adj[1:]) / min(adj[1:]) < 1.02  # flat from two steps on
    assert adj[-1] < 0.2 * bp[-1]
    assert min(adj[1:]) >= bp[0]  # at least one backpropagated step's worth
    model.solve.update(solver="rk4", n_steps=8, adjoint=True)
    with SavedTensorBytes() as saved:
        nn_loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    nn_loss.backward()
    assert adj[2] > 4 * saved.bytes  # what a forward-only measure misses
    assert out["grad_rel_err"][-1] < 1e-4
    assert out["adjoint_nfe"] == [2 * n for n in out["backprop_nfe"]] == [8, 16, 64, 256]


def test_memory_vs_steps_restores_the_solver():
    x, y = node.two_spirals(8, generator=torch.Generator().manual_seed(0))
    model = node.ODENet(3, 4)
    node.memory_vs_steps(model, x, y, [2], device="cpu")
    assert model.solve["solver"] == "rk4_mlp" and model.solve["adjoint"] is False


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
    assert hist.best_iteration is None and hist.val_accuracy == []


def test_validation_selection_keeps_the_best_checkpoint():
    """The model is left at the checkpoint with the best validation accuracy (earliest among
    ties), not at the last iteration; the test set is never involved."""
    g = torch.Generator().manual_seed(1)
    x, y = node.two_spirals(128, generator=g)
    xv, yv = node.two_spirals(128, generator=g)
    torch.manual_seed(0)
    model = node.ResNet(3, 4, depth=3)
    hist = node.train(model, x, y, iterations=120, lr=5e-2, x_val=xv, y_val=yv, eval_every=10)
    its = [it for it, _ in hist.val_accuracy]
    assert its == list(range(10, 121, 10))
    best = max(a for _, a in hist.val_accuracy)
    assert hist.best_iteration == min(it for it, a in hist.val_accuracy if a == best)
    assert node.accuracy(model, xv, yv) == best


def test_frozen_field_keeps_adaptive_nfe_constant():
    """The control of the NFE-growth claim: with the field frozen only the read-out learns,
    and the adaptive solver's evaluations cannot change; trained, they do."""
    x, y = node.two_spirals(64, generator=torch.Generator().manual_seed(0))
    growth = {}
    for frozen in (True, False):
        torch.manual_seed(2)
        model = node.ODENet(3, 8, solver="dopri5", n_steps=None, rtol=1e-3, atol=1e-3)
        model.field.requires_grad_(not frozen)
        before = [p.detach().clone() for p in model.field.parameters()]
        hist = node.train(model, x, y, iterations=60, lr=5e-2)
        growth[frozen] = node.nfe_growth(hist.nfe)
        same = all(torch.equal(a, b) for a, b in zip(before, model.field.parameters()))
        assert same == frozen
    assert growth[True] == 1.0
    assert growth[False] > 1.0


def test_nfe_growth():
    assert node.nfe_growth([14] * 8 + [20, 26]) == pytest.approx(26 / 14)
    assert node.nfe_growth([10] * 20 + [30] * 20, fraction=0.25) == 3.0
    with pytest.raises(ValueError):
        node.nfe_growth([])


def test_interleaved_seconds():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = node.interleaved_seconds(fns, device="cpu", repeats=3, min_run_time=0.001)
    assert set(out) == {"a", "b"} and all(len(v) == 3 and min(v) > 0 for v in out.values())
    with pytest.raises(ValueError, match="repeats=1"):
        node.interleaved_seconds(fns, device="cpu", repeats=1)


def test_energy_per_sample_without_counter(tmp_path):
    meter = EnergyMeter("cpu", powercap_root=tmp_path)  # an empty folder: no RAPL
    out = node.energy_per_sample({"m": node.ResNet(3, 4, depth=2)}, torch.randn(16, 2), device="cpu",
                                 meter=meter)
    assert not out["available"] and "RAPL" in out["reason"] and out["net"] == {"m": []}


class FakeMeter:
    """A counter that reads ``watts`` while a region runs and ``idle_watts`` at rest."""

    available = True
    source = "fake"

    def __init__(self, watts, idle_watts):
        self.watts, self.idle, self.idle_watts = watts, idle_watts, None

    def measure_idle(self):
        self.idle_watts = self.idle

    def __enter__(self):
        import time as _time

        self.t0 = _time.perf_counter()
        return self

    def __exit__(self, *exc):
        import time as _time
        from dynbook.measure.energy import EnergyReading

        dt = _time.perf_counter() - self.t0
        self.reading = EnergyReading("fake", dt, joules=self.watts * dt, idle_watts=self.idle_watts)
        return False


@pytest.mark.parametrize("watts, idle, fraction", [(10.0, 2.0, 0.8), (10.0, 9.0, 0.1)])
def test_energy_per_sample_net_and_gross(watts, idle, fraction):
    x = torch.randn(32, 2)
    models = {"a": node.ResNet(3, 4, depth=2), "b": node.ResNet(3, 4, depth=4)}
    out = node.energy_per_sample(models, x, device="cpu", meter=FakeMeter(watts, idle), repeats=2,
                                 min_seconds=0.02)
    assert out["available"] and out["net_fraction"] == pytest.approx(fraction)
    for name in models:
        assert len(out["net"][name]) == 2
        for net, gross in zip(out["net"][name], out["gross"][name]):
            assert net == pytest.approx(fraction * gross)


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
