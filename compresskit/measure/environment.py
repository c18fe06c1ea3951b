"""The environment stamp stored with every results file: package versions, CPU model and ISA flags, threads.

int8 speed-ups depend on VNNI/AMX, so a number is only read together with the machine that produced it
(docs/method.md, "Results records"). Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

ISA_FLAGS = (
    "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd",
)
# x86 int8 dot products that accumulate in int32. Without one of them, uint8 x int8 kernels add pairs of products
# in a saturating int16 (vpmaddubsw), so int8 accuracy depends on these flags (quantize.pt2e, quantize.ort).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "torchao": ("torchao",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "torch_pruning": ("torch-pruning", "torch_pruning"),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
}


def _version(candidates: Sequence[str]) -> str | None:
    for name in candidates:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.cache  # the CPU does not change under a running process; every int8 quantization asks (has_vnni)
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (Linux); (None, empty) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, frozenset()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model"):
            model = value.strip() or None
        elif not flags and key in ("flags", "features"):  # x86 says flags, ARM says Features
            flags = set(value.split())
    return model, frozenset(flags)


def has_vnni(isa: Sequence[str] | None = None) -> bool:
    """Whether ``isa`` (ISA flags; default: this CPU's) includes an int8 dot product that accumulates in int32
    (:data:`VNNI_FLAGS`), so that uint8 x int8 kernels cannot saturate."""
    return bool(set(_cpuinfo()[1] if isa is None else isa) & set(VNNI_FLAGS))


def environment_stamp() -> dict[str, Any]:
    """Versions and CPU facts stored with every results file: int8 speed-ups depend on VNNI/AMX.

    Returns:
        A dict with keys ``python, torch, torchvision, torchao, onnxruntime, torch_pruning, openvino, nncf, cpu, isa,
        threads, torch_cpu_capability`` (a version is ``None`` when the package is not installed).
    """
    model, flags = _cpuinfo()
    stamp: dict[str, Any] = {"python": platform.python_version()}
    for key, distributions in _DISTRIBUTIONS.items():
        stamp[key] = _version(distributions)
    stamp["cpu"] = model or platform.processor() or platform.machine() or None
    stamp["isa"] = sorted(flag for flag in ISA_FLAGS if flag in flags)
    stamp["threads"] = torch.get_num_threads()
    try:
        stamp["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        stamp["torch_cpu_capability"] = None
    return stamp
