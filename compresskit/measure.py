"""One measuring harness for every variant: parameters, MACs, serialized size, CPU latency, environment.

Every lesson measures through these functions so that numbers from different techniques are comparable
(DESIGN §7). Introduced in ``01_baseline.ipynb``.

Calling convention shared by :func:`count_macs` and :func:`measure_latency`: a ``tuple`` of inputs is
unpacked into positional arguments; anything else (a batch tensor for a core, a *list* of image tensors for a
torchvision detector, a NumPy array for an ONNX Runtime lambda) is passed as the single argument.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from compresskit.models.core import onnxruntime_session  # noqa: F401  (one session builder, re-exported here)

GZIP_LEVEL = 6  # gzip's own default: what `gzip file` gives a user, so the reported size is reproducible
ISA_FLAGS = (
    "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd",
)
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "torchao": ("torchao",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "torch_pruning": ("torch-pruning", "torch_pruning"),
}


# --------------------------------------------------------------------------------------------- parameters
def _effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Each distinct weight of ``model`` once, as the values the forward pass actually uses."""
    seen: set[int] = set()
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights (e.g. shared heads) are stored and shipped once
                continue
            seen.add(id(param))
            tensor = param.detach()
            # torch.nn.utils.prune keeps the dense `<name>_orig`; the weight in use is orig * mask.
            if name.endswith("_orig"):
                mask = getattr(module, name[: -len("_orig")] + "_mask", None)
                if isinstance(mask, torch.Tensor):
                    tensor = tensor * mask
            tensors.append(tensor)
        # Quantized modules hold packed weights behind `weight()` / `bias()` methods, not Parameters.
        for accessor in ("weight", "bias"):
            method = getattr(type(module), accessor, None)
            if callable(method) and not isinstance(method, property):
                try:
                    value = getattr(module, accessor)()
                except Exception:  # a method with that name but another meaning: not a packed weight
                    continue
                if isinstance(value, torch.Tensor) and id(value) not in seen:
                    seen.add(id(value))
                    tensors.append(value)
    return tensors


def count_params(model: nn.Module) -> int:
    """Number of weights of ``model``, each shared parameter counted once.

    Args:
        model: any module, including one pruned with ``torch.nn.utils.prune`` or dynamically quantized.

    Returns:
        The element count of all distinct parameters (pruned zeros included).
    """
    return int(sum(tensor.numel() for tensor in _effective_tensors(model)))


def _count_nonzero(tensor: torch.Tensor) -> int:
    # A quantized zero is stored as the zero point, and torchao's tensor subclasses lack count_nonzero.
    if tensor.is_quantized or (type(tensor) not in (torch.Tensor, nn.Parameter) and hasattr(tensor, "dequantize")):
        tensor = tensor.dequantize()
    return int(torch.count_nonzero(tensor))


def count_nonzero_params(model: nn.Module) -> int:
    """Number of weights that are not exactly zero, as the forward pass sees them.

    Args:
        model: any module; for ``torch.nn.utils.prune`` reparametrisations the effective
            ``weight_orig * weight_mask`` is counted, so pruning shows even before ``prune.remove``.

    Returns:
        The count of non-zero elements over all distinct parameters.
    """
    return int(sum(_count_nonzero(tensor) for tensor in _effective_tensors(model)))


