"""Lightweight backbones: the same FCOS detector (FPN, head, input size of the teacher) on other trunks.

- ``designs``: :data:`BACKBONES` (the trunks on offer), :func:`backbone_spec` and
  :func:`build_detector_with_backbone` (the teacher's design on a trunk, optionally from ImageNet weights).
- ``pretrained``: what the article's ``mobilenet_v2(pretrained=True)`` does on current torchvision, and what the
  ``weights=`` API that replaced it offers, without downloading.
- ``table``: design facts of every trunk in the detector (nodes the FPN reads, parameters, MACs, depthwise share).
- ``recipe``: the from-scratch training run behind each backbone checkpoint (``compresskit train --backbone``).
- ``figures``: the MACs split of the table.

Only the trunk changes, so a comparison of backbones measures the trunks alone.
Introduced in ``05_lightweight_backbones.ipynb``.
"""

from compresskit.backbones.designs import (BACKBONES, IMAGENET, BackboneChoice, backbone_choice, backbone_spec,
                                           build_detector_with_backbone, load_imagenet_trunk_)
from compresskit.backbones.pretrained import article_pretrained_call, weights_api_steps
from compresskit.backbones.recipe import TRAIN_RECIPE_BACKBONE, train_backbone
from compresskit.backbones.table import backbone_table, tapped_nodes

__all__ = ["BACKBONES", "IMAGENET", "TRAIN_RECIPE_BACKBONE", "BackboneChoice", "article_pretrained_call",
           "backbone_choice", "backbone_spec", "backbone_table", "build_detector_with_backbone",
           "load_imagenet_trunk_", "tapped_nodes", "train_backbone", "weights_api_steps"]
