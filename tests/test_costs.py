"""dynbook.measure.costs: exact FLOP and byte counts, against PyTorch's FLOP counter, and the roofline."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynbook.measure import costs


@pytest.mark.parametrize("m,n,k", [(1, 7, 13), (37, 53, 29), (128, 64, 256)])
def test_gemm_flops_match_pytorch_counter(m, n, k):
    with FlopCounterMode(display=False) as c:
        torch.randn(m, k) @ torch.randn(k, n)
    assert c.get_total_flops() == costs.gemm_flops(m, n, k)


def test_intensity_and_roofline():
    # a GEMV with N = K: 2NK FLOP over 4(K + NK + N) bytes → just under 0.5 FLOP/B in fp32
    i = costs.intensity(1, 4096, 4096, 4)
    assert i == pytest.approx(2 * 4096 * 4096 / (4 * (4096 + 4096 * 4096 + 4096)))
    assert costs.intensity(1024, 4096, 4096, 4) > 100 * i
    peak, bw = 100e12, 2e12
    assert costs.ridge_intensity(peak, bw) == 50
    r = costs.roofline([1, 50, 1000], peak, bw)
    assert np.allclose(r, [2e12, 100e12, 100e12])


def test_kernel_costs():
    assert costs.kernel_costs("gemm", n=3, k=4, batch=5) == {"flops": 120, "bytes": 4 * (12 + 20 + 15)}
    dense, stencil = costs.kernel_costs("dense_operator", sites=100, batch=1), costs.kernel_costs("stencil", sites=100, batch=1)
    assert dense["bytes"] / stencil["bytes"] > 50
    with pytest.raises(ValueError, match="kind='fft'"):
        costs.kernel_costs("fft", n=1)
