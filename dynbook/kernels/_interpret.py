"""Run a module's Triton kernels on CPU tensors through Triton's interpreter.

``TRITON_INTERPRET=1`` only takes effect if set before ``triton`` is imported. To let
``impl="triton"`` run on CPU tensors whatever the environment said at import time (so the
chapters can show a kernel agreeing with its reference on a laptop), a kernel module keeps
one :class:`KernelSet`: on CUDA it hands out the compiled kernels; on a CPU it hands out
interpreted copies of the same source, whose calls to ``@triton.jit`` helpers also go to
interpreted copies.
"""

from __future__ import annotations

import types


class KernelSet:
    """The ``@triton.jit`` functions ``names`` of a module whose globals are ``namespace``."""

    def __init__(self, namespace: dict, names: tuple[str, ...]):
        self.namespace = namespace
        self.names = names
        self._interpreted: dict = {}

    def get(self, name: str, device):
        """The kernel ``name`` for tensors on ``device``: compiled on CUDA, interpreted elsewhere."""
        import triton

        fn = self.namespace[name]
        if device.type == "cuda" or not isinstance(fn, triton.runtime.JITFunction):
            return fn  # compiled for the GPU, or already interpreted (TRITON_INTERPRET=1)
        if not self._interpreted:
            from triton.runtime.interpreter import InterpretedFunction

            # interpreted copies must call interpreted helpers: give them their own globals
            ns = dict(self.namespace)
            for helper in self.names:
                raw = self.namespace[helper].fn
                ns[helper] = InterpretedFunction(types.FunctionType(
                    raw.__code__, ns, raw.__name__, raw.__defaults__, raw.__closure__))
            self._interpreted.update({k: ns[k] for k in self.names})
        return self._interpreted[name]
