"""GPU kernels, each beside its PyTorch reference.

Every kernel module holds a private ``@triton.jit`` kernel, a plain PyTorch reference
(``*_reference``, with a comment counting the bytes and FLOPs it must move) and the public
function with ``impl="auto" | "triton" | "torch"``: Triton on CUDA, the reference elsewhere.
On a CPU the Triton code runs under ``TRITON_INTERPRET=1`` (the tests do this), so CI checks
the kernel code itself. Importing this package imports neither Triton nor a kernel module.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "rk4_mlp": "rk4",
    "rk4_mlp_reference": "rk4",
    "linear_scan": "scan",
    "linear_scan_reference": "scan",
    "selective_scan": "scan",
    "selective_scan_reference": "scan",
}

IMPLS = ("auto", "triton", "torch")


def resolve_impl(impl: str, tensor) -> str:
    """``auto`` → ``triton`` for CUDA tensors (when Triton imports), else ``torch``."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not allowed: expected one of {', '.join(map(repr, IMPLS))}")
    if impl != "auto":
        if impl == "triton" and not triton_available():
            raise RuntimeError("impl='triton' needs the triton package (pip install triton)")
        return impl
    return "triton" if tensor.is_cuda and triton_available() else "torch"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_EXPORTS, "resolve_impl", "triton_available", "IMPLS"]
