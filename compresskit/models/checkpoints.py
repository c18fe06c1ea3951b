"""The checkpoint format of the kit: plain, pruned and fine-tuned detectors alike (docs/method.md, "Reliability").

A file of the kit's own FCOS detectors holds ``spec`` (the :class:`DetectorSpec`), ``label_map``, ``architecture``
(the channel counts of every Conv2d, BatchNorm2d, FrozenBatchNorm2d, GroupNorm and Linear: plain numbers),
``meta`` and ``state_dict``. Loading builds the spec's detector, reshapes each layer whose stored channel counts
differ (a pruned model), and loads the tensors with ``weights_only=True``: a checkpoint never unpickles code, and a
pruned model needs no ``torch.save(model)``. Files without ``architecture`` (written before it existed) load as the
spec's design. A torchvision detector fine-tuned from its COCO weights (``compresskit train --init
coco-pretrained``) has no spec: its file holds ``torchvision`` (``{"model": name, "num_classes": K}``) instead, and
loads as ``get_model(name, weights=None, num_classes=K)``, reshaped to its ``architecture`` (a pruned one) and
filled with the stored tensors.
Introduced in ``01_baseline_detectors.ipynb``; pruned models in ``02_pruning.ipynb``.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models.detection import FCOS
from torchvision.ops import FrozenBatchNorm2d

from compresskit.data.dataset import LabelMap
from compresskit.data.files import atomic_write_bytes
from compresskit.errors import CheckpointError, CompressKitError
from compresskit.models.core import ExportableCore, example_batch
from compresskit.models.presets import (EMBEDDED_PRESETS, DetectorSpec, build_detector, freeze_resnet_trunk_,
                                        load_coco_pretrained)

# The attributes that fix each layer type's parameter shapes. FrozenBatchNorm2d has no num_features attribute:
# its width is read from its weight buffer.
SHAPE_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    FrozenBatchNorm2d: ("num_features",),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.Linear: ("in_features", "out_features"),
}
DRY_RUN_SIZE = 256  # >= 256 px keeps more than one value per GroupNorm group on the coarsest FPN level


def _shape_of(module: nn.Module) -> dict[str, int]:
    if isinstance(module, FrozenBatchNorm2d):
        return {"num_features": int(module.weight.numel())}
    return {attribute: int(getattr(module, attribute)) for attribute in SHAPE_ATTRIBUTES[type(module)]}


def architecture_of(detector: nn.Module) -> dict[str, dict]:
    """Channel counts of every Conv2d, BatchNorm2d, FrozenBatchNorm2d, GroupNorm and Linear, by module name.

    Args:
        detector: any module (usually a detector, possibly pruned).

    Returns:
        ``{name: {"type": class name, attribute: int, ...}}``: plain JSON-able data.
    """
    return {name: {"type": type(module).__name__, **_shape_of(module)}
            for name, module in detector.named_modules() if type(module) in SHAPE_ATTRIBUTES}


def save_checkpoint(path: Path | str, model: nn.Module, spec: DetectorSpec, label_map: LabelMap,
                    meta: dict | None = None, half: bool = False) -> Path:
    """Write ``{"spec", "label_map", "architecture", "meta", "state_dict"}`` atomically.

    Args:
        path: target file (parents are created; a reader never sees a half-written file).
        model: an embedded FCOS built from ``spec``, pruned or not (unstructured masks must be folded in first:
            ``compresskit.prune.make_permanent_``).
        spec: the design it was built from.
        label_map: its label <-> category-id mapping.
        meta: JSON-able extras (training recipe, mAP, pruning config, ...).
        half: store float tensors as fp16 (half the file; loading converts back to fp32).

    Returns:
        ``path``.
    """
    payload = {"spec": asdict(spec), "label_map": label_map.to_json(), "architecture": architecture_of(model),
               "meta": meta or {}, "state_dict": _stored_state(path, model, half)}
    return _write(path, payload)


def save_torchvision_checkpoint(path: Path | str, model: nn.Module, model_name: str, num_classes: int,
                                label_map: LabelMap, meta: dict | None = None, half: bool = False) -> Path:
    """Write a torchvision detector as ``{"torchvision", "label_map", "meta", "state_dict"}`` atomically.

    For detectors that are not the kit's FCOS (no :class:`DetectorSpec`), e.g. a COCO-pretrained SSDlite
    fine-tuned on a dataset of your own. :func:`load_checkpoint` rebuilds them by name.

    Args:
        path: target file (parents are created; a reader never sees a half-written file).
        model: the detector, as ``torchvision.models.get_model(model_name, num_classes=num_classes)`` builds it.
        model_name: its torchvision name (``ssdlite320_mobilenet_v3_large``, ``retinanet_resnet50_fpn_v2``, ...).
        num_classes: its classifier width (background slot included).
        label_map: its label <-> category-id mapping.
        meta: JSON-able extras (training recipe, mAP, ...).
        half: store float tensors as fp16 (half the file; loading converts back to fp32).

    Returns:
        ``path``.
    """
    from torchvision.ops import FrozenBatchNorm2d

    description = {"model": model_name, "num_classes": int(num_classes)}
    if any(isinstance(module, FrozenBatchNorm2d) for module in model.modules()):
        description["frozen_trunk"] = True  # rebuilt with freeze_resnet_trunk_, so its tensors load strictly
    payload = {"torchvision": description, "label_map": label_map.to_json(), "architecture": architecture_of(model),
               "meta": meta or {}, "state_dict": _stored_state(path, model, half)}
    return _write(path, payload)


def _stored_state(path: Path | str, model: nn.Module, half: bool) -> dict[str, torch.Tensor]:
    """``model``'s tensors as written to ``path``: detached copies, floats in fp16 when ``half``."""
    state = model.state_dict()
    if any(key.endswith(("_orig", "_mask")) for key in state):
        raise CheckpointError(f"cannot save {path}: the model still carries torch.nn.utils.prune masks; call "
                              "compresskit.prune.make_permanent_(model) first")
    return {key: (value.half() if half and value.is_floating_point() else value).detach().clone()
            for key, value in state.items()}


