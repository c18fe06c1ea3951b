"""Structured channel pruning of detectors with torch-pruning's dependency graph, detection-aware.

Removing output channels of one convolution forces matching removals wherever those channels flow (the next
convolution's inputs, a BatchNorm, a residual sum, every FPN level, a shared head). torch-pruning traces the
**core** (backbone + FPN + head) once and prunes such coupled groups together; the layers whose outputs *are* the
predictions (class logits, box deltas) are ignored, because their channel counts are anchors x classes.
Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import FrozenBatchNorm2d

from compresskit.errors import ConfigError
from compresskit.measure import count_macs
from compresskit.models.core import ExportableCore, example_batch

SINGLE_STAGE = (FCOS, RetinaNet, SSD)
# What detector_parts returns for the embedded FCOS presets (teacher and student): the names the CLI accepts in
# `--part-ratio`, checked before any model is loaded. Other detectors have their own names (see detector_parts).
EMBEDDED_PARTS = ("stem", "layer1", "layer2", "layer3", "layer4", "fpn", "head")


@dataclass
class StructuredConfig:
    """How to prune channels; JSON-able (``dataclasses.asdict``) so it is recorded with every result.

    Attributes:
        ratio: fraction of each prunable group's channels to remove (parts not named in ``part_ratios``).
        part_ratios: per-part ratios keyed by the names of :func:`detector_parts` (e.g. ``{"layer4": 0.7}``).
        global_pruning: rank channels across all layers (of one part) instead of layer by layer.
        round_to: keep channel counts multiples of this (SIMD-friendly); 0 or 1 turns rounding off.
        importance: channel ranking: ``l1``, ``l2``, ``lamp``, ``fpgm`` or ``random`` (a sanity baseline).
        image_size: side of the square example input used to trace the graph and count MACs.
    """

    ratio: float = 0.5
    part_ratios: dict[str, float] | None = None
    global_pruning: bool = False
    round_to: int = 8
    importance: str = "l1"
    image_size: int = 320

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field, its value and the allowed range if one is invalid."""
        _check_ratio("ratio", self.ratio)
        for part, ratio in (self.part_ratios or {}).items():
            _check_ratio(f"part_ratios[{part!r}]", ratio)
        if not _is_int(self.round_to) or self.round_to < 0:
            raise ConfigError(f"StructuredConfig.round_to = {self.round_to!r}: use an int >= 0 (0 or 1: no rounding)")
        if self.importance not in _IMPORTANCES:
            raise ConfigError(f"StructuredConfig.importance = {self.importance!r} is unknown; choose one of "
                              f"{', '.join(_IMPORTANCES)}")
        if not _is_int(self.image_size) or self.image_size < 1:
            raise ConfigError(f"StructuredConfig.image_size = {self.image_size!r}: use a positive int (pixels)")

    def to_json(self) -> dict:
        return asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_ratio(field: str, value: object) -> None:
    # 1.0 would remove every channel of a group; torch-pruning would then fail deep inside with a shape error.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ConfigError(f"StructuredConfig.{field} = {value!r} is out of range; a pruning ratio is the fraction "
                          "of channels removed and must lie in [0, 1)")


_IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


# --------------------------------------------------------------------------------------------- which layers
def prediction_layers(detector: nn.Module) -> list[nn.Module]:
    """The layers whose output channels define the predictions (anchors x classes, box coordinates).

    These become torch-pruning's ``ignored_layers``: their inputs may shrink, their outputs never.

    Args:
        detector: a torchvision FCOS, RetinaNet, SSD or Faster R-CNN (Mask/Keypoint R-CNN count as Faster R-CNN).

    Returns:
        The prediction modules, in head order.
    """
    if isinstance(detector, FCOS):
        head = detector.head
        return [head.classification_head.cls_logits, head.regression_head.bbox_reg,
                head.regression_head.bbox_ctrness]
    if isinstance(detector, RetinaNet):
        return [detector.head.classification_head.cls_logits, detector.head.regression_head.bbox_reg]
    if isinstance(detector, SSD):
        # Every SSD head block ends in a conv whose channels are anchors x (classes or 4) for one feature map.
        return [*detector.head.classification_head.module_list, *detector.head.regression_head.module_list]
    if isinstance(detector, FasterRCNN):
        predictor = detector.roi_heads.box_predictor
        return [detector.rpn.head.cls_logits, detector.rpn.head.bbox_pred, predictor.cls_score, predictor.bbox_pred]
    raise TypeError(f"prediction_layers does not know {type(detector).__name__}; supported are torchvision's FCOS, "
                    "RetinaNet, SSD and Faster R-CNN. For another detector, list its prediction layers yourself.")


