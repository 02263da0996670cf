"""What a run ran on: package versions, hardware, git commit. Used for provenance."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("dynbook", "torch", "torchdiffeq", "torchsde", "triton", "numpy", "scipy", "matplotlib", "papermill", "myst-nb")


def find_root(start: str | os.PathLike | None = None) -> Path | None:
    """The book's root (the folder holding ``_toc.yml``), searching upwards from ``start``."""
    env = os.environ.get("DYNBOOK_ROOT")
    if env:
        return Path(env)
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "_toc.yml").is_file() and (d / "dynbook").is_dir():
            return d
    return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover
        out["cuda"] = None
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_id() -> str | None:
    """The CPU's identity beyond its name, from /proc/cpuinfo: family, model, stepping and a
    short hash of its feature flags. Virtual machines often report a bare "AMD EPYC" as the
    model name; two such machines of different generations give different last bits."""
    import hashlib

    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model", "stepping", "flags") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor is enough
    except OSError:
        return None
    if not fields:
        return None
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:8]
    return (f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
            f"stepping {fields.get('stepping', '?')} flags {flags}")


def hardware(device: str = "cpu") -> dict:
    """CPU model and core count; for CUDA, the GPU name, memory and driver."""
    import torch

    info = {
        "cpu": _cpu_name(),
        "cpu_id": _cpu_id(),
        # the vector ISA torch's CPU kernels dispatch to (AVX2, AVX512, …): results in the
        # last bits depend on it, and on the CPU model's libraries' code paths
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_driver=_nvidia_driver(),
        )
    return info


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML means no driver to report
        return None


def hardware_slug(hw: dict) -> str:
    """A folder name for ``results/<hardware>/`` from a :func:`hardware` record: the GPU or
    CPU model, lower-case, e.g. ``nvidia-h100-80gb-hbm3``."""
    name = hw.get("gpu") or hw["cpu"]
    keep = "".join(c if c.isalnum() else "-" for c in name.lower())
    return "-".join(p for p in keep.split("-") if p)


@lru_cache(maxsize=1)
def commit() -> str:
    """``DYNBOOK_COMMIT`` if the CLI set it, else ``git describe`` of the book, else 'unknown'."""
    env = os.environ.get("DYNBOOK_COMMIT")
    if env:
        return env
    root = find_root()
    return "unknown" if root is None else git_describe(root)


def git_describe(root: str | os.PathLike) -> str:
    """``git describe --always --dirty`` of the repository at ``root``, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