def _write(path: Path | str, payload: dict) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _refill(module: nn.Module, name: str, *size: int) -> None:
    """Replace ``module.name`` by an empty tensor of ``size`` (loading fills it), keeping its kind."""
    current = getattr(module, name, None)
    if current is None:  # e.g. a conv without bias stays without one
        return
    tensor = torch.empty(*size, dtype=current.dtype)
    setattr(module, name, nn.Parameter(tensor, requires_grad=current.requires_grad)
            if isinstance(current, nn.Parameter) else tensor)  # a registered buffer stays a buffer


def _reshape_(module: nn.Module, shape: dict) -> None:
    """Give ``module`` the stored channel counts, with empty tensors of the matching shapes."""
    if not isinstance(shape, dict) or shape.get("type") != type(module).__name__:
        raise ValueError(f"stored type {shape.get('type') if isinstance(shape, dict) else shape!r} but the spec "
                         f"builds {type(module).__name__}")
    values = {key: shape.get(key) for key in SHAPE_ATTRIBUTES[type(module)]}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values.values()):
        raise ValueError(f"channel counts must be positive integers, got {values}")
    if values == _shape_of(module):
        return
    if isinstance(module, FrozenBatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _refill(module, name, values["num_features"])
        return
    for key, value in values.items():
        setattr(module, key, value)
    if isinstance(module, nn.Conv2d):
        if module.in_channels % module.groups or module.out_channels % module.groups:
            raise ValueError(f"channels {module.in_channels}/{module.out_channels} not divisible by groups")
        _refill(module, "weight", module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        _refill(module, "bias", module.out_channels)
    elif isinstance(module, nn.BatchNorm2d):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _refill(module, name, module.num_features)
    elif isinstance(module, nn.GroupNorm):
        if module.num_channels % module.num_groups:
            raise ValueError(f"{module.num_channels} channels cannot form {module.num_groups} groups")
        _refill(module, "weight", module.num_channels)
        _refill(module, "bias", module.num_channels)
    else:
        _refill(module, "weight", module.out_features, module.in_features)
        _refill(module, "bias", module.out_features)


# What a file describes its detector by: the kit's FCOS design, or a torchvision detector's name.
CHECKPOINT_KINDS = ("spec", "torchvision")


def _unreadable_reason(path: Path | str, exc: Exception) -> str:
    """Why ``torch.load`` refused a file, in the kit's words. Never torch's own advice to load with
    ``weights_only=False``: for a file from elsewhere that would run whatever code its pickle holds."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    if not start.startswith((b"PK", b"\x80")):  # a torch file is a zip archive (or, before torch 1.6, a pickle)
        return (f"it is not a PyTorch file at all (it starts with {start!r}); pass the .pt file that "
                "compresskit train, prune or distill wrote")
    text = str(exc)
    if "weights_only" in text or "Unpickl" in type(exc).__name__:
        return ("it holds Python objects besides tensors and plain data, which the kit never loads (unpickling "
                "them can run code); pass a checkpoint that compresskit train, prune or distill wrote")
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
    return f"it is damaged or truncated ({type(exc).__name__}: {first}); copy it again or retrain"


def _read(path: Path | str) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as exc:  # corrupt, truncated, or holding objects weights_only refuses
        raise CheckpointError(f"{path} is not a compresskit checkpoint: {_unreadable_reason(path, exc)}") from None
    found = payload if isinstance(payload, dict) else {}
    kind = next((key for key in CHECKPOINT_KINDS if key in found), "spec")  # neither: name the usual one
    missing = [key for key in (kind, "label_map", "state_dict") if key not in found]
    if missing:
        raise CheckpointError(f"{path} is not a compresskit checkpoint (missing {missing}); write checkpoints "
                              "with compresskit.models.save_checkpoint (a torchvision detector: "
                              "save_torchvision_checkpoint, which stores 'torchvision' in place of 'spec')")
    return payload


def checkpoint_design(path: Path | str) -> DetectorSpec | str:
    """What a checkpoint's detector is built from: the :class:`DetectorSpec` of the kit's FCOS, or the torchvision
    model name of a torchvision detector (what :func:`~compresskit.engine.ship_checkpoint` takes back)."""
    payload = _read(path)
    if "spec" in payload:
        return checkpoint_spec(path)
    name = (payload.get("torchvision") or {}).get("model") if isinstance(payload.get("torchvision"), dict) else None
    if not isinstance(name, str):
        raise CheckpointError(f"{path} names no detector design; re-create it with compresskit train")
    return name


def checkpoint_spec(path: Path | str) -> DetectorSpec:
    """The :class:`DetectorSpec` stored in a checkpoint (safe load, no model built).

    Only the kit's FCOS checkpoints have one: a torchvision detector's checkpoint raises :class:`CheckpointError`.
    """
    payload = _read(path)
    if "spec" not in payload:
        raise CheckpointError(f"{path} holds a torchvision detector (written by save_torchvision_checkpoint, e.g. "
                              "`compresskit train --init coco-pretrained`), not one of the kit's FCOS designs, so "
                              "it has no DetectorSpec; load it with load_checkpoint, and prune, distil or convert "
                              "a checkpoint of the kit's own presets instead")
    try:
        return DetectorSpec.from_json(payload["spec"])
    except Exception as exc:  # unknown fields, or not a mapping at all
        raise CheckpointError(f"{path} holds an unreadable detector spec ({type(exc).__name__}: {exc})") from None


def load_checkpoint(path: Path | str) -> tuple[nn.Module, LabelMap, dict]:
    """Rebuild the detector of a checkpoint written by :func:`save_checkpoint` (or by an earlier kit version) or
    by :func:`save_torchvision_checkpoint`.

    Only tensors and plain data are read (``weights_only=True``). For the kit's FCOS, the spec's detector is built,
    every layer whose stored channel counts differ is reshaped, the weights are loaded strictly, and a dry run
    checks that the layers fit each other. A torchvision detector is built by its stored name and class count (a
    detection model of torchvision only) and its weights are loaded strictly.

    Args:
        path: the checkpoint file.

    Returns:
        ``(detector in eval mode with fp32 weights, label map, meta)``. A missing, unreadable, tampered or
        inconsistent file raises :class:`CheckpointError` naming the file and the reason.
    """
    payload = _read(path)
    torchvision_kind = "spec" not in payload
    try:
        if torchvision_kind:
            detector = _build_torchvision(payload["torchvision"])
            dry_run = _reshape_all_(detector, payload.get("architecture"))  # a pruned torchvision detector
        else:
            detector = build_detector(DetectorSpec.from_json(payload["spec"]))
            _reshape_all_(detector, payload.get("architecture"))
            dry_run = True  # always, for the kit's own designs: cheap at their size
        state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
        detector.load_state_dict(state, strict=True)
        detector.eval()
        if dry_run:
            with torch.inference_mode():  # catches channel counts that fit the tensors but not each other
                ExportableCore(detector)(example_batch(DRY_RUN_SIZE))
        label_map = LabelMap.from_json(payload["label_map"])
    except Exception as exc:
        writer = "save_torchvision_checkpoint" if torchvision_kind else "save_checkpoint"
        raise CheckpointError(f"{path} does not describe a loadable detector ({type(exc).__name__}: {exc}); "
                              f"re-create it with compresskit.models.{writer}") from None
    meta = payload.get("meta") or {}
    return detector, label_map, meta


def _reshape_all_(detector: nn.Module, architecture: dict | None) -> bool:
    """Give every layer its stored channel counts (empty tensors: loading fills them); True when any changed
    (a pruned detector). Files without ``architecture`` keep the design's counts."""
    if architecture is not None and not isinstance(architecture, dict):
        raise ValueError(f"the architecture entry must be a mapping, got {type(architecture).__name__}")
    before = architecture_of(detector)
    for name, shape in (architecture or {}).items():
        module = detector.get_submodule(name)
        if type(module) not in SHAPE_ATTRIBUTES:
            raise ValueError(f"{name} is a {type(module).__name__}, which has no stored channel counts")
        _reshape_(module, shape)
    return architecture_of(detector) != before


def _build_torchvision(description: dict) -> nn.Module:
    """``get_model(name, weights=None, num_classes=K)`` for a stored ``{"model", "num_classes"}``, random weights.

    The name must be one of torchvision's detection models: a tampered file cannot make the loader build (or
    download) anything else.
    """
    if not isinstance(description, dict):
        raise ValueError(f"the torchvision entry must be a mapping, got {type(description).__name__}")
    name, num_classes = description.get("model"), description.get("num_classes")
    known = tv_models.list_models(module=tv_models.detection)
    if name not in known:
        raise ValueError(f"{name!r} is not a torchvision detection model; known are {known}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background + one class), got {num_classes!r}")
    model = tv_models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
    if description.get("frozen_trunk") is True:
        freeze_resnet_trunk_(model)
    return model


def shipped_checkpoint(name: str) -> Path:
    """Path of a checkpoint shipped inside the package (``teacher``, ``student``, ``teacher_pruned``)."""
    return Path(str(resources.files("compresskit") / "checkpoints" / f"{name}.pt"))


def load_preset(name: str, checkpoint: Path | str | None = None) -> tuple[FCOS, LabelMap, dict]:
    """The shipped embedded detector ``name`` (or the given checkpoint of it, which may be a torchvision detector
    fine-tuned with ``--init coco-pretrained``), in eval mode, with its label map and training metadata."""
    if name not in EMBEDDED_PRESETS:
        raise CompressKitError(f"unknown preset {name!r}; choose one of {sorted(EMBEDDED_PRESETS)}")
    model, label_map, meta = load_checkpoint(checkpoint or shipped_checkpoint(name))
    written_as = meta.get("preset")
    if checkpoint is not None and isinstance(written_as, str) and written_as != name:
        # Refused rather than followed: every record and printout would name the wrong preset.
        raise CompressKitError(f"{checkpoint} holds a {written_as} detector, not a {name}: pass --preset "
                               f"{written_as} with it (or the {name}'s own checkpoint)")
    return model, label_map, meta


def load_detector(name: str, profile: str | None = None) -> tuple[nn.Module, LabelMap, dict]:
    """Preset ``name`` (``teacher``/``student``) of a data profile (default: ``COMPRESSKIT_PROFILE``), in eval mode.

    ``embedded``: the shipped checkpoint, its label map and training metadata. ``coco``: torchvision's
    COCO-pretrained detector, the identity label map and empty metadata (torchvision documents its training).
    """
    from compresskit.settings import profile as active_profile

    if (profile or active_profile()) == "embedded":
        return load_preset(name)
    model, label_map = load_coco_pretrained(name)
    return model, label_map, {}


# The tensors whose shape and meaning follow the category list, by state-dict name: the class-logit conv of FCOS
# and RetinaNet, and the final conv of each level of SSDlite's classification head (its ``.0.`` block is a
# depthwise conv + norm over features, the same for any category list).
CLASS_SIZED = re.compile(r"cls_logits|^head\.classification_head\.module_list\.\d+\.1\.")


def coco_slots(label_map: LabelMap, pretrained: LabelMap) -> list[int] | None:
    """For each class slot of ``label_map`` (background first), the slot of the same category in a detector that
    predicts ``pretrained``'s labels; None unless every category of ``label_map`` is one of ``pretrained``'s,
    matched by id *and* name (a dataset of your own whose ids happen to be COCO's gets fresh slots)."""
    known = dict(zip(pretrained.category_ids, zip(pretrained.labels, pretrained.names)))
    slots = [0] * label_map.num_classes
    for label, category_id, name in zip(label_map.labels, label_map.category_ids, label_map.names):
        if known.get(category_id, (None, None))[1] != name:
            return None
        slots[label] = known[category_id][0]
    return slots


def carry_class_slots_(target: nn.Module, source: nn.Module, slots: list[int]) -> list[str]:
    """Copy, in place, the class-sized tensors (:data:`CLASS_SIZED`) of ``source`` into ``target`` slot by slot:
    target slot ``i`` takes source slot ``slots[i]`` for every anchor (the outputs are anchors x classes, anchor
    by anchor, in torchvision's RetinaNet and SSD heads). Returns the names of the tensors copied."""
    source_state, carried = source.state_dict(), []
    index = torch.tensor(slots)
    for name, value in target.state_dict().items():
        if not CLASS_SIZED.search(name) or name not in source_state:
            continue
        origin = source_state[name]
        anchors = value.shape[0] // len(slots)
        if value.shape[0] != anchors * len(slots) or origin.shape[0] % anchors or origin.shape[1:] != value.shape[1:]:
            continue  # not laid out as anchors x classes: it keeps its fresh start
        per_anchor = origin.reshape(anchors, origin.shape[0] // anchors, *origin.shape[1:])
        value.copy_(per_anchor.index_select(1, index).reshape(value.shape))
        carried.append(name)
    return carried


def transfer_weights_(target: nn.Module, source: nn.Module, same_categories: bool) -> dict[str, list[str]]:
    """Copy into ``target``, in place, every tensor of ``source`` with the same name and shape, except the
    class-sized ones (:data:`CLASS_SIZED`) when the categories differ (``same_categories`` False): a class slot of
    one dataset means nothing in another, even where the counts match (SSDlite's anchors x classes can even equal
    its anchors x 4 box outputs). What is not copied keeps ``target``'s fresh initialisation (for FCOS's class
    logits, the bias that starts every class at a low prior).

    Returns:
        ``{"kept": [...], "reinitialised": [...]}``, names of the state-dict entries.
    """
    source_state, report = source.state_dict(), {"kept": [], "reinitialised": []}
    target_state = target.state_dict()
    for name, value in target_state.items():
        fits = name in source_state and source_state[name].shape == value.shape
        if fits and (same_categories or not CLASS_SIZED.search(name)):
            value.copy_(source_state[name])
            report["kept"].append(name)
        else:
            report["reinitialised"].append(name)
    return report
