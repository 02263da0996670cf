"""Shared test setup. On a machine without CUDA, Triton kernels run in the interpreter
(TRITON_INTERPRET=1 must be set before triton is first imported, hence here)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture
def cuda_only():
    if not HAS_CUDA:
        pytest.skip("needs an NVIDIA GPU")


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module's tiny problems on one intra-op thread (splitting them costs more
    than it saves); use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from dynbook.measure.timing import num_threads

    with num_threads(1):
        yield
