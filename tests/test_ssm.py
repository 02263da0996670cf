"""dynbook.ssm: S4D's three computations, ZOH exactness, resampling, the selective block,
the tasks, attention baselines and the memory counter."""

import math

import pytest
import torch

from dynbook import measure, ssm
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
    torch.manual_seed(0)
    _, losses = ssm.train_delay(ssm.DelayTask(duration=4.0), step=0.125, steps=40, batch=8)
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


def test_least_median_seconds_and_sweep():
    calls = {"a": 0, "b": 0}

    def count(name):
        calls[name] += 1

    out = measure.least_median_seconds({"a": lambda: count("a"), "b": lambda: count("b")}, device="cpu",
                                   min_run_time=0.001, repeats=2)
    assert set(out) == {"a", "b"} and all(v > 0 for v in out.values()) and min(calls.values()) >= 2
    res = ssm.scaling_sweep([32, 64], d_model=64, d_state=4, device="cpu", ssm_impl="chunked",
                            min_run_time=0.001, repeats=1, math_bytes_limit=32 * 32 * 4)
    assert res["length"] == [32, 64]
    assert math.isnan(res["attention_math_s"][1]) and not math.isnan(res["attention_math_s"][0])
    assert all(v > 0 for v in res["ssm_s"] + res["attention_s"] + res["ssm_bytes"])
