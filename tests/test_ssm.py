"""dynbook.models.ssm: S4D's three computations, ZOH exactness, resampling, the selective block,
the tasks, attention baselines and the memory counter."""

import math

import numpy as np
import pytest
import torch

import dynbook
from dynbook.measure import timing as measure
from dynbook.models import ssm
from dynbook.kernels.scan import selective_scan_reference


def _s4d(H=3, N=6, seed=0):
    torch.manual_seed(seed)
    return ssm.S4D(H, N, step_min=0.01, step_max=0.3).double()


@pytest.mark.parametrize("shape,step_scale", [((2, 37, 3), 1.0), ((1, 64, 3), 0.37), ((3, 1, 3), 2.0)])
def test_s4d_three_computations_agree(shape, step_scale):
    model = _s4d()
    u = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = model(u, mode="recurrence", step_scale=step_scale)
    for mode in ("conv", "scan"):
        torch.testing.assert_close(model(u, mode=mode, step_scale=step_scale), want, rtol=1e-10, atol=1e-10)


def test_s4d_kernel_is_impulse_response():
    model = _s4d(H=2, N=4)
    l = 20
    impulse = torch.zeros(1, l, 2, dtype=torch.float64)
    impulse[0, 0] = 1.0
    y = model(impulse, mode="recurrence")[0].T  # (H, l)
    dA, CdB, _ = model.discretize()
    explicit = torch.stack([2 * (CdB * dA ** j).sum(-1).real for j in range(l)], -1)
    explicit[:, 0] += model.D.detach()
    torch.testing.assert_close(y, explicit, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.kernel(l), explicit - torch.eye(l, dtype=torch.float64)[0] * model.D.detach()[:, None],
                               rtol=1e-12, atol=1e-12)


def test_zoh_is_exact_for_a_step_input():
    """With u = 1 held constant, ZOH reproduces the continuous solution x(t) = (e^{At} − 1)/A
    at every sample, for any step: the recurrence is the ODE, sampled."""
    model = _s4d(H=2, N=4, seed=3)
    A = -torch.exp(model.log_A_real.detach()) + 1j * model.A_imag.detach()
    C = torch.view_as_complex(model.C.detach())
    for scale in (1.0, 0.5, 3.0):
        step = torch.exp(model.log_step.detach()) * scale  # (H,)
        l = 15
        y = model(torch.ones(1, l, 2, dtype=torch.float64), mode="scan", step_scale=scale)[0]  # (l, H)
        t = (torch.arange(l, dtype=torch.float64) + 1)[:, None] * step  # after k+1 held steps
        x = (torch.exp(A[None] * t[..., None]) - 1) / A[None]  # (l, H, N/2)
        exact = 2 * (C[None] * x).sum(-1).real + model.D.detach()
        torch.testing.assert_close(y, exact, rtol=1e-10, atol=1e-10)


