"""The backbone study (lesson 05): the teacher's FPN and FCOS head on each trunk of ``compresskit.backbones``,
measured against the teacher in the same run, in torch eager, ONNX Runtime fp32 and ONNX Runtime int8.

A backbone detector is read from the package when its checkpoint is shipped. The package keeps its checkpoints
under 50 MB, so some backbones ship only their training record (``checkpoints/backbone_NAME.json``, written by
``compresskit train --backbone NAME``): for those, MACs, parameters, raw size and latency are measured on the
same architecture with untrained weights (none of them depends on the weights' values; the gzip size would, so it
is left out), and the mAP is the one their training run measured on the fp16 weights it wrote; the record's
variant and config say so.
Introduced in ``05_lightweight_backbones.ipynb``.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from compresskit.harness.loading import load_for_study, load_trained, require_embedded, train_split
from compresskit.harness.reuse import ReuseCache
from compresskit.harness.targets import BACKBONE_MAP_GAP, BACKBONE_SPEEDUP
from compresskit.harness.variant import Study
from compresskit.report.check import STAND_IN_WEIGHTS

LESSON = "05_lightweight_backbones"
REFERENCE = "resnet_basic"  # the teacher's own trunk
TRUNK_NODES = "/backbone/body/"  # ONNX node-name prefix of every trunk, the kit's and torchvision's
TRUNK_FLOAT_CONTROLS = ("resnet_basic", "mobilenet_v3_large")  # a dense trunk and a depthwise one


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
                     calibration_images: int = 64, trunk_float: bool = False) -> list[dict]:
    """One backbone detector: eager against the teacher eager, ONNX Runtime fp32 against the teacher's ORT fp32
    core, and (``int8``) its ORT int8 core against its own fp32 core (where int8 helps and where it does not).
    ``trunk_float`` adds a control: the same int8 core with the trunk kept in float (``ort-int8-trunk-fp32``,
    also against the fp32 core), so the two int8 records tell what quantizing the trunk itself buys."""
    from compresskit.runtimes import OnnxCore
    from compresskit.quantize import OrtQuantConfig
    from compresskit.harness.quantization import quantize_for_study

    config = {"backbone": name, "width_mult": meta.get("width_mult"), "train_config": meta.get("train_config"),
              "trained_on": meta.get("trained_on")}
    note = "" if shipped else ", mAP from its training record"
    common = {"model": name, "train_seconds": meta.get("train_seconds"),
              "recorded_metrics": None if shipped else meta["val_metrics"]}
    eager = study.measure(detector, f"backbones/{name}/eager", technique="backbone", baseline=eager_baseline,
                          variant=f"{name} trunk, teacher's FPN and head{note}", config=config, **common)
    fp32 = study.measure(detector, f"backbones/{name}/ort-fp32", technique="backbone", runtime="onnxruntime",
                         baseline=ort_baseline, variant=f"{name} trunk, ONNX Runtime fp32{note}", config=config,
                         **common)
    records = [eager, fp32]
    stand_in = {} if shipped else {"weights": STAND_IN_WEIGHTS}  # said in the record, for reproduce --check
    if int8:
        quantized = quantize_for_study(study, detector, calibration_set, f"backbone-{name}",
                                       OrtQuantConfig(calibration_images=calibration_images))
        records.append(study.measure(
            detector, f"backbones/{name}/ort-int8", technique="static_ptq", runtime="onnxruntime",
            core=OnnxCore(quantized.int8_path, threads=study.threads), baseline=fp32["id"],
            variant=f"{name} trunk, QDQ int8 ({quantized.activations} activations)"
                    + ("" if shipped else ", latency and size only (untrained weights)"),
            config={**config, **quantized.as_dict(), **stand_in}, model=name, evaluate_map=shipped,
            stand_in_weights=not shipped))
    if int8 and trunk_float:
        quantized = quantize_for_study(study, detector, calibration_set, f"backbone-{name}-trunk-fp32",
                                       OrtQuantConfig(calibration_images=calibration_images,
                                                      exclude=(TRUNK_NODES,)))
        records.append(study.measure(
            detector, f"backbones/{name}/ort-int8-trunk-fp32", technique="static_ptq", runtime="onnxruntime",
            core=OnnxCore(quantized.int8_path, threads=study.threads), baseline=fp32["id"],
            variant=f"{name} trunk kept in float, FPN and head QDQ int8 (control)",
            config={**config, **quantized.as_dict(), **stand_in}, model=name, evaluate_map=False,
            stand_in_weights=not shipped))
    return records


def backbone_study(profile: str | None = None, val_images: int | None = None, runs: int | None = None,
                   backbones: Sequence[str] | None = None, int8: bool = True, calibration_images: int = 64,
                   trunk_float: Sequence[str] = TRUNK_FLOAT_CONTROLS, progress: bool = False,
                   log: Callable[[str], None] | None = None, reuse: ReuseCache | None = None) -> Study:
    """Every record of lesson 05: the teacher (eager and ONNX Runtime fp32), then each backbone detector.

    Args:
        profile: data profile (default ``COMPRESSKIT_PROFILE``); the backbone detectors are trained on the
            embedded dataset, so only that profile is supported.
        backbones: names from ``compresskit.backbones.BACKBONES`` (default: all of them, the reference trunk
            too: trained with the same budget as the others, it separates what the trunk costs from what the
            teacher's longer recipe buys).
        int8: also quantize each backbone's core to int8 (ONNX Runtime), calibrated on ``calibration_images``
            train images.
        trunk_float: backbones that also get the int8 control with the trunk in float (see
            :func:`measure_backbone`).
    """
    from compresskit.backbones import BACKBONES

    teacher = load_for_study("teacher", profile)
    require_embedded(teacher, "backbone detectors")
    study = Study.of(LESSON, teacher, val_images, runs=runs, progress=progress, log=log, reuse=reuse)
    eager = study.measure(teacher.model, "backbones/teacher/eager", technique="baseline",
                          variant=f"{REFERENCE} trunk (the teacher), fp32")
    ort = study.measure(teacher.model, "backbones/teacher/ort-fp32", technique="baseline", runtime="onnxruntime",
                        variant=f"{REFERENCE} trunk (the teacher), ONNX Runtime fp32")
    calibration_set = train_split(teacher, augment=False)
    for name in backbones or list(BACKBONES):
        detector, meta, shipped = load_backbone_detector(name, teacher.label_map)
        measure_backbone(study, name, detector, meta, shipped, calibration_set, eager["id"], ort["id"], int8=int8,
                         calibration_images=calibration_images, trunk_float=name in trunk_float)
    return study


def tradeoff_rows(records: Sequence[dict], reference_metrics: dict[str, dict] | None = None) -> list[dict]:
    """One row per backbone of a backbone study's records (``study.records`` or a results file's).

    ``reference_metrics`` (``{"teacher" or backbone name: metrics}``, e.g. each training record's
    ``val_metrics``) replaces the records' mAP fields, for a study measured on a slice of val whose rows should
    compare full-val numbers; the slice's int8 mAP is then left out (``int8_map`` None) rather than mixed in.

    Each row: ``name``; ``map``, ``map_small``, ``map_medium``, ``map_large`` and ``map_source`` (``measured`` in
    this run, or ``training record``); ``params``, ``macs``, ``size_bytes`` (the fp32 ONNX file), ``eager_ms``,
    ``fp32_ms`` and ``int8_ms`` (medians); ``speedup`` (ORT fp32 against the teacher's ORT fp32, paired) with its
    interval; ``int8_speedup`` (ORT int8 against its own fp32, paired) and ``int8_size_bytes``; ``map_gap`` (teacher
    minus backbone) and ``meets_target`` (at least :data:`~compresskit.harness.targets.BACKBONE_SPEEDUP` faster
    within :data:`~compresskit.harness.targets.BACKBONE_MAP_GAP`).
    """
    by_id = {record["id"]: record for record in records}
    teacher = by_id.get("backbones/teacher/ort-fp32")
    if teacher is None:
        raise ValueError("these records hold no backbones/teacher/ort-fp32 record: run the backbone study first")
    teacher_map = (reference_metrics or {"teacher": teacher})["teacher"]["map"]
    rows = []
    for record in records:
        parts = record["id"].split("/")
        if len(parts) != 3 or parts[0] != "backbones" or parts[2] != "ort-fp32" or parts[1] == "teacher":
            continue
        name = parts[1]
        eager, int8 = by_id.get(f"backbones/{name}/eager"), by_id.get(f"backbones/{name}/ort-int8")
        paired, int8_paired = record.get("paired_latency") or {}, (int8 or {}).get("paired_latency") or {}
        from_record = reference_metrics is not None or str((record.get("config") or {}).get(
            "map_source", "")).startswith("training record")
        metrics = record if reference_metrics is None else reference_metrics[name]
        row = {"name": name, **{key: metrics[key] for key in ("map", "map_small", "map_medium", "map_large")},
               "map_source": "training record" if from_record else "measured",
               "params": record["params"], "macs": record["macs"], "size_bytes": record["size_bytes"],
               "eager_ms": (eager or {}).get("latency_ms", {}).get("median"),
               "fp32_ms": record["latency_ms"]["median"],
               "int8_ms": (int8 or {}).get("latency_ms", {}).get("median"),
               "speedup": paired.get("speedup"), "speedup_interval": paired.get("interval"),
               "int8_speedup": int8_paired.get("speedup"), "int8_size_bytes": (int8 or {}).get("size_bytes"),
               "int8_map": (int8 or {}).get("map") if reference_metrics is None else None}
        row["map_gap"] = None if row["map"] is None else teacher_map - row["map"]
        row["meets_target"] = (row["speedup"] is not None and row["map_gap"] is not None
                               and row["speedup"] >= BACKBONE_SPEEDUP and row["map_gap"] <= BACKBONE_MAP_GAP)
        rows.append(row)
    return rows


def plot_tradeoffs(rows: Sequence[dict], teacher_map: float) -> "Figure":
    """:func:`compresskit.report.plot_tradeoffs` of :func:`tradeoff_rows` with this lesson's target (at least
    :data:`~compresskit.harness.targets.BACKBONE_SPEEDUP` faster, at most
    :data:`~compresskit.harness.targets.BACKBONE_MAP_GAP` below the teacher) drawn in."""
    from compresskit.report import plot_tradeoffs as draw

    return draw(rows, teacher_map, target_speedup=BACKBONE_SPEEDUP, target_map_gap=BACKBONE_MAP_GAP)
