"""Detector presets: torchvision detection models, built from a small JSON-able spec or from torchvision weights.

Embedded profile: FCOS detectors (anchor-free, single stage) on a ResNet-style trunk made of torchvision's own
``BasicBlock`` with an FPN — narrow enough to train from scratch on two CPU cores. The student has under a
quarter of the teacher's MACs. Coco profile: torchvision's COCO-pretrained detectors through the ``weights=`` API.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import io
import os
import urllib.error
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from compresskit.data.dataset import LabelMap
from compresskit.data.files import atomic_write_bytes
from compresskit.errors import CheckpointError, DownloadError


@dataclass
class DetectorSpec:
    """Everything needed to rebuild an embedded detector's architecture (saved inside every checkpoint).

    ``widths`` are the stem and four stage widths; ``depths`` the BasicBlocks per stage. Pruning rewrites the
    per-layer channel counts separately (see ``compresskit.prune``), so this stays the *design* of a preset.
    """

    widths: list[int] = field(default_factory=lambda: [32, 48, 96, 192, 384])
    depths: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    fpn_channels: int = 96
    head_convs: int = 4
    num_classes: int = 7  # six categories + background slot 0
    image_size: int = 320
    score_thresh: float = 0.05  # low, as COCO evaluation wants the full precision/recall curve
    nms_thresh: float = 0.6
    detections_per_img: int = 100


EMBEDDED_PRESETS: dict[str, DetectorSpec] = {
    "teacher": DetectorSpec(),
    "student": DetectorSpec(widths=[16, 24, 48, 96, 192], depths=[1, 1, 1, 1], fpn_channels=64, head_convs=2),
}

# Single-stage models first: their whole convolutional compute is one exportable core (DESIGN section 4).
COCO_PRESETS: dict[str, str] = {
    "teacher": "retinanet_resnet50_fpn_v2",
    "student": "ssdlite320_mobilenet_v3_large",
    "fcos": "fcos_resnet50_fpn",
    "fasterrcnn": "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobile": "fasterrcnn_mobilenet_v3_large_320_fpn",
}


def _stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False),
                               nn.BatchNorm2d(out_channels))
    layers = [BasicBlock(in_channels, out_channels, stride=2, downsample=downsample)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _trunk(widths: list[int], depths: list[int]) -> nn.Sequential:
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                         nn.ReLU(inplace=True))
    stages = [(f"layer{i + 1}", _stage(widths[i], widths[i + 1], depths[i])) for i in range(4)]
    return nn.Sequential(OrderedDict([("stem", stem), *stages]))


def build_detector(spec: DetectorSpec) -> FCOS:
    """A randomly initialised FCOS detector for ``spec``: trunk strides 4..32, FPN levels P3-P7."""
    trunk = _trunk(spec.widths, spec.depths)
    backbone = BackboneWithFPN(trunk, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                               in_channels_list=spec.widths[2:], out_channels=spec.fpn_channels,
                               extra_blocks=LastLevelP6P7(spec.fpn_channels, spec.fpn_channels))
    head = FCOSHead(spec.fpn_channels, num_anchors=1, num_classes=spec.num_classes, num_convs=spec.head_convs)
    # A fixed square input: the embedded images are already image_size, so the transform never resamples them.
    return FCOS(backbone, num_classes=spec.num_classes, min_size=spec.image_size, max_size=spec.image_size,
                head=head, score_thresh=spec.score_thresh, nms_thresh=spec.nms_thresh,
                detections_per_img=spec.detections_per_img)


def save_checkpoint(path: Path | str, model: nn.Module, spec: DetectorSpec, label_map: LabelMap,
                    meta: dict | None = None, half: bool = False) -> Path:
    """Write ``{"spec", "label_map", "meta", "state_dict"}`` atomically; ``half`` stores float weights as fp16."""
    return write_payload(path, model, {"spec": asdict(spec), "label_map": label_map.to_json(), "meta": meta or {}},
                         half=half)


def write_payload(path: Path | str, model: nn.Module, payload: dict, half: bool = False) -> Path:
    """``payload`` plus the model's ``state_dict`` (fp16 floats when ``half``), written atomically with torch.save.
    Every kit checkpoint goes through here, so each one loads with ``weights_only=True``."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().clone()
             for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({**payload, "state_dict": state}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path | str) -> tuple[FCOS, LabelMap, dict]:
    """Rebuild a detector from a checkpoint written by :func:`save_checkpoint`; returns (model, label map, meta).

    Loads with ``weights_only=True``: a checkpoint can hold tensors and plain data, never code.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        spec = DetectorSpec(**payload["spec"])
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as exc:  # a corrupt or foreign file: say which, never unpickle anything unsafe
        raise CheckpointError(f"{path} is not a compresskit checkpoint ({type(exc).__name__}: {exc})") from None
    model = build_detector(spec)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    model.load_state_dict(state)
    return model.eval(), LabelMap.from_json(payload["label_map"]), payload.get("meta", {})


def shipped_checkpoint(name: str) -> Path:
    """Path of a checkpoint shipped inside the package (``teacher``, ``student``, ``teacher_pruned``)."""
    return Path(str(resources.files("compresskit") / "checkpoints" / f"{name}.pt"))


def checkpoint_spec(path: Path | str) -> DetectorSpec:
    """The architecture spec stored in a checkpoint (safe load, tensors untouched)."""
    return DetectorSpec(**torch.load(path, map_location="cpu", weights_only=True)["spec"])


def load_preset(name: str, checkpoint: Path | str | None = None) -> tuple[FCOS, LabelMap, dict]:
    """The shipped (or the given) embedded detector, in eval mode, with its label map and training metadata."""
    if name not in EMBEDDED_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(EMBEDDED_PRESETS)}")
    return load_checkpoint(checkpoint or shipped_checkpoint(name))


def weights_dir() -> Path:
    """Where torchvision weights are cached: ``COMPRESSKIT_WEIGHTS``, else torch hub's own folder."""
    return Path(os.environ.get("COMPRESSKIT_WEIGHTS", torch.hub.get_dir())).expanduser()


def build_coco_architecture(name: str, **kwargs) -> nn.Module:
    """A coco-profile architecture with random weights (no download): shows params and MACs offline."""
    return get_model(COCO_PRESETS.get(name, name), weights=None, weights_backbone=None, **kwargs).eval()


def load_coco_pretrained(name: str) -> tuple[nn.Module, LabelMap]:
    """A torchvision COCO-pretrained detector and its identity label map (labels are COCO category ids).

    The weights are fetched once into :func:`weights_dir`; without a network and without a cached file this raises
    one :class:`DownloadError` that says how to provide the weights.
    """
    model_name = COCO_PRESETS.get(name, name)
    weights = get_model_weights(model_name).DEFAULT
    torch.hub.set_dir(str(weights_dir()))
    try:
        model = get_model(model_name, weights=weights).eval()
    except (urllib.error.URLError, OSError) as exc:
        cached = weights_dir() / "checkpoints" / Path(weights.url).name
        raise DownloadError(f"torchvision weights for {model_name} are not cached at {cached} and could not be "
                            f"downloaded ({exc}). Connect to the internet once, or copy {Path(weights.url).name} "
                            "into that folder (set COMPRESSKIT_WEIGHTS to use another); the embedded profile "
                            "needs no download.") from None
    names = weights.meta["categories"]  # index = COCO category id; "N/A" marks the holes
    categories = [{"id": i, "name": n} for i, n in enumerate(names) if i > 0 and n != "N/A"]
    return model, LabelMap.identity(categories)


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
