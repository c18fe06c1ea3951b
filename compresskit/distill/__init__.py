"""Knowledge distillation for the kit's detectors (lesson 04): location by location between FCOS detectors, and
through the teacher's boxes between any two.

- ``losses``: the article's softmax loss as written, Hinton's softmax KD with ``T**2``, the per-class sigmoid KD
  that fits FCOS, a GIoU box loss, and the gradient-scale table that shows why ``T**2`` is there.
- ``fcos``: :class:`KDConfig` and :class:`Distiller`, the engine's ``extra_loss`` that reads the student's
  outputs through forward hooks and runs the frozen teacher on the same batch; feature adapters train as the
  engine's ``extra_modules``.
- ``boxes``: :class:`BoxDistiller`, the engine's ``extra_targets``: the teacher's confident detections that no
  label covers join each step's targets (any two detectors with the same label map).
- ``terms``: the per-location pieces (alignment check, foreground weights, box and feature terms).
- ``recipe``: :func:`distillation`, KD as what a run of the engine's ``train_and_ship`` adds (the pruned
  teacher's recovery passes it to ``compresskit.prune.prune_and_finetune``), and a student distilled on its
  own budget.

Introduced in ``04_distillation.ipynb``.
"""

from compresskit.distill.boxes import BoxDistiller
from compresskit.distill.fcos import (LOCATION_METHODS, METHODS, Distiller, KDConfig, check_label_maps, distillable,
                                     fpn_widths)
from compresskit.distill.losses import (article_kd_loss, giou_box_loss, gradient_scale, sigmoid_kd_loss,
                                        soft_targets_summary, softmax_kd_loss)
from compresskit.distill.recipe import DISTILL_RECIPE, default_method, distill_student, distillation, kd_step_log
from compresskit.distill.terms import FOREGROUND_FLOOR

__all__ = ["DISTILL_RECIPE", "FOREGROUND_FLOOR", "LOCATION_METHODS", "METHODS", "BoxDistiller", "Distiller",
           "KDConfig", "article_kd_loss", "check_label_maps", "default_method", "distillable", "distill_student",
           "distillation", "fpn_widths", "giou_box_loss", "gradient_scale", "kd_step_log", "sigmoid_kd_loss",
           "soft_targets_summary", "softmax_kd_loss"]