def test_step_scale_resamples_time():
    """Held input sampled twice as densely with Δ halved gives the same outputs at the
    shared times: odd samples of the fine run equal the coarse run."""
    model = _s4d(seed=4)
    coarse = torch.randn(1, 25, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fine = coarse.repeat_interleave(2, dim=1)  # the same piecewise-constant signal
    y_coarse = model(coarse, mode="conv")
    y_fine = model(fine, mode="conv", step_scale=0.5)
    torch.testing.assert_close(y_fine[:, 1::2], y_coarse, rtol=1e-10, atol=1e-10)


def test_s4d_bad_arguments():
    with pytest.raises(ValueError, match="d_state = 5"):
        ssm.S4D(2, 5)
    with pytest.raises(ValueError, match="mode = 'fft'"):
        ssm.S4D(2, 4)(torch.zeros(1, 3, 2), mode="fft")


def test_delay_task_is_continuous():
    task = ssm.DelayTask(duration=4.0, delay=1.0)
    u1, y1, m1 = task.sample(3, 0.25, seed=7)
    u2, y2, m2 = task.sample(3, 0.125, seed=7)
    torch.testing.assert_close(u2[:, ::2], u1, rtol=1e-5, atol=1e-6)  # same signals, finer grid
    torch.testing.assert_close(y1[:, 4:], u1[:, :-4], rtol=1e-5, atol=1e-5)  # y(t) = u(t − 1)
    assert m1.sum() == 12 and not m1[:4].any()
    with pytest.raises(ValueError, match="step = 0"):
        task.sample(1, 0, seed=0)


def test_delay_training_reduces_loss():
    _, losses = ssm.train_delay(ssm.DelayTask(duration=4.0), step=0.125, steps=60, batch=16, seed=0)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_selective_copying_task():
    g = torch.Generator().manual_seed(0)
    tokens, targets = ssm.selective_copying(5, n_tokens=4, length=12, vocab=6, generator=g)
    assert tokens.shape == (5, 16) and targets.shape == (5, 4)
    body = tokens[:, :12]
    for row, tgt in zip(body, targets):
        assert torch.equal(row[row > 0], tgt)  # the data tokens, in order
    assert (tokens[:, 12:] == 7).all() and targets.min() >= 1 and targets.max() <= 6
    with pytest.raises(ValueError, match="n_tokens = 13"):
        ssm.selective_copying(1, n_tokens=13, length=12, vocab=4)


def test_selective_ssm_impls_agree_and_differentiate():
    torch.manual_seed(0)
    layer = ssm.SelectiveSSM(6, 4, impl="torch").double()
    x = torch.randn(2, 11, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    layer.impl = "parallel"
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())


def test_blocks_differ_only_in_the_ssm():
    sel = ssm.SequenceModel(6, 16, 8, 1, selective=True)
    lti = ssm.SequenceModel(6, 16, 8, 1, selective=False)
    assert isinstance(sel.blocks[0].ssm, ssm.SelectiveSSM) and isinstance(lti.blocks[0].ssm, ssm.S4D)
    n_sel, n_lti = ssm.n_parameters(sel), ssm.n_parameters(lti)
    assert abs(n_sel - n_lti) / n_lti < 0.1
    tokens = torch.randint(0, 6, (2, 9))
    assert sel(tokens).shape == lti(tokens).shape == (2, 9, 6)


@pytest.mark.parametrize("selective", [True, False])
def test_sequence_models_are_causal(selective):
    torch.manual_seed(0)
    model = ssm.SequenceModel(6, 8, 4, 2, selective=selective).double()
    a = torch.randint(0, 6, (1, 12))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 6
    torch.testing.assert_close(model(a)[:, :7], model(b)[:, :7], rtol=1e-12, atol=1e-12)


def test_attention_baselines_agree_and_are_causal():
    q, k, v = ssm.attention_inputs(50, 128, dtype=torch.float64)
    y = ssm.causal_attention(q, k, v)
    torch.testing.assert_close(ssm.causal_attention_math(q, k, v), y, rtol=1e-10, atol=1e-10)
    k2 = k.clone()
    k2[..., 30:, :] += 1.0
    torch.testing.assert_close(ssm.causal_attention(q, k2, v)[..., :30, :], y[..., :30, :])
    with pytest.raises(ValueError, match="d_model = 100"):
        ssm.attention_inputs(8, 100)


def test_ssm_scan_layer_inputs():
    inputs = ssm.ssm_inputs(33, 8, d_state=4, dtype=torch.float64)
    want = selective_scan_reference(*inputs)
    torch.testing.assert_close(ssm.ssm_scan(inputs, impl="parallel"), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ssm.ssm_scan(inputs, impl="torch"), want, rtol=0, atol=0)


def test_tensor_bytes_peak_counts_live_tensors():
    x = torch.randn(1000)
    with measure.TensorBytesPeak() as tracker:
        for _ in range(5):
            y = x * 2  # the old y is freed only after the new one exists: two alive at the peak
        z = y.view(10, 100)  # a view allocates nothing
    del z
    assert tracker.peak == 2 * 4000
    l = 256
    q, k, v = ssm.attention_inputs(l, 64)
    assert measure.peak_bytes(lambda: ssm.causal_attention_math(q, k, v), device="cpu") >= l * l * 4


def test_crossover_helpers():
    lengths = [1, 2, 4, 8, 16]
    quad = [x ** 2 for x in lengths]
    lin = [4 * x for x in lengths]
    assert ssm.crossover_length(lengths, quad, lin) == 8
    assert ssm.crossover_length(lengths, lin, quad) is None
    # exp(0)·L² meets exp(log 4)·L at L = 4
    assert math.isclose(ssm.fitted_crossover((2.0, 0.0), (1.0, math.log(4))), 4.0)


def test_num_threads_restores():
    before = torch.get_num_threads()
    with measure.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_least_median_seconds():
    calls = {"a": 0, "b": 0}

    def count(name):
        calls[name] += 1

    out = measure.least_median_seconds({"a": lambda: count("a"), "b": lambda: count("b")}, device="cpu",
                                       min_run_time=0.001, repeats=2)
    assert set(out) == {"a", "b"} and all(v > 0 for v in out.values()) and min(calls.values()) >= 2


def test_scaling_sweep_layout():
    res = ssm.scaling_sweep([32, 64], d_model=64, d_state=4, device="cpu", ssm_impl="chunked",
                            repeats=2, min_time=1e-4, math_bytes_limit=32 * 32 * 4)
    assert res["length"] == [32, 64] and len(res["sdpa_backend"]) == 2
    assert res["seconds"]["attention_math"][1] == [] and len(res["seconds"]["attention_math"][0]) == 2
    assert math.isnan(res["bytes"]["attention_math"][1]) and res["bytes"]["attention_math"][0] >= 32 * 32 * 4
    for m in ("attention", "ssm"):
        assert all(len(r) == 2 and min(r) > 0 for r in res["seconds"][m])
        assert all(b > 0 for b in res["bytes"][m])


# ----------------------------------------------------------------------------- seeds and streams


def test_stream_seed_is_deterministic_and_separates_streams():
    assert ssm.stream_seed(3, "copy/train") == ssm.stream_seed(3, "copy/train")
    seeds = {ssm.stream_seed(s, name) for s in range(4) for name in ("copy/train", "copy/eval", "delay/eval")}
    assert len(seeds) == 12 and all(0 <= x < 2**63 for x in seeds)


def test_copying_evaluation_shares_no_stream_with_training():
    """The finding of issue 9: evaluation once drew from the training generator's seed, so its
    first sequences were the first training batch's."""
    cfg = ssm.CopyingConfig(n_tokens=3, length=12, vocab=4, batch=8, eval_batch=8)
    g = torch.Generator().manual_seed(ssm.stream_seed(5, "copy/train"))
    train, _ = ssm.selective_copying(cfg.batch, n_tokens=3, length=12, vocab=4, generator=g)
    g = torch.Generator().manual_seed(ssm.stream_seed(5, "copy/eval"))
    held_out, _ = ssm.selective_copying(cfg.eval_batch, n_tokens=3, length=12, vocab=4, generator=g)
    assert not (train[:, :12] > 0).eq(held_out[:, :12] > 0).all(-1).any()  # no shared position pattern


def test_selective_block_uses_mambas_dt_rank():
    block = ssm.SSMBlock(40, 4, selective=True)  # d_inner = 80: ⌈80/16⌉ = 5, Mamba's ⌈40/16⌉ = 3
    assert block.ssm.dt_rank == 3 and block.ssm.dt_proj.in_features == 3
    assert ssm.SelectiveSSM(80, 4).dt_rank == 5


def test_resampling_r2_and_its_control():
    r2 = {"train": 0.99, "fine_rescaled": 0.98, "fine_naive": -1.0, "coarse_rescaled": 0.95, "coarse_naive": 0.2}
    assert math.isclose(ssm.worst_r2_change(r2), -0.04)
    assert math.isclose(ssm.worst_r2_change(r2, rescaled=False), -1.99)
    torch.manual_seed(0)
    model = ssm.DelayNet()
    out = ssm.resampling_r2(model, ssm.DelayTask(duration=4.0), step=0.125, seed=1)
    assert set(out) == {"train", "fine_rescaled", "fine_naive", "coarse_rescaled", "coarse_naive"}


# ----------------------------------------------------------------------------- timing and fits


class _FakeClock:
    """A clock that advances only when a fake computation 'runs'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, seconds, log=None, name=None):
        def run():
            self.now += seconds
            if log is not None:
                log.append(name)
        return run


def test_interleaved_seconds_reads_each_call_and_rotates():
    clock, log = _FakeClock(), []
    fns = {k: clock.work(t, log, k) for k, t in (("a", 0.002), ("b", 0.010), ("c", 0.001))}
    out = ssm.interleaved_seconds(fns, repeats=3, min_time=0.004, clock=clock)
    for k, t in (("a", 0.002), ("b", 0.010), ("c", 0.001)):
        assert len(out[k]) == 3 and all(math.isclose(x, t) for x in out[k])
    timed = log[6:]  # after two warm-up calls each
    firsts = [timed[0], timed[2 + 1 + 4], timed[2 + 1 + 4 + 1 + 4 + 2]]  # a×2, b×1, c×4 per repeat, rotated
    assert firsts == ["a", "b", "c"]
    with pytest.raises(ValueError, match="repeats = 0"):
        ssm.interleaved_seconds(fns, repeats=0)


def _trace(lengths, exponent, *, repeats=5, noise=0.05, seed=0, bursts=0.0):
    """Synthetic timings c·L^exponent with multiplicative noise; ``bursts`` adds load (only ever
    more time) to a fraction of the readings."""
    rng = np.random.default_rng(seed)
    out = []
    for L in lengths:
        base = 1e-6 * L ** exponent
        r = base * (1 + noise * rng.random(repeats))
        r[rng.random(repeats) < bursts] *= 3
        out.append(list(r))
    return out


LENGTHS = [256, 512, 1024, 2048, 4096, 8192]


def test_time_exponent_recovers_known_growth_and_separates_linear_from_quadratic():
    quad = ssm.time_exponent(LENGTHS, _trace(LENGTHS, 2.0))
    lin = ssm.time_exponent(LENGTHS, _trace(LENGTHS, 1.0, seed=1))
    assert quad.lo <= 2.0 <= quad.hi and quad.hi - quad.lo < 0.2
    assert lin.lo <= 1.0 <= lin.hi and lin.hi - lin.lo < 0.2
    rule = dynbook.at_least(1.7, band=0.1)  # C4a's rule: a linear trace must come out "not supported"
    assert rule.decide(quad) == "supported" and rule.decide(lin) == "not supported"
    # load bursts on a third of the readings: the least reading still finds the growth
    loaded = ssm.time_exponent(LENGTHS, _trace(LENGTHS, 2.0, seed=2, bursts=0.3))
    assert abs(loaded.value - 2.0) < 0.1 and loaded.lo <= 2.0 + 0.05


def test_time_exponent_uses_the_longer_half_and_skips_missing_lengths():
    # a fixed overhead dominates the short lengths: the fit over the longer half sees L²
    samples = [[1e-3 + 1e-9 * L ** 2] * 3 for L in LENGTHS]
    est = ssm.time_exponent(LENGTHS, samples)
    assert est.value > 1.5 and ssm.time_exponent(LENGTHS[:3], samples[:3]).value < 0.5
    assert ssm.time_exponent(LENGTHS, [[1.0, 1.0]] + [[]] * 5) is None  # one length ran: no slope
    partial_ = ssm.time_exponent(LENGTHS, samples[:4] + [[], []])
    assert partial_.method.endswith("repeats") and "2048" in partial_.method


def test_memory_exponent_exact_counts():
    est = ssm.memory_exponent(LENGTHS, [4.0 * L * L for L in LENGTHS])
    assert math.isclose(est.value, 2.0) and math.isclose(est.lo, 2.0) and math.isclose(est.hi, 2.0)
    mixed = ssm.memory_exponent(LENGTHS, [2**22 + 256.0 * L for L in LENGTHS])  # fixed buffers + linear
    assert mixed.lo < mixed.value < mixed.hi < 1.0
    assert ssm.memory_exponent(LENGTHS, [float("nan")] * 5 + [1.0]) is None


def test_upper_fit_longer_half():
    s, c = ssm.upper_fit(LENGTHS, [1e-3 + 1e-9 * L ** 2 for L in LENGTHS])
    assert 1.5 < s < 2.0
    assert ssm.upper_fit([1, 2], [float("nan"), 1.0]) is None


def test_crossover_measured_and_extrapolated():
    att = _trace(LENGTHS, 2.0, noise=0.01)  # 1e-6 L²
    scan_ = [[1e-6 * 2000 * L * (1 + 0.01 * i) for i in range(5)] for L in LENGTHS]  # crosses at L = 2000
    out = ssm.crossover(LENGTHS, att, scan_)
    assert out["measured"] == 2048 and 1900 < out["fitted"] < 2100 and "measured" in out["text"]
    rule = dynbook.at_least(1.0, band=0.1)  # C4c's rule and control
    assert rule.decide(out["ratio_longest"]) == "supported"
    assert rule.decide(out["ratio_shortest"]) == "not supported"
    far = [[1e-6 * 20000 * L * (1 + 0.01 * i) for i in range(5)] for L in LENGTHS]  # crosses at L = 20000
    out = ssm.crossover(LENGTHS, att, far)
    assert out["measured"] is None and "extrapolation" in out["text"]
    assert rule.decide(out["ratio_longest"]) == "not supported"  # an extrapolated crossover supports nothing
    with pytest.raises(ValueError, match="two lengths"):
        ssm.crossover(LENGTHS[:1], att[:1], far[:1])


def test_cost_spread_and_its_control():
    rng = np.random.default_rng(0)
    slow = list(0.03 * (1 + 0.02 * rng.random(5)))
    fast = list(0.01 * (1 + 0.02 * rng.random(5)))
    again = list(0.01 * (1 + 0.02 * rng.random(5)))
    est, slowest, fastest = ssm.cost_spread({"rec": slow, "conv": fast, "scan": again})
    assert slowest == "rec" and est.lo > 2.5
    ctrl, _, _ = ssm.cost_spread({"conv": fast, "conv again": again})
    assert 1.0 <= ctrl.value < 1.05 and dynbook.at_least(2.0, band=0.25).decide(ctrl) == "not supported"
    with pytest.raises(ValueError, match="at least two"):
        ssm.cost_spread({"a": fast})


def test_scan_speed_on_cpu():
    out = ssm.scan_speed(1, 16, 4, 2, device="cpu", impls=("parallel", "torch"), repeats=2, min_time=1e-4)
    assert set(out["seconds"]) == {"parallel", "torch", "copy"} and out["bytes"] > 0
    assert abs(out["copy_bytes"] - out["bytes"]) <= 8
    with pytest.raises(ValueError, match="not allowed"):
        ssm.scan_speed(1, 16, 4, 2, device="cpu", impls=("cuda_magic",))


class _FakeMeter:
    """An energy counter that reads 1 µJ more each region, 10 µs long (``available`` as given)."""

    source, reason = "fake", "no counter here"

    def __init__(self, available=True):
        self.available, self.reading, self.n = available, None, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.n += 1
        joules = 1e-6 * self.n

        class Reading:
            seconds = 1e-5

            @staticmethod
            def per(count, net=True):
                return joules / count * 1e12
        self.reading = Reading()
        return False


def test_energy_per_token_meters_both_lengths_and_decides_nothing_without_a_counter():
    out = ssm.energy_per_token(_FakeMeter(), [16, 32], d_model=64, d_state=4, ssm_impl="chunked",
                               readings=2, min_seconds=1e-4)
    assert set(out["metered"]) == {16, 32} and set(out["metered"][16]) == {"attention", "ssm"}
    assert all(len(m.picojoules) == 2 and m.units_per_call == L
               for L, r in out["metered"].items() for m in r.values())
    assert out["longest"] is out["ratio"][32] and out["longest"].value > 0 and out["reason"] == ""
    assert {"energy_length", "energy_status", "energy_pj_per_token_ssm_L32"} <= set(out["records"])
    assert out["records"]["energy_length"]["value"] == 32
    off = ssm.energy_per_token(_FakeMeter(available=False), [16, 32], d_model=64, d_state=4)
    assert off["longest"] is None and off["metered"] == {} and "no energy counter" in off["reason"]
    with pytest.raises(ValueError, match=r"lengths\[1\]=0 is not allowed"):
        ssm.energy_per_token(_FakeMeter(), [16, 0], d_model=64, d_state=4)


# ----------------------------------------------------------------------------- the chapter's experiments


def test_check_lengths_names_the_parameter():
    assert ssm.check_lengths("s4d_lengths", [2, 8]) == [2, 8] and ssm.check_lengths("x", None) is None
    with pytest.raises(dynbook.ParameterError, match="'scaling_lengths' = \\[64, 64\\].*increasing"):
        ssm.check_lengths("scaling_lengths", [64, 64])


def test_three_computations_agree_and_time_a_control():
    out = ssm.three_computations(3, 4, [16, 40], repeats=2, seed=1, check_length=23, min_time=1e-4)
    assert out["dev64"] < 1e-12 and out["dev32"] < 1e-5
    assert set(out["seconds"]) == set(ssm.MODES) and all(len(v) == 2 for v in out["seconds"].values())
    assert ("scan again", 40) in out["readings"] and ("scan again", 16) not in out["readings"]
    assert {out["slowest"], out["fastest"]} <= set(ssm.MODES) and out["spread"].value >= 1.0
    rec = out["records"]
    assert rec["s4d_max_rel_dev_float64"]["labels"] == {"length": 23} and rec["s4d_longest_length"]["value"] == 40
    assert all(r["claim"] == "C1" for r in rec.values())
    again = ssm.three_computations(3, 4, [16, 40], repeats=2, seed=1, check_length=23, min_time=1e-4)
    assert again["dev64"] == out["dev64"]  # the same seed, the same model and inputs
    with pytest.raises(ValueError, match=r"lengths\[0\]=0 is not allowed"):
        ssm.three_computations(3, 4, [0, 8], repeats=2)
    with pytest.raises(ValueError, match="repeats=0 is not allowed"):
        ssm.three_computations(3, 4, [8, 16], repeats=0)


def test_resampling_experiment_over_seeds():
    task = ssm.DelayTask(duration=4.0)
    out = ssm.resampling_experiment(task, samples=32, steps=3, seeds=[0, 1])
    assert out["step"] == 0.125 and len(out["per_seed"]) == 2 and out["change"].n == 2
    assert math.isclose(out["r2"]["train"], np.mean([r["train"] for r in out["per_seed"]]))
    want = [ssm.worst_r2_change(r, rescaled=False) for r in out["per_seed"]]
    assert math.isclose(out["control"].value, np.mean(want))
    model0, _ = ssm.train_delay(task, step=0.125, steps=3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model0.parameters(), out["model"].parameters()))
    assert out["records"]["delay_r2_train"]["labels"]["per_seed"] == [r["train"] for r in out["per_seed"]]
    with pytest.raises(ValueError, match="steps=0 is not allowed"):
        ssm.resampling_experiment(task, samples=32, steps=0, seeds=[0])
    with pytest.raises(ValueError, match="seeds=\\[\\]"):
        ssm.resampling_experiment(task, samples=32, steps=1, seeds=[])


def test_copying_experiment_trains_both_models_per_seed():
    cfg = ssm.CopyingConfig(n_tokens=2, length=6, vocab=3, d_model=8, d_state=2, n_layers=1, batch=4,
                            steps=2, eval_batch=16)
    out = ssm.copying_experiment(cfg, seeds=[3, 4], impl="parallel")
    assert set(out["accuracy"]) == set(ssm.COPYING_MODELS) and all(len(v) == 2 for v in out["accuracy"].values())
    assert all(0.0 <= a <= 1.0 for v in out["accuracy"].values() for a in v)
    assert all(n > 0 for n in out["parameters"].values())
    assert all(len(v) == 2 for v in out["losses"].values()) and out["chance"] == 1 / 3
    model, _ = ssm.train_copying(cfg, selective=True, seed=3, impl="parallel")
    assert out["accuracy"]["selective"][0] == ssm.copying_accuracy(model, cfg, seed=3)  # first seed, same run
    assert out["records"]["copy_accuracy_selective"]["labels"]["per_seed"] == out["accuracy"]["selective"]
    with pytest.raises(ValueError, match="seeds=\\[\\]"):
        ssm.copying_experiment(cfg, seeds=[])


@pytest.mark.slow
def test_copying_experiment_in_two_processes_gives_the_same_numbers():
    cfg = ssm.CopyingConfig(n_tokens=2, length=6, vocab=3, d_model=8, d_state=2, n_layers=1, batch=4,
                            steps=3, eval_batch=16)
    one = ssm.copying_experiment(cfg, seeds=[0, 1], threads=1)
    two = ssm.copying_experiment(cfg, seeds=[0, 1], threads=1, workers=2)
    assert one["accuracy"] == two["accuracy"] and one["losses"] == two["losses"]
    with pytest.raises(ValueError, match="workers=2 is not allowed on device 'cuda'"):
        ssm.copying_experiment(cfg, seeds=[0], device="cuda", workers=2)


def _sweep(lengths, repeats=4):
    att = _trace(lengths, 2.0, repeats=repeats, noise=0.01)
    lin = [[1e-6 * 2000 * L * (1 + 0.01 * i) for i in range(repeats)] for L in lengths]
    return {"length": list(lengths), "sdpa_backend": ["flash"] * len(lengths),
            "seconds": {"attention": att, "attention_math": att, "ssm": lin},
            "bytes": {"attention": [4.0 * L for L in lengths], "attention_math": [4.0 * L * L for L in lengths],
                      "ssm": [64.0 * L for L in lengths]}}


def test_sweep_analysis_exponents_crossover_and_records():
    out = ssm.sweep_analysis(_sweep(LENGTHS), where="cpu", width=64, d_state=16)
    E = out["exponents"]
    assert abs(E["attention"]["time"].value - 2.0) < 0.05 and abs(E["ssm"]["time"].value - 1.0) < 0.05
    assert math.isclose(E["attention_math"]["memory"].value, 2.0) and math.isclose(E["ssm"]["memory"].value, 1.0)
    assert out["crossover"]["measured"] == 2048 and out["backends"] == "flash"
    rec = out["records"]
    assert rec["cpu_exponent_attention_written_out_memory"]["claim"] == "C5a"
    assert rec["cpu_exponent_ssm_time"]["labels"]["interval"][0] <= rec["cpu_exponent_ssm_time"]["value"]
    assert rec["cpu_crossover_length"]["value"] == 2048 and rec["cpu_sdpa_kernel"]["value"] == "flash"
    rows = ssm.sweep_rows(_sweep(LENGTHS))
    assert len(rows) == len(LENGTHS) and len(rows[0]) == 7 and math.isclose(rows[0][6], 64 * 256 / 2**20)


def test_kernel_speedups_and_their_controls():
    rng = np.random.default_rng(0)
    jitter = lambda t: list(t * (1 + 0.01 * rng.random(5)))  # noqa: E731
    speed = {"seconds": {"triton": jitter(1e-3), "triton_again": jitter(1e-3), "parallel": jitter(4e-3),
                         "torch": jitter(30e-3), "copy": jitter(0.8e-3)},
             "bytes": 2**20, "copy_bytes": 2**20, "shape": {"b": 1, "l": 2, "d": 3, "n": 4}}
    out = ssm.kernel_speedups(speed)
    assert 29 < out["over_loop"][0].value < 31 and 0.97 < out["over_loop"][1].value < 1.03
    assert 3.9 < out["over_parallel"][0].value < 4.1
    assert 0.78 < out["copy_fraction"][0].value < 0.82 and 0.19 < out["copy_fraction"][1].value < 0.21
    assert dynbook.at_least(20.0, band=2.0).decide(out["over_loop"][1]) == "not supported"
    assert "of copy bandwidth" in out["text"] and out["records"]["kernel_ms_torch"]["labels"]["l"] == 2


def test_compiled_tables_from_the_stored_record_and_a_small_one():
    launches, roofs, gpus = ssm.compiled_tables()
    assert launches and roofs and "H100" in gpus
    assert {row[1] for row in launches} == {"sm_90", "sm_80", "sm_75"}
    table = {"rows": [{"kernel": "_ssm_fwd_kernel", "key": "k1", "arch": a, "registers": 10} for a in (90, 80)]
             + [{"kernel": "_ssm_fwd_kernel", "key": "k2", "arch": 90, "registers": 20},
                {"kernel": "_linear_scan_kernel", "key": "k3", "arch": 80, "registers": 1}],
             "roofline": [{"kernel": "selective_scan", "from": "k1", "gpu": g, "floor_us": 10.4, "bound": "bytes"}
                          for g in ("A", "B")] + [{"kernel": "linear_scan", "from": "k3", "gpu": "A",
                                                   "floor_us": 1.0, "bound": "bytes"}]}
    launches, roofs, gpus = ssm.compiled_tables(table)
    assert [r[:2] for r in launches] == [["k1", "sm_90"], ["k1", "sm_80"]]  # k2: not compiled for sm_80
    assert gpus == ["A", "B"] and roofs == [["selective_scan", "k1", "10 (bytes)", "10 (bytes)"]]
    assert ssm.compiled_tables({}) == ([], [], [])


def test_figures_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2)
    ssm.plot_scaling(ax, bx, {"cpu": _sweep(LENGTHS[:4])}, "cpu")
    assert len(ax.lines) == 5 and len(bx.lines) == 5  # three methods, two guides
    task = ssm.DelayTask(duration=4.0)
    out = ssm.resampling_experiment(task, samples=32, steps=1, seeds=[0])
    fig, (ax, bx) = plt.subplots(1, 2)
    ssm.plot_resampling(ax, bx, out, task)
    assert len(ax.lines) == 3 and len(bx.patches) == 6
    plt.close("all")


@pytest.mark.skipif(not __import__("dynbook.kernels", fromlist=["x"]).triton_available(), reason="needs triton")
def test_kernel_experiment_on_cpu(monkeypatch):
    monkeypatch.setitem(ssm.KERNEL_CHECK_SHAPES, "cpu", [(1, 5, 2, 2)])
    out = ssm.kernel_experiment("cpu", repeats=3, seed=0)
    assert out["errors"][0] < 1e-5 and out["errors"][1] < 1e-4 and out["speedups"] is None
    assert out["records"]["kernel_text"]["value"].startswith("not timed") and out["where"] == "Triton interpreter"
