"""Unstructured (weight-level) pruning with ``torch.nn.utils.prune``: zeros, not fewer channels.

Zeroed weights still take their place in every dense kernel, so MACs and latency stay the same; only a compressed
file (gzip) gets smaller. Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from compresskit.errors import ConfigError

SCOPES = ("global", "layer")


def whole_model_l1_call(model: nn.Module) -> str:
    """Reproduce the classic mistake ``prune.l1_unstructured(model, name="weight", amount=0.5)`` on a whole model.

    ``torch.nn.utils.prune`` works on *one tensor of one module*; a detector has no ``weight`` of its own, so the
    call fails. It runs on a deep copy, so ``model`` is never touched.

    Args:
        model: a whole detector (anything without its own ``weight``).

    Returns:
        The exception's type and message, for the lesson to print.
    """
    try:
        prune.l1_unstructured(copy.deepcopy(model), name="weight", amount=0.5)
    except Exception as exc:  # the failure *is* the lesson: report it instead of raising
        return f"{type(exc).__name__}: {exc}"
    raise ValueError(f"{type(model).__name__} has its own `weight`, so the call succeeds on it; pass a whole "
                     "detector to see why pruning needs the list of (module, name) pairs")


@dataclass
class UnstructuredConfig:
    """Which weights to zero; JSON-able (``dataclasses.asdict``).

    Attributes:
        amount: fraction of Conv2d weights to set to zero.
        scope: ``"global"`` ranks all Conv2d weights together (layers end up with different sparsities);
            ``"layer"`` removes ``amount`` of every conv separately.
    """

    amount: float = 0.5
    scope: str = "global"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field, its value and the allowed range if one is invalid."""
        amount = self.amount
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not 0.0 <= amount <= 1.0:
            raise ConfigError(f"UnstructuredConfig.amount = {amount!r} is out of range; it is the fraction of "
                              "Conv2d weights set to zero and must lie in [0, 1]")
        if self.scope not in SCOPES:
            raise ConfigError(f"UnstructuredConfig.scope = {self.scope!r} is unknown; choose one of "
                              f"{', '.join(SCOPES)}")

    def to_json(self) -> dict:
        return asdict(self)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [module for module in model.modules() if isinstance(module, nn.Conv2d)]


def prune_unstructured_(model: nn.Module, config: UnstructuredConfig | None = None) -> nn.Module:
    """Zero the smallest-magnitude (L1) weights of every Conv2d of ``model`` in place, head convs included.

    The pruning stays a reparametrisation (``weight_orig`` x ``weight_mask``) until :func:`make_permanent_`.

    Args:
        model: a detector or any module with Conv2d layers.
        config: amount and scope (default: :class:`UnstructuredConfig`).

    Returns:
        ``model`` itself.
    """
    config = config or UnstructuredConfig()
    config.validate()  # checked when built, but a field may have been edited since
    convs = _convs(model)
    amount = float(config.amount)  # torch reads an int amount as a count of weights: amount=1 would zero one
    if config.scope == "global":
        prune.global_unstructured([(conv, "weight") for conv in convs], pruning_method=prune.L1Unstructured,
                                  amount=amount)
    else:
        for conv in convs:
            prune.l1_unstructured(conv, name="weight", amount=amount)
    return model


def make_permanent_(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask into its weight, so the state_dict holds plain ``weight``.

    Without this, a saved model stores both ``weight_orig`` and ``weight_mask`` and is *larger* than before.

    Returns:
        ``model`` itself.
    """
    for module in model.modules():
        for name in [n[: -len("_orig")] for n, _ in module.named_parameters(recurse=False) if n.endswith("_orig")]:
            prune.remove(module, name)
    return model


@torch.no_grad()
def conv_sparsity(model: nn.Module) -> float:
    """Fraction of Conv2d weights that are exactly zero, as the forward pass uses them.

    Works before :func:`make_permanent_` (``weight`` is then the masked tensor torch keeps up to date) and after.
    """
    convs = _convs(model)
    total = sum(conv.weight.numel() for conv in convs)
    zeros = sum(int((conv.weight == 0).sum()) for conv in convs)
    return zeros / total if total else 0.0
