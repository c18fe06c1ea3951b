"""Dynamic quantization as the article calls it, its current torchao form, and fp16 (storage vs compute).

The article's one-liner ``quantize_dynamic(model, {Linear, Conv2d}, dtype=qint8)`` looks like it quantizes a
detector, but eager dynamic quantization has kernels for ``Linear`` (and RNNs) only: every ``Conv2d`` is left as
a float ``nn.Conv2d``, and a torchvision FCOS has no ``Linear`` at all, so the result *is* the float detector.
:func:`article_dynamic_quant` runs the call on a copy and reports, by module type, what changed (nothing) and the
warnings torch emits (``torch.ao.quantization`` is deprecated). :func:`torchao_dynamic_quant` is the current API
(torchao's ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``): it too targets ``Linear`` only.

fp16 halves the bytes a user ships (:func:`fp16_storage`) but is not a CPU speed-up on most CPUs: without
AVX512-FP16 or AMX-FP16 there are no fast fp16 convolution kernels. Measured on the teacher core (AVX-512 VNNI,
no AVX512-FP16; torch 2.14, 2 threads): all 82 half convs ran through ``aten::_slow_conv2d_forward`` (the
im2col reference path), about 40x slower than fp32. :func:`fp16_compute` builds a copy that really computes in
half so this is measured with :func:`compresskit.measure.compare_latency`, not assumed.
Introduced in ``03_quantization.ipynb``.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from compresskit.models.core import EndToEndDetector, ExportableCore, head_output_names

ARTICLE_MODULE_TYPES = (nn.Linear, nn.Conv2d)  # the set the article passes to quantize_dynamic


@dataclass
class DynamicQuantResult:
    """What a dynamic-quantization call did to a model.

    Attributes:
        model: the returned model (a copy; the input is untouched).
        warnings: texts of the warnings emitted during the call (deduplicated, in order).
        before: ``{"Conv2d": n, "Linear": m}`` float modules of the input.
        after: the same float counts in the result, plus ``"quantized"``: modules that now hold int8 weights.
        changed: qualified names of the modules that were quantized (empty for a conv detector).
    """

    model: nn.Module
    warnings: list[str] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)


def _is_quantized(module: nn.Module) -> bool:
    """A module that holds quantized weights: a torch.ao quantized class, or a float class whose weight was
    swapped for a quantized tensor (torchao's ``quantize_`` keeps ``nn.Linear`` and replaces its weight)."""
    if type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized")):
        return hasattr(module, "weight")  # not the packed-parameter holder inside a quantized Linear
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return False
    return not weight.dtype.is_floating_point or type(weight) not in (torch.Tensor, nn.Parameter)


def module_type_counts(model: nn.Module) -> dict[str, int]:
    """Counts of float ``Conv2d`` and ``Linear`` modules and of quantized modules in ``model``.

    Returns:
        ``{"Conv2d": ..., "Linear": ..., "quantized": ...}``; a quantized module counts only as quantized.
    """
    counts = Counter({"Conv2d": 0, "Linear": 0, "quantized": 0})
    for module in model.modules():
        if _is_quantized(module):
            counts["quantized"] += 1
        elif isinstance(module, nn.Conv2d):
            counts["Conv2d"] += 1
        elif isinstance(module, nn.Linear):
            counts["Linear"] += 1
    return dict(counts)


def _changed_modules(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if _is_quantized(module)]


def _warning_texts(records: list[warnings.WarningMessage]) -> list[str]:
    texts = [f"{record.category.__name__}: {record.message}" for record in records]
    return list(dict.fromkeys(texts))


def article_dynamic_quant(detector: nn.Module) -> DynamicQuantResult:
    """Run the article's call, ``torch.ao.quantization.quantize_dynamic(copy, {Linear, Conv2d}, dtype=qint8)``,
    on a deep copy of ``detector`` and report what it changed.

    Dynamic quantization has no Conv2d kernel, so every Conv2d stays a float ``nn.Conv2d`` with fp32 weights; a
    conv detector without Linear layers comes back unchanged (same size, same speed, same mAP).

    Args:
        detector: any float model (left untouched).
    Returns:
        A :class:`DynamicQuantResult` with the copy, the captured warning texts and the module counts.
    """
    model = copy.deepcopy(detector).eval()
    before = module_type_counts(model)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")  # a warning shown once per process must still be captured every call
        quantize_dynamic = torch.ao.quantization.quantize_dynamic  # the attribute access warns too
        model = quantize_dynamic(model, set(ARTICLE_MODULE_TYPES), dtype=torch.qint8)
    return DynamicQuantResult(model=model, warnings=_warning_texts(records), before=before,
                              after=module_type_counts(model), changed=_changed_modules(model))


def torchao_dynamic_quant(detector: nn.Module) -> DynamicQuantResult:
    """The current API for the same idea: torchao's ``quantize_(copy, Int8DynamicActivationInt8WeightConfig())``.

    torchao's default filter selects ``nn.Linear`` only (int8 dynamic activations need a matmul kernel), so on a
    conv detector nothing is quantized either; static quantization (``pt2e`` or ONNX Runtime) is what reaches
    the convolutions.

    Args:
        detector: any float model (left untouched).
    Returns:
        A :class:`DynamicQuantResult` (the copy, warnings, counts); quantized Linear modules keep their class and
        hold an int8 weight tensor.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(detector).eval()
    before = module_type_counts(model)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return DynamicQuantResult(model=model, warnings=_warning_texts(records), before=before,
                              after=module_type_counts(model), changed=_changed_modules(model))


def fp16_storage(detector: nn.Module) -> nn.Module:
    """A copy whose parameters and buffers are fp16: what a user ships, at half the bytes of the fp32 state_dict.

    fp16 is a storage format here, not a CPU speed-up: load the state_dict into a float model (or call
    :func:`fp16_to_float`) to run it. Integer buffers (BatchNorm's ``num_batches_tracked``) stay integers.

    Args:
        detector: the float model (left untouched).
    Returns:
        The fp16 copy (cannot run on fp32 inputs; see :func:`fp16_compute` for a runnable half model).
    """
    return copy.deepcopy(detector).half()


def fp16_to_float(model: nn.Module) -> nn.Module:
    """A float32 copy of an fp16 model, e.g. one loaded from an fp16 state_dict (every value rounded once)."""
    return copy.deepcopy(model).float()


class HalfCompute(nn.Module):
    """Runs ``module`` (already half) on half inputs: floating tensors are cast to fp16 on the way in and back to
    fp32 on the way out, so it is a drop-in for the float module in latency and accuracy measurements."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.output_names = getattr(module, "output_names", None)

    @classmethod
    def _cast(cls, value, dtype: torch.dtype):
        """``value`` with every floating tensor inside (tuples, lists, dicts) cast to ``dtype``."""
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (tuple, list)):
            return type(value)(cls._cast(item, dtype) for item in value)
        if isinstance(value, dict):
            return {key: cls._cast(item, dtype) for key, item in value.items()}
        return value

    def forward(self, *args, **kwargs):
        outputs = self.module(*self._cast(args, torch.float16), **self._cast(kwargs, torch.float16))
        return self._cast(outputs, torch.float32)


def fp16_compute(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that computes in half precision on the CPU.

    On CPUs without AVX512-FP16 / AMX-FP16 (most of them) half-precision convolutions have no fast kernels, so
    expect this to be *slower* than fp32: measure it with :func:`compresskit.measure.compare_latency`.

    Args:
        model: a float module with tensor inputs (e.g. a :class:`~compresskit.models.core.ExportableCore`), or a
            torchvision single-stage detector. A detector's NMS has no Half kernel on the CPU, so for a detector
            only its core (backbone + head) is halved and it is returned inside a
            :class:`~compresskit.models.core.EndToEndDetector` whose pre/post-processing stays fp32 (shared with
            ``model``, not copied).
    Returns:
        A :class:`HalfCompute` wrapping a half copy, or a ``EndToEndDetector`` around one for a detector.
    """
    try:
        head_output_names(model)
    except TypeError:
        return HalfCompute(copy.deepcopy(model).eval().half())
    core = copy.deepcopy(ExportableCore(model)).eval().half()
    return EndToEndDetector(model, core=HalfCompute(core))
