"""The per-location pieces of FCOS distillation: alignment checks, location weights, and the box and feature
terms that :class:`compresskit.distill.Distiller` adds up.

FCOS predicts at every cell of every FPN level (level by level, row-major: the head's order), so one location of
the student and the same location of the teacher look at the same place when both share input size and strides.
Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

import torch
from torch import nn

from compresskit.distill.losses import giou_box_loss
from compresskit.errors import CompressKitError, ConfigError

FOREGROUND_FLOOR = 0.05  # lowest location weight: background still teaches "nothing here", just less loudly
MIN_BOX_SIDE = 1.0  # pixels; a teacher box narrower than this is "no box here" and is not distilled


def check_alignment(student_input: tuple, teacher_input: tuple, student_head: dict, teacher_head: dict,
                    student_features: dict, teacher_features: dict) -> None:
    """Raise :class:`ConfigError` unless student and teacher saw the same input batch and predicted at the same
    locations."""
    problems = []
    if student_input != teacher_input:
        problems.append(f"input batches {student_input} vs {teacher_input}")
    for key in ("cls_logits", "bbox_regression", "bbox_ctrness"):
        if student_head[key].shape != teacher_head[key].shape:
            problems.append(f"{key} {tuple(student_head[key].shape)} vs {tuple(teacher_head[key].shape)}")
    student_sizes = [tuple(f.shape[-2:]) for f in student_features.values()]
    teacher_sizes = [tuple(f.shape[-2:]) for f in teacher_features.values()]
    if student_sizes != teacher_sizes:
        problems.append(f"FPN level sizes {student_sizes} vs {teacher_sizes}")
    if problems:
        raise ConfigError("student and teacher outputs do not align location by location (student vs teacher: "
                          + "; ".join(problems) + "); distil between detectors with the same image size, strides "
                          "and classes")


def location_weight(teacher_logits: torch.Tensor, foreground: str) -> torch.Tensor | None:
    """One weight per location: the teacher's highest class probability, floored; None for ``uniform``."""
    if foreground == "uniform":
        return None
    return teacher_logits.float().sigmoid().amax(dim=-1).clamp_min(FOREGROUND_FLOOR).reshape(-1)


def location_strides(input_height: int, features: dict) -> torch.Tensor:
    """Stride (pixels per cell) of every location, in the head's order: level by level, row-major."""
    strides = [torch.full((f.shape[-2] * f.shape[-1],), input_height / f.shape[-2], device=f.device)
               for f in features.values()]
    return torch.cat(strides)


def box_loss(student_regression: torch.Tensor, teacher_regression: torch.Tensor, weight: torch.Tensor | None,
             strides: torch.Tensor) -> torch.Tensor:
    """GIoU between the student's and the teacher's box at each location.

    FCOS regresses ``(left, top, right, bottom)`` distances in units of the level's stride. Two boxes predicted at
    one location share its centre and GIoU ignores a common shift, so the boxes ``(-l, -t, r, b) * stride`` around
    the origin give exactly the GIoU of the decoded boxes, without the anchors.
    """
    scale = strides.reshape(1, -1, 1)
    student = student_regression.float() * scale
    teacher = teacher_regression.float() * scale
    student_boxes = torch.cat([-student[..., :2], student[..., 2:]], dim=-1).reshape(-1, 4)
    teacher_boxes = torch.cat([-teacher[..., :2], teacher[..., 2:]], dim=-1).reshape(-1, 4)
    sides = teacher_boxes[:, 2:] - teacher_boxes[:, :2]
    has_box = (sides >= MIN_BOX_SIDE).all(dim=1).float()
    weight = has_box if weight is None else weight * has_box
    return giou_box_loss(student_boxes, teacher_boxes, weight)


def foreground_masks(targets: list[dict] | None, features: dict, input_height: int) -> dict:
    """Per FPN level, ``(N, H, W)`` weights: 1 where a location lies inside a ground-truth box (in transformed
    coordinates), :data:`FOREGROUND_FLOOR` elsewhere. Location ``(i, j)`` of a level with stride ``s`` is the point
    ``(j * s, i * s)``, where torchvision's anchor generator centres FCOS's anchors."""
    if targets is None:
        raise CompressKitError("feature_mask needs the ground-truth targets; pass them to the Distiller")
    masks = {}
    for level, feature in features.items():
        height, width = feature.shape[-2:]
        stride = input_height / height
        centre_y = torch.arange(height, device=feature.device, dtype=torch.float32) * stride
        centre_x = torch.arange(width, device=feature.device, dtype=torch.float32) * stride
        y, x = centre_y[:, None, None], centre_x[None, :, None]  # broadcast against (boxes,)
        level_masks = []
        for target in targets:
            boxes = target["boxes"].to(feature.device).float().reshape(-1, 4)
            inside = ((x >= boxes[:, 0]) & (x <= boxes[:, 2]) & (y >= boxes[:, 1]) & (y <= boxes[:, 3])).any(-1)
            level_masks.append(inside.float().clamp_min(FOREGROUND_FLOOR))
        masks[level] = torch.stack(level_masks)
    return masks


def _unit_rms(feature: torch.Tensor) -> torch.Tensor:
    """``feature`` (N, C, H, W) divided by each image's root-mean-square value."""
    return feature / feature.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)


def feature_loss(adapters: nn.ModuleDict, student_features: dict, teacher_features: dict,
                 masks: dict | None = None) -> torch.Tensor:
    """Mean over FPN levels of the MSE between the adapted student feature and the teacher's, each first divided
    by its own root-mean-square value on that level and image; ``masks`` (from :func:`foreground_masks`) weigh
    the cells.

    Scaling each side to unit RMS keeps the term between 0 and 4 whatever the features' magnitudes (a fresh
    student's may be ten times the teacher's), and loses little: the FCOS head normalises its towers with
    GroupNorm, so the overall scale of a level carries almost nothing the head uses.
    """
    per_level = []
    for level, adapter in adapters.items():
        teacher = _unit_rms(teacher_features[level].float())
        student = _unit_rms(adapter(student_features[level]).float())
        squared = (student - teacher).pow(2).mean(dim=1)  # (N, H, W)
        if masks is None:
            per_level.append(squared.mean())
        else:
            per_level.append((squared * masks[level]).sum() / masks[level].sum().clamp_min(1e-12))
    return torch.stack(per_level).mean()
