"""Saving and loading structurally pruned detectors without pickling modules (DESIGN section 8).

A pruned model no longer matches its preset's shapes, and ``torch.save(model)`` would pickle code that
``torch.load`` then executes. Instead the file holds the preset's spec, the channel counts of every layer
(plain numbers) and a state_dict; loading builds the preset, reshapes each layer, and loads the tensors with
``weights_only=True``. Embedded-profile FCOS detectors only (they are rebuilt from a :class:`DetectorSpec`).
Introduced in ``02_pruning.ipynb``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from compresskit.data.dataset import LabelMap
from compresskit.errors import CheckpointError
from compresskit.models.core import DetectorCore, example_batch
from compresskit.models.presets import DetectorSpec, build_detector, write_payload

# The attributes that fix each layer type's parameter shapes.
SHAPE_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.Linear: ("in_features", "out_features"),
}


def architecture_of(detector: nn.Module) -> dict[str, dict]:
    """Channel counts of every Conv2d, BatchNorm2d, GroupNorm and Linear, by module name.

    Returns:
        ``{name: {"type": class name, attribute: int, ...}}``: plain JSON-able data.
    """
    architecture = {}
    for name, module in detector.named_modules():
        attributes = SHAPE_ATTRIBUTES.get(type(module))
        if attributes is not None:
            architecture[name] = {"type": type(module).__name__, **{a: int(getattr(module, a)) for a in attributes}}
    return architecture


def save_pruned(path: Path | str, detector: nn.Module, spec: DetectorSpec, label_map: LabelMap,
                meta: dict | None = None, half: bool = False) -> Path:
    """Write ``{"spec", "label_map", "architecture", "meta", "state_dict"}`` atomically.

    Args:
        path: target file (parents are created; a reader never sees a half-written file).
        detector: the pruned embedded FCOS (unstructured masks must be folded in first: ``make_permanent_``).
        spec: the preset it was built from.
        label_map: its label <-> category-id mapping.
        meta: JSON-able extras (pruning config, mAP, ...).
        half: store float tensors as fp16 (half the file; loading converts back to fp32).

    Returns:
        ``path``.
    """
    state = detector.state_dict()
    if any(key.endswith(("_orig", "_mask")) for key in state):
        raise ValueError("the detector still carries torch.nn.utils.prune masks; call make_permanent_ first")
    payload = {"spec": asdict(spec), "label_map": label_map.to_json(), "architecture": architecture_of(detector),
               "meta": meta or {}}
    return write_payload(path, detector, payload, half=half)


def _reshape_(module: nn.Module, shape: dict) -> None:
    """Give ``module`` the saved channel counts, with empty tensors of the matching shapes (filled by loading)."""
    values = {key: shape[key] for key in SHAPE_ATTRIBUTES[type(module)]}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values.values()):
        raise ValueError(f"channel counts must be positive integers, got {values}")
    if shape.get("type") != type(module).__name__:
        raise ValueError(f"saved type {shape.get('type')!r} but the preset has {type(module).__name__}")

    def refill(name: str, *size: int) -> None:
        if getattr(module, name, None) is None:  # e.g. a conv without bias stays without one
            return
        tensor = torch.empty(*size)
        if isinstance(getattr(module, name), nn.Parameter):
            setattr(module, name, nn.Parameter(tensor))
        else:
            setattr(module, name, tensor)  # a registered buffer stays a buffer

    for key, value in values.items():
        setattr(module, key, value)
    if isinstance(module, nn.Conv2d):
        if module.in_channels % module.groups or module.out_channels % module.groups:
            raise ValueError(f"channels {module.in_channels}/{module.out_channels} not divisible by groups")
        refill("weight", module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        refill("bias", module.out_channels)
    elif isinstance(module, nn.BatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            refill(name, module.num_features)
    elif isinstance(module, nn.GroupNorm):
        if module.num_channels % module.num_groups:
            raise ValueError(f"{module.num_channels} channels cannot form {module.num_groups} groups")
        refill("weight", module.num_channels)
        refill("bias", module.num_channels)
    else:
        refill("weight", module.out_features, module.in_features)
        refill("bias", module.out_features)


def load_pruned(path: Path | str) -> tuple[nn.Module, LabelMap, dict]:
    """Rebuild a detector saved by :func:`save_pruned`; returns (detector in eval mode, label map, meta).

    Only tensors and plain data are read (``weights_only=True``); a file that is unreadable, incomplete or
    inconsistent (shapes that do not fit the state_dict or each other) raises :class:`CheckpointError`.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"pruned checkpoint {path} not found") from None
    except Exception as exc:  # corrupt, truncated, or holding objects weights_only refuses
        raise CheckpointError(f"{path} is not a readable pruned checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        spec = DetectorSpec(**payload["spec"])
        detector = build_detector(spec)
        for name, shape in payload["architecture"].items():
            _reshape_(detector.get_submodule(name), shape)
        state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        detector.load_state_dict(state, strict=True)
        detector.eval()
        with torch.inference_mode():  # catches channel counts that fit the tensors but not each other
            DetectorCore(detector)(example_batch(256))  # >= 256 px: every level keeps > 1 value per norm group
        label_map = LabelMap.from_json(payload["label_map"])
    except Exception as exc:
        raise CheckpointError(f"{path} does not describe a loadable pruned detector "
                              f"({type(exc).__name__}: {exc})") from None
    return detector, label_map, payload.get("meta", {})
