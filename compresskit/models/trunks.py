"""Multi-scale trunks with an FPN for the embedded FCOS detectors: the kit's own ResNet-style trunk, or any
torchvision classification model turned into a feature extractor.

Both give a module with ``body`` (the trunk), ``fpn`` and ``out_channels``, returning FPN levels P3-P7 (strides
8 to 128), which is what torchvision's FCOS head expects. Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn
from torchvision.models import get_model, list_models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from compresskit.errors import CompressKitError

RESNET_BASIC = "resnet_basic"
FEATURE_STRIDES = (8, 16, 32)  # the trunk levels the FPN reads; LastLevelP6P7 adds strides 64 and 128
PROBE_SIZE = 320  # side of the dry-run input that finds each stride's feature map (divisible by 32)


# --------------------------------------------------------------------------------------------- the kit's trunk
def _stage(in_channels: int, out_channels: int, blocks: int, norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False),
                               norm_layer(out_channels))
    layers = [BasicBlock(in_channels, out_channels, stride=2, downsample=downsample, norm_layer=norm_layer)]
    layers += [BasicBlock(out_channels, out_channels, norm_layer=norm_layer) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet_basic_trunk(widths: list[int], depths: list[int],
                       norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """The kit's trunk: a stride-2 stem and four stages of torchvision ``BasicBlock`` (strides 4 to 32).

    Args:
        widths: stem width, then the four stage widths.
        depths: BasicBlocks per stage.
        norm_layer: the normalisation after every convolution.

    Returns:
        ``Sequential(stem, layer1, ..., layer4)``.
    """
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), norm_layer(widths[0]),
                         nn.ReLU(inplace=True))
    stages = [(f"layer{i + 1}", _stage(widths[i], widths[i + 1], depths[i], norm_layer)) for i in range(4)]
    return nn.Sequential(OrderedDict([("stem", stem), *stages]))


# --------------------------------------------------------------------------------------------- torchvision trunks
class FeatureTrunkWithFPN(nn.Module):
    """A feature extractor (``image batch -> {"0", "1", "2": strides 8, 16, 32}``) followed by an FPN.

    Mirrors torchvision's ``BackboneWithFPN`` (same ``body`` / ``fpn`` / ``out_channels``), which only accepts
    named children of a model, not the inner graph nodes an automatic choice of levels needs.
    """

    def __init__(self, body: nn.Module, return_nodes: dict[str, str], in_channels_list: list[int],
                 out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.return_nodes = return_nodes  # graph node -> level name, so a lesson can show where each level taps
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(images))


def classification_model(name: str, kwargs: dict | None = None, frozen_bn: bool = False) -> nn.Module:
    """torchvision classification model ``name`` with random weights (``weights=None``).

    Args:
        name: a torchvision classification model (``torchvision.models.list_models``).
        kwargs: extra constructor arguments, e.g. ``{"width_mult": 0.75}`` for MobileNetV3.
        frozen_bn: build with ``norm_layer=FrozenBatchNorm2d`` (only models that take a ``norm_layer``).

    Returns:
        The model, in eval mode.
    """
    import torchvision.models as classification

    kwargs = dict(kwargs or {})
    if name not in list_models(module=classification):
        raise CompressKitError(f"unknown backbone {name!r}: use {RESNET_BASIC!r} or a torchvision classification "
                               "model such as mobilenet_v3_large, resnet18 or efficientnet_b0 (all of them: "
                               "torchvision.models.list_models(module=torchvision.models))")
    if frozen_bn:  # detection batches hold a few images: their BatchNorm statistics are too noisy to learn from
        kwargs["norm_layer"] = FrozenBatchNorm2d
    try:
        model = get_model(name, weights=None, **kwargs)
    except TypeError as exc:
        hint = "set frozen_bn=False: it has no norm_layer argument" if frozen_bn else "check backbone_kwargs"
        raise CompressKitError(f"backbone {name!r} cannot be built with {kwargs} ({exc}); {hint}") from None
    if frozen_bn and not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()):
        raise CompressKitError(f"backbone {name!r} has no BatchNorm to freeze; set frozen_bn=False")
    return model.eval()


def feature_nodes(model: nn.Module) -> dict[int, tuple[str, int]]:
    """The last graph node of each stride 8, 16 and 32 of ``model``, and its channel count.

    A dry run on a ``PROBE_SIZE`` square input records every node's output shape, so no per-model table is
    needed. The last node of a stride is the last feature computed before the next downsampling: for
    inverted-residual models it is the expansion conv of the next stage's first block (the tap SSDlite uses).

    Returns:
        ``{stride: (node name, channels)}``.
    """
    train_nodes, eval_nodes = get_graph_node_names(model)
    in_both = set(train_nodes)  # a return node must exist in the train and the eval graph alike
    candidates = [name for name in eval_nodes if name in in_both]
    probe = create_feature_extractor(model, return_nodes=candidates, suppress_diff_warning=True).eval()
    try:
        with torch.no_grad():
            outputs = probe(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
    except Exception as exc:  # e.g. a vision transformer that only takes its own input size
        raise CompressKitError(f"{type(model).__name__} cannot run on a {PROBE_SIZE}x{PROBE_SIZE} image "
                               f"({type(exc).__name__}: {exc}); choose a convolutional backbone") from None
    found: dict[int, tuple[str, int]] = {}
    seen_strides: set[int] = set()  # every stride of any square feature map, so an error can say what exists
    for name in candidates:  # graph order, so a later node of the same stride replaces an earlier one
        output = outputs.get(name)
        if not (torch.is_tensor(output) and output.ndim == 4):
            continue
        height, width = output.shape[-2:]
        if height == width and 0 < height < PROBE_SIZE and PROBE_SIZE % height == 0:  # not the input itself
            seen_strides.add(PROBE_SIZE // int(height))
        for stride in FEATURE_STRIDES:
            if tuple(output.shape[-2:]) == (PROBE_SIZE // stride, PROBE_SIZE // stride):
                found[stride] = (name, int(output.shape[1]))
    missing = [stride for stride in FEATURE_STRIDES if stride not in found]
    if missing:
        raise CompressKitError(f"{type(model).__name__} has no feature map at stride {missing} of a "
                               f"{PROBE_SIZE}x{PROBE_SIZE} input (found strides {sorted(seen_strides)}); pick a "
                               "backbone that downsamples by 2 per stage down to stride 32")
    return {stride: found[stride] for stride in FEATURE_STRIDES}


def torchvision_trunk(name: str, fpn_channels: int, kwargs: dict | None = None,
                      frozen_bn: bool = False) -> FeatureTrunkWithFPN:
    """torchvision classification model ``name`` as a stride 8/16/32 trunk with an FPN (P3-P7).

    Args:
        name: torchvision classification model name, e.g. ``mobilenet_v3_large``, ``resnet18``.
        fpn_channels: width of every FPN level.
        kwargs: extra constructor arguments (see :func:`classification_model`).
        frozen_bn: FrozenBatchNorm2d instead of BatchNorm2d.

    Returns:
        The trunk + FPN, with the graph nodes it reads in ``return_nodes``.
    """
    model = classification_model(name, kwargs, frozen_bn=frozen_bn)
    nodes = feature_nodes(model)
    return_nodes = {nodes[stride][0]: str(level) for level, stride in enumerate(FEATURE_STRIDES)}
    body = create_feature_extractor(model, return_nodes=return_nodes, suppress_diff_warning=True)
    return FeatureTrunkWithFPN(body, return_nodes=return_nodes,
                               in_channels_list=[nodes[stride][1] for stride in FEATURE_STRIDES],
                               out_channels=fpn_channels)


def build_trunk(backbone: str, widths: list[int], depths: list[int], fpn_channels: int,
                backbone_kwargs: dict | None = None, frozen_bn: bool = False) -> nn.Module:
    """The trunk + FPN a :class:`~compresskit.models.DetectorSpec` describes (its fields, one by one).

    ``frozen_bn`` keeps every BatchNorm's statistics and affine terms fixed: detection batches of a few images
    give noisy batch statistics, so fine-tuning a trunk usually freezes them.
    """
    if backbone != RESNET_BASIC:
        return torchvision_trunk(backbone, fpn_channels, backbone_kwargs, frozen_bn=frozen_bn)
    if backbone_kwargs:
        raise CompressKitError(f"backbone_kwargs {backbone_kwargs} apply to torchvision backbones only; "
                               f"{RESNET_BASIC!r} is shaped by widths and depths")
    trunk = resnet_basic_trunk(widths, depths, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    return BackboneWithFPN(trunk, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                           in_channels_list=widths[2:], out_channels=fpn_channels,
                           extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
