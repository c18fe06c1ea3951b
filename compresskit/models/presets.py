"""Detector presets: torchvision detection models, built from a small JSON-able spec or from torchvision weights.

Embedded profile: FCOS detectors (anchor-free, single stage) on a trunk with an FPN: by default the kit's
ResNet-style trunk made of torchvision's own ``BasicBlock``, narrow enough to train from scratch on two CPU cores
(the student has under a quarter of the teacher's MACs), or any torchvision classification model (see
``trunks``). Coco profile: torchvision's COCO-pretrained detectors through the ``weights=`` API.
Introduced in ``01_baseline_detectors.ipynb``.
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights
from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead

from compresskit.data.dataset import LabelMap
from compresskit.errors import CompressKitError, ConfigError, DownloadError
from compresskit.models.trunks import RESNET_BASIC, build_trunk


# The FCOS head's normalisation layer (channels -> module) by spec name; GroupNorm(32) is torchvision's default.
HEAD_NORMS: dict[str, Callable[[int], nn.Module]] = {"group": partial(nn.GroupNorm, 32), "batch": nn.BatchNorm2d}


@dataclass
class DetectorSpec:
    """Everything needed to rebuild an embedded detector's architecture (saved inside every checkpoint).

    ``backbone`` is ``"resnet_basic"`` (the kit's trunk: ``widths`` are the stem and four stage widths,
    ``depths`` the BasicBlocks per stage) or a torchvision classification model name such as
    ``"mobilenet_v3_large"`` (built with ``weights=None`` and ``backbone_kwargs``; ``widths``/``depths`` unused).
    ``frozen_bn`` builds the trunk with FrozenBatchNorm2d. ``head_norm`` is the FCOS head's normalisation:
    ``"group"`` (torchvision's GroupNorm(32)) or ``"batch"`` (BatchNorm2d, which int8 runtimes fold into the convs;
    see ``compresskit.quantize.deploy_head``). Pruning rewrites the per-layer channel counts separately (stored in
    the checkpoint), so this stays the *design* of a preset.
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
    backbone: str = RESNET_BASIC  # checkpoints written before this field existed load as this
    backbone_kwargs: dict = field(default_factory=dict)
    frozen_bn: bool = False
    head_norm: str = "group"  # checkpoints written before this field existed load as this

    def __post_init__(self) -> None:
        if not isinstance(self.head_norm, str) or self.head_norm not in HEAD_NORMS:
            raise ConfigError(f"head_norm must be one of {sorted(HEAD_NORMS)}, got {self.head_norm!r}")

    @classmethod
    def from_json(cls, data: dict) -> DetectorSpec:
        """The spec of ``dataclasses.asdict(spec)`` (missing fields take their defaults).

        Args:
            data: the JSON-able dict stored in a checkpoint or a results record.

        Returns:
            The spec; unknown keys raise :class:`CompressKitError`.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CompressKitError(f"unknown detector spec fields {unknown}; known are {sorted(known)}")
        return cls(**data)


EMBEDDED_PRESETS: dict[str, DetectorSpec] = {
    "teacher": DetectorSpec(),
    "student": DetectorSpec(widths=[16, 24, 48, 96, 192], depths=[1, 1, 1, 1], fpn_channels=64, head_convs=2),
}

# Single-stage models first: their whole convolutional compute is one exportable core (docs/method.md, "Two profiles").
COCO_PRESETS: dict[str, str] = {
    "teacher": "retinanet_resnet50_fpn_v2",
    "student": "ssdlite320_mobilenet_v3_large",
    "fcos": "fcos_resnet50_fpn",
    "fasterrcnn": "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobile": "fasterrcnn_mobilenet_v3_large_320_fpn",
}


def build_head(spec: DetectorSpec) -> FCOSHead:
    """The FCOS head of ``spec``: classification and regression towers normalised as ``spec.head_norm`` says.

    Args:
        spec: the architecture (see :class:`DetectorSpec`).

    Returns:
        A randomly initialised :class:`FCOSHead` (torchvision's initialisation).
    """
    head = FCOSHead(spec.fpn_channels, num_anchors=1, num_classes=spec.num_classes, num_convs=spec.head_convs)
    if spec.head_norm == "group":  # torchvision's own head, so existing seeds build the same weights
        return head
    # FCOSHead takes no norm_layer, but its two towers do: swap them for towers built with the spec's norm.
    norm_layer = HEAD_NORMS[spec.head_norm]
    head.classification_head = FCOSClassificationHead(spec.fpn_channels, num_anchors=1,
                                                      num_classes=spec.num_classes, num_convs=spec.head_convs,
                                                      norm_layer=norm_layer)
    head.regression_head = FCOSRegressionHead(spec.fpn_channels, num_anchors=1, num_convs=spec.head_convs,
                                              norm_layer=norm_layer)
    return head


def build_detector(spec: DetectorSpec) -> FCOS:
    """A randomly initialised FCOS detector for ``spec``: trunk strides 8/16/32 into an FPN with levels P3-P7.

    Args:
        spec: the architecture (see :class:`DetectorSpec`).

    Returns:
        The detector, in training mode (torch's default for a new module).
    """
    backbone = build_trunk(spec.backbone, widths=spec.widths, depths=spec.depths, fpn_channels=spec.fpn_channels,
                           backbone_kwargs=spec.backbone_kwargs, frozen_bn=spec.frozen_bn)
    head = build_head(spec)
    # A fixed square input: the embedded images are already image_size, so the transform never resamples them.
    return FCOS(backbone, num_classes=spec.num_classes, min_size=spec.image_size, max_size=spec.image_size,
                head=head, score_thresh=spec.score_thresh, nms_thresh=spec.nms_thresh,
                detections_per_img=spec.detections_per_img)


def weights_dir() -> Path:
    """Where torchvision weights are cached: ``COMPRESSKIT_WEIGHTS``, else torch hub's own folder."""
    return Path(os.environ.get("COMPRESSKIT_WEIGHTS", torch.hub.get_dir())).expanduser()


# The trunk stages torchvision trains when it fine-tunes a COCO-pretrained ResNet detector (its
# trainable_backbone_layers=3 default): the stem and layer1 keep their pretrained values.
TRAINED_RESNET_STAGES = ("layer2", "layer3", "layer4")


def freeze_resnet_trunk_(model: nn.Module) -> bool:
    """Prepare a torchvision ResNet-trunk detector (RetinaNet, Faster R-CNN, FCOS) for fine-tuning from pretrained
    weights, in place: the trunk's BatchNorm becomes FrozenBatchNorm2d (statistics and affine kept, as torchvision's
    v1 detectors do whenever weights are loaded: a detection batch of a few images gives statistics too noisy to
    learn from), and the stem and layer1 stop training (:data:`TRAINED_RESNET_STAGES`). Other trunks (SSDlite's
    MobileNet, which torchvision trains whole) are left as they are.

    Returns:
        Whether the model has such a trunk (and was changed).
    """
    from torchvision.ops import FrozenBatchNorm2d

    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None or not all(hasattr(body, stage) for stage in ("conv1", *TRAINED_RESNET_STAGES)):
        return False
    for parent in list(body.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for buffer in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, buffer).copy_(getattr(child, buffer).detach())
                setattr(parent, child_name, frozen)
    for name, param in body.named_parameters():
        if not name.startswith(TRAINED_RESNET_STAGES):
            param.requires_grad_(False)
    return True


def build_coco_architecture(name: str, **kwargs) -> nn.Module:
    """A coco-profile architecture with random weights (no download): shows params and MACs offline."""
    return get_model(COCO_PRESETS.get(name, name), weights=None, weights_backbone=None, **kwargs).eval()


def apply_coco_image_size_(model: nn.Module) -> nn.Module:
    """Set a coco-profile detector's input size from ``COMPRESSKIT_COCO_IMAGE_SIZE``, in place (no-op when unset).

    The transform resizes every image so its shorter side is that size (the longer side at most 4/3 of it), before
    the network sees it. SSD models keep their fixed input: they are built for one size (320 for SSDlite).
    """
    from torchvision.models.detection.ssd import SSD

    from compresskit.settings import coco_image_size

    size = coco_image_size()
    if size is not None and not isinstance(model, SSD):
        model.transform.min_size, model.transform.max_size = (size,), size * 4 // 3
    return model


def coco_weights_verified(name: str) -> bool | None:
    """Whether the cached weights file of coco preset ``name`` is torchvision's own: its SHA-256 starts with the
    digest prefix in the file's official name (``...-a79551df.pth``), the check torch hub makes on download.
    None: nothing is cached. A file that fails is a stand-in (the test suite's random weights) or damaged: its
    accuracy means nothing."""
    import hashlib
    import re

    url_name = Path(get_model_weights(COCO_PRESETS.get(name, name)).DEFAULT.url).name
    cached = weights_dir() / "checkpoints" / url_name
    if not cached.is_file():
        return None
    prefix = re.search(r"-([0-9a-f]{8,})\.pth$", url_name)
    digest = hashlib.sha256()
    with cached.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return prefix is not None and digest.hexdigest().startswith(prefix.group(1))


def load_coco_pretrained(name: str) -> tuple[nn.Module, LabelMap]:
    """A torchvision COCO-pretrained detector and its identity label map (labels are COCO category ids).

    The weights are fetched once into :func:`weights_dir`; without a network and without a cached file this raises
    one :class:`DownloadError` that says how to provide the weights.
    """
    import contextlib
    import io
    import sys

    from compresskit.settings import shown_path

    model_name = COCO_PRESETS.get(name, name)
    weights = get_model_weights(model_name).DEFAULT
    torch.hub.set_dir(str(weights_dir()))
    cached = shown_path(weights_dir() / "checkpoints" / Path(weights.url).name)
    if coco_weights_verified(name) is None:  # said in the kit's words: torch hub's own line names full paths
        print(f"downloading torchvision's {model_name} weights into {cached} (once)", file=sys.stderr, flush=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torch hub's "Downloading: URL to PATH" line
            model = get_model(model_name, weights=weights, progress=False).eval()
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"torchvision weights for {model_name} are not cached at {cached} and could not be "
                            f"downloaded ({exc}). Connect to the internet once, or copy {Path(weights.url).name} "
                            "into that folder (set COMPRESSKIT_WEIGHTS to use another); the embedded profile "
                            "needs no download.") from None
    apply_coco_image_size_(model)
    names = weights.meta["categories"]  # index = COCO category id; "N/A" marks the holes
    categories = [{"id": i, "name": n} for i, n in enumerate(names) if i > 0 and n != "N/A"]
    return model, LabelMap.identity(categories)
