"""The trunks on offer and the detector design around them: the teacher's FPN, FCOS head and input size on each.

Every entry of :data:`BACKBONES` names a torchvision classification model (or the kit's own trunk) that
``compresskit.models.trunks`` turns into a stride 8/16/32 feature extractor; only the trunk changes, so a
comparison of backbones measures the trunks alone. Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torchvision.models import get_model_weights
from torchvision.models.detection import FCOS

from compresskit.errors import ConfigError, DownloadError
from compresskit.models import EMBEDDED_PRESETS, RESNET_BASIC, DetectorSpec, build_detector
from compresskit.models.presets import weights_dir
from compresskit.settings import shown_path


@dataclass(frozen=True)
class BackboneChoice:
    """One trunk on offer: what to build and what it accepts.

    ``model`` is a torchvision classification model name (or ``"resnet_basic"``, the kit's trunk), ``kwargs`` its
    extra constructor arguments, ``width_mult`` whether it takes a width multiplier, ``norm_layer`` whether its
    constructor takes a ``norm_layer`` (so its BatchNorm can be frozen).
    """

    model: str
    description: str
    kwargs: dict = field(default_factory=dict)
    width_mult: bool = False
    norm_layer: bool = True


BACKBONES: dict[str, BackboneChoice] = {
    "resnet_basic": BackboneChoice(RESNET_BASIC, "the teacher's trunk: BasicBlocks, dense 3x3", width_mult=True),
    "mobilenet_v2": BackboneChoice("mobilenet_v2", "inverted residuals (the article's)", width_mult=True),
    "mobilenet_v3_large": BackboneChoice("mobilenet_v3_large", "searched blocks, SE, hardswish", width_mult=True),
    "mobilenet_v3_small": BackboneChoice("mobilenet_v3_small", "MobileNetV3's smaller search result", width_mult=True),
    "shufflenet_v2_x1_0": BackboneChoice("shufflenet_v2_x1_0", "channel split and shuffle", norm_layer=False),
    "efficientnet_b0": BackboneChoice("efficientnet_b0", "MBConv blocks with SE and SiLU, compound scaled"),
    "regnet_x_400mf": BackboneChoice("regnet_x_400mf", "grouped-conv residual stages from a design space"),
}
IMAGENET = "imagenet"


def backbone_choice(name: str) -> BackboneChoice:
    """``BACKBONES[name]``; an unknown name raises :class:`ConfigError` listing the known ones."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def backbone_spec(name: str, num_classes: int = 7, width_mult: float | None = None, fpn_channels: int = 96,
                  head_convs: int = 4, weights: str | None = None) -> DetectorSpec:
    """The teacher's detector design (FPN, FCOS head, input size) on trunk ``name``.

    Args:
        name: a key of :data:`BACKBONES`.
        num_classes: classes including the background slot 0.
        width_mult: channel multiplier of the trunk (only where ``BACKBONES[name].width_mult``); for
            ``resnet_basic`` it scales the teacher's widths (rounded to multiples of 8).
        fpn_channels: width of every FPN level (the teacher's by default).
        head_convs: convolutions per FCOS head tower (the teacher's by default).
        weights: ``None`` for a trunk trained from scratch, ``"imagenet"`` for one started from ImageNet weights.

    Returns:
        The :class:`DetectorSpec` (build it with ``build_detector``).
    """
    choice = backbone_choice(name)
    if width_mult is not None and not choice.width_mult:
        accepting = sorted(key for key, value in BACKBONES.items() if value.width_mult)
        raise ConfigError(f"{name!r} takes no width_mult; use width_mult=None or one of {accepting}")
    if width_mult is not None and not width_mult > 0:
        raise ConfigError(f"width_mult must be a positive number, got {width_mult}")
    if weights not in (None, IMAGENET):
        raise ConfigError(f"weights must be None (random init) or {IMAGENET!r}, got {weights!r}")
    teacher = EMBEDDED_PRESETS["teacher"]
    spec = replace(teacher, backbone=choice.model, backbone_kwargs=dict(choice.kwargs), num_classes=num_classes,
                   fpn_channels=fpn_channels, head_convs=head_convs)
    if choice.model == RESNET_BASIC:
        if width_mult is not None:
            spec = replace(spec, widths=[max(8, round(width * width_mult / 8) * 8) for width in teacher.widths])
    elif width_mult is not None:
        spec.backbone_kwargs["width_mult"] = float(width_mult)
    # From scratch the BatchNorms must learn their statistics, and a batch of 16 images of 320 px gives each
    # channel 16 x 40 x 40 samples even at stride 8: plenty. From ImageNet weights the stored statistics are the ones
    # the pretrained convolutions expect; noisy detection batches would drift them, so they stay frozen (as in
    # torchvision's detection references). ShuffleNetV2 takes no norm_layer, so its BatchNorm cannot be frozen.
    return replace(spec, frozen_bn=weights == IMAGENET and choice.norm_layer)


def load_imagenet_trunk_(detector: FCOS, name: str) -> FCOS:
    """Load torchvision's ImageNet weights (``DEFAULT``) of backbone ``name`` into ``detector``'s trunk, in place,
    from the local cache only: a missing file raises :class:`DownloadError`, a trunk of other shapes (a
    ``width_mult``) :class:`ConfigError`."""
    choice = backbone_choice(name)
    if choice.model == RESNET_BASIC:
        raise ConfigError(f"{RESNET_BASIC!r} is the kit's own trunk and has no ImageNet weights; use weights=None")
    weights = get_model_weights(choice.model).DEFAULT
    cached = weights_dir() / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise DownloadError(f"ImageNet weights {weights} are not cached at {shown_path(cached)}; the kit does not "
                            f"download them. Fetch {weights.url} into that folder (or set COMPRESSKIT_WEIGHTS to a "
                            "folder holding checkpoints/), or use weights=None to train from scratch.")
    stored = torch.load(cached, map_location="cpu", weights_only=True)
    body = detector.backbone.body
    expected = body.state_dict()
    wrong = sorted(key for key, value in expected.items() if key not in stored or stored[key].shape != value.shape)
    if wrong:
        raise ConfigError(f"the ImageNet weights of {choice.model} do not fit this trunk ({len(wrong)} tensors "
                          f"missing or shaped differently, e.g. {wrong[0]}); they exist for width_mult=None only")
    body.load_state_dict({key: stored[key] for key in expected}, strict=True)
    return detector


def build_detector_with_backbone(name: str, num_classes: int = 7, width_mult: float | None = None,
                                 weights: str | None = None) -> FCOS:
    """The teacher's FCOS design on trunk ``name`` (see :func:`backbone_spec`), in training mode.

    Args:
        name: a key of :data:`BACKBONES`.
        num_classes: classes including the background slot 0.
        width_mult: trunk channel multiplier, where the backbone takes one.
        weights: ``None`` for random weights; ``"imagenet"`` loads torchvision's ImageNet weights (``DEFAULT``)
            into the trunk from torch hub's cache (or ``COMPRESSKIT_WEIGHTS``). The kit works offline, so a
            missing file raises :class:`DownloadError` saying where to put it instead of downloading.

    Returns:
        The detector; FPN and head are always randomly initialised.
    """
    spec = backbone_spec(name, num_classes=num_classes, width_mult=width_mult, weights=weights)
    detector = build_detector(spec)
    return load_imagenet_trunk_(detector, name) if weights == IMAGENET else detector