def _frozen_layers(detector: nn.Module) -> list[nn.Module]:
    """Everything whose output width must not change: the prediction layers, plus for two-stage detectors the
    whole RPN head, the RoI heads and the FPN's output convs."""
    frozen = prediction_layers(detector)
    if isinstance(detector, FasterRCNN):
        # Only the backbone is traced: the RoI heads see the FPN through MultiScaleRoIAlign and flatten
        # channels x 7 x 7 into a Linear layer, a coupling the dependency graph cannot follow. So the FPN's
        # output width (what the RPN head conv and the RoI heads consume) stays fixed; inside it, all shrinks.
        frozen += [detector.rpn.head, detector.roi_heads]
        fpn = getattr(detector.backbone, "fpn", None)
        if fpn is not None:
            frozen += [fpn.layer_blocks, fpn.extra_blocks]
    return frozen


def detector_parts(detector: nn.Module) -> dict[str, list[nn.Module]]:
    """Named parts of a detector, for per-part ratios and sensitivity scans.

    For the embedded FCOS: ``stem``, ``layer1`` .. ``layer4`` (the trunk's stages), ``fpn`` and ``head`` (the
    classification and regression towers). Other torchvision detectors: the children of ``backbone.body`` (or of
    the backbone when it has no ``body``), ``fpn`` when there is one, and ``head`` for single-stage detectors
    (Faster R-CNN's RPN and RoI heads are never pruned, see :func:`prune_structured_`).

    Args:
        detector: a torchvision detector.

    Returns:
        ``{part name: [modules]}`` in forward order.
    """
    backbone = detector.backbone
    body = getattr(backbone, "body", backbone)
    parts: dict[str, list[nn.Module]] = {name: [child] for name, child in body.named_children()
                                         if name != "fpn" and any(p.numel() for p in child.parameters())}
    if getattr(backbone, "fpn", None) is not None:
        parts["fpn"] = [backbone.fpn]
    if isinstance(detector, (FCOS, RetinaNet)):
        parts["head"] = [detector.head.classification_head.conv, detector.head.regression_head.conv]
    return parts


