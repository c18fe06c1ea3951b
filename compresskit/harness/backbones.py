"""The backbone study (lesson 05): the teacher's FPN and FCOS head on each trunk of ``compresskit.backbones``,
measured against the teacher in the same run, in torch eager, ONNX Runtime fp32 and ONNX Runtime int8.

A backbone detector is read from the package when its checkpoint is shipped. The package keeps its checkpoints
under 50 MB, so some backbones ship only their training record (``checkpoints/backbone_NAME.json``, written by
``compresskit train --backbone NAME``): for those, MACs, parameters, size and latency are measured on the same
architecture with untrained weights (none of them depends on the weights' values), and the mAP is the one their
training run measured on the fp16 weights it wrote; the record's variant and config say so.
Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from compresskit.harness.loading import (load_for_study, load_trained, require_embedded, train_split,
                                         with_recorded_map)
from compresskit.harness.variant import Study

LESSON = "05_lightweight_backbones"
REFERENCE = "resnet_basic"  # the teacher's own trunk


def load_backbone_detector(name: str, label_map) -> tuple[nn.Module, dict, bool]:
    """The trained detector on backbone ``name``: ``(detector, training metadata, shipped)`` (see
    :func:`~compresskit.harness.loading.load_trained`)."""
    from compresskit.backbones import backbone_spec
    from compresskit.models import build_detector

    def untrained(meta: dict) -> nn.Module:
        return build_detector(backbone_spec(name, num_classes=label_map.num_classes, width_mult=meta.get("width_mult")))

    return load_trained(f"backbone_{name}", untrained)


def measure_backbone(study: Study, name: str, detector: nn.Module, meta: dict, shipped: bool, calibration_set,
                     eager_baseline: str, ort_baseline: str, int8: bool = True,
                     calibration_images: int = 64) -> list[dict]:
    """One backbone detector: eager against the teacher eager, ONNX Runtime fp32 against the teacher's ORT fp32
    core, and (``int8``) its ORT int8 core against its own fp32 core (where int8 helps and where it does not)."""
    from compresskit.models.core import OnnxCore
    from compresskit.quantize import OrtQuantConfig
    from compresskit.harness.quantization import quantize_for_study

    config = {"backbone": name, "width_mult": meta.get("width_mult"), "train_config": meta.get("train_config"),
              "trained_on": meta.get("trained_on")}
    note = "" if shipped else ", mAP from its training record"
    common = {"model": name, "train_seconds": meta.get("train_seconds"), "evaluate_map": shipped}
    eager = study.measure(detector, f"backbones/{name}/eager", technique="backbone", baseline=eager_baseline,
                          variant=f"{name} trunk, teacher's FPN and head{note}", config=config, **common)
    fp32 = study.measure(detector, f"backbones/{name}/ort-fp32", technique="backbone", runtime="onnxruntime",
                         baseline=ort_baseline, variant=f"{name} trunk, ONNX Runtime fp32{note}", config=config,
                         **common)
    records = [eager, fp32] if shipped else [with_recorded_map(eager, meta), with_recorded_map(fp32, meta)]
    if int8:
        quantized = quantize_for_study(study, detector, calibration_set, f"backbone-{name}",
                                       OrtQuantConfig(calibration_images=calibration_images))
        records.append(study.measure(
            detector, f"backbones/{name}/ort-int8", technique="static_ptq", runtime="onnxruntime",
            core=OnnxCore(quantized.int8_path, threads=study.threads), baseline=fp32["id"],
            variant=f"{name} trunk, QDQ int8 ({quantized.activations} activations)"
                    + ("" if shipped else ", latency and size only (untrained weights)"),
            config={**config, **quantized.as_dict()}, model=name, evaluate_map=shipped))
    return records


def backbone_study(profile: str | None = None, val_images: int | None = None, runs: int = 30,
                   backbones: Sequence[str] | None = None, int8: bool = True, calibration_images: int = 64,
                   progress: bool = False, log: Callable[[str], None] | None = None) -> Study:
    """Every record of lesson 05: the teacher (eager and ONNX Runtime fp32), then each backbone detector.

    Args:
        profile: data profile (default ``COMPRESSKIT_PROFILE``); the backbone detectors are trained on the
            embedded dataset, so only that profile is supported.
        backbones: names from ``compresskit.backbones.BACKBONES`` (default: all but the reference trunk).
        int8: also quantize each backbone's core to int8 (ONNX Runtime), calibrated on ``calibration_images``
            train images.
    """
    from compresskit.backbones import BACKBONES

    teacher = load_for_study("teacher", profile)
    require_embedded(teacher, "backbone detectors")
    study = Study.of(LESSON, teacher, val_images, runs=runs, progress=progress, log=log)
    eager = study.measure(teacher.model, "backbones/teacher/eager", technique="baseline",
                          variant=f"{REFERENCE} trunk (the teacher), fp32")
    ort = study.measure(teacher.model, "backbones/teacher/ort-fp32", technique="baseline", runtime="onnxruntime",
                        variant=f"{REFERENCE} trunk (the teacher), ONNX Runtime fp32")
    calibration_set = train_split(teacher, augment=False)
    for name in backbones or [name for name in BACKBONES if name != REFERENCE]:
        detector, meta, shipped = load_backbone_detector(name, teacher.label_map)
        measure_backbone(study, name, detector, meta, shipped, calibration_set, eager["id"], ort["id"], int8=int8,
                         calibration_images=calibration_images)
    return study
