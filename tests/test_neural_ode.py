"""dynbook.models.neural_ode: solvers, models, the measurements Chapter 3 relies on."""

import math

import pytest
import torch

from dynbook.models import neural_ode as node
from dynbook.measure.energy import EnergyMeter
from dynbook.kernels.rk4 import rk4_mlp_inputs, rk4_mlp_reference


# tiny models: a second intra-op thread only adds synchronisation (and stalls badly on a
# loaded machine); conftest's fixture runs the module on one thread
pytestmark = pytest.mark.usefixtures("one_thread")


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
    out = node.memory_vs_steps(model, x, y, [1, 2, 4, 16], device="cpu")
    bp, adj = out["backprop_bytes"], out["adjoint_bytes"]
    assert (bp[3] - bp[2]) / (bp[2] - bp[1]) == pytest.approx((16 - 4) / (4 - 2), rel=0.1)  # linear
    assert max(adj[1:]) / min(adj[1:]) < 1.02  # flat from two steps on
    assert adj[-1] < 0.2 * bp[-1]
    assert min(adj[1:]) >= bp[0]  # at least one backpropagated step's worth
    model.solve.update(solver="rk4", n_steps=4, adjoint=True)
    with SavedTensorBytes() as saved:
        nn_loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    nn_loss.backward()
    assert adj[2] > 4 * saved.bytes  # what a forward-only measure misses
    assert out["grad_rel_err"][-1] < 1e-4
    assert out["adjoint_nfe"] == [2 * n for n in out["backprop_nfe"]] == [8, 16, 32, 128]


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
    ref = rk4_mlp_reference(z0, *f.weights(), n_steps=2000)
    rows = node.solver_sweep(f, z0, t1=1.0, fixed_steps=[8, 16, 32], tolerances=[1e-3, 1e-6],
                             reference=ref, adaptive=("bosh3",))
    for m, p in node.ORDER.items():
        e = [r["error"] for r in rows if r["method"] == m]
        assert abs(math.log2(e[-2] / e[-1]) - p) < 0.3 * p, (m, e)
    assert [r["nfe"] for r in rows if r["method"] == "rk4"] == [32, 64, 128]
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
    """The control of the NFE-growth claim (:func:`adaptive_nfe_study`): with the field frozen
    only the read-out learns, and the adaptive solver's evaluations cannot change; trained,
    they do."""
    x, y = node.two_spirals(64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(2)
    initial = node.ODENet(3, 8, solver="dopri5", n_steps=None, rtol=1e-3, atol=1e-3)
    runs = node.adaptive_nfe_study(3, 8, x, y, [2], iterations=60, lr=5e-2, tol=1e-3)
    assert set(runs) == {"trained", "frozen"} and len(runs["frozen"][0]["nfe"]) == 60
    for case, same in (("frozen", True), ("trained", False)):
        fields = zip(initial.field.parameters(), runs[case][0]["model"].field.parameters())
        assert all(torch.equal(a, b) for a, b in fields) == same  # both start from seed 2
    assert runs["frozen"][0]["growth"] == 1.0
    assert runs["trained"][0]["growth"] > 1.0


def test_nfe_growth():
    assert node.nfe_growth([14] * 8 + [20, 26]) == pytest.approx(26 / 14)
    assert node.nfe_growth([10] * 20 + [30] * 20, fraction=0.25) == 3.0
    with pytest.raises(ValueError):
        node.nfe_growth([])


class FakeMeter:
    """A counter that reads ``watts`` while a region runs and ``idle_watts`` at rest."""

    available = True
    source = "fake"
    reason = ""

    def __init__(self, watts, idle_watts):
        self.watts, self.idle_watts = watts, idle_watts

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


def test_per_sample_cost_without_counter(tmp_path):
    meter = EnergyMeter("cpu", powercap_root=tmp_path)  # an empty folder: no RAPL
    x = torch.randn(16, 2)
    out = node.per_sample_cost({"m": node.ResNet(3, 4, depth=2)}, x, device="cpu", meter=meter,
                               readings=2, min_seconds=0.005)
    assert out["m"].picojoules is None and "RAPL" in out["m"].reason
    assert len(out["m"].seconds) == 2 and min(out["m"].seconds) > 0
    assert out["m"].units_per_call == 16  # seconds are per sample
    assert node.net_fraction(out) is None
    frac, status = node.energy_status(out, meter)
    assert frac is None and "RAPL" in status


@pytest.mark.parametrize("watts, idle, fraction", [(10.0, 2.0, 0.8), (10.0, 9.0, 0.1)])
def test_energy_comparison_net_fraction_decides_usability(watts, idle, fraction):
    """Energy ratios are given only when net energy is at least a quarter of gross."""
    x = torch.randn(32, 2)
    out = node.energy_comparison(node.ODENet(3, 4, n_steps=2), node.ResNet(3, 4, depth=2), x,
                                 control_steps=8, device="cpu", meter=FakeMeter(watts, idle),
                                 readings=2, min_seconds=0.01)
    assert out.net_fraction == pytest.approx(fraction)
    assert out.status == "fake, idle %.3g W subtracted" % idle
    assert out.time_ratio.value > 0
    if fraction >= 0.25:
        assert out.reason == "" and out.energy_ratio is not None and out.energy_control is not None
        # the control takes four times the steps: it costs more per sample than the model
        assert out.energy_control.value > out.energy_ratio.value
    else:
        assert out.energy_ratio is None and "10% of gross" in out.reason


def test_energy_comparison_rejects_bad_fraction():
    with pytest.raises(ValueError, match="min_net_fraction=1.5"):
        node.energy_comparison(node.ODENet(3, 4), None, torch.zeros(1, 2), control_steps=2,
                               device="cpu", meter=None, min_net_fraction=1.5)


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


# ----------------------------------------------------------------------------- registries


def test_solver_registry_is_name_to_callable():
    assert set(node.SOLVERS) == set(node.FIXED) | set(node.ADAPTIVE)
    assert all(callable(s) for s in node.SOLVERS.values())
    assert set(node.ORDER) == set(node.FIXED)
    f = field()
    z0 = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():  # every registered solver integrates and counts its evaluations
        for name in node.SOLVERS:
            f.nfe = 0
            kw = {"n_steps": 2} if name in node.FIXED else {"rtol": 1e-3, "atol": 1e-3}
            z = node.integrate(f, z0, solver=name, impl="torch", **kw)
            assert z.shape == z0.shape and z.dtype == torch.float64 and torch.isfinite(z).all()
            assert f.nfe == (2 * node.FIXED[name] if name in node.FIXED else f.nfe) and f.nfe > 0


def test_model_registry():
    assert set(node.MODELS) == set(node.FAMILIES) == {"ode", "resnet", "tied_resnet"}
    assert isinstance(node.MODELS["ode"](4, 8, 3), node.ODENet)
    assert len(node.MODELS["resnet"](4, 2, 3).blocks) == 3
    with pytest.raises(ValueError, match="depth=0"):
        node.MODELS["resnet"](4, 2, 0)


# ----------------------------------------------------------------------------- experiments


def test_spirals_split_is_the_chapter_draw_order():
    data = node.spirals(16, seed=5)
    g = torch.Generator().manual_seed(5)
    expected = [t for n in (16, 16, 64) for t in node.two_spirals(n, generator=g)]
    got = [data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(ValueError, match="n_train=0"):
        node.spirals(0, seed=0)


def test_capacity_study_and_paired_difference():
    data = node.spirals(32, seed=0)
    specs = [("ode", 4, 2), ("resnet", 2, 2)]
    runs = node.capacity_study(specs, data, [0, 1], d=3, iterations=4)
    assert list(runs) == specs and all(len(rs) == 2 for rs in runs.values())
    ode, res = runs.values()
    assert [r.params for r in ode] == [node.field_parameters(3, 4) + 4] * 2
    assert [r.nfe for r in res] == [2, 2] and all(0 <= r.test <= 1 for r in ode + res)
    diff = node.paired_difference(ode, res)
    assert diff.value == pytest.approx(sum(a.test - b.test for a, b in zip(ode, res)) / 2)
    assert diff.n == 2
    with pytest.raises(ValueError, match="one per seed"):
        node.paired_difference(ode, res[:1])
    rows = node.capacity_rows(runs)
    assert rows[0][:5] == ["ode", 4, 2, ode[0].params, 8] and rows[0][6] <= rows[0][5] <= rows[0][7]


def test_work_precision_orders_and_references():
    f = field(d=3, h=5, seed=1).float()
    z0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    wp = node.work_precision(f, z0, max_steps=64, min_tol=1e-6)
    assert wp.reference_error < 1e-9
    for m, p in node.ORDER.items():
        assert abs(wp.orders[m] - p) <= 0.35 * p, (m, wp.orders)
    for re, rn in wp.rank.values():
        assert re >= 0.8 and rn <= -0.8
    methods = wp.by_method()
    assert [r["setting"] for r in methods["euler"]] == [4, 8, 16, 32, 64]
    assert [r["setting"] for r in methods["dopri5"]] == [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    assert methods["euler"][0]["tag"] == "euler_4" and methods["bosh3"][-1]["tag"] == "bosh3_tol6"
    assert wp.cheapest["rk4_mlp"] is not None and wp.cheapest["euler"] is None  # 1e-4 unreachable
    assert f.w1.dtype == torch.float32  # the study works on a float64 copy
    names = [r["name"] for r in node.solver_records(wp)]
    assert "solver_err_euler_4" in names and "order_rk4" in names and "nfe_to_target_dopri5" in names
    with pytest.raises(ValueError, match="max_steps=2"):
        node.work_precision(f, z0, max_steps=2, min_tol=1e-6)


def test_tableau_order_and_timings_on_cpu():
    args = rk4_mlp_inputs(16, 2, 8, seed=0)
    tab = node.tableau_order(args, steps=(4, 8))
    assert 3.3 <= tab["order"] <= 5.0 and tab["differences"][0] > tab["differences"][1] > 0
    with pytest.raises(ValueError, match="steps="):
        node.tableau_order(args, steps=(4, 6))
    timings = node.rk4_timings(args, n_steps=4, device="cpu", readings=2, min_seconds=0.002)
    assert set(timings) == {"torchdiffeq", "torch_loop"}
    recs = node.timing_records(timings, batch=16, d=2, h=8, n_steps=4, device="cpu")
    assert {r["name"] for r in recs} == {"rk4_seconds_torchdiffeq", "rk4_seconds_torch_loop",
                                         "rk4_gflops_torchdiffeq", "rk4_gflops_torch_loop"}


def test_memory_records_and_plots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = node.two_spirals(8, generator=torch.Generator().manual_seed(0))
    mem = node.memory_vs_steps(node.ODENet(3, 4), x, y, [2, 4, 8], device="cpu")
    assert mem["backprop_slope"] > 0.5 and abs(mem["adjoint_slope"]) < 0.1
    recs = {r["name"]: r for r in node.memory_records(mem, measure="TensorBytesPeak")}
    assert recs["memory_max_steps"]["value"] == 8 and recs["memory_max_steps"]["claim"] is None
    assert recs["backprop_bytes_2"]["claim"] == "C1" and recs["backprop_bytes_2"]["unit"] == "bytes"
    assert recs["adjoint_memory_ratio"]["value"] == mem["adjoint_bytes"][-1] / mem["backprop_bytes"][-1]
    fig, axes = plt.subplots(1, 2)
    node.plot_memory(axes[0], mem, measure="TensorBytesPeak")
    timings = node.rk4_timings(rk4_mlp_inputs(4, 2, 4), n_steps=2, device="cpu", readings=2,
                               min_seconds=0.002)
    node.plot_timings(axes[1], timings)
    assert len(axes[0].lines) == 2 and len(axes[1].lines) == 2
    plt.close(fig)
