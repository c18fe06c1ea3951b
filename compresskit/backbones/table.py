"""Design facts of each backbone in the teacher's detector: the nodes the FPN reads, parameters, MACs and the share
of depthwise convolutions, counted on random weights. Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FCOS

from compresskit.backbones.designs import BACKBONES, build_detector_with_backbone
from compresskit.measure import count_macs, count_params
from compresskit.models.core import ExportableCore, example_batch
from compresskit.models.trunks import FEATURE_STRIDES


def tapped_nodes(detector: FCOS) -> dict[int, tuple[str, int]]:
    """``{stride: (trunk node, channels)}`` that ``detector``'s FPN reads (strides 8, 16, 32)."""
    trunk = detector.backbone
    taps = getattr(trunk, "return_nodes", None) or trunk.body.return_layers  # torchvision trunk / kit trunk
    nodes = sorted(taps, key=lambda node: int(taps[node]))
    channels = [block[0].in_channels for block in trunk.fpn.inner_blocks]
    return {stride: (node, width) for stride, node, width in zip(FEATURE_STRIDES, nodes, channels)}


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels > 1


def backbone_table(names: list[str] | None = None, image_size: int = 320) -> list[dict]:
    """Design facts of each backbone in the teacher's detector (random weights: nothing is trained or loaded).

    Args:
        names: keys of :data:`BACKBONES` (default: all).
        image_size: side of the square input MACs are counted on.

    Returns:
        One row per backbone: ``name``, ``model``, ``description``, ``nodes`` (``{stride: [node, channels]}``),
        ``params`` and ``macs`` (whole detector core: trunk, FPN, head), ``trunk_params``, ``trunk_macs``,
        ``depthwise_convs`` (convs with ``groups == in_channels > 1``) and ``depthwise_macs_share`` (of ``macs``).
    """
    rows = []
    for name in names or list(BACKBONES):
        detector = build_detector_with_backbone(name).eval()
        core, batch = ExportableCore(detector), example_batch(image_size)
        depthwise_macs = []  # a depthwise conv does kernel-area MACs per output value
        hooks = [module.register_forward_hook(lambda m, _, out: depthwise_macs.append(
            out.numel() * m.kernel_size[0] * m.kernel_size[1])) for module in detector.modules()
            if _is_depthwise(module)]
        with torch.inference_mode():
            core(batch)
        for hook in hooks:
            hook.remove()
        macs = count_macs(core, batch)
        rows.append({"name": name, "model": BACKBONES[name].model, "description": BACKBONES[name].description,
                     "nodes": {stride: [node, width] for stride, (node, width) in tapped_nodes(detector).items()},
                     "params": count_params(detector), "trunk_params": count_params(detector.backbone.body),
                     "macs": macs, "trunk_macs": count_macs(detector.backbone.body, batch),
                     "depthwise_convs": len(hooks), "depthwise_macs_share": round(sum(depthwise_macs) / macs, 4)})
    return rows
