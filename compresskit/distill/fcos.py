"""Distilling one FCOS detector into another inside the kit's single training loop.

:class:`Distiller` is the engine's ``extra_loss``: the loop calls it after the student's own forward, so it never
runs the student again. Forward hooks on the student's backbone and head keep what that forward computed (FPN
features, class logits, box regression, centerness), and the frozen teacher runs once, without gradients, on the
same transformed batch. Teacher and student share input size and strides, so their locations align one to one.

Terms (each switched on by :class:`KDConfig`): ``kd_logit`` (per-class sigmoid KD, :func:`sigmoid_kd_loss`),
``kd_ctrness`` (the same on centerness), ``kd_box`` (GIoU to the teacher's box at each location) and
``kd_feature`` (per FPN level, a 1x1 adapter maps the student's width to the teacher's; MSE after scaling both to
unit RMS, so the term does not depend on the features' magnitude); the terms themselves live in ``terms``.
Logit and box terms weigh each location by the teacher's foreground probability: on a detector most locations
are background, and averaging over them alike drowns the objects.
Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from compresskit.data.dataset import LabelMap
from compresskit.distill.losses import sigmoid_kd_loss
from compresskit.distill.terms import (box_loss, check_alignment, feature_loss, foreground_masks, location_strides,
                                      location_weight)
from compresskit.errors import CompressKitError, ConfigError

METHODS = ("none", "logit", "feature", "both", "boxes")
LOCATION_METHODS = ("logit", "feature", "both")  # what this module's Distiller reads; "boxes" is distill.boxes
FOREGROUND_MODES = ("teacher", "uniform")
DRY_RUN_SIZE = 256  # divisible by 128, the coarsest FPN stride, so every level has at least 2 x 2 cells


@dataclass
class KDConfig:
    """What to distil and how strongly; JSON-able (``dataclasses.asdict``) so it is recorded beside checkpoints.

    ``method``: ``none``, ``logit`` (class logits, centerness and, when ``box_weight`` > 0, boxes), ``feature``
    (FPN features through adapters) or ``both``. ``foreground``: ``teacher`` weighs locations by the teacher's
    highest class probability (at least ``terms.FOREGROUND_FLOOR``), ``uniform`` weighs them alike.
    ``feature_mask`` weighs the feature term by the ground-truth boxes (background at the floor).
    ``boxes`` distils through the teacher's detections instead, between any two detectors
    (:class:`~compresskit.distill.boxes.BoxDistiller`): those scoring at least ``box_score`` that overlap no
    ground-truth box by ``box_overlap`` IoU or more become extra targets.
    """

    method: str = "both"
    temperature: float = 2.0
    logit_weight: float = 1.0
    feature_weight: float = 1.0
    box_weight: float = 0.0
    ctrness_weight: float = 1.0
    foreground: str = "teacher"
    feature_mask: bool = False
    box_score: float = 0.5
    box_overlap: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.foreground not in FOREGROUND_MODES:
            raise ConfigError(f"foreground must be one of {list(FOREGROUND_MODES)}, got {self.foreground!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ConfigError(f"temperature must be a positive number, got {self.temperature!r}")
        for name in ("logit_weight", "feature_weight", "box_weight", "ctrness_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("box_score", "box_overlap"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")

    @property
    def distils_outputs(self) -> bool:
        return self.method in ("logit", "both")

    @property
    def distils_features(self) -> bool:
        return self.method in ("feature", "both")


def distillable(detector: nn.Module) -> bool:
    """True for the detectors this distiller reads: torchvision FCOS (per-location class logits, centerness and
    box distances; a RetinaNet or SSD head predicts per anchor, which another detector's anchors do not match)."""
    from torchvision.models.detection import FCOS

    return isinstance(detector, FCOS)


def check_label_maps(student_label_map: LabelMap, teacher_label_map: LabelMap) -> None:
    """Raise :class:`ConfigError` unless both detectors give every category the same label (and name).

    Distillation compares class ``k`` of the student with class ``k`` of the teacher, so they must mean the same.
    """
    student = dict(zip(student_label_map.category_ids, zip(student_label_map.labels, student_label_map.names)))
    teacher = dict(zip(teacher_label_map.category_ids, zip(teacher_label_map.labels, teacher_label_map.names)))
    if student == teacher:
        return
    problems = []
    if set(student) - set(teacher):
        problems.append(f"category ids {sorted(set(student) - set(teacher))} only in the student's")
    if set(teacher) - set(student):
        problems.append(f"category ids {sorted(set(teacher) - set(student))} only in the teacher's")
    for category in sorted(set(student) & set(teacher)):
        if student[category] != teacher[category]:
            problems.append(f"category {category} is (label, name) {student[category]} in the student's but "
                            f"{teacher[category]} in the teacher's")
    raise ConfigError("student and teacher label maps differ (" + "; ".join(problems) + "); distil only between "
                      "detectors trained on the same categories, e.g. build the student with the teacher's label map")


def fpn_widths(detector: nn.Module) -> OrderedDict:
    """``{FPN level name: channels}`` of a detector's backbone, from a dry run (pruning may change the widths).

    The backbone runs in eval mode without gradients, so no BatchNorm statistic moves; its mode is restored.
    """
    backbone = detector.backbone
    was_training = backbone.training
    parameter = next(backbone.parameters())
    try:
        backbone.eval()
        with torch.no_grad():
            features = backbone(torch.zeros(1, 3, DRY_RUN_SIZE, DRY_RUN_SIZE, device=parameter.device))
    finally:
        backbone.train(was_training)
    return OrderedDict((name, feature.shape[1]) for name, feature in features.items())


def _adapter(student_width: int, teacher_width: int) -> nn.Conv2d:
    adapter = nn.Conv2d(student_width, teacher_width, kernel_size=1)
    if student_width == teacher_width:  # identity: a student that is a copy of the teacher starts at zero loss
        with torch.no_grad():
            adapter.weight.copy_(torch.eye(teacher_width).reshape(teacher_width, teacher_width, 1, 1))
            adapter.bias.zero_()
    return adapter


class _Hooks:
    """The forward hooks of :meth:`Distiller.attach`; ``remove()`` (or leaving a ``with`` block) detaches them."""

    def __init__(self, distiller: Distiller, handles: list) -> None:
        self._distiller, self._handles = distiller, handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._distiller._detach()

    def __enter__(self) -> _Hooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class Distiller(nn.Module):
    """The teacher, the feature adapters and the KD loss of one student, as the engine's ``extra_loss``.

    Use: ``with distiller.attach(student): fit(student, ..., extra_loss=distiller,
    extra_modules=distiller.adapters)``. Only the adapters train; the teacher stays frozen and in eval mode.

    Args:
        student: the detector being trained (read for its FPN widths; hooks come with :meth:`attach`).
        teacher: a trained detector with the same classes, input size and strides; frozen here, in place.
        config: what to distil (default: :class:`KDConfig`).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: KDConfig | None = None) -> None:
        super().__init__()
        self.config = config or KDConfig()
        if self.config.method not in LOCATION_METHODS:
            raise ConfigError(f"the FCOS distiller distils {list(LOCATION_METHODS)}, not {self.config.method!r}; "
                              "method 'boxes' is compresskit.distill.boxes.BoxDistiller (see distillation())")
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.adapters = nn.ModuleDict()
        if self.config.distils_features:
            student_widths, teacher_widths = fpn_widths(student), fpn_widths(teacher)
            if list(student_widths) != list(teacher_widths):
                raise ConfigError(f"student FPN levels {list(student_widths)} differ from the teacher's "
                                  f"{list(teacher_widths)}; feature KD needs the same levels")
            for level, width in student_widths.items():
                self.adapters[level] = _adapter(width, teacher_widths[level])
        self.history: list[dict] = []  # one {term: value} row per call, i.e. per training step
        self._student: nn.Module | None = None
        self._captured: dict = {}

    def train(self, mode: bool = True) -> Distiller:
        """Switch the adapters' mode; the teacher stays in eval mode (its BatchNorm statistics never move)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def attach(self, student: nn.Module) -> _Hooks:
        """Register forward hooks that keep the student's FPN features and head outputs of its latest forward.

        Returns:
            A handle: ``remove()`` detaches the hooks; it is also a context manager.
        """
        if self._student is not None:
            raise CompressKitError("this Distiller is already attached to a student; remove() that handle first")
        self._student = student

        def keep_features(module, inputs, output):
            self._captured["input_shape"] = tuple(inputs[0].shape)
            self._captured["features"] = output

        def keep_head(module, inputs, output):
            self._captured["head"] = output

        return _Hooks(self, [student.backbone.register_forward_hook(keep_features),
                             student.head.register_forward_hook(keep_head)])

    def _detach(self) -> None:
        self._student, self._captured = None, {}

    def forward(self, model: nn.Module, images: list[torch.Tensor], targets: list[dict] | None = None) -> dict:
        """The enabled KD terms for the batch the student (``model``) has just run forward on.

        Returns:
            ``{"kd_logit", "kd_ctrness", "kd_box", "kd_feature"}``, each already multiplied by its weight; only
            enabled terms with a positive weight appear.
        """
        if self._student is None:
            raise CompressKitError("call distiller.attach(student) before training, so the student's outputs can be "
                                   "read after its forward")
        if getattr(model, "module", model) is not self._student:  # DDP wraps the student in .module
            raise CompressKitError("the Distiller is attached to another model than the one being trained")
        captured, self._captured = self._captured, {}  # a stale batch must never be distilled twice
        if "features" not in captured or "head" not in captured:
            raise CompressKitError("the student has not run forward since the last KD call; call the Distiller "
                                   "after the student's forward on the same batch (as the engine's extra_loss does)")
        student_features, student_head = captured["features"], captured["head"]
        device = student_head["cls_logits"].device
        for module in (self.teacher, self.adapters):  # follow the student (fit moves it; a user may too)
            if any(parameter.device != device for parameter in module.parameters()):
                module.to(device)
        with torch.no_grad():
            image_list, teacher_targets = self.teacher.transform(images, targets)
            teacher_features = self.teacher.backbone(image_list.tensors)
            teacher_head = self.teacher.head(list(teacher_features.values()))
        check_alignment(captured["input_shape"], tuple(image_list.tensors.shape), student_head, teacher_head,
                        student_features, teacher_features)
        config, losses = self.config, {}
        if config.distils_outputs:
            weight = location_weight(teacher_head["cls_logits"], config.foreground)
            if config.logit_weight:
                losses["kd_logit"] = config.logit_weight * sigmoid_kd_loss(
                    student_head["cls_logits"], teacher_head["cls_logits"], config.temperature, weight)
            if config.ctrness_weight:
                # Centerness is a single sigmoid target, not a softened class score: no temperature.
                losses["kd_ctrness"] = config.ctrness_weight * sigmoid_kd_loss(
                    student_head["bbox_ctrness"], teacher_head["bbox_ctrness"], 1.0, weight)
            if config.box_weight:
                losses["kd_box"] = config.box_weight * box_loss(
                    student_head["bbox_regression"], teacher_head["bbox_regression"], weight,
                    location_strides(image_list.tensors.shape[-2], teacher_features))
        if config.distils_features and config.feature_weight:
            masks = (foreground_masks(teacher_targets, teacher_features, image_list.tensors.shape[-2])
                     if config.feature_mask else None)
            losses["kd_feature"] = config.feature_weight * feature_loss(self.adapters, student_features,
                                                                        teacher_features, masks)
        self.history.append({name: float(value.detach()) for name, value in losses.items()})
        return losses
