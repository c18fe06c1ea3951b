"""Counting a model's weights and work: parameters, non-zero parameters and multiply-accumulates (MACs).

The same counters serve every technique so that counts are comparable (docs/method.md, "Measurement"); see the package docstring for
the calling convention of :func:`count_macs`. Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


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
    """The package's calling convention: a tuple is unpacked into positional arguments, anything else is one."""
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