# --------------------------------------------------------------------------------------------- MACs
def _as_args(inputs: Any) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def count_macs(model_or_fn: nn.Module | Callable[..., Any], example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass, from ``torch.utils.flop_counter.FlopCounterMode``.

    The same counter serves every model so MACs are comparable across techniques. It counts the matrix
    work of convolutions, linear layers and matmuls (FLOPs / 2); element-wise ops, activations,
    normalisation and NMS are not counted. A module in training mode is switched to eval for the count.

    Args:
        model_or_fn: an ``nn.Module`` or any callable running torch ops.
        example_inputs: a tuple of positional inputs, or a single input (a batch tensor for a core,
            a list of image tensors for a torchvision detector).

    Returns:
        MACs as an integer.
    """
    from torch.utils.flop_counter import FlopCounterMode

    # Remember every submodule's own flag: a wrapper such as a detector core shares its modules with the detector,
    # and a blanket .train() afterwards would leave the detector's BatchNorms updating their statistics.
    modes = {module: module.training for module in model_or_fn.modules()} if isinstance(model_or_fn, nn.Module) \
        else {}
    if any(modes.values()):
        model_or_fn.eval()  # detectors take targets in training mode; MACs are an inference figure
    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model_or_fn(*_as_args(example_inputs))
    finally:
        for module, training in modes.items():
            module.training = training
    return int(counter.get_total_flops()) // 2


# --------------------------------------------------------------------------------------------- size
class SizeInfo(NamedTuple):
    """Bytes of a serialized artifact and of its gzip (level 6) compression."""

    bytes: int
    gzip_bytes: int


def serialized_size(obj: nn.Module | Mapping[str, Any] | str | os.PathLike | bytes) -> SizeInfo:
    """Size of what a user would ship, raw and gzip-compressed at level 6.

    Unstructured sparsity does not shrink the raw file (zeros are still stored) but shows in the gzip
    size. Call ``torch.nn.utils.prune.remove`` first: otherwise ``weight_orig`` and ``weight_mask`` are
    both saved and the file grows.

    Args:
        obj: an ``nn.Module`` (its ``state_dict`` is saved with ``torch.save``), a state_dict, a path to a
            file (e.g. an ``.onnx`` export) or raw bytes.

    Returns:
        ``SizeInfo(bytes, gzip_bytes)``.
    """
    if isinstance(obj, (str, os.PathLike)):
        payload = Path(obj).read_bytes()
    elif isinstance(obj, (bytes, bytearray)):
        payload = bytes(obj)
    else:
        state = obj.state_dict() if isinstance(obj, nn.Module) else obj
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
    # mtime=0 keeps the gzip header, and so the measured size, identical between runs.
    compressed = gzip.compress(payload, compresslevel=GZIP_LEVEL, mtime=0)
    return SizeInfo(bytes=len(payload), gzip_bytes=len(compressed))


# --------------------------------------------------------------------------------------------- latency
@dataclass(frozen=True)
class Latency:
    """Timing summary of one measured callable (milliseconds)."""

    median_ms: float
    p90_ms: float
    runs: int
    threads: int
    batch: int

    def as_record(self, input_hw: Sequence[int]) -> dict[str, Any]:
        """The ``latency_ms`` entry of a results record (DESIGN §5).

        Args:
            input_hw: the (height, width) of the measured input.

        Returns:
            ``{"median", "p90", "runs", "batch", "threads", "input": [h, w]}`` with times rounded to 3 decimals.
        """
        height, width = (int(side) for side in input_hw)
        return {"median": round(self.median_ms, 3), "p90": round(self.p90_ms, 3), "runs": self.runs,
                "batch": self.batch, "threads": self.threads, "input": [height, width]}


def _infer_batch(args: tuple) -> int:
    first = args[0] if args else None
    if isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim >= 4:
        return int(first.shape[0])
    if isinstance(first, (list, tuple)):  # a detector's list of images
        return len(first)
    return 1


def measure_latency(fn: Callable[..., Any], inputs: Any, *, warmup: int = 5, runs: int = 30,
                    threads: int = 2, batch: int | None = None) -> Latency:
    """Time ``fn(*inputs)`` on the CPU: warm-up calls, then ``runs`` timed calls; median and p90.

    torch's intra-op thread count is fixed to ``threads`` for the measurement and restored afterwards.
    Flush-denormal mode is switched on (and left on: torch offers no getter) because denormal floats in
    pruned or fine-tuned weights can make CPU timings erratic. For ONNX Runtime the thread count is the
    session's own: build it with :func:`onnxruntime_session` using the same ``threads``.

    Args:
        fn: the callable to time (a model, a compiled model, or a lambda calling an ORT session).
        inputs: a tuple of positional inputs or a single input (see the module docstring).
        warmup: untimed calls first (caches, allocator, torch.compile, ORT's first-run setup).
        runs: timed calls; DESIGN §7 asks for at least 30.
        threads: torch intra-op threads during the measurement.
        batch: batch size to record; inferred from a 4-D first input or a list of images when omitted.

    Returns:
        A :class:`Latency`.
    """
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0 and threads >= 1, got {runs=}, {warmup=}, {threads=}")
    args = _as_args(inputs)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    timings_ms: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                fn(*args)
            for _ in range(runs):
                start = time.perf_counter()
                fn(*args)
                timings_ms.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous_threads)
    return Latency(median_ms=float(statistics.median(timings_ms)),
                   p90_ms=float(np.percentile(timings_ms, 90)), runs=runs, threads=threads,
                   batch=batch if batch is not None else _infer_batch(args))


# --------------------------------------------------------------------------------------------- environment
def _version(candidates: Sequence[str]) -> str | None:
    for name in candidates:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpuinfo() -> tuple[str | None, set[str]]:
    """CPU model name and feature flags from /proc/cpuinfo (Linux); (None, empty) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model"):
            model = value.strip() or None
        elif not flags and key in ("flags", "features"):  # x86 says flags, ARM says Features
            flags = set(value.split())
    return model, flags


def environment_stamp() -> dict[str, Any]:
    """Versions and CPU facts stored with every results file: int8 speed-ups depend on VNNI/AMX.

    Returns:
        A dict with keys ``python, torch, torchvision, torchao, onnxruntime, torch_pruning, cpu, isa,
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


# --------------------------------------------------------------------------------------------- tables
def _nested(record: Mapping[str, Any], *keys: str) -> Any:
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _scaled(key: str, factor: float, decimals: int) -> Callable[[Mapping[str, Any]], str]:
    def cell(record: Mapping[str, Any]) -> str:
        value = _nested(record, *key.split("."))
        return "-" if value is None else f"{value * factor:.{decimals}f}"
    return cell


def _text(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda record: "-" if record.get(key) in (None, "") else str(record[key])


# name -> (header, right-aligned?, cell formatter). mAP x100 because COCO papers report it that way.
TABLE_COLUMNS: dict[str, tuple[str, bool, Callable[[Mapping[str, Any]], str]]] = {
    "id": ("id", False, _text("id")),
    "model": ("model", False, _text("model")),
    "technique": ("technique", False, _text("technique")),
    "runtime": ("runtime", False, _text("runtime")),
    "variant": ("variant", False, _text("variant")),
    "map": ("mAP", True, _scaled("map", 100, 1)),
    "map50": ("mAP50", True, _scaled("map50", 100, 1)),
    "map75": ("mAP75", True, _scaled("map75", 100, 1)),
    "params": ("params M", True, _scaled("params", 1e-6, 2)),
    "nonzero_params": ("nonzero M", True, _scaled("nonzero_params", 1e-6, 2)),
    "macs": ("MACs G", True, _scaled("macs", 1e-9, 2)),
    "size_bytes": ("size MB", True, _scaled("size_bytes", 1e-6, 2)),
    "size_gzip_bytes": ("gzip MB", True, _scaled("size_gzip_bytes", 1e-6, 2)),
    "latency": ("latency ms", True, _scaled("latency_ms.median", 1, 2)),
}
DEFAULT_COLUMNS = ("id", "technique", "runtime", "map", "params", "nonzero_params", "macs", "size_bytes",
                   "size_gzip_bytes", "latency")


def format_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """A fixed-width text table of results records for a terminal or a notebook's output.

    Args:
        records: results records (see :mod:`compresskit.report`); missing values show as ``-``.
        columns: names from ``TABLE_COLUMNS``: mAP shown x100 with 1 decimal, params in millions,
            MACs in G, sizes in MB, latency as the median in ms.

    Returns:
        The table as one string, header and rule first.
    """
    unknown = [name for name in columns if name not in TABLE_COLUMNS]
    if unknown:
        raise ValueError(f"unknown table columns {unknown}; choose from {', '.join(TABLE_COLUMNS)}")
    specs = [TABLE_COLUMNS[name] for name in columns]
    rows = [[cell(record) for _, _, cell in specs] for record in records]
    widths = [max([len(header)] + [len(row[index]) for row in rows]) for index, (header, _, _) in enumerate(specs)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(text.rjust(width) if right else text.ljust(width)
                         for text, width, (_, right, _) in zip(cells, widths, specs)).rstrip()

    header = line([header for header, _, _ in specs])
    return "\n".join([header, "-" * len(header)] + [line(row) for row in rows])