class _BackboneCore(nn.Module):
    """``batch -> tuple of feature maps``: what structured pruning traces for a two-stage detector."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(batch)
        return tuple(features.values()) if isinstance(features, dict) else (features,)


def prunable_core(detector: nn.Module) -> nn.Module:
    """The tensor module structured pruning acts on: the :class:`ExportableCore` of a single-stage detector,
    the backbone (trunk + FPN) of a two-stage one. It shares its modules with ``detector``."""
    if isinstance(detector, SINGLE_STAGE):
        core = ExportableCore(detector)
    elif isinstance(detector, FasterRCNN):
        core = _BackboneCore(detector.backbone)
    else:
        raise TypeError(f"structured pruning supports FCOS, RetinaNet, SSD and Faster R-CNN, not "
                    f"{type(detector).__name__}")
    # A new module starts in training mode; mirror the detector's flag (only the flag: the modules are shared)
    # so that helpers which switch to eval and back (count_macs) restore the detector's own mode.
    core.training = detector.training
    return core


def core_macs(detector: nn.Module, image_size: int = 320) -> int:
    """MACs of :func:`prunable_core` on :func:`example_batch` ``(image_size)`` (backbone only for two-stage)."""
    return count_macs(prunable_core(detector), example_batch(image_size))


def channel_report(detector: nn.Module) -> list[dict]:
    """Every Conv2d's name, type and channel counts, so a lesson can show what pruning changed.

    Returns:
        ``[{"name", "type", "in_channels", "out_channels", "groups"}]`` in module order.
    """
    return [{"name": name, "type": type(module).__name__, "in_channels": module.in_channels,
             "out_channels": module.out_channels, "groups": module.groups}
            for name, module in detector.named_modules() if isinstance(module, nn.Conv2d)]


# --------------------------------------------------------------------------------------------- normalisations
class _WholeGroupNormPruner(tp.pruner.function.GroupNormPruner):
    """GroupNorm pruning by whole normalisation groups.

    torch-pruning's own GroupNorm handling removes the same position from each of the ``num_groups`` groups, so
    a ``GroupNorm(32, 96)`` can only become 64 or 32 wide; worse, it ranks the 3 positions per group but applies
    ``round_to`` against the full 96 channels, asks to remove 8 of the 3 positions (every channel), and then
    silently skips the group: the head tower keeps its full width. Removing *whole* groups instead keeps every
    surviving channel's group (and so its mean and variance) exactly as before: on the kept channels the pruned
    GroupNorm computes what the original did, just with fewer groups of the same size. This pruner therefore
    reports no channel grouping to torch-pruning (so it ranks plain channels) and refuses indices that split
    a group; :func:`_whole_groups` turns each ranking into whole groups before anything is removed.
    """

    def prune_out_channels(self, layer: nn.GroupNorm, idxs: list) -> nn.Module:
        per_group = layer.num_channels // layer.num_groups
        removed = sorted({int(i) for i in idxs})
        groups = {i // per_group for i in removed}
        if len(removed) != len(groups) * per_group:
            raise ValueError(f"pruning {len(removed)} channels would split groups of {per_group} channels of "
                             f"{layer}; GroupNorm channels are removed in whole groups only")
        super().prune_out_channels(layer, removed)
        layer.num_groups -= len(groups)
        return layer

    prune_in_channels = prune_out_channels

    def get_in_channel_groups(self, layer: nn.GroupNorm) -> int:
        return 1

    def get_out_channel_groups(self, layer: nn.GroupNorm) -> int:
        return 1


class _FrozenBatchNormPruner(tp.pruner.function.BasePruningFunc):
    """torchvision's FrozenBatchNorm2d (pretrained backbones) keeps its statistics in buffers; prune them too."""

    TARGET_MODULES = FrozenBatchNorm2d

    def prune_out_channels(self, layer: FrozenBatchNorm2d, idxs: list) -> nn.Module:
        keep = torch.tensor(sorted(set(range(layer.weight.numel())) - {int(i) for i in idxs}))
        for name in ("weight", "bias", "running_mean", "running_var"):
            setattr(layer, name, getattr(layer, name)[keep].clone())
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: FrozenBatchNorm2d) -> int:
        return layer.weight.numel()

    get_in_channels = get_out_channels


