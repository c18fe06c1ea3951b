"""Distilling through boxes: the teacher's confident detections become extra training targets of the student.

The FCOS distiller (``fcos``) compares student and teacher location by location, which needs two detectors whose
heads line up. Box distillation needs nothing of the kind: the frozen teacher detects on each training batch, and
every detection it is sure of (score at least ``KDConfig.box_score``) that no ground-truth box already covers
(IoU below ``KDConfig.box_overlap`` with each of them) joins that image's targets. The student then learns, with
its own loss and its own anchors, the objects the labels leave out and the teacher finds. It works between any two
torchvision detectors with the same label map (the coco profile's RetinaNet teaching its SSDlite), and costs one
teacher forward per step, without gradients. This is the data-distillation idea of Radosavovic et al., "Data
Distillation: Towards Omni-Supervised Learning" (CVPR 2018), applied to labelled images: where the labels are
complete (the embedded dataset is generated, so they are) it adds almost nothing, and the lesson measures how
little; on photographs whose labels miss objects (COCO's do) it adds what the teacher saw.
Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_iou


class BoxDistiller:
    """The engine's ``extra_targets``: each step's targets plus the teacher's confident, unlabelled detections.

    Use: ``fit(student, ..., extra_targets=BoxDistiller(teacher))``. The teacher is frozen and kept in
    eval mode, in place, and moved to the batch's device on first use.

    Args:
        teacher: a detector with the student's label map (any torchvision detector: it is only asked to detect).
        score: the lowest teacher score that becomes a target.
        overlap: a detection with IoU at least this with a ground-truth box of the image is that box; dropped.
    """

    def __init__(self, teacher: nn.Module, score: float = 0.5, overlap: float = 0.5) -> None:
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.score, self.overlap = score, overlap
        self.history: list[dict] = []  # one row per step: what the teacher added

    def __call__(self, images: list[torch.Tensor], targets: list[dict]) -> list[dict]:
        device = images[0].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.teacher.eval()  # a caller's .train() on a module holding it must not move its BatchNorm statistics
        with torch.no_grad():
            detections = self.teacher(images)
        merged = [self._merge(target, detected) for target, detected in zip(targets, detections)]
        added = [len(m["boxes"]) - len(t["boxes"]) for m, t in zip(merged, targets)]
        labelled = sum(len(t["boxes"]) for t in targets)
        self.history.append({"teacher_boxes_per_image": sum(added) / len(added),
                             "added_share": sum(added) / max(1, labelled + sum(added))})
        return merged

    def _merge(self, target: dict, detected: dict) -> dict:
        keep = detected["scores"] >= self.score
        boxes, labels = detected["boxes"][keep], detected["labels"][keep]
        if len(boxes) and len(target["boxes"]):
            covered = box_iou(boxes, target["boxes"].to(boxes.dtype)).max(dim=1).values >= self.overlap
            boxes, labels = boxes[~covered], labels[~covered]
        # A degenerate box (no width or height) has no loss the detectors can compute.
        sized = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[sized], labels[sized]
        if not len(boxes):
            return target
        merged = dict(target)  # other per-box keys (area, iscrowd) describe the labelled boxes only
        merged["boxes"] = torch.cat([target["boxes"], boxes.to(target["boxes"].dtype)])
        merged["labels"] = torch.cat([target["labels"], labels.to(target["labels"].dtype)])
        return merged
