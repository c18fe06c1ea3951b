"""The distillation study (lesson 04): students trained under one budget with and without distillation, and the
pruned teacher recovered with and without distillation, measured in one run.

The trained variants come from the reference runs (``compresskit distill`` and ``compresskit prune --kd``; see the
README). Checkpoints the package does not ship are represented by their training records (see
:func:`~compresskit.harness.loading.load_trained`).
Introduced in ``04_distillation.ipynb``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from compresskit.harness.loading import load_for_study, load_trained, require_embedded
from compresskit.harness.reuse import ReuseCache
from compresskit.harness.variant import Study

LESSON = "04_distillation"
# method -> record technique of a distilled student (its no-KD control is a "baseline" record)
KD_TECHNIQUES = {"logit": "logit_kd", "feature": "feature_kd", "both": "kd", "boxes": "box_kd"}
# Each no-KD control (a training record) and the students distilled on the same budget beside it: the same
# command and code, so only the distillation differs. Box distillation came later, with its own control.
KD_RUNS = {"none": ("logit", "feature", "both"), "boxes_control": ("boxes",)}
KD_PRUNED = "teacher_pruned_kd"
NO_KD_PRUNED = "teacher_pruned"  # the shipped recovery of lesson 02, same pruning and epochs


def student_architecture(label_map) -> Callable[[dict], nn.Module]:
    """The untrained student for ``label_map``, as :func:`~compresskit.harness.load_trained` builds a variant."""
    from dataclasses import replace

    from compresskit.models import EMBEDDED_PRESETS, build_detector

    return lambda meta: build_detector(replace(EMBEDDED_PRESETS["student"], num_classes=label_map.num_classes))


def _pruned_architecture(teacher: nn.Module) -> Callable[[dict], nn.Module]:
    def untrained(meta: dict) -> nn.Module:
        import copy

        from compresskit.prune import StructuredConfig, prune_structured_

        return prune_structured_(copy.deepcopy(teacher), StructuredConfig(**meta["prune_config"]))

    return untrained


def measure_trained(study: Study, name: str, record_id: str, technique: str, untrained: Callable[[dict], nn.Module],
                    baseline: str | None, variant: str, model: str) -> dict:
    """A trained variant (shipped, or its training record) as one eager record against ``baseline``."""
    detector, meta, shipped = load_trained(name, untrained)
    config = {"checkpoint": name, "kd_config": meta.get("kd_config"), "train_config": meta.get("train_config"),
              "prune_config": meta.get("prune_config"), "trained_on": meta.get("trained_on")}
    config = {key: value for key, value in config.items() if value is not None}
    record = study.measure(detector, record_id, technique=technique, baseline=baseline, model=model,
                           variant=variant if shipped else f"{variant}, mAP from its training record",
                           train_seconds=meta.get("train_seconds"), config=config,
                           recorded_metrics=None if shipped else meta["val_metrics"])
    return record


def distillation_study(profile: str | None = None, val_images: int | None = None, runs: int | None = None,
                       progress: bool = False, log: Callable[[str], None] | None = None,
                       reuse: ReuseCache | None = None) -> Study:
    """Every record of lesson 04: the teacher, the equal-budget students (logit, feature, both; boxes) each against
    the no-distillation control trained beside it (``KD_RUNS``), and the pruned teacher recovered with and without
    distillation against the teacher."""

    teacher = load_for_study("teacher", profile)
    require_embedded(teacher, "distilled students")
    study = Study.of(LESSON, teacher, val_images, runs=runs, progress=progress, log=log, reuse=reuse)
    base = study.measure(teacher.model, "distill/teacher/eager", technique="baseline", variant="the teacher, fp32")
    student = student_architecture(teacher.label_map)
    for control_name, methods in KD_RUNS.items():
        control = measure_trained(study, f"student_kd_{control_name}",
                                  f"distill/student-{control_name.replace('_', '-')}/eager", "baseline", student,
                                  baseline=base["id"], model="student",
                                  variant="student, no distillation (equal-budget control"
                                          + (f" of {', '.join(methods)})" if control_name != "none" else ")"))
        for method in methods:
            measure_trained(study, f"student_kd_{method}", f"distill/student-{method}/eager", KD_TECHNIQUES[method],
                            student, baseline=control["id"], model="student",
                            variant=f"student, {method} distillation from the teacher")
    pruned = _pruned_architecture(teacher.model)
    measure_trained(study, NO_KD_PRUNED, "distill/teacher-pruned/eager", "structured_pruning", pruned, base["id"],
                    "pruned teacher, fine-tuned without distillation", model="teacher_pruned")
    measure_trained(study, KD_PRUNED, "distill/teacher-pruned-kd/eager", "structured_pruning", pruned, base["id"],
                    "pruned teacher, fine-tuned with distillation from the teacher", model="teacher_pruned")
    return study