def _whole_groups(pruner: tp.pruner.BasePruner, group, round_to: int):
    """Re-express a ranked removal that touches a GroupNorm as a removal of its least important whole groups.

    The kept width is torch-pruning's kept width rounded to the nearest multiple of both the group size and
    ``round_to`` (at least one such unit). Returns the new pruning group, or None to leave the layer alone.
    """
    norm, requested = next((dep.target.module, idxs) for dep, idxs in group
                           if isinstance(dep.target.module, nn.GroupNorm))
    per_group = norm.num_channels // norm.num_groups
    unit = math.lcm(per_group, max(round_to, 1))
    keep = max(unit, round((norm.num_channels - len(requested)) / unit) * unit)
    if keep >= norm.num_channels:
        return None
    handler = pruner.DG.get_pruner_of_module(norm).prune_out_channels
    full = pruner.DG.get_pruning_group(norm, handler, list(range(norm.num_channels)))
    importance = pruner.estimate_importance(full)  # indexed by the norm's own channels: it is the root
    group_scores = importance.view(norm.num_groups, per_group).mean(dim=1)
    dropped = torch.argsort(group_scores)[: (norm.num_channels - keep) // per_group]
    idxs = sorted(int(g) * per_group + offset for g in dropped for offset in range(per_group))
    whole = pruner.DG.get_pruning_group(norm, handler, idxs)
    return whole if pruner.DG.check_pruning_group(whole) else None


# --------------------------------------------------------------------------------------------- pruning
def _ratio_dict(detector: nn.Module, part_ratios: dict[str, float] | None) -> dict[nn.Module, float]:
    if not part_ratios:
        return {}
    parts = detector_parts(detector)
    unknown = sorted(set(part_ratios) - set(parts))
    if unknown:
        raise KeyError(f"unknown parts {unknown}; {type(detector).__name__} has {list(parts)}")
    # A tuple key makes torch-pruning treat a part as one ranking scope with one ratio.
    return {tuple(parts[name]): float(ratio) for name, ratio in part_ratios.items()}


class ChannelPruner:
    """A torch-pruning ``BasePruner`` over the detector's :func:`prunable_core`, with detection-aware ignores,
    GroupNorm pruned in whole groups, and ``step()`` callable once per entry of ``schedule``.

    Args:
        detector: the detector to prune (its modules are pruned in place by :meth:`step`).
        config: ratios, rounding, importance, example size.
        schedule: cumulative ratios *relative to the original widths*, one per :meth:`step` (default:
            ``[config.ratio]``); part ratios are scaled by the same fractions of the last entry.
    """

    def __init__(self, detector: nn.Module, config: StructuredConfig, schedule: list[float] | None = None) -> None:
        config.validate()  # checked when built, but a field may have been edited since
        if not all(0.0 <= r < 1.0 for r in schedule or []):
            raise ConfigError(f"schedule = {schedule} is out of range; each cumulative pruning ratio must lie in "
                              "[0, 1)")
        final = schedule[-1] if schedule else config.ratio
        fractions = [s / final if final else 0.0 for s in schedule] if schedule else [1.0]

        def scheduler(pruning_ratio: float, steps: int) -> list[float]:
            # torch-pruning indexes this list by step (entry 0 = before the first step) and, as one pruner is
            # reused, measures every step against the widths it first saw, so cumulative targets do not compound.
            return [0.0] + [pruning_ratio * fraction for fraction in fractions]

        self.detector, self.round_to, self.steps = detector, config.round_to, len(fractions)
        self.core = prunable_core(detector)
        was_training = detector.training
        # Tracing follows autograd: parameters frozen by a pretrained recipe would drop out of the graph.
        self._frozen = {name for name, p in self.core.named_parameters() if not p.requires_grad}
        for param in self.core.parameters():
            param.requires_grad_(True)
        try:
            self.pruner = tp.pruner.BasePruner(
                self.core, example_batch(config.image_size), importance=_IMPORTANCES[config.importance](),
                global_pruning=config.global_pruning, pruning_ratio=final,
                pruning_ratio_dict=_ratio_dict(detector, config.part_ratios), iterative_steps=len(fractions),
                iterative_pruning_ratio_scheduler=scheduler, ignored_layers=_frozen_layers(detector),
                round_to=config.round_to if config.round_to > 1 else None,
                customized_pruners={nn.GroupNorm: _WholeGroupNormPruner(),
                                    FrozenBatchNorm2d: _FrozenBatchNormPruner()},
                # torch-pruning's defaults for these are shared mutable dicts: fresh ones keep pruners apart.
                in_channel_groups={}, out_channel_groups={}, num_heads={})
        finally:
            self._refreeze()
            detector.train(was_training)  # tracing switched the shared modules to eval mode

    def _refreeze(self) -> None:
        # By name: pruning replaces the Parameter objects, so references taken earlier would go stale.
        for name, param in self.core.named_parameters():
            param.requires_grad_(name not in self._frozen)

    def step(self) -> None:
        """Prune to the next entry of the schedule (GroupNorm channels only in whole groups)."""
        for group in self.pruner.step(interactive=True):
            if any(isinstance(dep.target.module, nn.GroupNorm) for dep, _ in group):
                group = _whole_groups(self.pruner, group, self.round_to)
                if group is None:
                    continue
            group.prune()
        self._refreeze()


def prune_structured_(detector: nn.Module, config: StructuredConfig | None = None) -> nn.Module:
    """Remove channels from ``detector`` in place: the model really gets narrower (fewer MACs, faster).

    Single-stage detectors (FCOS, RetinaNet, SSD) are traced through their :class:`ExportableCore`, so trunk, FPN
    and head towers all shrink, and only :func:`prediction_layers` keep their outputs. For Faster R-CNN only the
    backbone is pruned and the FPN's output width stays (see ``_frozen_layers``). GroupNorm layers lose whole
    groups, so their width moves in steps of ``lcm(channels per group, round_to)``.

    Args:
        detector: a torchvision FCOS, RetinaNet, SSD or Faster R-CNN; its train/eval mode is preserved.
        config: ratios, rounding, importance (default: :class:`StructuredConfig`).

    Returns:
        ``detector`` itself, pruned.
    """
    config = config or StructuredConfig()
    ChannelPruner(detector, config).step()
    return detector
